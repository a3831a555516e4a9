"""Every distillation method of ``distill.objectives.METHODS`` on one teacher-student pair of CNNs on
Fashion-MNIST, three seeds each, against the same student trained without a teacher.

Each run is one recipe run exactly as ``distill run`` runs it:

    distill run benchmarks/configs/methods_fmnist.yaml --set teacher.checkpoint=T --set seed=S <the method's --set>

with the method's overrides listed in the report (staged methods use ``distill.stages``). The
teacher is trained once (``--set recipe=teacher``) and every run reuses its checkpoint; runs go to
``--workers`` processes with one thread each. The report, ``benchmarks/results/methods_fmnist.md``,
has the mean and standard deviation of test accuracy per method, the command, wall time and machine.

    python benchmarks/methods_fmnist.py                   # all methods x 3 seeds (~30 min on 2 shared cores)
    python benchmarks/methods_fmnist.py --methods kd at crd --seeds 1
    python benchmarks/methods_fmnist.py --quick           # smoke test: 1 seed, 1 epoch, results under /tmp
    python benchmarks/methods_fmnist.py --report-only     # rewrite the report from the runs' directories
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shlex
import statistics
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

CONFIG = REPO / "benchmarks" / "configs" / "methods_fmnist.yaml"
STAGE1_EPOCHS = 2  # the method-only first stage of FitNets, AB, FSP and FT (RepDistiller: 30 of 240 epochs)


def _two_stages(first: str, second: str) -> str:
    return f"distill.stages=[{first}, {second}]"


_FIRST = f"epochs: {STAGE1_EPOCHS}, train: {{schedule: {{name: constant}}}}"  # RepDistiller's init stage: constant lr

# name -> (paper, overrides). Options are each method's reference defaults except where a comment says why.
RUNS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("no teacher: the student on hard labels", ["recipe=baseline"]),
    "kd": ("Hinton, Vinyals & Dean 2015", ["distill.method=kd"]),
    "logit_matching": ("Ba & Caruana 2014 (Hinton's T → ∞ limit)", ["distill.method=logit_matching"]),
    "dkd": ("Zhao et al., CVPR 2022", ["distill.method=dkd", "distill.options.warmup_epochs=1"]),  # 20 of 240 epochs
    "dist": ("Huang et al., NeurIPS 2022", ["distill.method=dist"]),
    "standardized_kd": ("Sun et al., CVPR 2024", ["distill.method=standardized_kd"]),
    "fitnets": ("Romero et al., ICLR 2015 (2 stages)", [_two_stages(
        "{method: fitnets, options: {hint_only: true}, trainable: [stages.0, stages.1], " + _FIRST + "}",
        "{method: kd}")]),
    "at": ("Zagoruyko & Komodakis, ICLR 2017", ["distill.method=at", "distill.options.weight=200"]),  # 1000: 32x32
    "sp": ("Tung & Mori, ICCV 2019", ["distill.method=sp"]),
    "cc": ("Peng et al., ICCV 2019", ["distill.method=cc"]),
    "vid": ("Ahn et al., CVPR 2019", ["distill.method=vid"]),
    "rkd": ("Park et al., CVPR 2019", ["distill.method=rkd"]),
    "pkt": ("Passalis & Tefas, ECCV 2018", ["distill.method=pkt"]),
    "ab": ("Heo et al., AAAI 2019 (2 stages)", [_two_stages(
        "{method: ab, options: {ce_weight: 0}, " + _FIRST + "}", "{method: ce}")]),
    "ft": ("Kim, Park & Kwak, NeurIPS 2018 (2 stages)", [_two_stages(  # lr 0.05 diverges (RepDistiller: 0.01)
        "{method: ft_paraphraser, trainable: objective, epochs: 2, train: {optimizer: {lr: 0.01}, schedule: "
        "{name: constant}}}", "{method: ft}")]),
    "fsp": ("Yim et al., CVPR 2017 (2 stages)", [_two_stages(
        "{method: fsp, options: {ce_weight: 0}, " + _FIRST + "}", "{method: ce}")]),
    "nst": ("Huang & Wang, arXiv 2017", ["distill.method=nst"]),
    "crd": ("Tian, Krishnan & Isola, ICLR 2020", ["distill.method=crd", "distill.options.nce_k=256"]),  # 16384: CPU
    "reviewkd": ("Chen et al., CVPR 2021", ["distill.method=reviewkd", "distill.options.warmup_epochs=1"]),
    "simkd": ("Chen et al., CVPR 2022", ["distill.method=simkd"]),
}

NOTES = {
    "dkd": "warm-up 1 epoch (mdistiller: 20 of 240)",
    "reviewkd": "warm-up 1 epoch (mdistiller: 20 of 240)",
    "at": "weight 200 (1000 is for CIFAR's 32/16/8 maps; the term grows as 1/HW, maps here are 14/7/3)",
    "crd": "256 negatives per example (RepDistiller: 16,384 of 50,000; too slow on a CPU)",
    "fitnets": f"stage 1: hint only, stages.0-1 + regressor, {STAGE1_EPOCHS} epochs; stage 2: KD",
    "ab": f"stage 1: AB alone, {STAGE1_EPOCHS} epochs; stage 2: CE",
    "fsp": f"stage 1: FSP alone, {STAGE1_EPOCHS} epochs; stage 2: CE",
    "ft": f"stage 1: paraphraser, {STAGE1_EPOCHS} epochs at lr 0.01 (0.05 diverged); stage 2: CE + FT",
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run (in a worker process, one thread): the student's test accuracy and agreement with the teacher."""
    torch.set_num_threads(1)
    import distill.report
    from distill.config import load_config
    from distill.engine import NonFiniteLossError
    from distill.recipes import run_recipe

    distill.report.latency_per_1000 = lambda *args, **kwargs: float("nan")  # not reported here: saves ~10 s a run
    t0 = time.perf_counter()
    try:
        results = run_recipe(load_config(CONFIG, job["overrides"]), run_dir=Path(job["run_dir"]),
                             resume=resumable(Path(job["run_dir"])), progress=False)
    except NonFiniteLossError as e:  # reported as such, the other runs go on
        return {**job, "error": str(e).split(";")[0], "wall_s": time.perf_counter() - t0}
    row = results["models"]["baseline" if job["method"] == "baseline" else "distilled"]
    return {**job, "test_acc": row["test_acc"], "agreement": row["agreement"], "params": row["params"],
            "wall_s": time.perf_counter() - t0}


def train_teacher(root: Path, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """The teacher, trained once (resumed if interrupted), and its test row."""
    torch.set_num_threads(2)
    from distill.config import load_config
    from distill.recipes import run_recipe

    results = run_recipe(load_config(CONFIG, ["recipe=teacher", *overrides]), run_dir=root / "teacher",
                         resume=resumable(root / "teacher"), progress=False)
    return root / "teacher" / "teacher" / "best.pt", results["models"]["teacher"]


def train_seconds(run_dir: str | Path) -> float:
    """Seconds the student spent in its training epochs (validation included), from metrics.jsonl: the
    same whether or not the run was resumed."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["time_s"] for r in records if r["model"] != "teacher")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for name in RUNS:
        mine = sorted((r for r in runs if r["method"] == name and "error" not in r), key=lambda r: r["seed"])
        if not mine:
            continue
        accs = [r["test_acc"] for r in mine]
        agree = [r["agreement"] for r in mine if r["agreement"] is not None]
        by[name] = {"accs": accs, "mean": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
                    "agreement": statistics.mean(agree) if agree else None,
                    "train_s": statistics.mean(train_seconds(r["run_dir"]) for r in mine), "params": mine[0]["params"]}
    return by


def write_report(out: Path, runs: list[dict[str, Any]], teacher: dict[str, Any], ckpt: Path, seeds: list[int],
                 epochs: int, train_size: int, cmd: str, wall: float | None, loads: tuple[str, str]) -> None:
    by = summarize(runs)
    base = by.get("baseline", {}).get("mean")
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}"  # noqa: E731
    lines = [
        "# The method zoo on Fashion-MNIST", "",
        f"Teacher CNN 16-32-64 ({teacher['params']:,} parameters, test accuracy {pct(teacher['test_acc'])}%) → "
        f"student CNN 4-8-16 ({by[next(iter(by))]['params']:,} parameters), distilled on a stratified "
        f"{train_size:,}-image subset of the training set for {epochs} epochs (SGD + Nesterov, lr 0.05, cosine, "
        f"batch 128), the subset the teacher was trained on; 5,000 held-out training images for validation, the "
        f"10,000 test images for the table. Seeds "
        f"{', '.join(map(str, seeds))} (initial weights and batch order; the data subset and the teacher are "
        f"fixed). Mean ± sample standard deviation of test accuracy over the seeds.", "",
        f"Command: `{cmd}`", "",
        "| method | paper | test acc. % (mean ± sd) | Δ vs. no teacher | per seed | agreement w/ teacher % "
        "| training s / run |", "|---|---|---|---|---|---|---|",
    ]
    for name, s in by.items():
        delta = "-" if base is None or name == "baseline" else f"{100 * (s['mean'] - base):+.2f}"
        per_seed = " / ".join(f"{100 * a:.2f}" for a in s["accs"])
        sd = "" if len(s["accs"]) < 2 else f" ± {100 * s['std']:.2f}"
        lines.append(f"| {name} | {RUNS[name][0]} | {100 * s['mean']:.2f}{sd} | {delta} | "
                     f"{per_seed} | {pct(s['agreement'])} | {s['train_s']:.0f} |")
    failed = [r for r in runs if "error" in r]
    if failed:
        lines += ["", "Runs that diverged (left out of the table): " + "; ".join(
            f"{r['method']} seed {r['seed']}: {r['error']}" for r in failed) + "."]
    lines += ["", "## Settings per method", "",
              "Each row's runs are `distill run benchmarks/configs/methods_fmnist.yaml "
              f"--set teacher.checkpoint={ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt} "
              "--set seed=S` plus:", ""]
    for name in by:
        extra = f" ({NOTES[name]})" if name in NOTES else ""
        lines.append(f"- {name}: `{' '.join('--set ' + shlex.quote(o) for o in RUNS[name][1])}`{extra}")
    timing = (f"Wall time {fmt_seconds(wall)} (teacher included)" if wall is not None else
              "Wall time not measured: `--report-only` rewrote this report from the run directories")
    lines += ["", "## Machine", "", machine_md(*loads), "", f"{timing}; {len(runs)} runs.", ""]
    save_report(out, lines)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("1 seed, 1 epoch (teacher 2), results under /tmp")
    p.add_run_root(REPO / "runs" / "benchmarks" / "methods_fmnist").add_results()
    p.add_argument("--methods", nargs="*", default=list(RUNS), choices=list(RUNS), metavar="METHOD")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --run-root/runs.json")
    args = p.parse_args(argv)
    quick = ["train.epochs=1", "teacher.train.epochs=2"] if args.quick else []
    if args.quick:
        args.seeds, args.run_root = 1, Path("/tmp/distill-methods-quick")
        args.results = args.run_root
    from distill.config import load_config

    cfg = load_config(CONFIG, quick)
    if args.report_only:
        runs = json.loads((args.run_root / "runs.json").read_text())
        teacher = json.loads((args.run_root / "teacher" / "results.json").read_text())["models"]["teacher"]
        seeds = sorted({r["seed"] for r in runs})
        ckpt = args.run_root / "teacher" / "teacher" / "best.pt"
        write_report(args.results / "methods_fmnist.md", runs, teacher, ckpt, seeds, cfg.student.train.epochs,
                     cfg.data.train_size, f"{command_line().replace(' --report-only', '')}`; report rewritten by "
                     f"`{command_line()}", None, ("not recorded", "not recorded"))
        return 0
    t0, load0 = time.perf_counter(), load_average()
    ckpt, teacher = train_teacher(args.run_root, quick)
    print(f"teacher: test accuracy {100 * teacher['test_acc']:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    seeds = list(range(args.seeds))
    staged = [m for m in args.methods if m in ("fitnets", "ab", "fsp", "ft")]  # the longest runs first
    order = staged + [m for m in args.methods if m not in staged]
    jobs = [{"method": m, "seed": s, "run_dir": str(args.run_root / f"{m}_seed{s}"),
             "overrides": [*quick, f"teacher.checkpoint={ckpt}", f"seed={s}", *RUNS[m][1]]}
            for m in order for s in seeds]
    runs = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(run_one, jobs):
            outcome = r["error"] if "error" in r else f"test {100 * r['test_acc']:.2f}%"
            print(f"{r['method']:>16} seed {r['seed']}: {outcome} ({r['wall_s']:.0f} s)", flush=True)
            runs.append(r)
    save_json(args.run_root / "runs.json", runs)
    write_report(args.results / "methods_fmnist.md", runs, teacher, ckpt, seeds, cfg.student.train.epochs,
                 cfg.data.train_size, command_line(), time.perf_counter() - t0, (load0, load_average()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
