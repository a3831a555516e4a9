"""Every flag or config key that an error message suggests exists (issue 11, item 20).

Real error paths of ``distill run``, ``demo`` and ``eval`` are triggered; from each message the
suggested flags (``--xyz``) must be options of that subcommand's parser, and each ``--set key=...``
a key of the config schema.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from distill.checkpoint import save_checkpoint
from distill.cli import _parser, main
from distill.config import ConfigError, load_config
from distill.models import create_model

FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
SET_KEY = re.compile(r"--set[ =]'?([A-Za-z_][\w.]*)=")
MINIMAL = {"recipe": "baseline", "student": {"model": {"name": "mlp"}}}


def flags(command: str) -> set[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def is_config_key(key: str) -> bool:
    """``key`` is in the schema: setting it is never an unknown-key error (its value may be wrong)."""
    try:
        load_config(None, [f"{key}=null"], base=MINIMAL)
    except ConfigError as e:
        parts = key.split(".")
        return not any(f"  {'.'.join(parts[:i])}: unknown key" in str(e) for i in range(1, len(parts) + 1))
    return True


def test_the_checks_themselves():
    assert "--data-path" in flags("eval") and "--set" not in flags("eval") and "--set" in flags("run")
    assert is_config_key("data.path") and is_config_key("distill.views.mode") and is_config_key("recipe")
    assert not is_config_key("data.paths") and not is_config_key("eval.data_path")
    assert FLAG.findall("pass --data-path x (or --set data.path=y), not -x or a--b") == ["--data-path", "--set"]
    assert SET_KEY.findall("`--set recipe=cache` or --set data.path=...") == ["recipe", "data.path"]


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No dataset but the embedded digits can be found."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for var in ("DISTILL_DATA", "DISTILL_SYSTEM_DATA", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(empty))


def checkpoint(path: Path, name: str, data: str) -> str:
    model = create_model("mlp", 10, (1, 8, 8), hidden=[8])
    spec = {"name": name, "kwargs": {"hidden": [8]}, "num_classes": 10, "in_shape": [1, 8, 8]}
    return str(save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "data": {"name": data}}))


def test_every_suggested_flag_and_key_exists(tmp_path, no_data, capsys):
    npz_ckpt = checkpoint(tmp_path / "npz.pt", "mlp", "npz")
    foreign = checkpoint(tmp_path / "foreign.pt", "somewhere_else:build", "digits")
    missing = str(tmp_path / "missing.npz")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**MINIMAL, "output_dir": str(tmp_path / "runs"), "train": {"epochs": 1}}))
    with_teacher = tmp_path / "t.yaml"
    with_teacher.write_text(yaml.safe_dump({**MINIMAL, "recipe": "distill", "output_dir": str(tmp_path / "runs"),
                                            "teacher": {"checkpoint": foreign}}))
    cases = [
        ["eval", npz_ckpt],
        ["eval", npz_ckpt, "--data", "npz", "--data-path", missing],
        ["eval", npz_ckpt, "--data", "fashion-mnist"],
        ["eval", npz_ckpt, "--data", missing],
        ["eval", foreign],
        ["eval", str(tmp_path / "nope.pt")],
        ["run", str(cfg), "--set", "data.name=npz"],
        ["run", str(cfg), "--set", "data.name=npz", "--set", f"data.path={missing}"],
        ["run", str(cfg), "--set", "data.name=fashion-mnist"],
        ["run", str(cfg), "--set", "train.epoch=3"],
        ["run", str(cfg), "--set", "recipe=distill", "--set", f"distill.cache.path={missing}"],
        ["run", str(with_teacher)],
        ["demo", "--output-dir", str(tmp_path / "runs"), "--set", "data.name=npz"],
    ]
    suggested: dict[str, set[str]] = {}
    for argv in cases:
        assert main([*argv, "--quiet"] if argv[0] != "eval" else argv) == 1, argv
        err = capsys.readouterr().err
        assert "error:" in err, (argv, err)
        found = set(FLAG.findall(err))
        assert found <= flags(argv[0]), (argv, found - flags(argv[0]), err)
        for key in SET_KEY.findall(err):
            assert is_config_key(key), (argv, key, err)
        suggested.setdefault(argv[0], set()).update(found)
    # the checks above had something to check: each subcommand's errors suggest flags
    assert {"--data-path", "--data", "--download", "--allow-model-import"} <= suggested["eval"]
    assert {"--set", "--allow-model-import", "--help"} <= suggested["run"]


def test_eval_of_an_npz_run_says_which_flag_to_pass(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "npz.pt", "mlp", "npz")
    assert main(["eval", ckpt]) == 1
    assert f"pass the file: distill eval {ckpt} --data-path my.npz" in capsys.readouterr().err
