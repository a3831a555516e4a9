"""Image files streamed from disk: peak memory at two dataset sizes, and epoch throughput of ``distill``
against a hand-written PyTorch loop with the same DataLoader workers, decode and model.

Trees (written once into ``--work``, a temporary directory by default):

- Fashion-MNIST exported as PNG files (28x28 grayscale; from the installed dataset, else seeded synthetic
  images of the same shape), ``train/<class>/`` at two sizes 10x apart (``--small``, ``10 * --small``)
  with the same ``val/`` (1,000 test images);
- a synthetic tree of 224x224 RGB JPEG files (``--big-images``), for the cost of decoding, resized in the
  workers to ``--resize`` (112) for the model.

Memory: each (tree, data.stream) pair runs in a fresh process: ``load_file_splits`` (validation a fixed
count of 500 carved from ``train/``, ``val/`` the test split) and one epoch of batches of 256, each summed;
peak resident memory of the main process and of its largest worker (``getrusage`` ``ru_maxrss`` of self
and of children).

Throughput: ratio = epoch time of the hand-written loop / epoch time inside ``fit`` (its
``train_time_s``): >= 1.0 means ``distill`` is not slower. Both read the training split of the tree from
disk through a DataLoader with ``--workers`` persistent workers (Pillow decode and resize in the worker,
batches pinned on CUDA, normalized on the device), in the same order (``batch_indices``: seed, epoch),
and train the same model from the same initial weights with the same SGD (``build_optimizer``) and
cross-entropy. They alternate epoch by epoch in one process (fit's epoch, then the hand loop's, ...),
the first pair is warm-up and discarded. Where the time goes: one epoch of the DataLoader alone
(decode, no model) and the same number of training steps on one batch held on the device (model, no
decode).

    python benchmarks/streaming.py                       # CPU, a few minutes
    python benchmarks/streaming.py --device cuda --workers 12 --small 6000
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
from _common import REPO, BenchmarkParser, how_it_was_run, load_average, save_report  # noqa: E402

from distill.config import TrainConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.data.batches import TensorBatches  # noqa: E402
from distill.data.sources import DataNotFoundError  # noqa: E402
from distill.data.streaming import (  # noqa: E402
    DecodedImages,
    FileOptions,
    _Plan,
    file_loader,
    load_file_splits,
    normalize_batch,
)
from distill.data.tensors import batch_indices  # noqa: E402
from distill.distributed import local_batch  # noqa: E402
from distill.engine import build_optimizer, fit  # noqa: E402
from distill.methods.ce import CrossEntropy  # noqa: E402
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


def memory_case(tree: Path, stream: bool, workers: int, val: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=stream, num_workers=workers),
                               val_size=val)
    total = 0.0
    source = (data.stream.batches(256, torch.device("cpu"), 0) if data.stream is not None
              else TensorBatches(data.train, 256, torch.device("cpu"), seed=0))
    for x, _, _ in source.epoch(0):
        total += float(x.sum())
    return {"train": len(data.train), "stream": stream, "seconds": time.perf_counter() - t0,
            "main_mb": peak_rss_mb(),
            "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def measure_memory(tree: Path, stream: bool, workers: int, val: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--memory-case", str(tree), "--stream", str(stream).lower(),
                          "--workers", str(workers), "--val", str(val)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- throughput


def hand_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any, plan: _Plan, labels: torch.Tensor,
               n: int, batch_size: int, seed: int, epoch: int, mean: torch.Tensor, std: torch.Tensor,
               device: torch.device) -> float:
    """One epoch of the hand-written loop: the same order, decode, normalization and step as fit's."""
    t0 = time.perf_counter()
    plan.batches = [local_batch(b).tolist() for b in batch_indices(n, batch_size, seed=seed, epoch=epoch)]
    pinned = device.type == "cuda"
    model.train()
    for x, index, _ in loader:
        y = labels[index].to(device, non_blocking=pinned)
        x = normalize_batch(x.to(device, non_blocking=pinned), mean, std)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


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
    plan = _Plan()
    loader = file_loader(DecodedImages(stream.files.paths, stream.size, stream.channels), plan, workers,
                         device.type == "cuda")
    mean, std = data.mean.to(device), data.std.to(device)
    n = stream.num_examples
    hand_times: dict[int, float] = {}

    def after_epoch(record: dict[str, Any]) -> None:
        e = record["epoch"] - 1
        hand_times[e] = hand_epoch(hand, opt, loader, plan, stream.files.labels, n, batch_size, 0, e, mean, std,
                                   device)

    result = fit(ours, CrossEntropy(), data, cfg, device=device, seed=0, log=after_epoch, progress=None,
                 batches=stream.batches(batch_size, device, 0))
    ours_times = {h["epoch"] - 1: h["train_time_s"] for h in result.history}
    pairs = [(ours_times[e], hand_times[e]) for e in sorted(ours_times) if e > 0]
    ratios = [h / o for o, h in pairs]
    # where the time goes: the DataLoader alone, and the model alone on one batch on the device
    plan.batches = [b.tolist() for b in batch_indices(n, batch_size, seed=0, epoch=0)]
    t0 = time.perf_counter()
    first = None
    for x, index, _ in loader:
        first = first if first is not None else (x, index)
    decode_s = time.perf_counter() - t0
    assert first is not None
    x = normalize_batch(first[0].to(device), mean, std)
    y = stream.files.labels[first[1]].to(device)
    steps = len(plan.batches)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(hand(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model_s = time.perf_counter() - t0
    return {"tree": tree.name, "images": n, "shape": data.in_shape, "steps": steps, "pairs": pairs,
            "ours_s": statistics.median(o for o, _ in pairs), "hand_s": statistics.median(h for _, h in pairs),
            "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "total_ratio": sum(h for _, h in pairs) / sum(o for o, _ in pairs),
            "minima_ratio": min(h for _, h in pairs) / min(o for o, _ in pairs),
            "warmup": (ours_times[0], hand_times[0]), "decode_s": decode_s, "model_s": model_s}


# --------------------------------------------------------------------------- report


def report(out: Path, memory: list[dict[str, Any]], speed: list[dict[str, Any]], source: str, args: Any, wall: float,
           load_start: str, load_end: str) -> None:
    lines = ["# Streaming image files from disk: memory and throughput", "",
             f"Fashion-MNIST PNG trees exported from {source}; `--workers {args.workers}` DataLoader workers; device "
             f"`{args.device}`.", "",
             "## Peak resident memory at two dataset sizes", "",
             f"One fresh process per row: scan, split (validation {min(500, args.small // 4)} images carved from `train/`, test = `val/`, "
             "1,000 images), then one epoch of batches of 256 (each summed). Peak resident memory (VmHWM) of the main "
             "process, and `ru_maxrss` of its largest DataLoader worker (forked: it counts the pages it shares with "
             "the main process).", "",
             "| tree | train images | data.stream | main process MB | largest worker MB | seconds |",
             "|---|---:|---|---:|---:|---:|"]
    for m in memory:
        lines.append(f"| {m['tree']} | {m['train']:,} | {str(m['stream']).lower()} | {m['main_mb']:.0f} | "
                     f"{m['worker_mb']:.0f} | {m['seconds']:.1f} |")
    lines += ["", "## Epoch throughput: `distill` (fit, streamed) vs a hand-written DataLoader loop", "",
              "ratio = hand loop epoch time / fit's `train_time_s` (>= 1.0: distill not slower), median over the "
              "alternating pairs after one warm-up pair, the ratio of their sums, and of their minima (on a shared machine "
              "interference only adds time, so the fastest epochs estimate the undisturbed cost). decode only = one epoch of the same DataLoader without a "
              "model; model only = the same number of steps on one batch already on the device.", "",
              "| tree | input | images | steps | fit s/epoch | hand s/epoch | ratio (median) | min-max | ratio of sums | "
              "ratio of minima | "
              "warm-up fit / hand s | decode only s | model only s | fit / max(decode, model) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in speed:
        shape = "x".join(str(v) for v in s["shape"])
        lines.append(f"| {s['tree']} | {shape} | {s['images']:,} | {s['steps']} | {s['ours_s']:.2f} | "
                     f"{s['hand_s']:.2f} | {s['ratio']:.3f} | {s['min']:.3f}-{s['max']:.3f} | {s['total_ratio']:.3f} | {s['minima_ratio']:.3f} | "
                     f"{s['warmup'][0]:.2f} / {s['warmup'][1]:.2f} | {s['decode_s']:.2f} | {s['model_s']:.2f} | "
                     f"{s['ours_s'] / max(s['decode_s'], s['model_s']):.2f} |")
    lines += ["", "Per-pair epoch times (fit s / hand s), in the order they ran:", ""]
    for s in speed:
        lines.append(f"- {s['tree']}: " + ", ".join(f"{o:.2f}/{h:.2f}" for o, h in s["pairs"]))
    lines += [""] + how_it_was_run(wall, load_start, load_end) + [""]
    save_report(out, lines)


def main(argv: list[str] | None = None) -> None:
    parser = BenchmarkParser(__doc__).add_quick().add_out(DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="where the trees go (default: a temporary directory)")
    parser.add_argument("--small", type=int, default=6000, help="images of the smaller Fashion-MNIST tree")
    parser.add_argument("--big-images", type=int, default=512, help="images of the 224x224 JPEG tree")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resize", type=int, default=112, help="side the 224x224 JPEG files are resized to in the "
                        "workers (0: kept at 224)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each throughput run (pairs + warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-case", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="true", help=argparse.SUPPRESS)
    parser.add_argument("--val", type=int, default=500, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case is not None:
        print(json.dumps(memory_case(args.memory_case, args.stream == "true", args.workers, args.val)))
        return
    if args.quick:
        args.small, args.big_images, args.epochs = 300, 64, 2
    load_start, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        trees, source = fmnist_trees(work, args.small)
        big = big_tree(work, args.big_images)
        memory = []
        for name, tree in trees.items():
            for stream in (True, False):
                memory.append({"tree": name, **measure_memory(tree, stream, args.workers, min(500, args.small // 4))})
                print(memory[-1], flush=True)
        device = torch.device(args.device)
        speed = []
        for tree, size in ((trees[f"fmnist_{args.small}"], None), (big, args.resize)):
            bs = args.batch_size if tree is not big else max(32, args.batch_size // 4)
            speed.append(throughput(tree, args.workers, bs, args.epochs, device, size))
            print({k: v for k, v in speed[-1].items() if k != "pairs"}, flush=True)
    report(args.out, memory, speed, source, args, time.perf_counter() - started, load_start, load_average())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
