"""Which recipe should ``distill run`` use when the config names no method? Evidence over many small datasets.

Per dataset and seed the teacher (an architecture clearly stronger than the student) is trained once
(``recipe=teacher``); then, from that checkpoint, the student is trained alone (``recipe=baseline``: the
same epochs, optimizer and augmentation) and distilled by each candidate (``recipe=distill``), every run
exactly as ``distill run`` runs it. The baseline and the distilled students start from the same initial
weights (the recipes' student seed), so the gains are paired; each gain gets the paired bootstrap
interval of :func:`distill.metrics.paired_bootstrap` over seeds and test examples.

Datasets (all on this machine, none downloaded): scikit-learn's digits (embedded), a 500-image
Fashion-MNIST subset (``apt-get install dataset-fashion-mnist``), a 1,000-image one exported as PNG files
(``imagefolder``), scikit-learn's breast cancer, wine and iris tables (``npz``, standardized with the
training split's statistics), and 1-D signals generated with ``scipy.signal`` (six waveforms, random
frequency, phase and noise; ``npz`` of shape (N, 1, 1, L)).

Candidates (``ARMS``): KD at the documented defaults (T 4, alpha 0.9), KL on the teacher only (alpha 1),
and KL with both models seeing the same mixup of each batch (``distill.views.mode=mixup``: function
matching's consistency without crops, which applies to any input).

    python benchmarks/default_recipe.py                       # everything, 3 seeds (~60 min on 2 heavily shared cores)
    python benchmarks/default_recipe.py --datasets digits iris --seeds 1
    python benchmarks/default_recipe.py --report-only         # rewrite the report from the runs' directories
    python benchmarks/default_recipe.py --quick               # smoke test: 1 seed, 1 epoch, under /tmp
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO, BenchmarkParser, fmt_seconds, how_it_was_run, load_average, resumable, save_json, save_report,
)

from distill.config import load_config  # noqa: E402
from distill.metrics import paired_bootstrap, spread  # noqa: E402
from distill.recipes import run_recipe  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
SGD = "{name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}"
COMMON = ["train.batch_size=64", f"train.optimizer={SGD}", "train.schedule={name: cosine, warmup_epochs: 2}",
          "report.latency=false", "train.channels_last=false"]

# name -> (what, overrides of the distilled student's run)
ARMS: dict[str, tuple[str, list[str]]] = {
    "kd": ("KD at the documented defaults (T 4, alpha 0.9)", ["distill.temperature=4", "distill.alpha=0.9"]),
    "kl": ("KL to the teacher only (T 4, alpha 1)", ["distill.temperature=4", "distill.alpha=1"]),
    "mixup_kl": ("KL only (T 4, alpha 1), both models see the same mixup of each batch",
                 ["distill.temperature=4", "distill.alpha=1", "distill.views.mode=mixup"]),
}


def _tabular(name: str, out: Path) -> str:
    """A scikit-learn table as an npz file: a stratified 70/30 split (seed 0), standardized with the
    training split's mean and sd."""
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    x, y = getattr(skd, f"load_{name}")(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    mean, sd = xtr.mean(0), xtr.std(0) + 1e-8
    path = out / f"{name}.npz"
    if path.exists():
        return str(path)
    np.savez(path, x_train=((xtr - mean) / sd).astype(np.float32), y_train=ytr,
             x_test=((xte - mean) / sd).astype(np.float32), y_test=yte)
    return str(path)


def _signals(out: Path, n_train: int = 600, n_test: int = 1500, length: int = 128) -> str:
    """Six waveforms of ``scipy.signal`` (sine, square, sawtooth, triangle, chirp, Gaussian pulse train),
    each with a random frequency, phase and amplitude, in Gaussian noise (sd 0.8)."""
    from scipy import signal

    path = out / "signals.npz"
    if path.exists():
        return str(path)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, length, endpoint=False)

    def one(k: int) -> np.ndarray:
        f, phase, amp = rng.uniform(3, 8), rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.4)
        arg = 2 * np.pi * f * t + phase
        wave = [np.sin(arg), signal.square(arg), signal.sawtooth(arg), signal.sawtooth(arg, 0.5),
                signal.chirp(t, f0=f / 2, t1=1, f1=2 * f, phi=np.degrees(phase)),
                signal.gausspulse((t * f + phase / (2 * np.pi)) % 1 - 0.5, fc=6)][k]
        return amp * wave + rng.normal(0, 0.8, length)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 6
        return np.stack([one(int(k)) for k in y]).astype(np.float32)[:, None, None, :], y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


def _fmnist_images(out: Path, n_train: int = 1000, n_test: int = 2000) -> str:
    """A stratified Fashion-MNIST subset written as PNG files: DIR/train/<class>/*.png, DIR/test/<class>/*.png."""
    from PIL import Image

    from distill.data.sources import load_dataset

    raw = load_dataset("fashion-mnist", FMNIST)
    root = out / "fmnist_png"
    if (root / "done").exists():
        return str(root)
    rng = np.random.default_rng(0)
    for split, x, y, n in (("train", raw.train_x, raw.train_y, n_train), ("test", raw.test_x, raw.test_y, n_test)):
        keep = np.sort(rng.permutation(len(y))[:n])
        for i in keep:
            d = root / split / raw.class_names[int(y[i])].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            pixels = (x[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(d / f"{i}.png")
    (root / "done").write_text("")
    return str(root)


def datasets(data_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> data overrides, teacher and student overrides (each role's model and train), and a note."""
    image_teacher = ["teacher.model={name: cnn, channels: [16, 32, 64], hidden: 0}", "teacher.train={selection: nll}"]
    vector_teacher = ["teacher.model={name: mlp, hidden: [256, 256], dropout: 0.3}",
                      "teacher.train={selection: nll}"]
    small_student = ["student.model={name: mlp, hidden: [16]}"]

    def fmnist(n: int, teacher_epochs: int) -> dict[str, Any]:
        return {"data": ["data.name=fashion-mnist", f"data.path={FMNIST}", f"data.train_size={n}", "data.val_size=500"],
                "teacher": [*image_teacher, f"teacher.train.epochs={teacher_epochs}"],
                "student": [*small_student, "student.train.epochs=60"],
                "note": f"Fashion-MNIST, {n} training images, 10,000 test; CNN 16-32-64 teacher, MLP 16 student"}

    def table(name: str, students: str) -> dict[str, Any]:
        return {"data": ["data.name=npz", f"data.path={_tabular(name, data_dir)}", "data.val_size=0.15"],
                "teacher": [*vector_teacher, "teacher.train.epochs=100"],
                "student": [f"student.model={{name: mlp, hidden: [{students}]}}", "student.train.epochs=100"],
                "note": f"scikit-learn load_{name}, 70/30 split; MLP 256-256 teacher, MLP {students} student"}

    return {
        "digits": {"data": ["data.name=digits", "data.val_size=0.1"],
                   "teacher": ["teacher.model={name: cnn, channels: [64, 128], hidden: 256, dropout: 0.3}",
                               "teacher.train={augment: {shift: 1}, selection: nll}", "teacher.train.epochs=30"],
                   "student": ["student.model={name: mlp, hidden: [16]}", "student.train.epochs=100"],
                   "note": "scikit-learn digits (embedded); CNN teacher, MLP 16 student"},
        "fmnist-500": fmnist(500, 40),
        "fmnist-png-1000": {"data": ["data.name=imagefolder", f"data.path={_fmnist_images(data_dir)}",
                                     "data.val_size=100", "data.num_workers=0"],
                            "teacher": [*image_teacher, "teacher.train.epochs=25"],
                            "student": [*small_student, "student.train.epochs=60"],
                            "note": "1,000 Fashion-MNIST training images as PNG files (imagefolder), 2,000 test; "
                                    "CNN 16-32-64 teacher, MLP 16 student"},
        "breast_cancer": table("breast_cancer", "2"),
        "wine": table("wine", "2"),
        "iris": table("iris", "2"),
        "signals": {"data": ["data.name=npz", f"data.path={_signals(data_dir)}", "data.val_size=100"],
                    "teacher": ["teacher.model={name: resnet1d, channels: [32, 64, 64]}",
                                "teacher.train={selection: nll}", "teacher.train.epochs=30"],
                    "student": ["student.model={name: mlp, hidden: [64]}", "student.train.epochs=100"],
                    "note": "6 scipy.signal waveforms in noise, 500 train (+100 val), 1,500 test; ResNet-1D "
                            "teacher, MLP 64 student"},
    }


def _run(name: str, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    if run_dir.exists() and not resumable(run_dir):
        import shutil
        shutil.rmtree(run_dir)
    cfg = load_config(overrides=[f"name={name}", *COMMON, *overrides])
    return run_recipe(cfg, run_dir=run_dir, resume=resumable(run_dir), progress=False)


def _correct(run_dir: Path, tag: str) -> np.ndarray:
    with np.load(run_dir / "test_predictions.npz", allow_pickle=False) as f:
        return f[tag] == f["labels"]


def run_dataset(name: str, spec: dict[str, Any], seeds: int, root: Path, quick: bool) -> None:
    short = ["teacher.train.epochs=1", "student.train.epochs=1"] if quick else []
    for seed in range(seeds):
        d = root / name / f"seed{seed}"
        base = [*spec["data"], *spec["teacher"], *spec["student"], f"seed={seed}", *short]
        t0 = time.time()
        _run(f"{name}-teacher", [*base, "recipe=teacher"], d / "teacher")
        ckpt = f"teacher.checkpoint={d / 'teacher' / 'teacher' / 'best.pt'}"
        _run(f"{name}-baseline", [*base, "recipe=baseline"], d / "baseline")
        for arm, (_, overrides) in ARMS.items():
            _run(f"{name}-{arm}", [*base, "recipe=distill", ckpt, *overrides], d / arm)
        print(f"[{name}] seed {seed} done in {time.time() - t0:.0f} s", flush=True)


def summarize(name: str, root: Path) -> dict[str, Any] | None:
    """Per model the test accuracy over the finished seeds, per arm the paired gain over the baseline."""
    seeds = sorted(p for p in (root / name).glob("seed*") if all(
        (p / r / "results.json").is_file() for r in ("teacher", "baseline", *ARMS)))
    if not seeds:
        return None
    acc: dict[str, list[float]] = {}
    for s in seeds:
        for run, tag in (("teacher", "teacher"), ("baseline", "baseline"), *((a, "distilled") for a in ARMS)):
            res = json.loads((s / run / "results.json").read_text())
            acc.setdefault(run, []).append(float(res["models"][tag]["test_acc"]))
    out: dict[str, Any] = {"seeds": len(seeds), "acc": {k: {"mean": spread(v).mean, "sd": spread(v).sd, "per_seed": v}
                                                          for k, v in acc.items()}, "gains": {}}
    base = torch.from_numpy(np.stack([_correct(s / "baseline", "baseline") for s in seeds]))
    out["n_test"] = int(base.shape[1])
    for arm in ARMS:
        dist = torch.from_numpy(np.stack([_correct(s / arm, "distilled") for s in seeds]))
        iv = paired_bootstrap(dist, base, resamples=2000, level=0.95, seed=0)
        out["gains"][arm] = {"difference": iv.difference, "interval": [iv.low, iv.high],
                             "within_noise": iv.includes_zero}
    return out


def _pm(entry: dict[str, Any]) -> str:
    sd = entry["sd"]
    return f"{100 * entry['mean']:.2f} ± {100 * sd:.2f}" if sd is not None else f"{100 * entry['mean']:.2f}"


def _gain(g: dict[str, Any]) -> str:
    lo, hi = g["interval"]
    mark = "" if g["within_noise"] else (" ✓" if lo > 0 else " ✗")
    return f"{100 * g['difference']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{mark}"


def report(names: list[str], specs: dict[str, dict[str, Any]], root: Path, out: Path, wall: float,
           load_start: str) -> dict[str, Any]:
    summaries = {n: s for n in names if (s := summarize(n, root)) is not None}
    lines = ["# The default recipe: baseline, KD at the documented defaults, and candidates, on every small "
             "dataset this machine has", "",
             "Test accuracy (%, mean ± sd over seeds) and each distilled student's gain over the baseline "
             "(points; 95% paired bootstrap interval over seeds and test examples, `distill.metrics.paired_bootstrap`;"
             " ✓: above zero, ✗: below zero, no mark: within noise). Baseline and distilled students start "
             "from the same weights and train with the same epochs, optimizer and augmentation.", "",
             "| dataset | seeds | n test | teacher | baseline | " + " | ".join(ARMS) + " | "
             + " | ".join(f"gain {a}" for a in ARMS) + " |",
             "|---" * (5 + 2 * len(ARMS)) + "|"]
    wins = {a: 0 for a in ARMS}
    for n, s in summaries.items():
        a = s["acc"]
        lines.append(f"| {n} | {s['seeds']} | {s['n_test']} | {_pm(a['teacher'])} | {_pm(a['baseline'])} | "
                     + " | ".join(_pm(a[arm]) for arm in ARMS) + " | "
                     + " | ".join(_gain(s["gains"][arm]) for arm in ARMS) + " |")
        for arm in ARMS:
            wins[arm] += int(s["gains"][arm]["interval"][0] > 0)
    lines += ["", "Gains beyond noise (interval above zero), out of " + f"{len(summaries)} datasets: "
              + ", ".join(f"{a} {w}" for a, w in wins.items()), "", "## Candidates", ""]
    lines += [f"- `{a}`: {what} (`{' '.join('--set ' + o for o in ov)}`)" for a, (what, ov) in ARMS.items()]
    lines += ["", "## Datasets", ""] + [f"- `{n}`: {specs[n]['note']}" for n in summaries]
    lines += ["", *how_it_was_run(wall, load_start, load_average())]
    save_report(out, lines)
    save_json(out.with_suffix(".json"), summaries)
    return summaries


def main() -> None:
    p = (BenchmarkParser(__doc__).add_quick().add_out(REPO / "benchmarks" / "results" / "default_recipe.md")
         .add_threads(1).add_run_root(REPO / "runs" / "default_recipe"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", nargs="+", default=None, help="datasets to run (default: all)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the runs' directories")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.run_root, args.out = Path("/tmp/default_recipe_quick"), Path("/tmp/default_recipe_quick/report.md")
        args.seeds = 1
    data_dir = args.run_root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    specs = datasets(data_dir)
    names = args.datasets or list(specs)
    start, load_start = time.time(), load_average()
    if not args.report_only:
        for name in names:
            run_dataset(name, specs[name], args.seeds, args.run_root, args.quick)
            report(names, specs, args.run_root, args.out, time.time() - start, load_start)
    summaries = report(names if not args.report_only else list(specs), specs, args.run_root, args.out,
                       time.time() - start, load_start)
    print(f"wrote {args.out} ({len(summaries)} datasets) in {fmt_seconds(time.time() - start)}")


if __name__ == "__main__":
    main()
