"""Image files streamed from disk: peak memory at two dataset sizes, and epoch throughput of ``distill``
against a hand-written PyTorch loop with the same DataLoader workers, decode and model.

Trees (written once into ``--work``, a temporary directory by default):

- Fashion-MNIST exported as PNG files (28x28 grayscale; from the installed dataset, else seeded synthetic
  images of the same shape), ``train/<class>/`` at two sizes 10x apart (``--small``, ``10 * --small``)
  with the same ``val/`` (1,000 test images);
- a synthetic tree of 224x224 RGB JPEG files (``--big-images``), for the cost of decoding, resized in the
  workers to ``--resize`` (112) for the model.

Memory: each (tree, data.stream) pair runs in a fresh process: ``load_file_splits`` (validation a fixed
count of 500 carved from ``train/``, ``val/`` the test split) and the same number of batches of 256 at
both sizes (one epoch of the larger tree; ``--memory-batches``), each summed; peak resident memory of the
main process (after the splits and at the end) and of its largest worker (``ru_maxrss`` of children).

Throughput: ``fit`` on the streamed tree against a hand-written PyTorch loop (its own ``Dataset``: the same
Pillow decode and resize; the default collate; the same number of persistent workers, pinned on CUDA) in the
same order (``batch_indices``: seed, epoch), normalizing on the device and training the same model from the
same initial weights with the same SGD (``build_optimizer``) and cross-entropy: the same training, exactly
(tests/test_streaming_bench.py). Their epochs alternate in one process; each fit epoch is compared with the
mean of the hand epochs before and after it, in wall time and in CPU time of the main process and of the
workers (CPU seconds count each loop's own work on a shared machine). ratio = hand / fit: >= 1.0 means
``distill`` is not slower. Where the time goes: one epoch of fit's DataLoader alone (decode, no model) and
the same number of training steps on one batch held on the device (model, no decode).

Accuracy: the same training (a CNN teacher with cross-entropy, then a smaller CNN distilled from it with KD)
on a Fashion-MNIST PNG tree streamed from disk and on the same images held in memory (``make_splits``), for
``--seeds`` seeds: test accuracy of each and the paired difference with its bootstrap interval.

``--parts`` runs some of memory, throughput and accuracy; each part's result is kept in ``--work`` and a
part not run is reported from there.

    OMP_NUM_THREADS=1 python benchmarks/streaming.py --work /tmp/streaming   # CPU, about half an hour
    python benchmarks/streaming.py --device cuda --workers 12 --parts throughput
    python benchmarks/streaming.py --quick --out /tmp/streaming.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: sleeping (not spinning) waits; see benchmarks/README.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    BenchmarkParser,
    command_line,
    fmt_seconds,
    load_average,
    machine_md,
    save_report,
)

from distill.config import TrainConfig  # noqa: E402
from distill.data import RawDataset, load_dataset, make_splits  # noqa: E402
from distill.data.batches import TensorBatches  # noqa: E402
from distill.data.sources import DataNotFoundError  # noqa: E402
from distill.data.streaming import (  # noqa: E402
    FileOptions,
    load_file_splits,
    normalize_batch,
)
from distill.data.tensors import batch_indices, steps_per_epoch  # noqa: E402
from distill.distributed import local_batch  # noqa: E402
from distill.engine import build_optimizer, evaluate, fit  # noqa: E402
from distill.methods.ce import CrossEntropy  # noqa: E402
from distill.methods.kd import KnowledgeDistillation  # noqa: E402
from distill.metrics import paired_bootstrap, spread as mean_sd  # noqa: E402
from distill.teachers import FrozenTeacher  # noqa: E402
from distill.models import create_model  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "streaming.md"
MODEL = {"name": "cnn", "channels": (16, 32)}


# --------------------------------------------------------------------------- trees


def fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(train images uint8 (N, 28, 28), labels, test images, labels, where they came from)."""
    try:
        raw = load_dataset("fashion-mnist")
        to_u8 = lambda x: (x[:, 0] * 255).round().to(torch.uint8).numpy()  # noqa: E731
        return to_u8(raw.train_x), raw.train_y.numpy(), to_u8(raw.test_x), raw.test_y.numpy(), raw.source
    except DataNotFoundError:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, 70_000)
        x = (rng.random((70_000, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)
        return x[:60_000], y[:60_000], x[60_000:], y[60_000:], "synthetic (Fashion-MNIST not installed)"


def write_split(root: Path, x: np.ndarray, y: np.ndarray, suffix: str = ".png") -> None:
    for c in np.unique(y):
        (root / f"{c}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y)):
        Image.fromarray(image).save(root / f"{label}" / f"{i:06d}{suffix}", quality=90)


def fmnist_trees(work: Path, small: int) -> tuple[dict[str, Path], str]:
    train_x, train_y, test_x, test_y, source = fashion_mnist()
    trees = {}
    for n in (small, 10 * small):
        root = work / f"fmnist_{n}"
        if not (root / "done").exists():
            write_split(root / "train", train_x[:n], train_y[:n])
            write_split(root / "val", test_x[:1000], test_y[:1000])
            (root / "done").touch()
        trees[f"fmnist_{n}"] = root
    return trees, source


def big_tree(work: Path, n: int) -> Path:
    root = work / f"synthetic224_{n}"
    if not (root / "done").exists():
        rng = np.random.default_rng(1)
        y = np.arange(n) % 10
        base = rng.integers(0, 256, (10, 8, 8, 3)).astype(np.uint8)  # one smooth pattern per class, + noise
        for i in range(n):
            image = np.asarray(Image.fromarray(base[y[i]]).resize((224, 224), Image.Resampling.BILINEAR))
            noisy = np.clip(image.astype(np.int16) + rng.integers(-40, 40, image.shape), 0, 255).astype(np.uint8)
            (root / "train" / f"{y[i]}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy).save(root / "train" / f"{y[i]}" / f"{i:06d}.jpg", quality=90)
        (root / "done").touch()
    return root


# --------------------------------------------------------------------------- memory (one process per case)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: of its own address space, unlike ``ru_maxrss``, which
    keeps the parent's high-water mark across ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(tree: Path, stream: bool, workers: int, val: int, batches: int) -> dict[str, Any]:
    """Scan and split ``tree``, then read ``batches`` batches of 256 (as many epochs as that takes), each
    summed: the same work at every dataset size, so that what grows with the number of files is not mixed up
    with what grows with the number of batches read (the allocator's heap, up to a plateau)."""
    t0 = time.perf_counter()
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=stream, num_workers=workers),
                               val_size=val)
    after_splits = peak_rss_mb()
    total = 0.0
    source = (data.stream.batches(256, torch.device("cpu"), 0) if data.stream is not None
              else TensorBatches(data.train, 256, torch.device("cpu"), seed=0))
    read, epoch = 0, 0
    while read < batches:
        for x, _, _ in source.epoch(epoch):
            total += float(x.sum())
            read += 1
            if read == batches:
                break
        epoch += 1
    return {"train": len(data.train), "stream": stream, "seconds": time.perf_counter() - t0, "batches": read,
            "epochs": read / len(source), "splits_mb": after_splits, "main_mb": peak_rss_mb(),
            "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def measure_memory(tree: Path, stream: bool, workers: int, val: int, batches: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--memory-case", str(tree), "--stream", str(stream).lower(),
                          "--workers", str(workers), "--val", str(val), "--memory-batches", str(batches)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- throughput


class Clock:
    """Wall time and CPU time (user + system) of this process (all its threads) and of a DataLoader's worker
    processes: on a shared machine, CPU seconds count the work done whatever else runs, wall seconds do not."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tick = os.sysconf("SC_CLK_TCK")

    def workers_cpu(self, loader: Any) -> float:
        it = getattr(loader, "_iterator", None)
        total = 0.0
        for w in getattr(it, "_workers", []) if it is not None else []:
            try:
                fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    def now(self, loader: Any) -> tuple[float, float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter(), time.process_time(), self.workers_cpu(loader)


def since(clock: Clock, loader: Any, t0: tuple[float, float, float]) -> dict[str, float]:
    t1 = clock.now(loader)
    return {"wall": t1[0] - t0[0], "main_cpu": t1[1] - t0[1], "workers_cpu": t1[2] - t0[2]}


class TimedSource:
    """fit's batch source, timed per epoch from its first batch asked for to its end (the same span as the
    hand loop's ``for``): everything fit does per step is inside it."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner, self.clock, self.num_examples = inner, clock, inner.num_examples
        self.epochs: list[dict[str, float]] = []

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int, start: int = 0) -> Any:
        t0 = self.clock.now(self.inner._loader)
        yield from self.inner.epoch(epoch, start)
        self.epochs.append(since(self.clock, self.inner._loader, t0))


class EpochPlan:
    """The hand loop's batch sampler: the index lists of the epoch being read, set before each pass."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class HandImages(torch.utils.data.Dataset):
    """The hand-written loop's dataset, as a PyTorch user writes one: Pillow opens the file, converts it to
    grayscale or RGB and resizes it (bilinear) when it is not the size asked for; ``(uint8 tensor (C, H, W),
    label)``, batched by the DataLoader's default collate (contiguous NCHW, as distill's)."""

    def __init__(self, paths: tuple[str, ...], labels: torch.Tensor, size: tuple[int, int], channels: int) -> None:
        self.paths, self.labels, self.size, self.channels = list(paths), labels.tolist(), size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as image:
            image = image.convert("L" if self.channels == 1 else "RGB")
            if image.size != (self.size[1], self.size[0]):
                image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        # (C, H, W) contiguous, as torchvision's ToTensor: a permuted view would be stacked channels_last
        return (x[None] if self.channels == 1 else x.permute(2, 0, 1).contiguous()), self.labels[i]


def hand_loader(stream: Any, plan: EpochPlan, workers: int, pin: bool) -> torch.utils.data.DataLoader[Any]:
    """The hand-written loop's DataLoader: the same workers (persistent), pinned memory on CUDA, PyTorch's
    defaults otherwise (default collate, prefetch factor 2); batches in the plan's order."""
    return torch.utils.data.DataLoader(HandImages(stream.files.paths, stream.files.labels, stream.size,
                                                  stream.channels),
                                       batch_sampler=plan, num_workers=workers, pin_memory=pin,
                                       persistent_workers=workers > 0)


def hand_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any, plan: EpochPlan, n: int,
               batch_size: int, seed: int, epoch: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
               clock: Clock) -> dict[str, float]:
    """One epoch of the hand-written loop: the same order (``batch_indices``), decode, normalization and step as
    fit's, written as a PyTorch user would."""
    t0 = clock.now(loader)
    plan.batches = [local_batch(b).tolist() for b in batch_indices(n, batch_size, seed=seed, epoch=epoch)]
    pinned = device.type == "cuda"
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=pinned), y.to(device, non_blocking=pinned)
        x = (x.float() / 255 - mean) / std
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return since(clock, loader, t0)


def ratios(ours: list[dict[str, float]], hand: list[dict[str, float]], key: str) -> list[float]:
    """hand / fit for each of fit's epochs after the first (warm-up) pair, against the mean of the hand loop's
    epochs just before and just after it: the two alternate (fit 0, hand 0, fit 1, hand 1, ...), so neither
    always runs first."""
    return [(hand[e - 1][key] + hand[e][key]) / 2 / ours[e][key] for e in range(2, min(len(ours), len(hand)))]


def spread(values: list[float]) -> dict[str, float]:
    q = np.quantile(values, [0.25, 0.5, 0.75]) if values else [float("nan")] * 3
    return {"median": float(q[1]), "q1": float(q[0]), "q3": float(q[2]),
            "min": min(values, default=float("nan")), "max": max(values, default=float("nan")), "n": len(values)}


def throughput(tree: Path, workers: int, batch_size: int, epochs: int, device: torch.device,
               image_size: int | None) -> dict[str, Any]:
    options = FileOptions(image_size=(image_size, image_size) if image_size else None, stream=True,
                          num_workers=workers)
    data, _ = load_file_splits("imagefolder", str(tree), options, val_size=0)
    stream = data.stream
    assert stream is not None
    cfg = TrainConfig.model_validate({"epochs": epochs, "batch_size": batch_size, "channels_last": False,
                                      "log_every": 10_000, "schedule": {"name": "constant"},
                                      "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}})
    torch.manual_seed(0)
    ours = create_model(MODEL["name"], data.num_classes, data.in_shape, channels=MODEL["channels"]).to(device)
    hand = create_model(MODEL["name"], data.num_classes, data.in_shape, channels=MODEL["channels"]).to(device)
    hand.load_state_dict(ours.state_dict())
    opt = build_optimizer(hand.parameters(), cfg.optimizer)
    plan = EpochPlan()
    loader = hand_loader(stream, plan, workers, device.type == "cuda")
    mean, std = data.mean.to(device), data.std.to(device)
    n = stream.num_examples
    clock = Clock(device)
    source = TimedSource(stream.batches(batch_size, device, 0), clock)
    hand_times: list[dict[str, float]] = []

    def after_epoch(record: dict[str, Any]) -> None:
        e = record["epoch"] - 1
        hand_times.append(hand_epoch(hand, opt, loader, plan, n, batch_size, 0, e, mean, std, device, clock))

    result = fit(ours, CrossEntropy(), data, cfg, device=device, seed=0, log=after_epoch, progress=None,
                 batches=source)
    ours_times = source.epochs
    train_time = [h["train_time_s"] for h in result.history]
    # where the time goes: distill's DataLoader alone, and the model alone on one batch on the device
    ours_loader = source.inner._loader
    source.inner._plan.batches = [b.tolist() for b in batch_indices(n, batch_size, seed=0, epoch=0)]
    t0 = clock.now(ours_loader)
    first = None
    for x, index, _ in ours_loader:
        first = first if first is not None else (x, index)
    decode = since(clock, ours_loader, t0)
    assert first is not None
    x = normalize_batch(first[0].to(device), mean, std)
    y = stream.files.labels[first[1]].to(device)
    steps = len(source.inner._plan.batches)
    t0 = clock.now(loader)
    for _ in range(steps):
        loss = F.cross_entropy(hand(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model = since(clock, loader, t0)
    out: dict[str, Any] = {"tree": tree.name, "images": n, "shape": data.in_shape, "steps": steps,
                           "ours": ours_times, "hand": hand_times, "train_time_s": train_time,
                           "decode": decode, "model": model}
    for key in ("wall", "main_cpu", "workers_cpu"):
        out[f"ratio_{key}"] = spread(ratios(ours_times, hand_times, key))
        out[f"ours_{key}"] = statistics.median(t[key] for t in ours_times[1:])
        out[f"hand_{key}"] = statistics.median(t[key] for t in hand_times[1:])
    return out


# --------------------------------------------------------------------------- accuracy: files vs in memory

TEACHER = {"name": "cnn", "channels": (16, 32)}
STUDENT = {"name": "cnn", "channels": (8, 16)}


def accuracy_tree(work: Path, n_train: int) -> tuple[Path, dict[str, np.ndarray]]:
    """Fashion-MNIST's first ``n_train`` training images and its whole test set (10,000) as PNG files
    (``train/``, and ``val/``: the test split), and the same images as arrays in the order the folder scan
    lists them (class folder, then file name)."""
    train_x, train_y, test_x, test_y, _ = fashion_mnist()
    train_x, train_y = train_x[:n_train], train_y[:n_train]
    root = work / f"fmnist_accuracy_{n_train}"
    if not (root / "done").exists():
        write_split(root / "train", train_x, train_y)
        write_split(root / "val", test_x, test_y)
        (root / "done").touch()
    order, test_order = np.argsort(train_y, kind="stable"), np.argsort(test_y, kind="stable")
    return root, {"train_x": train_x[order], "train_y": train_y[order], "test_x": test_x[test_order],
                  "test_y": test_y[test_order]}


def in_memory_splits(arrays: dict[str, np.ndarray], val: int) -> Any:
    """The in-memory path: the same images from the arrays, through ``make_splits`` (normalized with the whole
    training split's mean and std) and held as tensors."""
    x = lambda a: torch.from_numpy(a[:, None]).float() / 255  # noqa: E731
    raw = RawDataset("fashion-mnist (in memory)", x(arrays["train_x"]), torch.from_numpy(arrays["train_y"]).long(),
                     x(arrays["test_x"]), torch.from_numpy(arrays["test_y"]).long(), 10,
                     tuple(str(c) for c in range(10)), "arrays")
    return make_splits(raw, val_size=val, split_seed=0)


def train_pair(data: Any, seed: int, epochs: int, streamed: bool) -> dict[str, torch.Tensor]:
    """A CNN teacher trained with cross-entropy, then a smaller CNN student distilled from it (KD, T = 4,
    alpha = 0.9); each model's test-set correctness (one boolean per test image)."""
    device = torch.device("cpu")
    cfg = TrainConfig.model_validate({"epochs": epochs, "batch_size": 128, "log_every": 10_000})
    batches = (lambda: data.stream.batches(cfg.batch_size, device, seed)) if streamed else (lambda: None)
    correct = {}
    torch.manual_seed(seed)
    teacher = create_model(TEACHER["name"], 10, data.in_shape, channels=TEACHER["channels"])
    teacher = fit(teacher, CrossEntropy(), data, cfg, seed=seed, progress=None, batches=batches()).model
    correct["teacher"] = evaluate(teacher, data.test).predictions.cpu() == data.test.y.cpu()
    torch.manual_seed(seed + 1000)
    student = create_model(STUDENT["name"], 10, data.in_shape, channels=STUDENT["channels"])
    student = fit(student, KnowledgeDistillation(4.0, 0.9), data, cfg, teacher=FrozenTeacher(teacher), seed=seed,
                  progress=None, batches=batches()).model
    correct["student"] = evaluate(student, data.test).predictions.cpu() == data.test.y.cpu()
    return correct


def accuracy(work: Path, n_train: int, seeds: int, epochs: int, workers: int) -> dict[str, Any]:
    """The same training (:func:`train_pair`) on the PNG tree streamed from disk and on the in-memory path,
    with the same train / validation / test images, seeds, initial weights and batch order: test accuracy of
    each, and the paired difference (streamed - in memory) with its bootstrap interval over seeds and test
    images."""
    tree, arrays = accuracy_tree(work, n_train)
    val = 500
    streamed, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=workers),
                                   val_size=val)
    memory = in_memory_splits(arrays, val)
    for split in ("val", "test"):  # the same examples, in the same order, in both
        assert torch.equal(getattr(streamed, split).y, getattr(memory, split).y), split
    assert torch.equal(streamed.train.y, memory.train.y)
    runs: dict[str, dict[str, list[torch.Tensor]]] = {"stream": {}, "memory": {}}
    for seed in range(seeds):
        for path, data in (("stream", streamed), ("memory", memory)):
            t0 = time.perf_counter()
            for role, c in train_pair(data, seed, epochs, path == "stream").items():
                runs[path].setdefault(role, []).append(c)
            print(f"accuracy: seed {seed} {path}: " + ", ".join(
                f"{role} {float(c[-1].float().mean()):.4f}" for role, c in runs[path].items())
                + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict[str, Any] = {"train": len(streamed.train), "val": val, "test": len(streamed.test), "seeds": seeds,
                           "epochs": epochs, "roles": {}}
    for role in ("teacher", "student"):
        a, b = torch.stack(runs["stream"][role]), torch.stack(runs["memory"][role])
        acc_a, acc_b = [float(r.float().mean()) for r in a], [float(r.float().mean()) for r in b]
        interval = paired_bootstrap(a, b, seed=0)
        out["roles"][role] = {"stream": acc_a, "memory": acc_b, "diff": interval.difference, "low": interval.low,
                              "high": interval.high, "same_predictions": float((a == b).float().mean())}
    return out


# --------------------------------------------------------------------------- report


def _ratio_cell(r: dict[str, float]) -> str:
    return f"{r['median']:.3f} ({r['q1']:.3f}-{r['q3']:.3f}; {r['min']:.2f}-{r['max']:.2f})"


def report(out: Path, parts: dict[str, dict[str, Any]], args: Any) -> None:
    lines = ["# Streaming image files from disk: memory, throughput and accuracy", ""]
    if "memory" in parts:
        m = parts["memory"]
        lines += [f"Fashion-MNIST PNG trees exported from {m['source']}; `--workers {m['workers']}` DataLoader "
                  "workers; CPU.", "",
                  "## Peak resident memory at two dataset sizes", "",
                  f"One fresh process per row: scan, split (validation {m['val']} images carved from `train/`, test = "
                  f"`val/`, 1,000 images), then {m['batches']} batches of 256 (each summed): one epoch of the larger "
                  "tree, as many epochs as that takes of the smaller one, so that both rows do the same work and "
                  "differ only in the number of files. Peak resident memory (VmHWM) of the main process after the "
                  "scan and split and at the end, and `ru_maxrss` of its largest DataLoader worker (forked: it "
                  "counts the pages it shares with the main process).", "",
                  "| tree | train images | data.stream | batches (epochs) | main process MB after the splits | "
                  "main process MB | largest worker MB | seconds |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            lines.append(f"| {r['tree']} | {r['train']:,} | {str(r['stream']).lower()} | {r['batches']} "
                         f"({r['epochs']:.1f}) | {r['splits_mb']:.0f} | {r['main_mb']:.0f} | {r['worker_mb']:.0f} | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
    if "throughput" in parts:
        t = parts["throughput"]
        lines += ["## Epoch throughput: `distill` (fit, streamed) vs a hand-written DataLoader loop", "",
                  "Both read the training split from disk through a DataLoader with the same persistent workers "
                  "and the same Pillow decode and resize in them, move uint8 batches, normalize on the device and "
                  "train the same model from the same weights with the same SGD, in the same order (`batch_indices`). "
                  "fit reads through `StreamingBatches` (`DecodedImages`, its `collate`, prefetch factor 4, the "
                  "bad-file bookkeeping and the sample indices); the hand loop is written as a PyTorch user writes "
                  "one (a `Dataset` returning `(tensor, label)`, the default collate and prefetch factor). "
                  "Their epochs alternate in one "
                  "process (fit 0, hand 0, fit 1, hand 1, ...); each epoch is timed from its first batch asked for to "
                  "its last step done (for fit: everything its loop does per step). ratio = hand / fit for each fit "
                  "epoch after the first pair, against the mean of the hand epochs just before and just after it (so "
                  "neither loop always goes first): >= 1.0 means distill is not slower. Given as median (quartiles; "
                  "min-max) over the epochs, for wall time and for CPU time (user + system) of the main process (all "
                  "its threads) and of the DataLoader workers: on a machine shared with other jobs, CPU seconds count "
                  "the work each loop does, wall seconds also whatever else ran.", "",
                  "| tree | input | images | steps | ratio wall | ratio main CPU | ratio workers CPU | "
                  "fit wall / main CPU / workers CPU s | hand wall / main CPU / workers CPU s |",
                  "|---|---|---:|---:|---|---|---|---|---|"]
        for r in t["rows"]:
            shape = "x".join(str(v) for v in r["shape"])
            lines.append(f"| {r['tree']} | {shape} | {r['images']:,} | {r['steps']} | {_ratio_cell(r['ratio_wall'])} | "
                         f"{_ratio_cell(r['ratio_main_cpu'])} | {_ratio_cell(r['ratio_workers_cpu'])} | "
                         f"{r['ours_wall']:.2f} / {r['ours_main_cpu']:.2f} / {r['ours_workers_cpu']:.2f} | "
                         f"{r['hand_wall']:.2f} / {r['hand_main_cpu']:.2f} / {r['hand_workers_cpu']:.2f} |")
        lines += ["", "Parts of an epoch, measured alone after the runs: decode only = one epoch of fit's DataLoader "
                  "without a model; model only = the same number of training steps on one batch already on the device.",
                  "", "| tree | decode only: wall / main CPU / workers CPU s | model only: wall / main CPU s |",
                  "|---|---|---|"]
        for r in t["rows"]:
            d, mo = r["decode"], r["model"]
            lines.append(f"| {r['tree']} | {d['wall']:.2f} / {d['main_cpu']:.2f} / {d['workers_cpu']:.2f} | "
                         f"{mo['wall']:.2f} / {mo['main_cpu']:.2f} |")
        lines += ["", "Epoch times (wall s / main CPU s), fit then hand, in the order they ran:", ""]
        for r in t["rows"]:
            lines.append(f"- {r['tree']}: " + ", ".join(
                f"{o['wall']:.2f}/{o['main_cpu']:.2f} {h['wall']:.2f}/{h['main_cpu']:.2f}"
                for o, h in zip(r["ours"], r["hand"])))
        lines.append("")
    if "accuracy" in parts:
        a = parts["accuracy"]
        lines += ["## Accuracy: the PNG tree streamed from disk vs the in-memory path", "",
                  f"Fashion-MNIST's first {a['train'] + a['val']:,} training images ({a['val']} carved for validation, "
                  f"seeded and stratified) and its {a['test']:,} test images, once as a PNG class-folder tree read "
                  "with `data.stream: true` (decoded in 2 workers, normalized with the statistics of 1,024 training "
                  "images), once as arrays through `make_splits` held in memory (normalized with the whole training "
                  "split's statistics): the same examples in the same order. For each seed, the same training on "
                  f"both: a CNN (16, 32) teacher with cross-entropy, then a CNN (8, 16) student distilled from it "
                  f"(KD, T 4, alpha 0.9), {a['epochs']} epochs each, batch 128, SGD 0.05 with cosine decay; the same "
                  "initial weights and batch order on both paths. Test accuracy, mean ± sd over "
                  f"{a['seeds']} seeds; the paired difference streamed - in memory with its 95% bootstrap interval "
                  "over seeds and test images (`distill.metrics.paired_bootstrap`), and the share of test images "
                  "on which the two paths' models predict the same class.", "",
                  "| model | streamed (PNG) | in memory | per seed (streamed / in memory) | "
                  "difference [95% interval] | "
                  "same predictions |", "|---|---:|---:|---|---:|---:|"]
        for role, r in a["roles"].items():
            sa, sb = mean_sd(r["stream"]), mean_sd(r["memory"])
            seeds = ", ".join(f"{x:.4f}/{y:.4f}" for x, y in zip(r["stream"], r["memory"]))
            lines.append(f"| {role} | {sa.mean:.4f} ± {sa.sd or 0:.4f} | {sb.mean:.4f} ± {sb.sd or 0:.4f} | "
                         f"{seeds} | "
                         f"{r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] | {r['same_predictions']:.3f} |")
        lines.append("")
    lines += ["## How it was run", ""]
    for name, part in parts.items():
        lines += [f"{name}:", "", "```", part["command"], "```", "",
                  f"- wall time: {fmt_seconds(part['wall'])}; torch {part.get('torch_threads', '?')} threads; load "
                  f"average {part['load_start']} at start, {part['load_end']} at the end", ""]
    lines += [machine_md(parts[next(iter(parts))]["load_start"], parts[next(iter(parts))]["load_end"]), ""]
    save_report(out, lines)


PARTS = ("memory", "throughput", "accuracy")


def main(argv: list[str] | None = None) -> None:
    parser = BenchmarkParser(__doc__).add_quick().add_out(DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="where the trees and each part's results go (default: "
                        "a temporary directory); a part not run this time is reported from its results there")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to run")
    parser.add_argument("--small", type=int, default=6000, help="images of the smaller Fashion-MNIST tree")
    parser.add_argument("--big-images", type=int, default=512, help="images of the 224x224 JPEG tree")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resize", type=int, default=112, help="side the 224x224 JPEG files are resized to in the "
                        "workers (0: kept at 224)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each throughput run (pairs + warm-up)")
    parser.add_argument("--accuracy-train", type=int, default=8000, help="training images of the accuracy comparison")
    parser.add_argument("--accuracy-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the accuracy comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-case", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="true", help=argparse.SUPPRESS)
    parser.add_argument("--val", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--memory-batches", type=int, default=0, help="batches of 256 each memory case reads (default "
                        "0: one epoch of the larger tree, as many epochs of the smaller one)")
    args = parser.parse_args(argv)
    if args.memory_case is not None:
        print(json.dumps(memory_case(args.memory_case, args.stream == "true", args.workers, args.val,
                                     args.memory_batches)))
        return
    if args.quick:
        args.small, args.big_images, args.epochs, args.accuracy_train, args.accuracy_epochs, args.seeds = (
            300, 64, 4, 600, 1, 2)
    run = [p for p in args.parts.split(",") if p]
    unknown = set(run) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        parts: dict[str, dict[str, Any]] = {}
        for name in PARTS:
            saved = work / f"streaming_{name}.json"
            if name not in run:
                if saved.exists():
                    parts[name] = json.loads(saved.read_text())
                continue
            load_start, started = load_average(), time.perf_counter()
            if name == "memory":
                trees, source = fmnist_trees(work, args.small)
                val = min(500, args.small // 4)
                batches = args.memory_batches or steps_per_epoch(10 * args.small - val, 256)
                rows = [{"tree": tree_name, **measure_memory(tree, stream, args.workers, val, batches)}
                        for tree_name, tree in trees.items() for stream in (True, False)]
                result: dict[str, Any] = {"source": source, "workers": args.workers, "val": val, "batches": batches,
                                          "rows": rows}
            elif name == "throughput":
                trees, _ = fmnist_trees(work, args.small)
                big = big_tree(work, args.big_images)
                rows = []
                for tree, size in ((trees[f"fmnist_{args.small}"], None), (big, args.resize)):
                    bs = args.batch_size if tree is not big else max(32, args.batch_size // 4)
                    rows.append(throughput(tree, args.workers, bs, args.epochs, device, size or None))
                    print({k: v for k, v in rows[-1].items() if k.startswith("ratio")}, flush=True)
                result = {"rows": rows}
            else:
                result = accuracy(work, args.accuracy_train, args.seeds, args.accuracy_epochs, args.workers)
            threads = os.environ.get("OMP_NUM_THREADS")
            parts[name] = {**result, "command": (f"OMP_NUM_THREADS={threads} " if threads else "") + command_line(),
                           "wall": time.perf_counter() - started, "load_start": load_start,
                           "load_end": load_average(), "torch_threads": torch.get_num_threads()}
            saved.write_text(json.dumps(parts[name], indent=1, default=list))
    report(args.out, parts, args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
