"""Hinton, Vinyals & Dean (2015), section 3 (MNIST), transposed to Fashion-MNIST.

Teacher: MLP 784-1200-1200-10 with dropout (0.5 hidden, 0.2 input) and +-2 pixel jitter.
Baseline: MLP 784-800-800-10 on hard labels, no regularization.
Distilled: the same student (same initial weights, same schedule), KD at T=20.

The experiment is the ``compare`` config ``benchmarks/configs/hinton_fmnist.yaml`` run through
``distill.recipes.run_recipe``, i.e. exactly what ``distill run benchmarks/configs/hinton_fmnist.yaml``
does; this script only adds epoch overrides and writes ``benchmarks/results/hinton_mnist.md``
(test errors out of 10,000 beside the paper's MNIST numbers, the fraction of the
baseline->teacher error gap that distillation closes, command, wall time, machine).

    python benchmarks/hinton_mnist.py                      # the full benchmark (~35 min, 2 shared CPU cores)
    python benchmarks/hinton_mnist.py --quick              # smoke test (1-4 minutes)
    python benchmarks/hinton_mnist.py --epochs-teacher 60 --epochs-student 40
    # another temperature, reusing the trained teacher (only the two students are trained, ~10 min):
    python benchmarks/hinton_mnist.py --set distill.temperature=4 \
        --set teacher.checkpoint=runs/benchmarks/hinton_fmnist/teacher/best.pt \
        --run-dir runs/benchmarks/hinton_fmnist-T4 --out benchmarks/results/hinton_mnist_T4.md
    python benchmarks/hinton_mnist.py --report-only        # rewrite the report of a finished run
    # a CNN teacher much stronger than the MLP student, three seeds (each seed: its own teacher and students,
    # as `distill run --seeds 3`): mean ± sd and the gain's paired bootstrap interval
    python benchmarks/hinton_mnist.py --config configs/digits_kd.yaml --seeds 3 --out /tmp/digits.md
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# On a shared machine, OpenMP worker threads that spin while waiting make a 2-thread torch process
# up to ~20x slower as soon as another process wants the cores; sleeping waits avoid that. Must be
# set before torch (and its OpenMP runtime) is loaded; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO, BenchmarkParser, command_line, fmt_seconds, load_average, machine, machine_md, per_seed_table, save_json,
    save_report,
)

from distill.config import Config, load_config  # noqa: E402
from distill.recipes import run_recipe  # noqa: E402
from distill.recipes.seeds import format_seeds_table, run_seeds  # noqa: E402

DEFAULT_CONFIG = REPO / "benchmarks" / "configs" / "hinton_fmnist.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "hinton_mnist.md"

# Hinton et al. (2015), section 3, MNIST test errors (out of 10,000).
PAPER = {"teacher": 67, "baseline": 146, "distilled": 74}
GAP_TARGET = 0.5


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def gap_closed(errors: dict[str, int]) -> float | None:
    """Fraction of the baseline->teacher error gap closed by distillation (1 = teacher's errors)."""
    gap = errors["baseline"] - errors["teacher"]
    if gap <= 0:
        return None
    return (errors["baseline"] - errors["distilled"]) / gap


def read_metrics(path: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out.setdefault(rec["model"], []).append(rec)
    return out


def test_correctness(cfg: Config, run_dir: Path) -> dict[str, torch.Tensor]:
    """Per-example correctness on the test set of the three models' selected checkpoints."""
    from distill.checkpoint import build_model_from_checkpoint
    from distill.data import load_dataset, make_splits
    from distill.engine import predict_logits

    d = cfg.data
    raw = load_dataset(d.name, d.path)
    data = make_splits(raw, val_size=d.val_size if d.val_size < 1 else int(d.val_size), split_seed=d.split_seed,
                       normalize=d.normalize)
    assert cfg.teacher is not None
    paths = {tag: run_dir / tag / "best.pt" for tag in ("teacher", "baseline", "distilled")}
    if cfg.teacher.checkpoint is not None:
        paths["teacher"] = Path(cfg.teacher.checkpoint)
    out = {}
    for tag, path in paths.items():
        model, _ = build_model_from_checkpoint(path)
        out[tag] = predict_logits(model, data.test.x).argmax(-1) == data.test.y
    return out


def bootstrap_gap(correct: dict[str, torch.Tensor], resamples: int = 2000, seed: int = 0) -> str:
    """Paired bootstrap over test examples: 95% intervals of the error differences and the gap fraction."""
    wrong = torch.stack([~correct[k] for k in ("teacher", "baseline", "distilled")]).to(torch.int32)
    n = wrong.shape[1]
    g = torch.Generator().manual_seed(seed)
    errs = []
    for start in range(0, resamples, 100):
        idx = torch.randint(0, n, (min(100, resamples - start), n), generator=g)
        errs.append(wrong[:, idx].sum(-1).T)  # (chunk, 3)
    e = torch.cat(errs).double()
    et, eb, ed = e[:, 0], e[:, 1], e[:, 2]
    gap, gain = eb - et, eb - ed
    valid = gap > 0
    frac = gain[valid] / gap[valid]

    def ci(x: torch.Tensor) -> str:
        lo, hi = torch.quantile(x, torch.tensor([0.025, 0.975], dtype=x.dtype)).tolist()
        return f"[{lo:.2f}, {hi:.2f}]" if x.abs().max() < 100 else f"[{lo:.0f}, {hi:.0f}]"

    w = wrong.bool()
    b_only, d_only = int((w[1] & ~w[2]).sum()), int((w[2] & ~w[1]).sum())
    t_only, bt_only = int((w[0] & ~w[1]).sum()), int((w[1] & ~w[0]).sum())
    lines = [
        f"**Uncertainty** (paired bootstrap over the {n:,} test images, {resamples} resamples): "
        f"baseline − teacher errors 95% interval {ci(gap)}; baseline − distilled {ci(gain)}; "
        f"gap fraction {ci(frac) if valid.sum() > 0.9 * len(gap) else 'undefined (no gap in many resamples)'}"
        f"{'' if valid.all() else f' (gap ≤ 0 in {int((~valid).sum())} resamples, left out)'}. "
        f"Test images only the baseline gets wrong: {b_only}, only the distilled student: {d_only}; "
        f"only the teacher: {t_only}, only the baseline (vs. teacher): {bt_only}."]
    return "".join(lines)


def describe_config(cfg: Config) -> list[str]:
    assert cfg.teacher is not None and cfg.student is not None
    lines = []
    for role_name, role in (("teacher", cfg.teacher), ("student", cfg.student)):
        t = role.train
        model = f"`{role.model.name}` {role.model.kwargs}" if role.model is not None else "(from checkpoint)"
        opt = t.optimizer
        opt_txt = (f"{opt.name} lr {opt.lr}" + (f" momentum {opt.momentum}{' nesterov' if opt.nesterov else ''}"
                                               if opt.name == "sgd" else f" betas {opt.betas}")
                   + f", weight decay {opt.weight_decay}")
        ckpt = f", weights from `{role.checkpoint}`" if role.checkpoint else ""
        if role_name == "teacher" and role.checkpoint:  # its training settings are those of the run that made it
            lines.append(f"- teacher: {model}{ckpt} (trained by another run; measured here, not trained)")
            continue
        lines.append(f"- {role_name}: {model}{ckpt}; {t.epochs} epochs, batch {t.batch_size}, {opt_txt}, "
                     f"{t.schedule.name} schedule, jitter ±{t.augment.shift} px")
    d = cfg.distill
    lines.append(f"- distillation: `{d.loss}`, T = {d.temperature}, alpha = {d.alpha} "
                 f"(loss = {d.alpha} · T² · KL(p_teacher^T ‖ p_student^T) + {1 - d.alpha:.2g} · CE(labels))")
    held = (f"{int(cfg.data.val_size)} of the 60,000 training images" if cfg.data.name == "fashion-mnist"
            and cfg.data.val_size >= 1 else f"{cfg.data.val_size:g} of the training examples")
    subset = (f"; the students' training set (and transfer set) is a stratified subset of {cfg.data.train_size:,} "
              "of the rest" if cfg.data.train_size is not None else "")
    lines.append(f"- data: {cfg.data.name}, {held} held out for validation (split_seed {cfg.data.split_seed})"
                 f"{subset}; each model's checkpoint is chosen by validation, the test set is used only for the "
                 f"final numbers; seed {cfg.seed}")
    return lines


def write_report(out: Path, cfg: Config, results: dict[str, Any], metrics: dict[str, list[dict[str, Any]]],
                 wall: float, load_start: str, load_end: str, quick: bool, run_dir: Path,
                 uncertainty: str = "", command: str = "") -> float | None:
    rows = results["models"]
    errors = {k: int(rows[k]["test_errors"]) for k in ("teacher", "baseline", "distilled")}
    frac = gap_closed(errors)
    paper_frac = gap_closed(PAPER)
    n_test = rows["teacher"]["n_test"]

    assert cfg.teacher is not None
    shift = cfg.teacher.train.augment.shift
    jitter = f", ±{shift} px jitter" if shift else ", no jitter"
    lines = [f"# Hinton et al. (2015) §3 on Fashion-MNIST{' (QUICK smoke run: not a result)' if quick else ''}", ""]
    lines += [f"Teacher MLP 784-1200-1200-10 (dropout 0.5 hidden / 0.2 input{jitter}); "
              "student MLP 784-800-800-10 without regularization trained on hard labels (baseline) and "
              f"distilled from the teacher at T={cfg.distill.temperature:g} (same initial weights and schedule). "
              f"Test errors out of {n_test:,}; the paper's numbers are on MNIST, which is much easier than "
              "Fashion-MNIST, so compare the *pattern* (how much of the baseline→teacher gap distillation "
              "closes), not the error counts.", ""]
    lines += ["| model | params | test errors | test acc | agreement with teacher | test NLL | best epoch (val acc) "
              "| train time | paper (MNIST) errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tag in ("teacher", "baseline", "distilled"):
        r = rows[tag]
        hist = metrics.get(tag, [])
        best = max(hist, key=lambda h: (h["val/acc"], -h["val/nll"])) if hist else None
        best_txt = f"{best['epoch']}/{len(hist)} ({100 * best['val/acc']:.2f}%)" if best else "(given checkpoint)"
        train_txt = f"{sum(h['time_s'] for h in hist):.0f} s" if hist else "— (not trained here)"
        agree = "—" if tag == "teacher" else f"{100 * r['agreement']:.2f}%"
        lines.append(f"| {tag} | {r['params'] / 1e6:.2f}M | **{r['test_errors']}** | {100 * r['test_acc']:.2f}% | "
                     f"{agree} | {r['test_nll']:.4f} | {best_txt} | {train_txt} | {PAPER[tag]} |")
    lines.append("")
    if frac is None:
        lines.append(f"**Gap closed: undefined** — the baseline student ({errors['baseline']} errors) is not worse "
                     f"than the teacher ({errors['teacher']}), so there is no gap to close. Target ≥ {GAP_TARGET} "
                     f"**not met**.")
    else:
        verdict = "met" if frac >= GAP_TARGET else "**NOT met**"
        lines.append(f"**Gap closed by distillation: {frac:.2f}** = (baseline − distilled) / (baseline − teacher) = "
                     f"({errors['baseline']} − {errors['distilled']}) / ({errors['baseline']} − {errors['teacher']}); "
                     f"paper on MNIST: ({PAPER['baseline']} − {PAPER['distilled']}) / "
                     f"({PAPER['baseline']} − {PAPER['teacher']}) = {paper_frac:.2f}. "
                     f"Target ≥ {GAP_TARGET}: {verdict}.")
    lines.append("")
    if uncertainty:
        lines += [uncertainty, ""]
    lines += ["## Setup", ""] + describe_config(cfg) + [""]
    lines += ["## How it was run", "", "```", command or command_line(), "```", "",
              f"Equivalent: `distill run benchmarks/configs/hinton_fmnist.yaml` (plus the same overrides as `--set`). "
              f"Run directory (checkpoints, metrics.jsonl, results.json): `{_rel(run_dir)}`.", "",
              f"- wall time: {fmt_seconds(wall)} (recipe's own count: {fmt_seconds(results['wall_time_s'])}), "
              f"device {results['device']}",
              machine_md(load_start, load_end), ""]
    save_report(out, lines)
    return frac


def model_name(role: Any) -> str:
    """``cnn [32, 64, 128]``-style name of a role's model (or where its weights come from)."""
    if role.model is None:
        return f"(checkpoint {role.checkpoint})"
    kw = role.model.kwargs
    shape = kw.get("channels", kw.get("hidden"))
    return f"{role.model.name} {shape}" if shape is not None else role.model.name


def write_seeds_report(out: Path, cfg: Config, results: dict[str, Any], per_seed: list[dict[str, Any]],
                       wall: float, load_start: str, load_end: str, run_dir: Path, command: str) -> list[float | None]:
    """The report of ``--seeds N``: :func:`distill.recipes.seeds.format_seeds_table` (mean ± sd, the gain's paired
    bootstrap interval), test errors of each seed, and the fraction of the baseline->teacher gap closed per seed.
    ``per_seed``: each seed's ``results.json``. Returns the gap fractions, one per seed."""
    assert cfg.teacher is not None and cfg.student is not None
    seeds = results["seeds"]
    n_test = per_seed[0]["models"]["baseline"]["n_test"]
    errors = [{tag: int(r["models"][tag]["test_errors"]) for tag in ("teacher", "baseline", "distilled")}
              for r in per_seed]
    fracs = [gap_closed(e) for e in errors]
    mean_err = {tag: sum(e[tag] for e in errors) / len(errors) for tag in ("teacher", "baseline", "distilled")}
    lines = [f"# Hinton et al. (2015) §3 on {cfg.data.name}: {model_name(cfg.teacher)} teacher → "
             f"{model_name(cfg.student)} student, {len(seeds)} seeds", ""]
    fixed = (f"one teacher for every seed (`{cfg.teacher.checkpoint}`)" if cfg.teacher.checkpoint else
             "its own teacher per seed")
    lines += [f"Seeds {', '.join(map(str, seeds))}: each seed is a complete run (`distill run --seeds`: the "
              f"seed sets the initial weights, data order and augmentation; the data split stays), with {fixed}; "
              f"the baseline and distilled students of a seed start from the same weights. Test set: {n_test:,} "
              "examples. The paper (MNIST): teacher 67, baseline 146, distilled 74 test errors.", ""]
    lines += [format_seeds_table(results), ""]
    lines += [f"Test errors out of {n_test:,} per seed:", ""]
    lines += ["| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | paper (MNIST) |",
              "|---|" + "---:|" * (len(seeds) + 2)]
    for tag in ("teacher", "baseline", "distilled"):
        lines.append(f"| {tag} | " + " | ".join(str(e[tag]) for e in errors) + f" | {mean_err[tag]:.1f} | "
                     f"{PAPER[tag]} |")
    ratio = [e["teacher"] / e["baseline"] if e["baseline"] else None for e in errors]
    lines.append("| teacher / baseline errors | " + " | ".join("-" if r is None else f"{r:.2f}" for r in ratio)
                 + f" | {mean_err['teacher'] / mean_err['baseline']:.2f} | "
                 f"{PAPER['teacher'] / PAPER['baseline']:.2f} |")
    lines.append("| gap closed (baseline − distilled) / (baseline − teacher) | "
                 + " | ".join("undefined" if f is None else f"{f:.2f}" for f in fracs)
                 + f" | {_fmt_frac(gap_closed({k: v for k, v in mean_err.items()}))} | {gap_closed(PAPER):.2f} |")
    lines += ["", "Accuracy per seed (%):", "", *per_seed_table(results), ""]
    lines += ["## Setup", ""] + describe_config(cfg) + [""]
    lines += ["## How it was run", "", "```", command, "```", "",
              f"Per-seed runs (checkpoints, metrics.jsonl, results.json, test_predictions.npz) and the aggregate "
              f"results.json: `{_rel(run_dir)}`.", "",
              f"- wall time: {fmt_seconds(wall)}", machine_md(load_start, load_end), ""]
    save_report(out, lines)
    return fracs


def _fmt_frac(f: float | None) -> str:
    return "undefined" if f is None else f"{f:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("smoke version: 3 teacher / 2 student epochs")
    p.add_out(None, f"Markdown report (default: {DEFAULT_OUT.relative_to(REPO)}; with --quick: "
              "results/hinton_mnist_quick.md)")
    p.add_overrides().add_threads().add_seeds()
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="compare config (default: %(default)s)")
    p.add_argument("--epochs-teacher", type=int, help="teacher epochs (default: the config's)")
    p.add_argument("--epochs-student", type=int, help="epochs of each student (default: the config's)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory (default: runs/benchmarks/<config name>[-quick]); overwritten")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: rewrite the report from --run-dir's results.json and benchmark.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    t_epochs, s_epochs = args.epochs_teacher, args.epochs_student
    if args.quick:
        t_epochs = t_epochs if t_epochs is not None else 3
        s_epochs = s_epochs if s_epochs is not None else 2
    if t_epochs is not None:
        overrides.append(f"teacher.train.epochs={t_epochs}")
    if s_epochs is not None:
        overrides.append(f"student.train.epochs={s_epochs}")
    cfg = load_config(args.config, overrides)
    out = args.out or (DEFAULT_OUT.with_name("hinton_mnist_quick.md") if args.quick else DEFAULT_OUT)
    run_dir = args.run_dir or REPO / "runs" / "benchmarks" / (cfg.name + ("-quick" if args.quick else ""))

    sidecar = Path(run_dir) / "benchmark.json"
    if args.seeds > 1:
        return main_seeds(args, cfg, out, Path(run_dir), sidecar)
    if args.report_only:
        results = json.loads((Path(run_dir) / "results.json").read_text())
        info = json.loads(sidecar.read_text())
        wall, load_start, load_end, command = info["wall_s"], info["load_start"], info["load_end"], info["command"]
    else:
        load_start = load_average()
        command = command_line()
        print(f"config {args.config} overrides {overrides} -> run dir {run_dir}", file=sys.stderr, flush=True)
        print(f"machine {machine()}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = run_recipe(cfg, run_dir=run_dir, resume=args.resume, progress=True)
        wall = time.perf_counter() - t0
        load_end = load_average()
        save_json(sidecar, {"wall_s": wall, "load_start": load_start, "load_end": load_end, "command": command,
                            "machine": machine()}, indent=2, end="\n")
    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    try:
        uncertainty = bootstrap_gap(test_correctness(cfg, Path(run_dir)))
    except Exception as e:  # the report is still worth writing without the intervals
        uncertainty = f"(bootstrap intervals unavailable: {type(e).__name__}: {e})"
    frac = write_report(out, cfg, results, metrics, wall, load_start, load_end, args.quick, Path(run_dir),
                        uncertainty, command)
    print(out.read_text())
    print(f"wrote {out}; gap closed {frac if frac is None else round(frac, 3)}; wall {wall:.0f} s",
          file=sys.stderr, flush=True)
    return 0


def main_seeds(args: Any, cfg: Config, out: Path, run_dir: Path, sidecar: Path) -> int:
    """``--seeds N``: :func:`distill.recipes.seeds.run_seeds` (each seed a complete run in ``run_dir/seed<s>``),
    then :func:`write_seeds_report`."""
    if args.report_only:
        results = json.loads((run_dir / "results.json").read_text())
        info = json.loads(sidecar.read_text())
        wall, load_start, load_end, command = info["wall_s"], info["load_start"], info["load_end"], info["command"]
    else:
        load_start = load_average()
        threads = os.environ.get("OMP_NUM_THREADS")
        command = (f"OMP_NUM_THREADS={threads} " if threads else "") + command_line()
        print(f"config {args.config} seeds {args.seeds} -> run dir {run_dir}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = run_seeds(cfg, args.seeds, run_dir=run_dir, resume=args.resume, progress=True)
        wall = time.perf_counter() - t0
        load_end = load_average()
        save_json(sidecar, {"wall_s": wall, "load_start": load_start, "load_end": load_end, "command": command,
                            "machine": machine()}, indent=2, end="\n")
    per_seed = [json.loads(Path(p).read_text()) for p in results["per_seed_results"]]
    fracs = write_seeds_report(out, cfg, results, per_seed, wall, load_start, load_end, run_dir, command)
    print(out.read_text())
    print(f"wrote {out}; gap closed per seed {fracs}; wall {wall:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
