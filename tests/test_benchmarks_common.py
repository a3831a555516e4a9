"""The benchmark scripts share one command line (``benchmarks/_common.BenchmarkParser``) and one results
writer (``save_report``, ``save_json``), and keep the flags they had."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

# every script's options, as they were before the shared parser (a flag dropped or renamed fails here)
FLAGS = {
    "augment_speed": ["--batch", "--reps", "--k", "--threads", "--out"],
    "default_recipe": ["--quick", "--out", "--threads", "--run-root", "--seeds", "--datasets", "--report-only",
                       "--arms"],
    "export": ["--students", "--qat-epochs", "--qat-lr", "--quick", "--run-root", "--results"],
    "function_matching": ["--short", "--long", "--modes", "--workers", "--quick", "--teacher", "--run-root",
                          "--results", "--seeds", "--config", "--out-name"],
    "hinton_mnist": ["--config", "--epochs-teacher", "--epochs-student", "--quick", "--out", "--run-dir", "--set",
                     "--resume", "--threads", "--report-only", "--seeds"],
    "hinton_targets": ["EXPERIMENT", "--quick", "--run-root", "--results", "--threads", "--set", "--seeds", "--config"],
    "methods_fmnist": ["--methods", "--seeds", "--workers", "--quick", "--run-root", "--results", "--report-only"],
    "overhead": ["--pairs", "--reps", "--epoch-seconds", "--steps", "--threads", "--profile", "--out"],
    "specialists_fmnist": ["--config", "--epochs-generalist", "--epochs-specialists", "--quick", "--out",
                           "--run-dir", "--set", "--resume", "--no-control", "--threads", "--report-only", "--seeds"],
    "streaming": ["--work", "--small", "--big-images", "--workers", "--batch-size", "--resize", "--epochs", "--device",
                  "--quick", "--out"],
    "throughput": ["--cases", "--rounds", "--sweep-rounds", "--threads", "--quick", "--out", "--plot",
                   "--cached-only"],
    "watch_overhead": ["--rounds", "--epochs", "--threads"],
    "profile_cached": ["--case", "--steps", "--skip", "--top", "--threads"],
    "teacher_compile": ["--cases", "--rounds", "--calls", "--steps", "--long", "--threads", "--quick", "--out"],
    "throughput_gpu": ["--device", "--cases", "--steps", "--rounds", "--parts", "--compile-modes", "--quick", "--results"],
}


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``benchmarks/`` importable as the scripts import ``_common``; sys.path, the scripts' modules and the
    environment (the scripts set OMP_WAIT_POLICY) restored afterwards."""
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    yield importlib.import_module("_common")
    for name in [n for n in sys.modules if n == "_common" or n.startswith("bench_")]:
        del sys.modules[name]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_script_is_listed() -> None:
    assert sorted(FLAGS) == sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_each_script_parses_with_the_shared_parser_and_keeps_its_flags(
    name: str, bench_path: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    used = []
    parse_args = bench_path.BenchmarkParser.parse_args

    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        used.append(type(self))
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(bench_path.BenchmarkParser, "parse_args", recording)
    script = load_script(name)
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0
    assert used == [bench_path.BenchmarkParser]
    help_text = capsys.readouterr().out
    assert [flag for flag in FLAGS[name] if flag not in help_text] == []
    assert script.__doc__.strip().splitlines()[0] in help_text  # the docstring, as written


def test_the_results_writers(tmp_path: Path, bench_path: ModuleType) -> None:
    out = bench_path.save_report(tmp_path / "new" / "report.md", ["# Title", "", "| a |", ""])
    assert out.read_text() == "# Title\n\n| a |\n"
    data = bench_path.save_json(tmp_path / "deeper" / "runs.json", [{"seed": 0, "acc": 0.5}])
    assert data.read_text() == '[\n {\n  "seed": 0,\n  "acc": 0.5\n }\n]'
    sidecar = bench_path.save_json(tmp_path / "benchmark.json", {"wall_s": 1.0}, indent=2, end="\n")
    assert json.loads(sidecar.read_text()) == {"wall_s": 1.0} and sidecar.read_text().endswith("}\n")
    section = bench_path.how_it_was_run(75.0, "0.10 0.20 0.30", "1.00 1.00 1.00", command="python x.py --quick")
    assert section[:6] == ["## How it was run", "", "```", "python x.py --quick", "```", ""]
    assert section[6] == "- total wall time: 75 s (1 min 15 s)" and "load average 0.10 0.20 0.30" in section[7]


def test_runs_are_resumed_only_where_one_exists(tmp_path: Path, bench_path: ModuleType) -> None:
    # run_recipe(resume=True) refuses a directory without a run; the scripts resume an interrupted one
    assert not bench_path.resumable(tmp_path / "missing") and not bench_path.resumable(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert bench_path.resumable(tmp_path)


def test_throughput_gpu_alternates_rounds_and_reports_medians_with_ranges(bench_path: ModuleType) -> None:
    script = load_script("throughput_gpu")
    order, times = [], {"fit": iter([5.0, 4.0, 9.0]), "hand": iter([3.0, 3.5, 2.0])}

    def timing(name: str):  # noqa: ANN202
        return lambda: (order.append(name), next(times[name]))[1]
    ms = script.alternate({"fit": timing("fit"), "hand": timing("hand")}, 3)
    assert order == ["fit", "hand", "hand", "fit", "fit", "hand"]  # reversed every other round
    assert ms == {"fit": [5.0, 4.0, 9.0], "hand": [3.0, 3.5, 2.0]}
    assert script.spread(ms["fit"]) == {"median": 5.0, "range": [4.0, 9.0], "all": [5.0, 4.0, 9.0]}
    out: dict = {}
    script.timings(out, ms, "{}_ms")
    assert out == {"fit_ms": 5.0, "fit_ms_range": [4.0, 9.0], "hand_ms": 3.0, "hand_ms_range": [2.0, 3.5]}
    assert script._ms(out, "fit_ms") == "5 (4-9)" and script._ms({"x": 0.25}, "x") == "0.25"


def test_default_recipe_chooses_the_temperature_by_validation_accuracy_then_nll_then_order(
    bench_path: ModuleType,
) -> None:
    choose = load_script("default_recipe").choose_by_validation
    assert choose({1: (0.90, 0.30), 2: (0.95, 0.40), 4: (0.93, 0.10), 8: (0.80, 0.05)}) == 2
    assert choose({1: (0.95, 0.30), 2: (0.95, 0.20), 4: (0.95, 0.25)}) == 2  # tie in accuracy: lower NLL
    assert choose({"kd": (0.5, 0.2), "kd_t1": (0.5, 0.2)}) == "kd"  # full tie: the first
    with pytest.raises(ValueError, match="at least one candidate"):
        choose({})


def test_default_recipe_arms_train_only_the_named_runs_with_a_longer_schedule(
    tmp_path: Path, bench_path: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script("default_recipe")
    calls: list[tuple[str, list[str], str]] = []
    monkeypatch.setattr(script, "_run", lambda name, ov, d: calls.append((name, ov, d.name)) or {})
    spec = {"data": ["data.name=digits"], "teacher": ["teacher.train.epochs=30"],
            "student": ["student.model={name: mlp, hidden: [16]}", "student.train.epochs=100"]}
    script.run_dataset("digits", spec, 1, tmp_path, quick=False, arms=["val_t", "long"])
    assert [(name, d) for name, _, d in calls] == [
        ("digits-teacher", "teacher"), ("digits-baseline", "baseline"), ("digits-kd_t1", "kd_t1"),
        ("digits-kd_t2", "kd_t2"), ("digits-kd", "kd"), ("digits-kd_t8", "kd_t8"),
        ("digits-baseline_long", "baseline_long"), ("digits-kd_long", "kd_long")]
    by_dir = {d: ov for _, ov, d in calls}
    ckpt = f"teacher.checkpoint={tmp_path}/digits/seed0/teacher/teacher/best.pt"
    assert by_dir["kd_t8"][-4:] == ["recipe=distill", ckpt, "distill.temperature=8", "distill.alpha=0.9"]
    assert by_dir["baseline_long"][-2:] == ["recipe=baseline", "student.train.epochs=300"]
    assert by_dir["kd_long"][-3:] == ["distill.temperature=4", "distill.alpha=0.9", "student.train.epochs=300"]
    assert script._epochs(["student.train.epochs=60", "student.train.epochs=1"]) == 1
    with pytest.raises(ValueError, match="no student.train.epochs=N"):
        script._epochs(["teacher.train.epochs=3"])


def test_default_recipe_summarizes_the_chosen_temperature_and_the_long_schedule(
    tmp_path: Path, bench_path: ModuleType
) -> None:
    import numpy as np
    import torch

    script = load_script("default_recipe")
    labels = np.zeros(4, dtype=np.int64)
    # per run: test predictions (correct where 0) and the selected student's validation (accuracy, NLL)
    runs = {"teacher": ([0, 0, 0, 0], None), "baseline": ([0, 1, 1, 1], None), "kd": ([0, 0, 1, 1], (0.8, 0.3)),
            "kd_t1": ([1, 1, 1, 1], (0.7, 0.1)), "kd_t2": ([0, 0, 0, 1], (0.8, 0.2)),
            "kd_t8": ([0, 0, 0, 0], (0.6, 0.1)), "baseline_long": ([0, 0, 1, 1], None),
            "kd_long": ([0, 0, 0, 1], None)}
    d = tmp_path / "toy" / "seed0"
    for run, (pred, val) in runs.items():
        tag = run.split("_")[0] if run in ("teacher", "baseline", "baseline_long") else "distilled"
        (d / run / tag).mkdir(parents=True)
        (d / run / "results.json").write_text("{}")
        np.savez(d / run / "test_predictions.npz", labels=labels, **{tag: np.array(pred)})
        if val:
            torch.save({"model": {}, "best": {"val_acc": val[0], "val_nll": val[1]}}, d / run / tag / "best.pt")
    out = script.summarize_extra("toy", tmp_path)
    assert out["val_t"]["chosen_t"] == [2]  # T 2 and T 4 tie at 0.8; T 2's NLL is lower
    assert out["val_t"]["acc"]["per_seed"] == [0.75]
    assert out["val_t"]["gain"]["difference"] == 0.5 and out["val_t"]["gain_over_kd"]["difference"] == 0.25
    assert out["long"]["acc_baseline"]["per_seed"] == [0.5] and out["long"]["acc_kd"]["per_seed"] == [0.75]
    assert out["long"]["gain"]["difference"] == 0.25 and out["long"]["baseline_gain"]["difference"] == 0.25
