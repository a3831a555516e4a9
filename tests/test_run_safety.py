"""What a run leaves on disk when things go wrong: file modes, full disks, orphan temporary files,
half-made run directories, racing runs, resumes of missing or changed runs, strict JSON logs."""

import errno
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

from distill import checkpoint
from distill.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from distill.cli import main

TINY = ["--set", "recipe=baseline", "--set", "student.model.hidden=[8]", "--set", "student.train.epochs=2",
        "--quiet"]


def tiny_run(out: Path, name: str = "t", *extra: str) -> int:
    """A baseline MLP on digits for two epochs: about a second."""
    return main(["demo", "--output-dir", str(out), "--name", name, *TINY, *extra])


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- item 4: file modes ------------------------------------------------------------------------


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_the_usual_mode_under_the_umask(tmp_path, umask, mask, want):
    umask(mask)
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}})
    write_atomic(tmp_path / "r.json", lambda f: f.write(b"{}"))
    assert _mode(tmp_path / "c.pt") == want and _mode(tmp_path / "r.json") == want


def test_every_file_of_a_run_gets_the_usual_mode(tmp_path, umask):
    umask(0o022)
    assert tiny_run(tmp_path) == 0
    files = [p for p in (tmp_path / "t").rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path / "t").as_posix() for p in files} >= {
        "config.yaml", "metrics.jsonl", "results.json", "report.md", "baseline/best.pt", "baseline/last.pt"}
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o644) for p in files}


# -- item 11: disk full --------------------------------------------------------------------------


def test_disk_full_mid_write_keeps_the_previous_file_and_says_so(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", full)
        with pytest.raises(checkpoint.DiskFullError) as e:
            save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    assert e.value.errno == errno.ENOSPC
    assert f"the disk is full (or the disk quota is used up) while writing {path}" in str(e.value)
    assert f"the previous {path} is intact" in str(e.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_quota_exceeded_on_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    def quota(fd):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", quota)
    with pytest.raises(checkpoint.DiskFullError, match=f"nothing was written at {tmp_path / 'new.pt'}"):
        save_checkpoint(tmp_path / "new.pt", {"model": {}})
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_a_run_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    """The third checkpoint write (epoch 2) finds the disk full: exit code 1, a message saying so,
    and epoch 1's checkpoints byte for byte as they were, with no temporary file beside them."""
    real_fsync, calls, kept = os.fsync, [], {}

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            kept.update({p: p.read_bytes() for p in (tmp_path / "t").rglob("*.pt")})
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert tiny_run(tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full") and "Traceback" not in err
    assert "/t/baseline/" in err and "is intact" in err and "--resume" in err
    assert sorted(p.name for p in kept) == ["best.pt", "last.pt"]
    assert {p: p.read_bytes() for p in (tmp_path / "t").rglob("*.pt")} == kept
    assert load_checkpoint(tmp_path / "t" / "baseline" / "last.pt")["epoch"] == 1
    assert not [p for p in (tmp_path / "t").rglob("*.tmp")]


# -- item 12: strict JSON ----------------------------------------------------------------------------


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _run(tmp_path, **kw):
    from distill.config import builtin_config, load_config
    from distill.recipes import Run

    cfg = load_config(None, ["recipe=baseline", "student.model.hidden=[8]"], base=builtin_config("demo"))
    return Run(cfg, progress=False, **{"run_dir": tmp_path / "r", **kw})


def test_metrics_and_results_are_strict_json_with_nonfinite_values_named(tmp_path):
    run = _run(tmp_path)
    run.log({"model": "m", "epoch": 1, "train/kd": float("nan"), "train/loss": 0.5, "val/nll": float("inf")})
    line = _strict((tmp_path / "r" / "metrics.jsonl").read_text())
    assert line == {"model": "m", "epoch": 1, "train/kd": None, "train/loss": 0.5, "val/nll": None,
                    "nonfinite": ["train/kd", "val/nll"]}
    run.write_results({"m": {"test_acc": 0.5, "test_nll": float("nan")}}, {"summary": {"gaps": [1.0, -math.inf]}})
    results = _strict((tmp_path / "r" / "results.json").read_text())
    assert results["models"]["m"] == {"test_acc": 0.5, "test_nll": None}
    assert results["summary"] == {"gaps": [1.0, None]}
    assert results["nonfinite"] == ["models.m.test_nll", "summary.gaps.1"]
