"""Helpers shared by the benchmark scripts: the command line (:class:`BenchmarkParser`), the results
writers (:func:`save_report`, :func:`save_json`, :func:`how_it_was_run`), the machine description
and small formatting."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.engine.callbacks import Callback
from distill.metrics import ECE_BINS, paired_bootstrap, spread
from distill.recipes.seeds import LEVEL, METRICS, RESAMPLES, comparison

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


# --------------------------------------------------------------------------- the command line


class BenchmarkParser(argparse.ArgumentParser):
    """The command line every benchmark script starts from: its module docstring as the description
    (kept as written), and the flags the scripts share, each added by one method that returns the
    parser, so that a script reads ``BenchmarkParser(__doc__).add_quick("...").add_out(DEFAULT_OUT)``
    and then adds its own flags with ``add_argument``."""

    def __init__(self, doc: str | None) -> None:
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def add_quick(self, help: str = "smoke test: tiny settings, not a measurement") -> BenchmarkParser:
        """``--quick``: the script's smoke-test mode."""
        self.add_argument("--quick", action="store_true", help=help)
        return self

    def add_out(self, default: Path | None, help: str | None = None) -> BenchmarkParser:
        """``--out PATH``: the Markdown report."""
        self.add_argument("--out", type=Path, default=default,
                          help=help or "Markdown report (default: %(default)s)")
        return self

    def add_threads(self, default: int | None = None) -> BenchmarkParser:
        """``--threads N``: ``torch.set_num_threads`` (``None``: torch's own choice)."""
        shown = "%(default)s" if default is not None else "torch's choice"
        self.add_argument("--threads", type=int, default=default, help=f"torch.set_num_threads (default: {shown})")
        return self

    def add_overrides(self) -> BenchmarkParser:
        """``--set KEY=VALUE`` (repeatable) into ``overrides``: config overrides as in ``distill run --set``."""
        self.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="extra config override, as in `distill run --set` (repeatable)")
        return self

    def add_run_root(self, default: Path) -> BenchmarkParser:
        """``--run-root DIR``: where the runs' directories go."""
        self.add_argument("--run-root", type=Path, default=default,
                          help="directory of the runs (default: %(default)s)")
        return self

    def add_seeds(self, default: int = 1) -> BenchmarkParser:
        """``--seeds N``: train every model with ``N`` seeds (the config's seed, seed + 1, ...); the tables show
        mean ± sd over the seeds and each gain's paired bootstrap interval (:mod:`distill.recipes.seeds`)."""
        self.add_argument("--seeds", type=int, default=default, metavar="N",
                          help="train every model with N seeds (seed, seed + 1, ...): mean ± sd over the seeds and "
                               "each gain's paired bootstrap interval (default: %(default)s)")
        return self

    def add_results(self, default: Path = REPO / "benchmarks" / "results") -> BenchmarkParser:
        """``--results DIR``: where the report, its data and its plot go."""
        self.add_argument("--results", type=Path, default=default,
                          help="directory of the report, its data and plot (default: %(default)s)")
        return self


# --------------------------------------------------------------------------- a window of fit's steps


class StepWindow(Callback):
    """A ``fit`` callback around a window of its steps: ``begin()`` before step ``start`` + 1 (``start`` 0: when fit
    starts, before its first step) and ``end()`` after step ``stop``, so that a timer or a profiler sees those steps
    and not the set-up, the probes or the warm-up steps. ``cpu``: the CPU time of this thread between the two calls
    (seconds; taken after ``begin`` and before ``end``)."""

    def __init__(self, start: int, stop: int, begin: Callable[[], Any], end: Callable[[], Any]) -> None:
        self.start, self.stop, self.begin, self.end = start, stop, begin, end
        self.cpu = 0.0

    def _begin(self) -> None:
        self.begin()
        self.cpu = time.thread_time()

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        if self.start == 0:
            self._begin()

    def on_step(self, step: int) -> None:
        if step == self.start and step > 0:
            self._begin()
        if step == self.stop:
            self.cpu = time.thread_time() - self.cpu
            self.end()


# --------------------------------------------------------------------------- runs


def resumable(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run to continue (its ``config.yaml``): the scripts resume an interrupted
    run, and ``run_recipe(resume=True)`` refuses a directory that holds none."""
    return (Path(run_dir) / "config.yaml").is_file()


# --------------------------------------------------------------------------- seeds


def test_correct(run_dir: Path, tag: str) -> torch.Tensor:
    """Per test example, whether model ``tag`` of the run in ``run_dir`` got it right (from the run's
    ``test_predictions.npz``, as ``distill run --seeds`` reads it)."""
    with np.load(Path(run_dir) / "test_predictions.npz", allow_pickle=False) as f:
        if tag not in f.files:
            raise KeyError(f"{run_dir}/test_predictions.npz has no model {tag!r} (it has {', '.join(f.files)})")
        return torch.from_numpy(f[tag] == f["labels"])


def aggregate_seeds(seeds: list[int], rows: dict[str, list[dict[str, Any]]],
                    correct: dict[str, list[torch.Tensor]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """:func:`distill.recipes.seeds.aggregate`'s results for models measured by a script rather than by one
    recipe: ``rows[tag]`` the model's results row of each seed (in ``seeds``' order), ``correct[tag]`` its
    per-example test correctness of each seed (the same test examples for every model). Per model each of
    :data:`~distill.recipes.seeds.METRICS` as mean, sd and per-seed values (:func:`distill.metrics.spread`); per
    pair ``(a, b)`` the accuracy difference ``a - b`` with its paired bootstrap interval
    (:func:`distill.metrics.paired_bootstrap`, resampling seeds and test examples; the same settings as
    ``distill run --seeds``). :func:`distill.recipes.seeds.format_seeds_table` formats it."""
    models: dict[str, Any] = {}
    for tag, per_seed in rows.items():
        if len(per_seed) != len(seeds):
            raise ValueError(f"model {tag!r}: {len(per_seed)} results rows for {len(seeds)} seeds")
        entry: dict[str, Any] = {}
        for metric in METRICS:
            values = [r.get(metric) for r in per_seed]
            if all(isinstance(v, (int, float)) for v in values):
                s = spread([float(v) for v in values])
                entry[metric] = {"mean": s.mean, "sd": s.sd, "per_seed": list(s.values)}
        models[tag] = entry
    comparisons = []
    for a, b in pairs:
        interval = paired_bootstrap(torch.stack(correct[a]), torch.stack(correct[b]), resamples=RESAMPLES,
                                    level=LEVEL, seed=0)
        comparisons.append(comparison(a, b, interval))
    return {"seeds": list(seeds), "ece_bins": ECE_BINS, "models": models, "comparisons": comparisons}


def per_seed_table(results: dict[str, Any], metric: str = "test_acc", scale: float = 100.0,
                   fmt: str = "{:.2f}") -> list[str]:
    """One row per model, one column per seed: ``metric`` of each seed's run (the numbers behind the mean ± sd)."""
    seeds = results["seeds"]
    lines = ["| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for tag, m in results["models"].items():
        values = m.get(metric, {}).get("per_seed")
        cells = [fmt.format(scale * v) for v in values] if values else ["-"] * len(seeds)
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- the results


def how_it_was_run(wall: float, load_start: str, load_end: str, command: str | None = None) -> list[str]:
    """The report's closing section: the command, the total wall time and the machine."""
    return ["## How it was run", "", "```", command or command_line(), "```", "",
            f"- total wall time: {fmt_seconds(wall)}", machine_md(load_start, load_end)]


def save_report(out: Path, lines: Iterable[str]) -> Path:
    """Write a Markdown report, one line per item, creating its directory; returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def save_json(path: Path, data: Any, indent: int = 1, end: str = "") -> Path:
    """Write the data behind a report (or a run's sidecar) as JSON, creating its directory; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + end)
    return path
