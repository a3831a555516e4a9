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
matching's consistency without crops, which applies to any input). Two more (``EXTRA``), each in its own table:
``val_t``, KD (alpha 0.9) with the temperature chosen on the validation split from 1, 2, 4, 8 per seed
(:func:`choose_by_validation`: the student with the best selected validation accuracy, its test accuracy
reported; the T 4 student is the ``kd`` arm's), and ``long``, KD at the defaults and the baseline, both with
a 3x longer schedule, the gain measured against the baseline of the same length.

    python benchmarks/default_recipe.py                       # everything, 3 seeds (~60 min on 2 heavily shared cores)
    python benchmarks/default_recipe.py --datasets digits iris --seeds 1
    python benchmarks/default_recipe.py --report-only         # rewrite the report from the runs' directories
    python benchmarks/default_recipe.py --arms val_t long --datasets iris   # only these arms (the others reused)
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

from distill.checkpoint import load_checkpoint  # noqa: E402
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

# more candidates, each a group of runs: name -> (what, {run directory: overrides of the student's run}); the
# T 4 student of val_t is the kd arm's run. long's runs take the dataset's student epochs times LONG.
TEMPERATURES = (1, 2, 4, 8)
LONG = 3
EXTRA: dict[str, tuple[str, dict[str, list[str]]]] = {
    "val_t": (f"KD (alpha 0.9), T chosen per seed on the validation split from {', '.join(map(str, TEMPERATURES))}",
              {("kd" if t == 4 else f"kd_t{t}"): [f"distill.temperature={t}", "distill.alpha=0.9"]
               for t in TEMPERATURES}),
    "long": (f"KD at the defaults and the baseline, both with a {LONG}x longer schedule",
             {"baseline_long": [], "kd_long": ["distill.temperature=4", "distill.alpha=0.9"]}),
}


def choose_by_validation(candidates: dict[Any, tuple[float, float]]) -> Any:
    """The key of the best candidate by its selected student's validation ``(accuracy, NLL)``: the highest
    accuracy, ties broken by the lower NLL, then by the order of ``candidates`` (the first wins)."""
    if not candidates:
        raise ValueError("choose_by_validation needs at least one candidate (none finished)")
    return max(candidates, key=lambda k: (candidates[k][0], -candidates[k][1]))


def _epochs(overrides: list[str], key: str = "student.train.epochs") -> int:
    """The last ``key=N`` among ``overrides``."""
    found = [int(o.split("=", 1)[1]) for o in overrides if o.startswith(key + "=")]
    if not found:
        raise ValueError(f"no {key}=N among the overrides {overrides}")
    return found[-1]


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


def _selected_val(run_dir: Path, tag: str) -> tuple[float, float]:
    """The validation (accuracy, NLL) of the student the run selected (``<tag>/best.pt``'s record)."""
    best = load_checkpoint(run_dir / tag / "best.pt")["best"]
    return float(best["val_acc"]), float(best["val_nll"])


def run_dataset(name: str, spec: dict[str, Any], seeds: int, root: Path, quick: bool,
                arms: list[str] | None = None) -> None:
    """Train the teacher, the baseline and each of ``arms`` (default: every arm of ARMS and EXTRA) for each
    seed; runs already finished are read back, not retrained."""
    arms = arms or [*ARMS, *EXTRA]
    short = ["teacher.train.epochs=1", "student.train.epochs=1"] if quick else []
    for seed in range(seeds):
        d = root / name / f"seed{seed}"
        base = [*spec["data"], *spec["teacher"], *spec["student"], f"seed={seed}", *short]
        longer = [f"student.train.epochs={LONG * _epochs(base)}"]
        t0 = time.time()
        _run(f"{name}-teacher", [*base, "recipe=teacher"], d / "teacher")
        ckpt = f"teacher.checkpoint={d / 'teacher' / 'teacher' / 'best.pt'}"
        _run(f"{name}-baseline", [*base, "recipe=baseline"], d / "baseline")
        for arm in arms:
            if arm in ARMS:
                _run(f"{name}-{arm}", [*base, "recipe=distill", ckpt, *ARMS[arm][1]], d / arm)
                continue
            for run, overrides in EXTRA[arm][1].items():
                extra = longer if arm == "long" else []
                recipe = ["recipe=baseline"] if run.startswith("baseline") else ["recipe=distill", ckpt]
                _run(f"{name}-{run}", [*base, *recipe, *overrides, *extra], d / run)
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
    extra = summarize_extra(name, root)
    if extra:
        out["extra"] = extra
    return out


def _interval(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, Any]:
    iv = paired_bootstrap(torch.from_numpy(np.stack(a)), torch.from_numpy(np.stack(b)), resamples=2000, level=0.95,
                          seed=0)
    return {"difference": iv.difference, "interval": [iv.low, iv.high], "within_noise": iv.includes_zero}


def _acc(v: list[float]) -> dict[str, Any]:
    return {"mean": spread(v).mean, "sd": spread(v).sd, "per_seed": v}


def summarize_extra(name: str, root: Path) -> dict[str, Any]:
    """Per EXTRA arm, over the seeds where all of its runs (and the teacher and baseline) finished: the test
    accuracies and the paired gains. val_t: the T chosen per seed, its student's gain over the baseline and
    over KD at T 4; long: both models' accuracies, KD's gain over the baseline of the same length and the long
    baseline's over the default one."""
    out: dict[str, Any] = {}
    for arm, (_, runs) in EXTRA.items():
        seeds = sorted(p for p in (root / name).glob("seed*") if all(
            (p / r / "results.json").is_file() for r in ("teacher", "baseline", *runs)))
        if not seeds:
            continue
        base = [_correct(s / "baseline", "baseline") for s in seeds]
        if arm == "val_t":
            chosen = [choose_by_validation({r: _selected_val(s / r, "distilled") for r in runs}) for s in seeds]
            picked = [_correct(s / r, "distilled") for s, r in zip(seeds, chosen)]
            kd = [_correct(s / "kd", "distilled") for s in seeds]
            out[arm] = {"seeds": len(seeds), "chosen_t": [int(runs[r][0].split("=")[1]) for r in chosen],
                        "acc": _acc([float(p.mean()) for p in picked]),
                        "gain": _interval(picked, base), "gain_over_kd": _interval(picked, kd)}
        else:
            bl = [_correct(s / "baseline_long", "baseline") for s in seeds]
            kl = [_correct(s / "kd_long", "distilled") for s in seeds]
            out[arm] = {"seeds": len(seeds), "acc_baseline": _acc([float(x.mean()) for x in bl]),
                        "acc_kd": _acc([float(x.mean()) for x in kl]),
                        "gain": _interval(kl, bl), "baseline_gain": _interval(bl, base)}
    return out


def _pm(entry: dict[str, Any]) -> str:
    sd = entry["sd"]
    return f"{100 * entry['mean']:.2f} ± {100 * sd:.2f}" if sd is not None else f"{100 * entry['mean']:.2f}"


def _gain(g: dict[str, Any]) -> str:
    lo, hi = g["interval"]
    mark = "" if g["within_noise"] else (" ✓" if lo > 0 else " ✗")
    return f"{100 * g['difference']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{mark}"


def extra_table(summaries: dict[str, Any]) -> list[str]:
    """The table of the EXTRA arms (``val_t``, ``long``), with the baseline and KD of the first table repeated."""
    rows = [(n, s) for n, s in summaries.items() if s.get("extra")]
    if not rows:
        return []
    lines = ["## Temperature chosen on validation, and a 3x longer schedule", "",
             f"`val_t`: per seed, the KD student (alpha 0.9) with the best validation accuracy among T "
             f"{', '.join(map(str, TEMPERATURES))} (the T 4 one is `kd` above); `T chosen` lists its T per seed. "
             f"`long`: baseline and KD (T 4, alpha 0.9) with {LONG}x the student's epochs (warm-up unchanged); "
             "`gain long` is KD long against baseline long (same length), `baseline long - baseline` what the "
             "longer schedule alone gives. Intervals as above; `-`: not run.", "",
             "| dataset | seeds | baseline | kd | val_t | T chosen | gain val_t | val_t - kd | seeds long | "
             "baseline long | kd long | gain long | baseline long - baseline |", "|---" * 13 + "|"]
    wins = {"val_t": 0, "long": 0}
    for n, s in rows:
        a, e = s["acc"], s["extra"]
        v, lg = e.get("val_t"), e.get("long")
        cells = [n, str(v["seeds"]) if v else "-", _pm(a["baseline"]), _pm(a["kd"])]
        cells += ([_pm(v["acc"]), ", ".join(map(str, v["chosen_t"])), _gain(v["gain"]), _gain(v["gain_over_kd"])]
                  if v else ["-"] * 4)
        cells += ([str(lg["seeds"]), _pm(lg["acc_baseline"]), _pm(lg["acc_kd"]), _gain(lg["gain"]),
                   _gain(lg["baseline_gain"])] if lg else ["-"] * 5)
        lines.append("| " + " | ".join(cells) + " |")
        for arm, entry in (("val_t", v), ("long", lg)):
            wins[arm] += int(bool(entry) and entry["gain"]["interval"][0] > 0)
    tried = {arm: sum(1 for _, s in rows if arm in s["extra"]) for arm in wins}
    lines += ["", "Gains beyond noise over the baseline of the same length (interval above zero): "
              + ", ".join(f"{a} {wins[a]} of {tried[a]} datasets" for a in wins), ""]
    return lines


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
              + ", ".join(f"{a} {w}" for a, w in wins.items()), ""]
    lines += extra_table(summaries)
    lines += ["## Candidates", ""]
    lines += [f"- `{a}`: {what} (`{' '.join('--set ' + o for o in ov)}`)" for a, (what, ov) in ARMS.items()]
    for a, (what, runs) in EXTRA.items():
        shown = [f"`{r}` (`{' '.join('--set ' + o for o in ov) or 'recipe=baseline'}`)" for r, ov in runs.items()]
        lines.append(f"- `{a}`: {what}: runs " + ", ".join(shown))
    lines += ["", "## Datasets", ""] + [f"- `{n}`: {specs[n]['note']}" for n in summaries]
    lines += ["", *how_it_was_run(wall, load_start, load_average())]
    save_report(out, lines)
    save_json(out.with_suffix(".json"), summaries)
    return summaries


def main(argv: list[str] | None = None) -> None:
    p = (BenchmarkParser(__doc__).add_quick().add_out(REPO / "benchmarks" / "results" / "default_recipe.md")
         .add_threads(1).add_run_root(REPO / "runs" / "default_recipe"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", nargs="+", default=None, help="datasets to run (default: all)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the runs' directories")
    p.add_argument("--arms", nargs="+", choices=[*ARMS, *EXTRA], default=None,
                   help="arms to train (default: all); the report still shows every arm whose runs are there")
    args = p.parse_args(argv)
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
            run_dataset(name, specs[name], args.seeds, args.run_root, args.quick, args.arms)
            report(names, specs, args.run_root, args.out, time.time() - start, load_start)
    summaries = report(names if not args.report_only else list(specs), specs, args.run_root, args.out,
                       time.time() - start, load_start)
    print(f"wrote {args.out} ({len(summaries)} datasets) in {fmt_seconds(time.time() - start)}")


if __name__ == "__main__":
    main()
