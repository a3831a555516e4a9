"""Helpers shared by the benchmark scripts: machine description and small formatting."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_md(load_start: str, load_end: str) -> str:
    m = machine()
    return (
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs visible, torch uses {m['torch_threads']} threads "
        f"(OMP_WAIT_POLICY={m['omp_wait_policy']}; shared machine: load average {load_start} at start, "
        f"{load_end} at the end)\n"
        f"- torch {m['torch']}, Python {m['python']}, {m['platform']}"
    )


def command_line() -> str:
    """The command that ran this script, relative to the repository root when possible."""
    argv0 = Path(sys.argv[0])
    try:
        argv0 = argv0.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(argv0)), *(shlex.quote(a) for a in sys.argv[1:])])


def fmt_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{s:.0f} s ({m} min {sec:02d} s)" if m else f"{s:.1f} s"
