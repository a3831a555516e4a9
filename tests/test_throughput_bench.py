"""Smoke test of benchmarks/throughput.py: its --quick mode runs end to end and writes a report (and a plot)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "throughput.py"


@pytest.mark.slow
def test_quick_mode_writes_report_and_plot(tmp_path):
    out, plot = tmp_path / "throughput.md", tmp_path / "throughput.png"
    # a child process: the script sets the thread count and forks DataLoader workers
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--plot", str(plot)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    for case in ("fmnist", "resnet"):
        assert f"| {case} | hand-written loop / default fit (speed-up of the defaults) |" in report
        # the same training: both loops start from the same weights on the same batches (quick mode: any layout)
        gap = re.search(rf"\| {case} \| same losses: [^|]*\| ([0-9.e+-]+) \|", report)
        assert gap and float(gap.group(1)) <= 1e-5, gap
        assert re.search(rf"\| {case} \| fit step / bound \(teacher forward \+ student step, "
                         r"(channels_last|contiguous)\) \|", report)
        assert re.search(rf"\| {case} \| fit step with `CachedTeacher` / plain student step \(CE, "
                         r"(channels_last|contiguous)\) \|", report)
    assert "fit's probe chose **" in report
    # the teacher's batch norms: fit's choice recorded, and what it gains measured (fit with the setting off)
    assert re.search(r"Teacher batch norms \(`train\.fold_teacher_batchnorm: auto`\): fit folded \*\*\d+\*\*", report)
    for case in ("fmnist", "resnet"):
        assert f"| {case} | fit with `train.fold_teacher_batchnorm: false` / default fit |" in report
    for section in ("### Distillation step", "### Cached teacher", "### Full epoch against the usual loop",
                    "### Scaling", "## What fit does per step beyond the bound", "## How it was run"):
        assert section in report
    assert not re.search(r"\b(nan|inf)\b", report), "a ratio or time came out NaN or inf"
    # code is cited by the function that does the work, from the imported objects, not by searching the
    # engine's source text (which breaks when the engine is split into modules)
    assert re.search(r"\| `distill\.engine[\w.]*\.fit` \|", report)
    assert "`distill.data.augment.random_shift`" in report and "not found" not in report
    assert re.search(r"the package's `\.py` files as measured: sha256 [0-9a-f]{12}", report)
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
