"""Where targets come from: Hinton et al. (2015)'s ensemble, small-data and left-out-class
experiments, deep mutual learning and born-again networks, on Fashion-MNIST.

Each experiment is one recipe run exactly as ``distill run`` runs it:

    ensemble        distill run benchmarks/configs/ensemble_fmnist.yaml
    small_data      distill run benchmarks/configs/targets_fmnist.yaml --set recipe=small_data
    left_out_class  distill run benchmarks/configs/targets_fmnist.yaml --set recipe=left_out_class
    online          distill run benchmarks/configs/targets_fmnist.yaml --set recipe=online
    born_again      distill run benchmarks/configs/targets_fmnist.yaml --set recipe=born_again

This script runs the ones named (default: all), training the shared teacher of small_data and
left_out_class once, and writes ``benchmarks/results/<experiment>_fmnist.md`` for each: the
table of models, the paper's numbers beside ours, the command, wall time and machine.

    python benchmarks/hinton_targets.py                       # everything (~25-40 min on 2 shared cores)
    python benchmarks/hinton_targets.py small_data left_out_class
    python benchmarks/hinton_targets.py --quick               # smoke test: 2 epochs each, results to /tmp
    # CNN members much stronger than the MLP student, three seeds: mean ± sd and the gain's paired bootstrap
    # interval (each seed a complete run, as `distill run --seeds 3`)
    python benchmarks/hinton_targets.py ensemble --config benchmarks/configs/ensemble_cnn_digits.yaml --seeds 3
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see benchmarks/hinton_mnist.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO, BenchmarkParser, command_line, fmt_seconds, load_average, machine_md, per_seed_table, resumable, save_json,
    save_report,
)

from distill.config import load_config  # noqa: E402
from distill.recipes import run_recipe  # noqa: E402
from distill.recipes.seeds import format_seeds_table, run_seeds  # noqa: E402
from distill.report import format_table  # noqa: E402

CONFIGS = REPO / "benchmarks" / "configs"
EXPERIMENTS = ["ensemble", "small_data", "left_out_class", "online", "born_again"]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def paper_section(name: str, s: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    """The experiment's headline numbers beside the paper's."""
    if name == "ensemble":
        paper_gain = (60.8 - 58.9) / (61.1 - 58.9)
        kept = s["gain_kept"]
        members = sum(k.startswith("member") for k in rows)
        return [
            "| | ours (Fashion-MNIST, test accuracy) | paper (speech, frame accuracy) |", "|---|---|---|",
            f"| single model (mean of the members) | {pct(s['member_mean_acc'])} | 58.9% (baseline) |",
            f"| ensemble of {members} | {pct(s['ensemble_acc'])} | 61.1% (10 models) |",
            f"| single model distilled from the ensemble | {pct(s['distilled_acc'])} | 60.8% |",
            f"| same model on hard labels (our baseline) | {pct(s['baseline_acc'])} | - |",
            f"| share of the ensemble's gain kept | {'-' if kept is None else f'{100 * kept:.0f}%'} "
            f"| {100 * paper_gain:.0f}% |",
        ]
    if name == "small_data":
        return [
            "| | ours (Fashion-MNIST, test accuracy) | paper (speech, frame accuracy) |", "|---|---|---|",
            f"| all training data, hard labels | {pct(s['baseline_full_acc'])} | 58.9% |",
            f"| {100 * s['fraction']:g}% of the data, hard labels | {pct(s['hard_small_acc'])} | 44.5% (3%) |",
            f"| {100 * s['fraction']:g}% of the data, soft targets | {pct(s['soft_small_acc'])} | 57.0% (3%) |",
            "", f"The small-data students saw {s['train_examples']} examples for {s['epochs']} epochs "
            "(as many optimizer steps as the full-data student).",
        ]
    if name == "left_out_class":
        n = s["class_test_examples"]
        e, ce = s["errors"], s["class_errors"]
        total = rows["teacher"]["n_test"]
        return [
            f"Left out: class {s['class']} ({s['class_name']}); bias correction +{s['bias']:.2f}, chosen on the "
            "validation split (the paper chose +3.5 on the test set).", "",
            f"| | ours: errors / {total} (on the class / {n}) | paper MNIST: errors / 10000 (on 3s / 1010) |",
            "|---|---|---|",
            f"| teacher | {e['teacher']} ({ce['teacher']}) | 67 |",
            f"| distilled, full transfer set | {e['distilled_full']} ({ce['distilled_full']}) | 74 |",
            f"| distilled, class left out | {e['distilled_without']} ({ce['distilled_without']}) | 206 (133) |",
            f"| ... with the bias correction | {e['distilled_corrected']} ({ce['distilled_corrected']}) | 109 (14) |",
        ]
    if name == "online":
        gains = ", ".join(f"{100 * g:+.2f}" for g in s["gains"])
        return [f"Test-accuracy gain of each mutually trained student over the same student trained alone from "
                f"the same initial weights: {gains} points (mean {100 * s['mean_gain_over_alone']:+.2f}). "
                "Zhang et al. (2018) report gains of one to a few points on CIFAR-100."]
    if name == "born_again":
        accs = " -> ".join(pct(a) for a in s["accuracy_by_generation"])
        return [f"Test accuracy by generation (0 = trained on labels): {accs}. Furlanello et al. (2018) report "
                "born-again students matching or beating their teachers on CIFAR-100."]
    return []


def write_report(out: Path, name: str, results: dict[str, Any], cmd: str, wall: float, loads: tuple[str, str]) -> None:
    rows = results["models"]
    table = format_table([{"model": k, **v} for k, v in rows.items()], markdown=True)
    lines = [f"# {name} on Fashion-MNIST", "", f"`{cmd}`", "", *paper_section(name, results["summary"], rows), "",
             "## All models (test split)", "", table, "",
             f"Wall time {fmt_seconds(wall)}; run directory `{results['run_dir']}`.", "", "## Machine", "",
             machine_md(*loads), ""]
    save_report(out, lines)
    print(f"wrote {out}", flush=True)


def mean_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' summaries with every numeric field averaged over the seeds (None when a seed has none); other
    fields from the first seed."""
    out: dict[str, Any] = dict(summaries[0])
    for key, value in summaries[0].items():
        values = [s.get(key) for s in summaries]
        if isinstance(value, (int, float)) or value is None:
            numbers = [v for v in values if isinstance(v, (int, float))]
            out[key] = sum(numbers) / len(numbers) if len(numbers) == len(values) else None
    return out


def gap_closed(s: dict[str, Any]) -> float | None:
    """Ensemble: the share of the baseline -> ensemble accuracy gap the distilled student closes (the gain kept
    when the student is not the members' architecture)."""
    gap = s["ensemble_acc"] - s["baseline_acc"]
    return (s["distilled_acc"] - s["baseline_acc"]) / gap if gap > 0 else None


def ensemble_seeds_section(summaries: list[dict[str, Any]], dataset: str) -> list[str]:
    """Ensemble with ``--seeds``: the seeds' mean accuracies beside the paper's Table 1, and the share of the
    baseline -> ensemble gap the distilled student closes, per seed. In the paper the baseline is one model of the
    members' architecture, so that share is its "gain kept" (80% in its text, (60.8 - 58.9) / (61.1 - 58.9) = 86%
    from its table); here the members may be another architecture than the student, so the baseline student is the
    reference and the mean member is shown apart."""
    m = mean_summary(summaries)
    fracs = [gap_closed(s) for s in summaries]
    shown = ", ".join("undefined" if f is None else f"{f:.2f}" for f in fracs)
    paper = (60.8 - 58.9) / (61.1 - 58.9)
    return ["(agree w/ teacher: agreement with the ensemble.)", "",
            f"Means over the seeds beside the paper (speech, frame accuracy; ours: {dataset}, test accuracy):", "",
            f"| | ours ({dataset}) | paper |", "|---|---|---|",
            f"| the student on hard labels (baseline) | {pct(m['baseline_acc'])} | 58.9% (one model) |",
            f"| the ensemble | {pct(m['ensemble_acc'])} | 61.1% (10 models) |",
            f"| the student distilled from the ensemble | {pct(m['distilled_acc'])} | 60.8% |",
            f"| mean member | {pct(m['member_mean_acc'])} | (= the baseline: same architecture) |",
            f"| (distilled − baseline) / (ensemble − baseline) | per seed {shown}; of the means "
            f"{_frac(gap_closed(m))} | {100 * paper:.0f}% |", ""]


def _frac(f: float | None) -> str:
    return "undefined" if f is None else f"{f:.2f}"


def write_seeds_report(out: Path, name: str, results: dict[str, Any], per_seed: list[dict[str, Any]], cmd: str,
                       wall: float, loads: tuple[str, str]) -> None:
    """The report of ``--seeds N``: the models' mean ± sd and the gains' paired bootstrap intervals
    (:func:`distill.recipes.seeds.format_seeds_table`), accuracy per seed, and (ensemble) the paper's numbers beside
    the seeds' means. ``per_seed``: each seed's ``results.json``."""
    n = len(results["seeds"])
    lines = [f"# {name} on {per_seed[0]['data']['name']}, {n} seeds", "",
             f"`{cmd}`", "",
             f"Seeds {', '.join(map(str, results['seeds']))}: each seed is a complete run (`distill run --seeds`: the "
             "seed sets every model's initial weights, data order and augmentation; the data split stays).", "",
             format_seeds_table(results), "", "Test accuracy per seed (%):", "", *per_seed_table(results), ""]
    if name == "ensemble":
        lines += ensemble_seeds_section([r["summary"] for r in per_seed], per_seed[0]["data"]["name"])
    where = Path(results["per_seed_results"][0]).parent.parent
    lines += [f"Wall time {fmt_seconds(wall)}; per-seed runs and the aggregate results.json in "
              f"`{where.relative_to(REPO) if where.is_relative_to(REPO) else where}`.", "", "## Machine", "", machine_md(*loads), ""]
    save_report(out, lines)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("2 epochs per model, results under /tmp")
    p.add_run_root(REPO / "runs" / "benchmarks").add_results().add_threads().add_overrides()
    p.add_argument("experiments", nargs="*", choices=[[], *EXPERIMENTS], default=[], metavar="EXPERIMENT",
                   help=f"any of {', '.join(EXPERIMENTS)} (default: all)")
    p.add_argument("--config", type=Path, help="the experiment's config instead of its default (one experiment only)")
    p.add_seeds()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.experiments or EXPERIMENTS
    if args.config is not None and len(names) != 1:
        p.error("--config needs exactly one EXPERIMENT")
    quick = ["train.epochs=2", "teacher.train.epochs=2"] if args.quick else []
    results_dir = Path("/tmp/distill-quick-results") if args.quick else args.results
    run_root = Path("/tmp/distill-quick-runs") if args.quick else args.run_root
    teacher_ckpt = None
    for name in names:
        t0, load0 = time.perf_counter(), load_average()
        overrides = [*quick, *args.overrides]
        if name == "ensemble":
            cfg_path = CONFIGS / "ensemble_fmnist.yaml"
            cmd = f"distill run {cfg_path.relative_to(REPO)}"
        else:
            cfg_path = CONFIGS / "targets_fmnist.yaml"
            overrides = [f"recipe={name}", *overrides]
            cmd = f"distill run {cfg_path.relative_to(REPO)} --set recipe={name}"
            if name in ("small_data", "left_out_class"):
                if teacher_ckpt is None:  # one teacher for both experiments
                    tcfg = load_config(cfg_path, ["recipe=teacher", *quick, *args.overrides])
                    tdir = run_root / "targets_teacher"
                    if not (tdir / "teacher" / "best.pt").exists():
                        run_recipe(tcfg, run_dir=tdir)
                    teacher_ckpt = tdir / "teacher" / "best.pt"
                overrides.append(f"teacher.checkpoint={teacher_ckpt}")
        if args.config is not None:
            cfg_path = args.config
            cmd = f"distill run {cfg_path}" + ("" if name == "ensemble" else f" --set recipe={name}")
        cfg = load_config(cfg_path, overrides)
        stem = f"{name}_fmnist" if args.config is None else cfg.name
        run_dir = run_root / stem
        if args.seeds > 1:
            results = run_seeds(cfg, args.seeds, run_dir=run_dir, resume=resumable(run_dir / "seed0"))
            save_json(run_dir / "benchmark.json", {"wall_s": time.perf_counter() - t0, "command": command_line()})
            per_seed = [json.loads(Path(f).read_text()) for f in results["per_seed_results"]]
            write_seeds_report(results_dir / f"{stem}_seeds.md", name, results, per_seed,
                               f"{cmd} --seeds {args.seeds}  (run by: {command_line()})", time.perf_counter() - t0,
                               (load0, load_average()))
            continue
        results = run_recipe(cfg, run_dir=run_dir, resume=resumable(run_dir))
        results["run_dir"] = str(run_dir)
        cmd_note = f"{cmd}  (run by: {command_line()})"
        write_report(results_dir / f"{name}_fmnist.md", name, results, cmd_note, time.perf_counter() - t0,
                     (load0, load_average()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
