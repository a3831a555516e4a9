"""benchmarks/streaming.py: its hand-written loop decodes the same pixels as distill's stream and trains
the same model (so the throughput ratio compares equal work), its ratios pair each fit epoch with the hand
epochs on both sides, and its in-memory path holds the tree's examples in the same order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from distill.config import TrainConfig  # noqa: E402
from distill.data.streaming import DecodedImages, FileOptions, load_file_splits  # noqa: E402
from distill.engine import build_optimizer, fit  # noqa: E402
from distill.methods.ce import CrossEntropy  # noqa: E402
from distill.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("streaming_bench", REPO / "benchmarks" / "streaming.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tree(root: Path, n: int, size: int, mode: str, suffix: str) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        (root / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(root / f"{i % 3}" / f"{i:03d}{suffix}")
    return root


@pytest.mark.parametrize("mode,suffix,resize", [("L", ".png", None), ("RGB", ".jpg", 6)])
def test_the_hand_loop_decodes_the_same_pixels_as_the_stream(bench, tmp_path, mode, suffix, resize):
    tree = write_tree(tmp_path / "t", 6, 10, mode, suffix)
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(
        image_size=(resize, resize) if resize else None, stream=True, num_workers=0), val_size=0)
    stream = data.stream
    ours = DecodedImages(stream.files.paths, stream.size, stream.channels)
    hand = bench.HandImages(stream.files.paths, stream.files.labels, stream.size, stream.channels)
    for i in range(len(ours)):
        x, index, why = ours[i]
        hx, hy = hand[i]
        assert (index, why) == (i, "")
        assert hx.dtype == torch.uint8 and torch.equal(hx, torch.from_numpy(x.copy()))
        assert hy == int(stream.files.labels[i])


def test_one_epoch_of_the_hand_loop_trains_exactly_as_fit(bench, tmp_path):
    tree = write_tree(tmp_path / "t", 24, 8, "L", ".png")
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0), val_size=0)
    stream = data.stream
    cfg = TrainConfig.model_validate({"epochs": 1, "batch_size": 8, "channels_last": False,
                                      "schedule": {"name": "constant"},
                                      "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}})
    torch.manual_seed(0)
    ours = create_model("cnn", data.num_classes, data.in_shape, channels=(4, 8))
    hand = create_model("cnn", data.num_classes, data.in_shape, channels=(4, 8))
    hand.load_state_dict(ours.state_dict())
    clock = bench.Clock(CPU)
    source = bench.TimedSource(stream.batches(cfg.batch_size, CPU, 0), clock)
    fit(ours, CrossEntropy(), data, cfg, seed=0, progress=None, batches=source)
    plan = bench.EpochPlan()
    loader = bench.hand_loader(stream, plan, 0, False)
    torch.manual_seed(0)  # fit seeds the global stream per epoch; the cnn draws nothing from it in training
    times = bench.hand_epoch(hand, build_optimizer(hand.parameters(), cfg.optimizer), loader, plan,
                             stream.num_examples, cfg.batch_size, 0, 0, data.mean, data.std, CPU, clock)
    assert set(times) == {"wall", "main_cpu", "workers_cpu"} and len(source.epochs) == 1
    for (name, a), b in zip(ours.state_dict().items(), hand.state_dict().values()):
        assert torch.equal(a, b), name


def test_ratios_pair_each_fit_epoch_with_the_hand_epochs_around_it(bench):
    ours = [{"wall": w} for w in (9.0, 2.0, 4.0, 5.0)]
    hand = [{"wall": w} for w in (9.0, 3.0, 5.0, 6.0)]
    # fit epoch 2 ran between hand epochs 1 and 2, fit epoch 3 between hand 2 and 3; pair 0 is warm-up
    assert bench.ratios(ours, hand, "wall") == [(3.0 + 5.0) / 2 / 4.0, (5.0 + 6.0) / 2 / 5.0]
    assert bench.spread([1.0, 2.0, 3.0]) == {"median": 2.0, "q1": 1.5, "q3": 2.5, "min": 1.0, "max": 3.0, "n": 3}


def test_the_in_memory_path_holds_the_tree_s_examples_in_its_order(bench, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (30, 28, 28)).astype(np.uint8), np.arange(30) % 3
    monkeypatch.setattr(bench, "fashion_mnist", lambda: (x[:20], y[:20], x[20:], y[20:], "test arrays"))
    tree, arrays = bench.accuracy_tree(tmp_path, 12)
    streamed, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=False, num_workers=0), val_size=3)
    memory = bench.in_memory_splits(arrays, 3)
    for split in ("train", "val", "test"):
        a, b = getattr(streamed, split), getattr(memory, split)
        assert torch.equal(a.y, b.y), split
        # the same pixels: the two normalizations differ only in their statistics
        assert torch.equal((a.x * streamed.std.view(1, -1, 1, 1) + streamed.mean.view(1, -1, 1, 1)).mul(255).round(),
                           (b.x * memory.std.view(1, -1, 1, 1) + memory.mean.view(1, -1, 1, 1)).mul(255).round()), split


def test_the_hand_loop_s_rgb_batches_are_contiguous_nchw_as_the_stream_s(bench, tmp_path):
    tree = write_tree(tmp_path / "t", 4, 10, "RGB", ".jpg")
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0), val_size=0)
    plan = bench.EpochPlan()
    plan.batches = [[0, 1, 2, 3]]
    [(x, y)] = list(bench.hand_loader(data.stream, plan, 0, False))
    [(ours, _, _)] = list(data.stream.batches(4, CPU, 0).epoch(0))
    assert x.shape == ours.shape == (4, 3, 10, 10) and x.is_contiguous() and ours.is_contiguous()
