"""One experiment over several seeds: each model's metrics as mean ± sd, and every gain with an interval.

``distill run cfg.yaml --seeds 3`` runs the config's recipe with seeds ``seed``, ``seed + 1``, ``seed + 2``
(each in ``<run dir>/seed<s>/``, a complete run of its own: checkpoints, ``results.json``,
``test_predictions.npz``). A seed changes the initial weights, the data order and the augmentation of
every model of the run; the data split (``data.split_seed``) stays, so every seed is measured on the
same test examples. Then, in ``<run dir>/``:

- ``results.json``: per model, each metric's mean, sample standard deviation and per-seed values; per pair
  of models the recipe compares (``distilled`` against ``baseline``, ...; :class:`~distill.config.RecipeSpec`'s
  ``pairs``) the mean accuracy difference with its paired bootstrap interval
  (:func:`distill.metrics.paired_bootstrap`: seeds and test examples resampled, the two models paired on
  both), and whether the interval includes zero ("within noise");
- ``report.md`` and the printed table: the same, with the ECE's bin count stated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import distributed
from distill.config import Config, find_recipe, to_yaml
from distill.metrics import ECE_BINS, Interval, paired_bootstrap, spread
from distill.recipes.common import claim_run_dir_on_main, run_recipe, write_json_atomic

METRICS = ("test_acc", "test_nll", "test_ece", "agreement")
"""The metrics aggregated over seeds (each as mean, sd and per-seed values)."""

LEVEL, RESAMPLES = 0.95, 2000


def seed_dir(top: Path, seed: int) -> Path:
    """Where the run of ``seed`` writes."""
    return top / f"seed{seed}"


def run_seeds(cfg: Config, seeds: int, *, run_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, allow_import: bool = False, allow_changes: bool = False) -> dict[str, Any]:
    """Run ``cfg``'s recipe once per seed (see the module docstring) and return the aggregate (also written to
    ``<run dir>/results.json`` and ``report.md``). ``resume`` continues the seeds that started and starts the
    others; the other arguments are :func:`distill.recipes.run_recipe`'s."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    spec = find_recipe(cfg.recipe)
    if spec is not None and not spec.seeds:
        raise ValueError(f"--seeds does not apply to recipe {cfg.recipe!r} (it is not one experiment to repeat); "
                         "run it without --seeds")
    top = _top_dir(cfg, run_dir, resume)
    started = time.perf_counter()
    runs = []
    for k in range(seeds):
        seed = cfg.seed + k
        where = seed_dir(top, seed)
        again = resume and (where / "config.yaml").is_file()
        if progress and distributed.is_main():
            print(f"[seeds] seed {seed} ({k + 1} of {seeds}) in {where}", file=sys.stderr, flush=True)
        runs.append(run_recipe(cfg.model_copy(update={"seed": seed}), run_dir=where, resume=again,
                               progress=progress, allow_import=allow_import, allow_changes=allow_changes))
    seed_list = [cfg.seed + k for k in range(seeds)]
    results = aggregate(cfg, seed_list, runs, [seed_dir(top, s) for s in seed_list])
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    if distributed.is_main():
        write_json_atomic(top / "results.json", results)
        table = format_seeds_table(results)
        (top / "report.md").write_text(f"# {cfg.name}: {seeds} seeds ({', '.join(map(str, seed_list))})\n\n{table}\n")
        print(table, flush=True)
    return results


def _top_dir(cfg: Config, run_dir: str | Path | None, resume: bool) -> Path:
    """The directory that holds the seeds' runs: ``run_dir``, ``output_dir/name`` when resuming, else the first
    free ``output_dir/name``, ``name-2``, ... (claimed atomically, with an empty ``config.yaml`` marker)."""
    if run_dir is not None:
        top = Path(run_dir)
        top.mkdir(parents=True, exist_ok=True)
        return top
    if resume:
        top = Path(cfg.output_dir) / cfg.name
        if not top.is_dir():
            raise ValueError(f"no run at {top} to resume; start without --resume")
        return top
    top = claim_run_dir_on_main(cfg.output_dir, cfg.name)
    if distributed.is_main():
        (top / "config.yaml").write_text(to_yaml(cfg))  # the first seed's; each seed's run holds its own
    return top


def aggregate(cfg: Config, seeds: list[int], runs: list[dict[str, Any]], dirs: list[Path]) -> dict[str, Any]:
    """Per model each of :data:`METRICS` over the seeds, and per compared pair the accuracy difference with
    its paired bootstrap interval (from each run's ``test_predictions.npz``)."""
    tags = [t for t in runs[0]["models"] if all(t in r["models"] for r in runs)]
    models: dict[str, Any] = {}
    for tag in tags:
        entry: dict[str, Any] = {}
        for metric in METRICS:
            values = [r["models"][tag].get(metric) for r in runs]
            if all(isinstance(v, (int, float)) for v in values):
                s = spread([float(v) for v in values])
                entry[metric] = {"mean": s.mean, "sd": s.sd, "per_seed": list(s.values)}
        models[tag] = entry
    spec = find_recipe(cfg.recipe)
    pairs = spec.pairs(tags) if spec is not None else []
    comparisons = []
    for a, b in pairs:
        correct = _correct(dirs, a, b)
        if correct is None:
            continue
        interval = paired_bootstrap(correct[0], correct[1], resamples=RESAMPLES, level=LEVEL, seed=0)
        comparisons.append(comparison(a, b, interval))
    return {"name": cfg.name, "recipe": cfg.recipe, "seeds": seeds, "ece_bins": ECE_BINS, "models": models,
            "comparisons": comparisons, "per_seed_results": [str(d / "results.json") for d in dirs]}


def comparison(a: str, b: str, interval: Interval) -> dict[str, Any]:
    """The record of ``accuracy(a) - accuracy(b)``: the difference, the interval and its reading."""
    return {"model": a, "against": b, "metric": "test_acc", "difference": interval.difference,
            "interval": [interval.low, interval.high], "level": interval.level, "resamples": interval.resamples,
            "method": "paired bootstrap over seeds and test examples",
            "within_noise": interval.includes_zero}


def _correct(dirs: list[Path], a: str, b: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(seeds, test examples) correctness of models ``a`` and ``b``, from each seed's ``test_predictions.npz``;
    None if a run did not record both."""
    rows_a, rows_b = [], []
    for d in dirs:
        path = d / "test_predictions.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as f:
            if a not in f.files or b not in f.files:
                return None
            labels = f["labels"]
            rows_a.append(torch.from_numpy(f[a] == labels))
            rows_b.append(torch.from_numpy(f[b] == labels))
    return torch.stack(rows_a), torch.stack(rows_b)


def _pm(entry: dict[str, Any] | None, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    if entry is None:
        return "-"
    mean, sd = scale * entry["mean"], entry["sd"]
    return f"{mean:.{digits}f}{unit}" if sd is None else f"{mean:.{digits}f} ± {scale * sd:.{digits}f}{unit}"


def format_seeds_table(results: dict[str, Any]) -> str:
    """Markdown tables of :func:`aggregate`'s results: the models (mean ± sd over the seeds), then the gains."""
    n = len(results["seeds"])
    lines = [f"| model | test acc (mean ± sd, {n} seeds) | test NLL | ECE ({results['ece_bins']} bins) | "
             "agree w/ teacher |", "|---|---|---|---|---|"]
    for tag, m in results["models"].items():
        lines.append(f"| {tag} | {_pm(m.get('test_acc'), 100, 2, '%')} | {_pm(m.get('test_nll'))} | "
                     f"{_pm(m.get('test_ece'))} | {_pm(m.get('agreement'), 100, 2, '%')} |")
    if results["comparisons"]:
        lines += ["", "| gain | accuracy difference | 95% interval (paired bootstrap) | reading |", "|---|---|---|---|"]
        for c in results["comparisons"]:
            low, high = c["interval"]
            reading = "within noise (the interval includes 0)" if c["within_noise"] else (
                "a real gain" if c["difference"] > 0 else "a real loss")
            lines.append(f"| {c['model']} - {c['against']} | {100 * c['difference']:+.2f} pt | "
                         f"[{100 * low:+.2f}, {100 * high:+.2f}] pt | {reading} |")
    return "\n".join(lines)


__all__ = ["METRICS", "aggregate", "comparison", "format_seeds_table", "run_seeds", "seed_dir"]
