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
    "throughput": ["--cases", "--rounds", "--sweep-rounds", "--threads", "--quick", "--out", "--plot"],
    "watch_overhead": ["--rounds", "--epochs", "--threads"],
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
