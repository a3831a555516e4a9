"""What a run leaves on disk when things go wrong: file modes, full disks, orphan temporary files,
half-made run directories, racing runs, resumes of missing or changed runs, strict JSON logs."""

import errno
import json
import math
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
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
    """The first checkpoint write of epoch 2 finds the disk full: exit code 1, a message saying so,
    and epoch 1's checkpoints byte for byte as they were, with no temporary file beside them."""
    real_fsync, kept = os.fsync, {}

    def fsync(fd):
        if (tmp_path / "t" / "baseline" / "last.pt").exists():  # epoch 1 is written
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


# -- item 7: --resume of a run that does not exist -------------------------------------------------------


def test_resume_of_a_run_that_does_not_exist_is_an_error(tmp_path, capsys):
    assert tiny_run(tmp_path, "nope", "--resume") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no run at {tmp_path / 'nope'} (no config.yaml there) to resume; "
                          "start without --resume")
    assert not (tmp_path / "nope").exists()


# -- item 8: --resume with settings that change the result -------------------------------------------------


def test_resume_with_changed_settings_is_refused_with_the_diff_and_changes_nothing(tmp_path, capsys):
    assert tiny_run(tmp_path) == 0
    run = tmp_path / "t"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert tiny_run(tmp_path, "t", "--resume", "--set", "student.train.optimizer.lr=0.1",
                    "--set", "data.split_seed=3", "--set", "student.train.augment.shift=1") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot resume {run}: 3 setting(s) that change the result differ from its "
                          "config.yaml (saved -> now):\n  data.split_seed: 0 -> 3\n"
                          "  student.train.optimizer.lr: 0.05 -> 0.1\n  student.train.augment.shift: 0 -> 1\n"
                          "Resume with the saved settings"), err
    assert "--allow-changes" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # config.yaml included


def test_resume_may_change_settings_that_leave_the_result_alone(tmp_path, capsys):
    assert tiny_run(tmp_path) == 0
    capsys.readouterr()
    assert tiny_run(tmp_path, "t", "--resume", "--device", "cpu", "--set", "train.log_every=7",
                    "--set", "student.train.eval_batch_size=100", "--set", "train.data_on_device=false",
                    "--set", "report.latency=false") == 0
    assert capsys.readouterr().err == ""


def test_resume_fills_keys_an_older_version_did_not_write_with_todays_defaults(tmp_path, capsys):
    """A config.yaml written before a setting existed (here student.train.max_steps, and the ensemble section of
    a recipe the run does not use) resumes: the saved config is read with today's defaults, recipe sections
    included, before the comparison."""
    assert tiny_run(tmp_path) == 0
    path = tmp_path / "t" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    del saved["student"]["train"]["max_steps"], saved["train"]["max_steps"], saved["ensemble"]["combine"]
    path.write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert tiny_run(tmp_path, "t", "--resume") == 0
    assert capsys.readouterr().err == ""


def test_allow_changes_resumes_with_the_new_settings(tmp_path, capsys):
    """Training longer: the flag lets the run continue from epoch 2 to 3 (the engine's own check too)."""
    assert tiny_run(tmp_path) == 0
    capsys.readouterr()
    assert tiny_run(tmp_path, "t", "--resume", "--set", "student.train.epochs=3") == 1
    assert "student.train.epochs: 2 -> 3" in capsys.readouterr().err
    assert tiny_run(tmp_path, "t", "--resume", "--allow-changes", "--set", "student.train.epochs=3") == 0
    err = capsys.readouterr().err
    assert err.startswith(f"resuming {tmp_path / 't'} with changed settings (saved -> now):\n"
                          "  student.train.epochs: 2 -> 3\n")
    assert load_checkpoint(tmp_path / "t" / "baseline" / "last.pt")["epoch"] == 3
    lines = [json.loads(s) for s in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert "epochs: 3" in (tmp_path / "t" / "config.yaml").read_text()  # the settings it now ran with


def test_allow_changes_without_resume_is_an_error(tmp_path, capsys):
    assert tiny_run(tmp_path, "t", "--allow-changes") == 1
    assert "--allow-changes applies to --resume only" in capsys.readouterr().err


def test_python_resume_compares_the_saved_config(tmp_path):
    from distill.config import builtin_config, load_config
    from distill.recipes import Run

    _run(tmp_path)
    saved = (tmp_path / "r" / "config.yaml").read_text()
    cfg = load_config(None, ["recipe=baseline", "student.model.hidden=[16]", "seed=1"], base=builtin_config("demo"))
    with pytest.raises(ValueError) as e:
        Run(cfg, run_dir=tmp_path / "r", resume=True, progress=False)
    assert "2 setting(s) that change the result" in str(e.value)
    assert "\n  seed: 0 -> 1\n  student.model.hidden: [8] -> [16]\n" in str(e.value)
    assert (tmp_path / "r" / "config.yaml").read_text() == saved
    Run(cfg, run_dir=tmp_path / "r", resume=True, progress=False, allow_changes=True)


# -- item 9: claiming the run directory -------------------------------------------------------------------


def test_runs_started_at_the_same_moment_get_their_own_directories(tmp_path):
    from distill.recipes.common import claim_run_dir

    n = 8
    start = threading.Barrier(n)

    def claim(_):
        start.wait()
        return claim_run_dir(tmp_path, "same")

    with ThreadPoolExecutor(n) as pool:
        dirs = list(pool.map(claim, range(n)))
    assert sorted(d.name for d in dirs) == sorted(["same", *(f"same-{k}" for k in range(2, n + 1))])
    assert all((d / "config.yaml").is_file() for d in dirs)


def test_claiming_takes_an_empty_directory_and_skips_anything_else(tmp_path):
    from distill.recipes.common import claim_run_dir

    (tmp_path / "empty").mkdir()
    assert claim_run_dir(tmp_path, "empty") == tmp_path / "empty"
    assert claim_run_dir(tmp_path, "empty") == tmp_path / "empty-2"  # claimed, though nothing was written yet
    (tmp_path / "afile").write_text("")
    assert claim_run_dir(tmp_path, "afile") == tmp_path / "afile-2"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    assert claim_run_dir(tmp_path, "old") == tmp_path / "old-2"
    assert claim_run_dir(tmp_path / "new" / "parent", "x") == tmp_path / "new" / "parent" / "x"


# -- item 10: orphan temporary files, half-made run directories ---------------------------------------------


def test_orphan_temporary_files_are_removed_when_the_run_resumes(tmp_path):
    assert tiny_run(tmp_path) == 0
    run = tmp_path / "t"
    ours = [run / "baseline" / ".last.pt.k3j_x9zq.tmp", run / "baseline" / ".best.pt.0123abcd.tmp",
            run / ".results.json.abcdefgh.tmp"]
    theirs = [run / "baseline" / ".notes.tmp", run / "baseline" / "mine.tmp", run / ".data.csv.abcdefgh.tmp",
              run / ".last.pt.short.tmp"]
    for p in ours + theirs:
        p.write_bytes(b"partial")
    assert tiny_run(tmp_path, "t", "--resume") == 0
    assert [p for p in ours if p.exists()] == [] and [p for p in theirs if not p.exists()] == []


def test_fit_removes_orphan_temporary_files_beside_its_checkpoints(tmp_path, digits_splits):
    from distill.config import TrainConfig
    from distill.engine import fit
    from distill.models import create_model
    from distill.objectives import CrossEntropy

    orphan = tmp_path / ".last.pt.abcd1234.tmp"
    orphan.write_bytes(b"partial")
    model = create_model("mlp", 10, digits_splits.in_shape, hidden=(8,))
    fit(model, CrossEntropy(), digits_splits, TrainConfig(epochs=1, batch_size=256), out_dir=tmp_path, progress=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("args, message", [
    (["--set", "data.name=npz", "--set", "data.path=/nonexistent/d.npz"], "/nonexistent/d.npz"),
    (["--set", "student.model.hiden=[3]"], "hiden"),
    (["--set", "recipe=distill", "--set", "distill.cache.path=CACHE"], "cache"),
], ids=["bad-data-path", "model-error", "corrupt-cache"])
def test_a_run_that_fails_in_setup_leaves_no_directory_behind(tmp_path, capsys, args, message):
    (tmp_path / "cache.npz").write_bytes(b"not a cache")
    args = [a.replace("CACHE", str(tmp_path / "cache.npz")) for a in args]
    assert tiny_run(tmp_path / "runs", "x", *args) == 1
    assert message in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []
    assert tiny_run(tmp_path / "runs", "x") == 0  # the name is free
    assert (tmp_path / "runs" / "x" / "results.json").is_file()


def test_a_failed_setup_keeps_a_directory_it_did_not_create(tmp_path):
    from distill.config import builtin_config, load_config
    from distill.recipes import Run

    mine = tmp_path / "mine"
    mine.mkdir()
    cfg = load_config(None, ["recipe=baseline", "student.model.hiden=[3]"], base=builtin_config("demo"))
    with pytest.raises(TypeError, match="hiden"):
        Run(cfg, run_dir=mine, progress=False)
    assert mine.is_dir()
