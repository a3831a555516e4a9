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
    REPO, BenchmarkParser, command_line, fmt_seconds, load_average, machine_md, resumable, save_json, save_report,
)

CONFIG = REPO / "benchmarks" / "configs" / "function_matching_fmnist.yaml"
MODES = ["fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch"]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One distillation run (in a worker process, one thread): test accuracy and the validation curve."""
    torch.set_num_threads(1)
    from distill.config import load_config
    from distill.recipes import run_recipe

    cfg = load_config(CONFIG, job["overrides"])
    run_dir = Path(job["run_dir"])
    t0 = time.perf_counter()
    res = run_recipe(cfg, run_dir=run_dir, resume=resumable(run_dir), progress=False)
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in curve if r["model"] == "distilled"]
    return {**job, "test_acc": res["models"]["distilled"]["test_acc"],
            "val_acc": [r["val/acc"] for r in curve], "train_time_s": [r["train_time_s"] for r in curve],
            "steps": curve[-1]["step"] if curve else 0, "wall_s": time.perf_counter() - t0}


def train_teacher(root: Path, quick: bool) -> Path:
    from distill.config import load_config
    from distill.recipes import run_recipe

    ckpt = root / "teacher" / "teacher" / "best.pt"
    if not ckpt.exists():
        over = ["recipe=teacher", "data.train_size=null"] + (["teacher.train.epochs=1"] if quick else [])
        run_recipe(load_config(CONFIG, over), run_dir=root / "teacher", resume=resumable(root / "teacher"))
    return ckpt


def teacher_metrics(ckpt: Path) -> dict[str, Any]:
    """The teacher's test accuracy and the epoch its checkpoint comes from."""
    from distill.checkpoint import build_model_from_checkpoint, load_checkpoint
    from distill.config import load_config
    from distill.engine import evaluate
    from distill.recipes.common import Run

    run = Run(load_config(CONFIG, [f"teacher.checkpoint={ckpt}"]), run_dir=Path("/tmp/distill-fm-teacher"),
              progress=False)
    model, _ = build_model_from_checkpoint(ckpt)
    epochs = load_checkpoint(ckpt).get("epoch")
    return {"test_acc": evaluate(model, run.data.test).accuracy, "epoch": epochs}


def speed(ckpt: Path, epochs: int = 2, repeats: int = 3) -> dict[str, float]:
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

    cfg = load_config(CONFIG, [f"teacher.checkpoint={ckpt}", f"student.train.epochs={epochs}"])
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


def plot(results: list[dict[str, Any]], long: int, short: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"fix": "--", "ind": ":", "same": "-", "funmatch": "-"}
    for r in sorted(results, key=lambda r: MODES.index(r["mode"])):
        if r["epochs"] != long:
            continue
        family = r["mode"].split("/")[0]
        ax.plot(range(1, len(r["val_acc"]) + 1), [100 * a for a in r["val_acc"]], styles.get(family, "-"),
                label=r["mode"], linewidth=2.2 if r["mode"] == "funmatch" else 1.2)
    for r in results:
        if r["epochs"] == short:
            ax.plot([short], [100 * r["val_acc"][-1]], "k.", markersize=4)
    ax.set_xlabel(f"epoch of the {long}-epoch schedule (dots: end of the {short}-epoch runs)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Teaching modes on Fashion-MNIST (2,000-image transfer set)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    low = min(100 * min(r["val_acc"][len(r["val_acc"]) // 10:]) for r in results if r["epochs"] == long)
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


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("2 and 4 epochs, results under /tmp/distill-fm-quick")
    p.add_run_root(REPO / "runs" / "benchmarks" / "function_matching").add_results()
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=100)
    p.add_argument("--modes", nargs="*", default=MODES, choices=MODES)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--teacher", type=Path, help="use this teacher checkpoint instead of training one")
    args = p.parse_args(argv)
    if args.quick:
        args.short, args.long = 2, 4
        args.run_root, args.results = Path("/tmp/distill-fm-quick"), Path("/tmp/distill-fm-quick/results")
    args.results.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), load_average()
    torch.set_num_threads(1)
    ckpt = args.teacher or train_teacher(args.run_root, args.quick)
    teacher = teacher_metrics(ckpt)
    jobs = [{"mode": m, "epochs": e, "run_dir": str(args.run_root / f"{m.replace('/', '_')}_{e}"),
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


if __name__ == "__main__":
    raise SystemExit(main())
