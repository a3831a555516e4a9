"""Beyer et al. (2022), "Knowledge distillation: A good teacher is patient and consistent",
Figure 2 at this machine's scale: every teaching mode on one teacher-student pair, for a short
and a long schedule.

Each run is exactly ``distill run benchmarks/configs/function_matching_fmnist.yaml --set
distill.views.mode=MODE --set student.train.epochs=E --set teacher.checkpoint=...``; the teacher
is trained once on the full training set. The script writes
``benchmarks/results/function_matching.md`` (test accuracy per mode and schedule, the
validation curves' shape, the speed of funmatch against plain distillation) and
``benchmarks/results/function_matching.png`` (validation accuracy against epochs, one curve per mode).

    python benchmarks/function_matching.py                 # 8 modes x (10, 100 epochs), ~15-25 min on 2 shared cores
    python benchmarks/function_matching.py --long 300      # a longer long schedule
    python benchmarks/function_matching.py --quick         # smoke test (2 and 4 epochs, results under /tmp)
    # three seeds of two modes with another config (student as big as its teacher): mean ± sd and the
    # paired bootstrap interval of each mode's gain over the fixed teacher (fix/rs) and of long over short
    python benchmarks/function_matching.py --config benchmarks/configs/function_matching_match_fmnist.yaml \
        --modes fix/rs funmatch --short 10 --long 100 --seeds 3 --out-name function_matching_match
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see benchmarks/hinton_mnist.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO, BenchmarkParser, aggregate_seeds, command_line, fmt_seconds, load_average, machine_md, per_seed_table,
    resumable, save_json, save_report, test_correct,
)

from distill.recipes.seeds import format_seeds_table  # noqa: E402

CONFIG = REPO / "benchmarks" / "configs" / "function_matching_fmnist.yaml"
MODES = ["fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch"]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One distillation run (in a worker process, one thread): test accuracy and the validation curve."""
    torch.set_num_threads(1)
    from distill.config import load_config
    from distill.recipes import run_recipe

    cfg = load_config(job.get("config", CONFIG), job["overrides"])
    run_dir = Path(job["run_dir"])
    t0 = time.perf_counter()
    res = run_recipe(cfg, run_dir=run_dir, resume=resumable(run_dir), progress=False)
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in curve if r["model"] == "distilled"]
    return {**job, "test_acc": res["models"]["distilled"]["test_acc"], "row": res["models"]["distilled"],
            "val_acc": [r["val/acc"] for r in curve], "train_time_s": [r["train_time_s"] for r in curve],
            "steps": curve[-1]["step"] if curve else 0, "wall_s": time.perf_counter() - t0}


def train_teacher(root: Path, quick: bool, config: Path = CONFIG) -> Path:
    from distill.config import load_config
    from distill.recipes import run_recipe

    ckpt = root / "teacher" / "teacher" / "best.pt"
    if not ckpt.exists():
        over = ["recipe=teacher", "data.train_size=null"] + (["teacher.train.epochs=1"] if quick else [])
        run_recipe(load_config(config, over), run_dir=root / "teacher", resume=resumable(root / "teacher"))
    return ckpt


def tag(mode: str, epochs: int) -> str:
    """The name of a mode's runs with one schedule, in the seeds tables."""
    return f"{mode}, {epochs} ep"


def seed_pairs(modes: list[str], short: int, long: int) -> list[tuple[str, str]]:
    """The gains with an interval: each mode against the fixed teacher ``fix/rs`` (same schedule), and each mode's
    long schedule against its short one."""
    pairs = [(tag(m, e), tag("fix/rs", e)) for e in (long, short) for m in modes if m != "fix/rs" and "fix/rs" in modes]
    return pairs + [(tag(m, long), tag(m, short)) for m in modes]


def aggregate(results: list[dict[str, Any]], modes: list[str], seeds: list[int], short: int,
              long: int) -> dict[str, Any]:
    """``--seeds``: per mode and schedule mean ± sd over the seeds, and the gains of :func:`seed_pairs` with their
    paired bootstrap intervals (:func:`_common.aggregate_seeds`); each run's test correctness from its
    ``test_predictions.npz``."""
    by = {(r["mode"], r["epochs"], r["seed"]): r for r in results}
    rows: dict[str, list[dict[str, Any]]] = {}
    correct: dict[str, list[torch.Tensor]] = {}
    for e in (long, short):
        for m in modes:
            runs = [by[(m, e, s)] for s in seeds if (m, e, s) in by]
            if len(runs) < len(seeds):
                continue  # a failed run: the mode is left out (the report says so)
            rows[tag(m, e)] = [r["row"] for r in runs]
            correct[tag(m, e)] = [test_correct(Path(r["run_dir"]), "distilled") for r in runs]
    pairs = [(a, b) for a, b in seed_pairs(modes, short, long) if a in rows and b in rows]
    return aggregate_seeds(seeds, rows, correct, pairs)


def teacher_metrics(ckpt: Path, config: Path = CONFIG) -> dict[str, Any]:
    """The teacher's test accuracy and the epoch its checkpoint comes from."""
    from distill.checkpoint import build_model_from_checkpoint, load_checkpoint
    from distill.config import load_config
    from distill.engine import evaluate
    from distill.recipes.common import Run

    run = Run(load_config(config, [f"teacher.checkpoint={ckpt}"]), run_dir=Path("/tmp/distill-fm-teacher"),
              progress=False)
    model, _ = build_model_from_checkpoint(ckpt)
    epochs = load_checkpoint(ckpt).get("epoch")
    return {"test_acc": evaluate(model, run.data.test).accuracy, "epoch": epochs}


def speed(ckpt: Path, epochs: int = 2, repeats: int = 3, config: Path = CONFIG) -> dict[str, float]:
    """Seconds per training epoch of funmatch and of plain distillation (same images for both
    models, no augmentation), interleaved in this process on one thread, and the cost of
    funmatch's views alone for the same number of batches."""
    torch.set_num_threads(1)
    from distill.checkpoint import build_model_from_checkpoint
    from distill.config import load_config
    from distill.engine import fit
    from distill.models import create_model
    from distill.objectives import KnowledgeDistillation
    from distill.recipes.common import Run
    from distill.recipes.views import student_views
    from distill.teachers import FrozenTeacher

    cfg = load_config(config, [f"teacher.checkpoint={ckpt}", f"student.train.epochs={epochs}"])
    run = Run(cfg, run_dir=Path("/tmp/distill-fm-speed"), progress=False)
    data, student_cfg = run.data, cfg.student
    teacher, _ = build_model_from_checkpoint(ckpt)
    frozen = FrozenTeacher(teacher)
    views = {"plain": None, "funmatch": student_views(cfg, data, 0)}
    best = {name: float("inf") for name in views}
    for _ in range(repeats):
        for name, v in views.items():
            torch.manual_seed(0)
            model = create_model("cnn", data.num_classes, data.in_shape, **cfg.student.model.kwargs)
            r = fit(model, KnowledgeDistillation(1.0, 1.0), data, student_cfg.train, teacher=frozen, views=v,
                    progress=None)
            best[name] = min(best[name], min(h["train_time_s"] for h in r.history))
    x = data.train.x[: student_cfg.train.batch_size]
    steps = len(data.train) // student_cfg.train.batch_size
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        views["funmatch"](x, torch.arange(x.shape[0]))
        times.append(time.perf_counter() - t0)
    aug = min(times) * steps
    return {"plain_epoch_s": best["plain"], "funmatch_epoch_s": best["funmatch"], "views_per_epoch_s": aug,
            "steps_per_epoch": steps,
            "ratio_to_plain_plus_views": best["funmatch"] / (best["plain"] + aug),
            "ratio_to_plain": best["funmatch"] / best["plain"]}


def mean_curves(results: list[dict[str, Any]]) -> dict[tuple[str, int], list[float]]:
    """Per (mode, epochs) the validation accuracy per epoch, averaged over the seeds (one seed: its curve)."""
    grouped: dict[tuple[str, int], list[list[float]]] = {}
    for r in results:
        grouped.setdefault((r["mode"], r["epochs"]), []).append(r["val_acc"])
    return {k: [sum(v) / len(v) for v in zip(*curves)] for k, curves in grouped.items()}


def plot(results: list[dict[str, Any]], long: int, short: int, out: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = mean_curves(results)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"fix": "--", "ind": ":", "same": "-", "funmatch": "-"}
    for (mode, epochs), curve in sorted(curves.items(), key=lambda kv: MODES.index(kv[0][0])):
        if epochs != long:
            continue
        family = mode.split("/")[0]
        ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], styles.get(family, "-"),
                label=mode, linewidth=2.2 if mode == "funmatch" else 1.2)
    for (mode, epochs), curve in curves.items():
        if epochs == short:
            ax.plot([short], [100 * curve[-1]], "k.", markersize=4)
    ax.set_xlabel(f"epoch of the {long}-epoch schedule (dots: end of the {short}-epoch runs)")
    ax.set_ylabel("validation accuracy (%)" + (" (mean over the seeds)" if len(curves) < len(results) else ""))
    ax.set_title(title or "Teaching modes on Fashion-MNIST (2,000-image transfer set)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    low = min(100 * min(c[len(c) // 10:]) for (_, e), c in curves.items() if e == long)
    ax.set_ylim(max(0, low - 2), None)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def write_report(out: Path, results: list[dict[str, Any]], short: int, long: int, sp: dict[str, float],
                 teacher: dict[str, Any], cmd: str, wall: float, loads: tuple[str, str]) -> None:
    by = {(r["mode"], r["epochs"]): r for r in results}
    lines = ["# Function matching: teaching modes (Beyer et al. 2022, Figure 2) on Fashion-MNIST", "",
             f"`{cmd}`", "",
             "Teacher: `cnn` channels [32, 64], hidden 128, trained on all 55,000 training images "
             f"(checkpoint of epoch {teacher['epoch']}, test accuracy {100 * teacher['test_acc']:.2f}%). "
             "Student: `cnn` channels [8, 16], hidden 32. "
             "Transfer set: 2,000 training images (stratified). KL to the teacher at T = 1, no labels, Adam "
             "3e-3, cosine, clipping at 1.0, batch 128 (config `benchmarks/configs/function_matching_fmnist.yaml`). "
             "Every run is selected on 5,000 held-out validation images; test accuracy on the 10,000 test images.",
             "", f"| mode | test acc, {short} epochs | test acc, {long} epochs | best val acc ({long}) "
             f"at epoch | val acc at the end ({long}) |", "|---|---|---|---|---|"]
    for mode in MODES:
        s, lg = by.get((mode, short)), by.get((mode, long))
        if lg is None or s is None:
            continue
        best = max(range(len(lg["val_acc"])), key=lg["val_acc"].__getitem__)
        lines.append(f"| {mode} | {100 * s['test_acc']:.2f}% | {100 * lg['test_acc']:.2f}% | "
                     f"{100 * lg['val_acc'][best]:.2f}% at {best + 1} | {100 * lg['val_acc'][-1]:.2f}% |")
    lines += ["", "![validation accuracy against epochs](function_matching.png)", ""]
    lines += ["## Speed: funmatch against plain distillation", "",
              f"Best of 3 interleaved runs of {sp['steps_per_epoch']} steps (one thread): plain distillation "
              f"{sp['plain_epoch_s']:.3f} s per epoch, funmatch {sp['funmatch_epoch_s']:.3f} s; funmatch's views "
              f"alone cost {sp['views_per_epoch_s']:.3f} s per epoch. funmatch / (plain + views) = "
              f"**{sp['ratio_to_plain_plus_views']:.3f}** (target <= 1: funmatch costs no more than its "
              f"augmentation); funmatch / plain = {sp['ratio_to_plain']:.3f}.", ""]
    lines += ["## Machine", "", machine_md(*loads), "", f"Wall time {fmt_seconds(wall)}.", ""]
    save_report(out, lines)
    print(f"wrote {out}", flush=True)


def describe(config: Path, teacher: dict[str, Any], transfer: int | None) -> str:
    """The setup of a ``--config`` run, from the config itself."""
    from distill.config import load_config

    cfg = load_config(config)
    assert cfg.teacher is not None and cfg.student is not None and cfg.teacher.model and cfg.student.model
    t, o = cfg.student.train, cfg.student.train.optimizer

    def arch(role: Any) -> str:
        return f"`{role.model.name}` {role.model.kwargs}"

    return (f"Teacher: {arch(cfg.teacher)}, trained on the whole training split (checkpoint of epoch "
            f"{teacher['epoch']}, test accuracy {100 * teacher['test_acc']:.2f}%). Student: {arch(cfg.student)}. "
            f"Transfer set: {transfer:,} training images (stratified). {cfg.distill.loss} at T = "
            f"{cfg.distill.temperature:g}, alpha = {cfg.distill.alpha:g} (1: no labels), {o.name} lr {o.lr:g}, "
            f"{t.schedule.name} schedule, clipping at {t.clip_grad_norm}, batch {t.batch_size} (config "
            f"`{config.relative_to(REPO) if config.is_relative_to(REPO) else config}`). Every run's checkpoint is "
            f"selected on {int(cfg.data.val_size):,} held-out validation images; test accuracy on the test set.")


def write_seeds_report(out: Path, results: list[dict[str, Any]], agg: dict[str, Any], modes: list[str], short: int,
                       long: int, setup: str, cmd: str, wall: float | str, loads: tuple[str, str],
                       plot_name: str | None) -> None:
    """The report of ``--seeds N``: mean ± sd per mode and schedule, the gains' intervals, per-seed accuracies,
    and the shape of the mean validation curves (does a mode still improve late in the long schedule?)."""
    curves = mean_curves(results)
    missing = [f"{r['mode']}, {r['epochs']} ep, seed {r['seed']}: {r['error']}" for r in results if "error" in r]
    lines = [f"# Function matching with {len(agg['seeds'])} seeds: teaching modes over a short and a long schedule",
             "", f"`{cmd}`", "", setup, "",
             f"Seeds {', '.join(map(str, agg['seeds']))} (the student's initial weights, data order and views; the "
             "teacher and the transfer set are fixed). Gains: each mode against the fixed teacher `fix/rs` on the "
             "same schedule, and each mode's long schedule against its short one.", "",
             format_seeds_table(agg), "", "Test accuracy per seed (%):", "", *per_seed_table(agg), ""]
    lines += [f"Mean validation curve of the {long}-epoch runs (the seeds' mean accuracy at each epoch):", "",
              f"| mode | at epoch {long // 10} | at {long // 4} | at {long // 2} | best (epoch) | at the end |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode in modes:
        c = curves.get((mode, long))
        if c is None:
            continue
        best = max(range(len(c)), key=c.__getitem__)
        lines.append(f"| {mode} | {100 * c[long // 10 - 1]:.2f}% | {100 * c[long // 4 - 1]:.2f}% | "
                     f"{100 * c[long // 2 - 1]:.2f}% | {100 * c[best]:.2f}% ({best + 1}) | {100 * c[-1]:.2f}% |")
    if missing:
        lines += ["", "Runs that failed (their mode and schedule are left out of the tables): " + "; ".join(missing)]
    lines += ["", f"![mean validation accuracy against epochs]({plot_name})" if plot_name else
              "(No plot: matplotlib is not installed where this ran.)", ""]
    lines += ["## Machine", "", machine_md(*loads), "",
              f"Wall time {fmt_seconds(wall) if isinstance(wall, (int, float)) else wall}.", ""]
    save_report(out, lines)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("2 and 4 epochs, results under /tmp/distill-fm-quick")
    p.add_run_root(REPO / "runs" / "benchmarks" / "function_matching").add_results()
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=100)
    p.add_argument("--modes", nargs="*", default=MODES, choices=MODES)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--teacher", type=Path, help="use this teacher checkpoint instead of training one")
    p.add_argument("--config", type=Path, default=CONFIG, help="the distill config of every run (default: %(default)s)")
    p.add_argument("--out-name", default="function_matching",
                   help="base name of the report, its data and plot under --results (default: %(default)s)")
    p.add_seeds()
    args = p.parse_args(argv)
    if args.quick:
        args.short, args.long = 2, 4
        args.run_root, args.results = Path("/tmp/distill-fm-quick"), Path("/tmp/distill-fm-quick/results")
    args.results.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), load_average()
    torch.set_num_threads(1)
    ckpt = args.teacher or train_teacher(args.run_root, args.quick, args.config)
    teacher = teacher_metrics(ckpt, args.config)
    if args.seeds > 1:
        return main_seeds(args, ckpt, teacher, t0, load0)
    jobs = [{"mode": m, "epochs": e, "run_dir": str(args.run_root / f"{m.replace('/', '_')}_{e}"),
             "config": str(args.config),
             "overrides": [f"distill.views.mode={m}", f"student.train.epochs={e}", f"teacher.checkpoint={ckpt}"]}
            for e in (args.long, args.short) for m in args.modes]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for r in pool.imap_unordered(run_one, jobs):
            print(f"{r['mode']:>10} {r['epochs']:>4} epochs: test {100 * r['test_acc']:.2f}% "
                  f"({r['wall_s']:.0f} s)", flush=True)
            results.append(r)
    save_json(args.results / "function_matching.json", results)
    sp = speed(ckpt, epochs=1 if args.quick else 2)
    plot(results, args.long, args.short, args.results / "function_matching.png")
    write_report(args.results / "function_matching.md", results, args.short, args.long, sp, teacher,
                 command_line(), time.perf_counter() - t0, (load0, load_average()))
    return 0


def run_guarded(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_one`, a failure recorded (``error``) instead of ending the other runs."""
    try:
        return run_one(job)
    except Exception as e:  # noqa: BLE001 - reported in the table's notes
        return {**job, "error": f"{type(e).__name__}: {e}", "wall_s": 0.0}


def main_seeds(args: Any, ckpt: Path, teacher: dict[str, Any], t0: float, load0: str) -> int:
    """``--seeds N``: every mode and schedule with seeds 0..N-1 (``--set seed=S``), the longest runs first; the runs
    finished so far are saved to ``<out-name>.json`` after each one, and a run that exists is resumed."""
    from distill.config import load_config

    seeds = list(range(args.seeds))
    jobs = [{"mode": m, "epochs": e, "seed": s, "config": str(args.config),
             "run_dir": str(args.run_root / f"{m.replace('/', '_')}_{e}_seed{s}"),
             "overrides": [f"distill.views.mode={m}", f"student.train.epochs={e}", f"teacher.checkpoint={ckpt}",
                           f"seed={s}"]}
            for e in (args.long, args.short) for s in seeds for m in args.modes]
    data_file = args.results / f"{args.out_name}.json"
    results: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(run_guarded, jobs):
            outcome = r["error"] if "error" in r else f"test {100 * r['test_acc']:.2f}%"
            print(f"{r['mode']:>10} {r['epochs']:>4} epochs seed {r['seed']}: {outcome} ({r['wall_s']:.0f} s)",
                  flush=True)
            results.append(r)
            save_json(data_file, results)
    done = [r for r in results if "error" not in r]
    agg = aggregate(done, args.modes, seeds, args.short, args.long)
    save_json(data_file, {"runs": results, "seeds": agg})
    plot_name: str | None = f"{args.out_name}.png"
    transfer = load_config(args.config).data.train_size
    try:
        plot(done, args.long, args.short, args.results / f"{args.out_name}.png",
             title=f"Teaching modes, mean of {len(seeds)} seeds ({transfer:,}-image transfer set)")
    except ModuleNotFoundError as e:  # matplotlib is optional: the report says so
        print(f"no plot: {e}", flush=True)
        plot_name = None
    write_seeds_report(args.results / f"{args.out_name}.md", results, agg, args.modes, args.short, args.long,
                       describe(args.config, teacher, transfer), command_line(), time.perf_counter() - t0,
                       (load0, load_average()), plot_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
