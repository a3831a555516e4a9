"""Throughput: `distill.engine.fit` with its defaults against a hand-written loop, its bound and the usual loop.

All in one process, on the same models and data, as ratios (never bare times):

1. **default**: `fit` with every setting at its default (`FrozenTeacher`, Hinton's KD; the memory format
   chosen by its start-up probe, `train.channels_last: auto`) / a hand-written loop with its own defaults
   (contiguous tensors; a `DataLoader` over a `TensorDataset` in fit's batch order; the teacher under
   `torch.no_grad`; `F.kl_div(log_softmax(s/T), softmax(t/T), "batchmean") * T^2` + CE; `loss.item()` per
   step; the same optimizer, parameter groups and per-step cosine schedule as fit, so both train alike). Each
   round trains both from the same initial weights: their epoch losses must agree to float tolerance.
   Target: the hand-written loop takes >= 1.3x the time of `fit`, on both cases.
2. **step**: `fit` per step / the *bound*: a minimal loop over batches gathered ahead of time, in the memory
   format fit chose (teacher forward under `torch.inference_mode`, student forward, `kd_loss`, backward, step).
   Target <= 1.05.
3. **cached**: `fit` with `distill.cache.CachedTeacher` / a plain student step (cross-entropy, same batches
   gathered ahead of time, in the memory format fit chose). Target <= 1.02.
4. **epoch**: `fit` with random-shift augmentation / the usual loop: a `DataLoader` over a `Dataset` that pads,
   randomly crops and normalizes each uint8 image in `__getitem__` (torchvision's `RandomCrop(size, padding)` +
   `ToTensor` + `Normalize`, on CPU tensors); the usual loop's best of `num_workers` 0 and 2. No target.
5. **scaling**: ms/step against batch size and against teacher size (`--plot`).

Also `fit` with `train.channels_last: false` (what the probe's choice gains), the probe's numbers and cost,
and a micro-profile of what `fit` does per step beyond the bound.

The variants of one comparison run round-robin (A B C A B C ...); the first round is warm-up and is
dropped. A ratio is the median over rounds of (one variant / the other) within the round, with the
ratio of the fastest times beside it (on a shared machine interference only adds time). Every variant
records two clocks: wall time, and the CPU time of the (only) torch thread, `time.thread_time()`, which
does not count the time the thread waits for a core; on a busy shared machine the second is the stable
one, and the step targets are judged on it. The full-epoch comparison is judged on wall time (the
usual loop's DataLoader workers work in other processes). Teachers are randomly initialized: the speed
of a forward pass does not depend on the weights.

    python benchmarks/throughput.py                    # both cases, ~10 min on 2 shared cores
    python benchmarks/throughput.py --cases fmnist     # one case
    python benchmarks/throughput.py --quick --out /tmp/t.md --plot /tmp/t.png   # smoke test (tiny models)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import math
import os
import random
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: sleeping (not spinning) waits; see benchmarks/README.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, BenchmarkParser, StepWindow, fmt_seconds, how_it_was_run, load_average,  # noqa: E402
                     save_report)

import distill  # noqa: E402
from distill.cache import CachedTeacher, TeacherCache, build_cache, dataset_checksum  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.data.augment import random_shift  # noqa: E402
from distill.data.tensors import DataSplits, TensorData, batch_indices  # noqa: E402
from distill.data.batches import TensorBatches  # noqa: E402
from distill.engine import LossTracker, build_optimizer, fit, lr_factor  # noqa: E402
from distill.engine import layout  # noqa: E402
from distill.engine.divergence import LossWatch  # noqa: E402
from distill.engine.fold import TeacherFold, fold_teacher, relus_in_place  # noqa: E402
from distill.engine.optim import Schedule  # noqa: E402
from distill.engine.setup import StudentStep, make_views, prepare  # noqa: E402
from distill.functional import kd_loss  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.objectives import KnowledgeDistillation, StepOutputs  # noqa: E402
from distill.teachers import FrozenTeacher, Targets  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "throughput.md"
DEFAULT_PLOT = REPO / "benchmarks" / "results" / "throughput.png"
TEMPERATURE, ALPHA = 4.0, 0.9
DEFAULT_TARGET = 1.3  # hand-written loop / default fit, both cases
STEP_TARGET = 1.05  # fit / bound, live teacher
CACHED_TARGET = 1.02  # fit with a cached teacher / plain student step
LOSS_TOLERANCE = 1e-5  # relative difference of the epoch's mean loss, default fit vs the hand-written loop
OPTIMIZER = TrainConfig().optimizer  # fit's default (SGD, momentum 0.9, weight decay 5e-4 but not on 1-d parameters)
CL = torch.channels_last
# A digest of the package's Python files as imported (before anything is measured), so that the report names the
# code that ran even if the files change while the benchmark runs. The report cites code by the function that does
# the work (module and qualified name, from the imported objects), never by searching the source text: the engine
# can be split or reorganized without breaking this script.
PACKAGE_DIR = Path(distill.__file__).resolve().parent
PACKAGE_DIGEST = hashlib.sha256(b"".join(
    str(f.relative_to(PACKAGE_DIR)).encode() + b"\0" + f.read_bytes()
    for f in sorted(PACKAGE_DIR.rglob("*.py")))).hexdigest()[:12]


# --------------------------------------------------------------------------- cases and budgets


def cnn(channels: tuple[int, ...], hidden: int) -> dict[str, Any]:
    return {"name": "cnn", "channels": channels, "hidden": hidden}


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    data: str  # "fashion-mnist" (the real images) or "random"
    in_shape: tuple[int, int, int]
    num_classes: int
    teacher: dict[str, Any]
    student: dict[str, Any]
    batch_size: int
    shift: int  # random translation (pixels) in the full-epoch comparison
    teacher_sweep: tuple[dict[str, Any], ...]
    batch_sweep: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)


CASES = {
    "fmnist": Case("fmnist", "Fashion-MNIST (1×28×28, 10 classes): `cnn` channels [64,128] hidden 256 → `cnn` "
                   "channels [16,32] hidden 64", "fashion-mnist", (1, 28, 28), 10,
                   cnn((64, 128), 256), cnn((16, 32), 64), batch_size=128, shift=2,
                   teacher_sweep=(cnn((16, 32), 64), cnn((32, 64), 128), cnn((64, 128), 256), cnn((96, 192), 384))),
    "resnet": Case("resnet", "random CIFAR-shaped data (3×32×32, 100 classes): `resnet20` → `resnet8`", "random",
                   (3, 32, 32), 100, {"name": "resnet20"}, {"name": "resnet8"}, batch_size=64, shift=4,
                   teacher_sweep=({"name": "resnet8"}, {"name": "resnet14"}, {"name": "resnet20"},
                                  {"name": "resnet32"}), batch_sweep=(32, 64, 128, 256, 512)),  # 1024: ~4 s/step
}
QUICK_CASES = {  # the same code paths on tiny models and random data: a smoke test, not a measurement
    "fmnist": Case("fmnist", "quick: random 1×28×28 data, `cnn` [8,16] → `cnn` [4,8]", "random", (1, 28, 28), 10,
                   cnn((8, 16), 32), cnn((4, 8), 16), batch_size=16, shift=2,
                   teacher_sweep=(cnn((4, 8), 16), cnn((8, 16), 32)), batch_sweep=(8, 16)),
    "resnet": Case("resnet", "quick: random 3×16×16 data, `resnet8` → `resnet8`", "random", (3, 16, 16), 100,
                   {"name": "resnet8"}, {"name": "resnet8"}, batch_size=8, shift=2,
                   teacher_sweep=({"name": "resnet8"},), batch_sweep=(8, 16)),
}


@dataclass(frozen=True)
class Budget:
    rounds: int = 5  # measured rounds per comparison, after one warm-up round
    cached_rounds: int = 8  # the same for the cached-teacher comparison (cheap, and its ratio is noisier)
    sweep_rounds: int = 3  # rounds in the batch-size and teacher-size sweeps (no warm-up round: fastest kept)
    epoch_seconds: float = 0.8  # one timed epoch of the bound loop takes about this much CPU time
    min_steps: int = 4
    max_steps: int = 64
    sweep_examples: int = 768  # examples per timed epoch in the batch-size sweep (at least 1 batch)
    sweep_steps: int = 4  # steps per timed epoch in the teacher-size sweep
    micro_number: int = 200  # calls per timing in the hot-path profile (best of 5)
    warmup: bool = True  # one dropped warm-up round before the measured rounds of each comparison


QUICK = Budget(rounds=1, cached_rounds=1, sweep_rounds=1, epoch_seconds=0.0, min_steps=2, max_steps=2,
               sweep_examples=32, sweep_steps=2, micro_number=10, warmup=False)


# --------------------------------------------------------------------------- models and data


@dataclass
class Bench:
    """One case's models and data, built once; every variant trains its own copy of the student."""

    case: Case
    teacher: nn.Module  # eval mode, no grad
    student: nn.Module  # initial weights
    images: Tensor  # uint8 (N, C, H, W): where the usual pipeline starts
    labels: Tensor
    mean: Tensor  # (C,), of images / 255
    std: Tensor
    x: Tensor  # normalized float32 (N, C, H, W): where ours starts (what make_splits gives)
    # by id of the teacher (held, so that the id stays its own): fit's teacher forward and its fold choice
    folded: dict[int, tuple[nn.Module, nn.Module, TeacherFold | None]] = field(default_factory=dict)

    def fit_teacher(self, teacher: nn.Module | None = None) -> nn.Module:
        """The module fit's teacher forward runs for ``teacher`` with its defaults: a copy with the batch norms
        folded into the convolutions before them (``train.fold_teacher_batchnorm: auto``, distill.engine.fold),
        the same choice on the same models and inputs."""
        teacher = teacher if teacher is not None else self.teacher
        if id(teacher) not in self.folded:
            chosen, fold = fold_teacher(FrozenTeacher(teacher), "auto", self.x[:2], tapped=False, trained=set(),
                                        world_size=1)
            self.folded[id(teacher)] = (teacher, getattr(chosen, "model", teacher), fold)
        return self.folded[id(teacher)][1]

    def fold(self) -> TeacherFold | None:
        """fit's choice for the case's teacher (``train.fold_teacher_batchnorm: auto``)."""
        self.fit_teacher()
        return self.folded[id(self.teacher)][2]

    def splits(self, n: int) -> DataSplits:
        """The first ``n`` examples as fit's training split; no validation data, so fit evaluates nothing."""
        train = TensorData(self.x[:n], self.labels[:n])
        empty = TensorData(self.x[:0], self.labels[:0])
        names = tuple(map(str, range(self.case.num_classes)))
        return DataSplits(self.case.name, train, empty, empty, self.case.num_classes, names, self.mean, self.std)

    def batches(self, n: int, batch_size: int, channels_last: bool = False) -> list[tuple[Tensor, Tensor]]:
        """fit's batches of an epoch over the first ``n`` examples, gathered ahead of time."""
        fmt = CL if channels_last else torch.contiguous_format
        return [(self.x[i].contiguous(memory_format=fmt), self.labels[i]) for i in batch_indices(n, batch_size)]

    def new_student(self, channels_last: bool = False) -> nn.Module:
        student = copy.deepcopy(self.student).train()
        return student.to(memory_format=CL) if channels_last else student

    def teacher_in(self, channels_last: bool, teacher: nn.Module | None = None) -> nn.Module:
        """fit's teacher forward (:meth:`fit_teacher`) in the memory format fit chose."""
        teacher = self.fit_teacher(teacher)
        return copy.deepcopy(teacher).to(memory_format=CL) if channels_last else teacher

    def layout(self, batch_size: int, teacher: nn.Module | None | str = "case") -> Chosen:
        """The memory format fit chooses for this student with ``teacher`` (``None``: a cached one) at this batch
        size: the same probe (``distill.engine.layout.measured``, once per process for the same models and
        shapes), so this is fit's own choice. Its cost is the probe's where this call is the first."""
        model = self.teacher if isinstance(teacher, str) else teacher
        model = self.fit_teacher(model) if model is not None else None  # fit probes the teacher it runs
        x = self.x[:batch_size]
        with Stopwatch() as sw:
            ms = layout.measured(self.new_student(), model, x, x, torch.device("cpu"))
        return Chosen(layout.decide(ms), ms, sw.wall, sw.cpu)


@dataclass(frozen=True)
class Chosen:
    """fit's memory format for one pair of models and batch size, the probe's ms per step of each layout, and
    the seconds (wall, CPU) the call that probed took."""

    name: str
    ms: dict[str, float]
    wall: float
    cpu: float

    @property
    def channels_last(self) -> bool:
        return self.name == layout.CHANNELS_LAST


def build_model(spec: dict[str, Any], case: Case, seed: int) -> nn.Module:
    kw = dict(spec)
    torch.manual_seed(seed)
    return create_model(kw.pop("name"), case.num_classes, case.in_shape, **kw)


def load_images(case: Case, n: int) -> tuple[Tensor, Tensor]:
    """``n`` uint8 images (N, C, H, W) and their labels."""
    if case.data == "fashion-mnist":
        raw = load_dataset("fashion-mnist")  # float in [0, 1], as read from the idx files (k / 255)
        return (raw.train_x[:n] * 255).round().to(torch.uint8), raw.train_y[:n].long()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *case.in_shape), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, case.num_classes, (n,), generator=g)


def build_bench(case: Case, n: int) -> Bench:
    images, labels = load_images(case, n)
    pixels = images.float() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))
    x = ((pixels - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()
    teacher = build_model(case.teacher, case, seed=1).eval().requires_grad_(False)
    return Bench(case, teacher, build_model(case.student, case, seed=2), images, labels, mean, std, x)


def train_config(batch_size: int, **changes: Any) -> TrainConfig:
    """fit's defaults (optimizer, cosine schedule, memory format: auto), one epoch of ``batch_size``."""
    return TrainConfig.model_validate({"epochs": 1, "batch_size": batch_size, **changes})


def engine_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer fit builds (SGD, Nesterov momentum, no weight decay on biases and norms)."""
    return build_optimizer(model.parameters(), train_config(1).optimizer)


def flops(model: nn.Module, x: Tensor) -> float:
    """Floating-point operations of one forward pass on ``x`` (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- the measured variants
# Each runs one timed epoch and returns its seconds per step on both clocks.


@dataclass(frozen=True)
class Sample:
    """Seconds per step of one timed epoch: wall clock, and CPU time of the calling thread (None where the
    work is not all in this thread: DataLoader workers); the epoch's mean training loss where the variant
    trains a fresh copy of the case's student (comparable between such variants)."""

    wall: float
    cpu: float | None
    loss: float | None = None


class Stopwatch:
    """Wall time and this thread's CPU time of a ``with`` block."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu

    def per_step(self, steps: int, cpu: bool = True) -> Sample:
        return Sample(self.wall / steps, self.cpu / steps if cpu else None)


def fit_epoch(new_student: Callable[[], nn.Module], data: DataSplits, cfg: TrainConfig, teacher: Any) -> Sample:
    """One epoch of ``distill.engine.fit`` from a fresh copy of the student. Wall: fit's own ``train_time_s`` (the
    epoch's training loop). CPU: the call's CPU time minus that of the same call with ``epochs=0`` (fit's setup:
    optimizer, checks, memory format: its probe runs once per process, in the case's first call)."""

    def call(epochs: int) -> tuple[Any, float]:
        student = new_student()
        with Stopwatch() as sw:
            result = fit(student, KnowledgeDistillation(TEMPERATURE, ALPHA), data, cfg.model_copy(update={
                "epochs": epochs}), teacher=teacher, progress=None)
        return result, sw.cpu

    _, setup_cpu = call(0)
    result, cpu = call(1)
    steps = len(data.train) // cfg.batch_size
    return Sample(result.history[-1]["train_time_s"] / steps, (cpu - setup_cpu) / steps,
                  result.history[-1]["train/loss"])


def fit_order(n: int, batch_size: int) -> list[list[int]]:
    """The examples of each of fit's batches in its first epoch (seed 0)."""
    return [index.tolist() for index in batch_indices(n, batch_size, seed=0, epoch=0)]


def hand_optimizer(student: nn.Module) -> torch.optim.Optimizer:
    """fit's default optimizer, written by hand: SGD with momentum, weight decay on all but 1-d parameters."""
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": OPTIMIZER.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=OPTIMIZER.lr, momentum=OPTIMIZER.momentum)


def hand_epoch(student: nn.Module, teacher: nn.Module, loader: DataLoader) -> Sample:
    """The hand-written distillation loop (RepDistiller's shape), with fit's default training settings: the
    per-step cosine learning rate, KD as ``F.kl_div`` * T² + CE, the loss read with ``.item()`` every step."""
    optimizer = hand_optimizer(student)
    steps, T = len(loader), TEMPERATURE
    losses = []
    with Stopwatch() as sw:
        for k, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = OPTIMIZER.lr * 0.5 * (1 + math.cos(math.pi * k / steps))
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                            reduction="batchmean") * T * T
            loss = ALPHA * soft + (1 - ALPHA) * F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return Sample(sw.wall / steps, sw.cpu / steps, sum(losses) / steps)


def bound_distill(student: nn.Module, optimizer: torch.optim.Optimizer, teacher: nn.Module,
                  batches: list[tuple[Tensor, Tensor]]) -> Sample:
    """The minimal distillation step: teacher forward + student forward, loss, backward, step."""
    with Stopwatch() as sw:
        for x, y in batches:
            with torch.inference_mode():
                teacher_logits = teacher(x)
            loss = kd_loss(student(x), teacher_logits, TEMPERATURE, labels=y, alpha=ALPHA)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return sw.per_step(len(batches))


def student_step_ce(student: nn.Module, optimizer: torch.optim.Optimizer,
                    batches: list[tuple[Tensor, Tensor]]) -> Sample:
    """A plain supervised step: student forward, cross-entropy, backward, step."""
    with Stopwatch() as sw:
        for x, y in batches:
            loss = F.cross_entropy(student(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return sw.per_step(len(batches))


def student_step_kd(student: nn.Module, optimizer: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]],
                    teacher_logits: list[Tensor]) -> Sample:
    """The student's half of the bound: the distillation step with the teacher's logits given."""
    with Stopwatch() as sw:
        for (x, y), t in zip(batches, teacher_logits):
            loss = kd_loss(student(x), t, TEMPERATURE, labels=y, alpha=ALPHA)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return sw.per_step(len(batches))


def teacher_forward(teacher: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Sample:
    """The teacher's half of the bound: its forward pass under inference_mode."""
    with Stopwatch() as sw, torch.inference_mode():
        for x, _ in batches:
            teacher(x)
    return sw.per_step(len(batches))


class ShiftNormalize(Dataset):
    """The usual per-sample pipeline on CPU tensors: uint8 image -> float in [0, 1], zero-pad by ``shift``,
    random crop back to size (torchvision's ``RandomCrop(size, padding=shift)``), ``Normalize(mean, std)``."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, shift: int) -> None:
        self.images, self.labels, self.shift = images, labels, shift
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i].float().div_(255)
        _, h, w = img.shape
        s = self.shift
        padded = F.pad(img, (s, s, s, s))
        top, left = random.randint(0, 2 * s), random.randint(0, 2 * s)
        img = padded[:, top : top + h, left : left + w]
        return img.sub(self.mean).div_(self.std), int(self.labels[i])


def usual_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0)


def usual_epoch(loader: DataLoader, teacher: nn.Module, student: nn.Module,
                optimizer: torch.optim.Optimizer) -> Sample:
    """The usual distillation loop: DataLoader batches, teacher under no_grad, F.kl_div * T² + CE."""
    T = TEMPERATURE
    steps = 0
    with Stopwatch() as sw:
        for x, y in loader:
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                            reduction="batchmean") * T * T
            loss = ALPHA * soft + (1 - ALPHA) * F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return sw.per_step(steps, cpu=loader.num_workers == 0)


def loader_only(loader: DataLoader) -> Sample:
    """The usual pipeline's data alone: iterate the DataLoader, no model."""
    with Stopwatch() as sw:
        steps = sum(1 for _ in loader)
    return sw.per_step(steps, cpu=loader.num_workers == 0)


def ours_data_only(data: TensorData, batch_size: int, shift: int) -> Sample:
    """fit's data alone: gather a batch by index from the in-memory tensors, shift it (batched)."""
    steps = 0
    with Stopwatch() as sw:
        for index in batch_indices(len(data), batch_size):
            x, _ = data.x[index], data.y[index]
            random_shift(x, shift)
            steps += 1
    return sw.per_step(steps)


# --------------------------------------------------------------------------- interleaving and ratios


@dataclass(frozen=True)
class Ratio:
    median: float  # median over rounds of num / den within the round
    q1: float
    q3: float
    lo: float
    hi: float
    of_minima: float  # fastest num / fastest den

    def md(self) -> str:
        return (f"**{self.median:.3f}** (IQR {self.q1:.3f}–{self.q3:.3f}, range {self.lo:.3f}–{self.hi:.3f}; "
                f"of minima {self.of_minima:.3f})")


@dataclass
class Timings:
    """Seconds per step of each variant of one comparison, one sample per measured round."""

    steps: int
    batch_size: int
    samples: dict[str, list[Sample]]

    def seconds(self, name: str, clock: str) -> list[float]:
        values = [getattr(s, clock) for s in self.samples[name]]
        if any(v is None for v in values):
            raise ValueError(f"{name} has no {clock} time")
        return values

    def has(self, name: str, clock: str) -> bool:
        return all(getattr(s, clock) is not None for s in self.samples[name])

    def ms(self, name: str, clock: str = "cpu") -> float:
        return 1000 * statistics.median(self.seconds(name, clock))

    def min_ms(self, name: str, clock: str = "cpu") -> float:
        return 1000 * min(self.seconds(name, clock))

    def ratio(self, num: str, den: str, clock: str = "cpu") -> Ratio:
        a, b = self.seconds(num, clock), self.seconds(den, clock)
        rs = sorted(x / y for x, y in zip(a, b))
        q = statistics.quantiles(rs, n=4, method="inclusive") if len(rs) > 1 else [rs[0]] * 3
        return Ratio(statistics.median(rs), q[0], q[2], rs[0], rs[-1], min(a) / min(b))


def interleave(variants: dict[str, Callable[[], Sample]], rounds: int, steps: int, batch_size: int,
               label: str, warmup: bool = True) -> Timings:
    """Run the variants round-robin: one warm-up round (dropped) unless ``warmup`` is False, then ``rounds``
    measured rounds."""
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    first = 0 if warmup else 1
    for r in range(first, rounds + 1):
        for name, run in variants.items():
            sample = run()
            if r > 0:
                samples[name].append(sample)
        done = "warm-up" if r == 0 else f"round {r}/{rounds}"
        last = ", ".join(f"{k} {1000 * v[-1].wall:.1f}" + (f"/{1000 * v[-1].cpu:.1f}" if v[-1].cpu else "")
                         for k, v in samples.items() if v)
        print(f"  [{label}] {done} {last} (ms/step, wall/cpu)", file=sys.stderr, flush=True)
    return Timings(steps, batch_size, samples)


# --------------------------------------------------------------------------- the comparisons


def choose_steps(bench: Bench, budget: Budget) -> tuple[int, int]:
    """Steps per timed epoch such that an epoch of the bound loop (live teacher; student alone) takes
    about ``budget.epoch_seconds`` of CPU time."""
    bs = bench.case.batch_size
    batches = bench.batches(3 * bs, bs)
    student = bench.new_student()
    optimizer = engine_optimizer(student)
    bound_distill(student, optimizer, bench.teacher, batches[:1])  # warm-up
    # fit's one-time costs (lazy imports, first calls), which would otherwise land in a timed call
    fit_epoch(bench.new_student, bench.splits(bs), train_config(bs), FrozenTeacher(bench.teacher))
    live = bound_distill(student, optimizer, bench.teacher, batches[1:]).cpu
    alone = student_step_ce(student, optimizer, batches[1:]).cpu
    assert live is not None and alone is not None

    def steps(seconds: float) -> int:
        return max(budget.min_steps, min(budget.max_steps, round(budget.epoch_seconds / seconds)))

    return steps(live), steps(alone)


def fresh(loop: Callable[..., Sample], bench: Bench, channels_last: bool, *args: Any) -> Callable[[], Sample]:
    """``loop(student, optimizer, *args)`` on a fresh copy of the case's student (and a new optimizer) every round,
    as ``fit`` and the hand-written loop get: a loop that kept training one model across rounds would run on
    warm memory that theirs does not have."""
    def run() -> Sample:
        student = bench.new_student(channels_last)
        return loop(student, engine_optimizer(student), *args)
    return run


def relus_first(loop: Callable[..., Sample]) -> Callable[..., Sample]:
    """``loop`` on a student whose ReLUs first run in place where fit puts them in place
    (:func:`distill.engine.fold.relus_in_place` on the first batch's first two examples, as fit's set-up does on
    two; not timed)."""
    def run(student: nn.Module, optimizer: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]],
            *args: Any) -> Sample:
        relus_in_place(student, batches[0][0][:2])
        return loop(student, optimizer, batches, *args)
    return run


def compare_step(bench: Bench, steps: int, rounds: int, warmup: bool = True) -> Timings:
    """Default fit vs the hand-written loop (each from the same initial weights every round), vs the bound in
    fit's memory format, and fit with ``train.channels_last: false``."""
    bs = bench.case.batch_size
    n = steps * bs
    data = bench.splits(n)
    cl = bench.layout(bs).channels_last
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_sampler=fit_order(n, bs))
    x = bench.x[:bs]  # fit with train.fold_teacher_batchnorm: false probes the unfolded teacher: ahead of timing
    layout.measured(bench.new_student(), bench.teacher, x, x, torch.device("cpu"))
    variants = {
        "fit": functools.partial(fit_epoch, bench.new_student, data, train_config(bs), FrozenTeacher(bench.teacher)),
        "hand": lambda: hand_epoch(bench.new_student(), bench.teacher, loader),
        "bound": fresh(bound_distill, bench, cl, bench.teacher_in(cl), bench.batches(n, bs, cl)),
        "fit_contiguous": functools.partial(fit_epoch, bench.new_student, data, train_config(bs, channels_last=False),
                                            FrozenTeacher(bench.teacher)),
        "fit_unfolded": functools.partial(fit_epoch, bench.new_student, data,
                                          train_config(bs, fold_teacher_batchnorm=False), FrozenTeacher(bench.teacher)),
    }
    return interleave(variants, rounds, steps, bs, f"{bench.case.name} step", warmup)


def compare_cached(bench: Bench, steps: int, rounds: int, warmup: bool = True) -> Timings:
    """fit with a CachedTeacher (full logits) vs a plain student step in the memory format fit chooses."""
    bs = bench.case.batch_size
    n = steps * bs
    data = bench.splits(n)
    cached = CachedTeacher(build_cache(bench.teacher, data.train))
    cl = bench.layout(bs, teacher=None).channels_last  # no live teacher: the student alone is probed
    logits = cached.cache.logits
    assert logits is not None
    rows = [logits[index].float() for index in batch_indices(n, bs)]  # each batch's cached logits, gathered ahead
    variants = {
        "fit_cached": functools.partial(fit_epoch, bench.new_student, data, train_config(bs), cached),
        "student_ce": fresh(student_step_ce, bench, cl, bench.batches(n, bs, cl)),
        "student_kd": fresh(student_step_kd, bench, cl, bench.batches(n, bs, cl), rows),
        "student_ce_inplace": fresh(relus_first(student_step_ce), bench, cl, bench.batches(n, bs, cl)),
    }
    return interleave(variants, rounds, steps, bs, f"{bench.case.name} cached", warmup)


LONG_EPOCHS = 10_000  # the length a "long run" is configured for (it stops after its first epoch)
LONG_SKIPPED_STEPS = 3  # its first steps, not timed (a compiled teacher's first calls)


def fit_long_steps(new_student: Callable[[], nn.Module], data: DataSplits, cfg: TrainConfig, teacher: Any,
                   skip: int, decisions: list[dict[str, Any] | None]) -> Sample:
    """Steps of default fit on a long run: configured for ``LONG_EPOCHS`` epochs, so that ``train.teacher_compile:
    auto`` sees a run whose teacher forwards take far more than its 2 minutes and probes a compiled teacher, and
    stopped after its first epoch (``stop_after_epochs``). The steps after the first ``skip`` are timed (this
    thread's CPU time, and wall), not the set-up, the probes or a compile; ``decisions`` receives the teacher's
    record (compiled or not, and the probe's times)."""
    steps = len(data.train) // cfg.batch_size - skip
    assert steps > 0, f"{len(data.train)} examples are too few for {skip} skipped steps and a timed one"
    wall: list[float] = []
    window = StepWindow(skip, skip + steps, lambda: wall.append(time.perf_counter()),
                        lambda: wall.append(time.perf_counter() - wall.pop()))
    result = fit(new_student(), KnowledgeDistillation(TEMPERATURE, ALPHA), data,
                 cfg.model_copy(update={"epochs": LONG_EPOCHS}), teacher=teacher, progress=None, callbacks=[window],
                 stop_after_epochs=1)
    decisions.append(result.history[-1].get("teacher_forward"))
    return Sample(wall[0] / steps, window.cpu / steps)


@dataclass
class LongRun:
    timings: Timings
    decisions: list[dict[str, Any] | None]  # the teacher's record of each fit call, warm-up round included

    def compiled(self) -> int:
        return sum(1 for d in self.decisions if d is not None and d.get("compile", "off") != "off")


def compare_long(bench: Bench, steps: int, rounds: int, warmup: bool = True) -> LongRun:
    """Default fit's steps on a long run (:func:`fit_long_steps`: the teacher compiled where ``teacher_compile:
    auto`` finds it pays) against the hand-written loop's."""
    bs = bench.case.batch_size
    data = bench.splits((LONG_SKIPPED_STEPS + steps) * bs)
    n = steps * bs
    loader = DataLoader(TensorDataset(data.train.x[:n], data.train.y[:n]), batch_sampler=fit_order(n, bs))
    decisions: list[dict[str, Any] | None] = []
    variants = {
        "fit_long": functools.partial(fit_long_steps, bench.new_student, data, train_config(bs),
                                      FrozenTeacher(bench.teacher), LONG_SKIPPED_STEPS, decisions),
        "hand": lambda: hand_epoch(bench.new_student(), bench.teacher, loader),
    }
    return LongRun(interleave(variants, rounds, steps, bs, f"{bench.case.name} long run", warmup), decisions)


def compare_epoch(bench: Bench, steps: int, rounds: int, warmup: bool = True) -> Timings:
    """A full training epoch with shift augmentation: default fit vs the usual DataLoader loop (0 and 2 workers),
    and each side's data pipeline alone."""
    case = bench.case
    bs, n = case.batch_size, steps * case.batch_size
    data = bench.splits(n)
    dataset = ShiftNormalize(bench.images[:n], bench.labels[:n], bench.mean, bench.std, case.shift)
    loaders = {w: usual_loader(dataset, bs, w) for w in (0, 2)}

    def usual(workers: int) -> Callable[[], Sample]:
        """The usual loop with the usual optimizer: SGD over all parameters, weight decay on all."""
        student = bench.new_student()
        optimizer = torch.optim.SGD(student.parameters(), lr=OPTIMIZER.lr, momentum=OPTIMIZER.momentum,
                                    weight_decay=OPTIMIZER.weight_decay)
        return functools.partial(usual_epoch, loaders[workers], bench.teacher, student, optimizer)

    variants = {
        "fit": functools.partial(fit_epoch, bench.new_student, data, train_config(bs, augment={"shift": case.shift}),
                                 FrozenTeacher(bench.teacher)),
        "usual_w0": usual(0),
        "usual_w2": usual(2),
        "data_ours": functools.partial(ours_data_only, data.train, bs, case.shift),
        "data_usual_w0": functools.partial(loader_only, loaders[0]),
        "data_usual_w2": functools.partial(loader_only, loaders[2]),
    }
    return interleave(variants, rounds, steps, bs, f"{case.name} epoch", warmup)  # workers end with their loaders


@dataclass
class SweepPoint:
    x: float  # batch size, or the teacher's forward GFLOPs per batch
    label: str
    timings: Timings


def sweep_batch(bench: Bench, budget: Budget) -> list[SweepPoint]:
    """fit and the bound at each batch size of the case's sweep."""
    points = []
    for bs in bench.case.batch_sweep:
        steps = max(1, budget.sweep_examples // bs)
        n = steps * bs
        cl = bench.layout(bs).channels_last
        variants = {
            "fit": functools.partial(fit_epoch, bench.new_student, bench.splits(n), train_config(bs),
                                     FrozenTeacher(bench.teacher)),
            "bound": fresh(bound_distill, bench, cl, bench.teacher_in(cl), bench.batches(n, bs, cl)),
        }
        timings = interleave(variants, budget.sweep_rounds, steps, bs, f"{bench.case.name} batch {bs}", warmup=False)
        points.append(SweepPoint(bs, str(bs), timings))
    return points


def describe(spec: dict[str, Any]) -> str:
    if spec["name"] == "cnn":
        return f"cnn {list(spec['channels'])} h{spec['hidden']}"
    return spec["name"]


def sweep_teacher(bench: Bench, budget: Budget) -> list[SweepPoint]:
    """fit, the bound and the bound's two halves (teacher forward; student step) for each teacher."""
    case = bench.case
    bs, steps = case.batch_size, budget.sweep_steps
    n = steps * bs
    data = bench.splits(n)
    points = []
    for spec in case.teacher_sweep:
        teacher = build_model(spec, case, seed=1).eval().requires_grad_(False)
        cl = bench.layout(bs, teacher).channels_last
        batches = bench.batches(n, bs, cl)
        gflops = flops(teacher, batches[0][0]) / 1e9
        teacher_l = bench.teacher_in(cl, teacher)
        with torch.inference_mode():
            teacher_logits = [teacher_l(x).clone() for x, _ in batches]
        variants = {
            "fit": functools.partial(fit_epoch, bench.new_student, data, train_config(bs), FrozenTeacher(teacher)),
            "bound": fresh(bound_distill, bench, cl, teacher_l, batches),
            "teacher_forward": functools.partial(teacher_forward, teacher_l, batches),
            "student_step": fresh(student_step_kd, bench, cl, batches, teacher_logits),
        }
        timings = interleave(variants, budget.sweep_rounds, steps, bs, f"{case.name} teacher {describe(spec)}",
                             warmup=False)
        points.append(SweepPoint(gflops, describe(spec), timings))
    return points


# --------------------------------------------------------------------------- the engine's hot path, piece by piece


def where(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of the function (or method) that does a piece of the work, as imported."""
    fn = inspect.unwrap(fn)
    return f"{fn.__module__}.{fn.__qualname__}"


def provenance() -> str:
    """The commit, whether ``src/`` differs from it, and a digest of the package as measured (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "src/distill").splitlines()
    state = f"uncommitted changes in {len(changed)} file(s) under src/distill" if changed else "no uncommitted changes"
    return f"- distill at commit {git('rev-parse', '--short', 'HEAD') or '(unknown)'}, {state}; the package's " \
           f"`.py` files as measured: sha256 {PACKAGE_DIGEST}"


@dataclass(frozen=True)
class Piece:
    what: str
    us: float  # microseconds per step
    where: str
    note: str = ""
    per_step: bool = True  # part of fit's per-step cost beyond the bound loop


def shift_by_four_indices(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """``distill.data.augment.random_shift`` as it was, with one 4-D advanced index instead of its two ``gather``
    calls (rows, then columns): the same draws, the same output."""
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


class FixedLogits(nn.Module):
    """A stand-in teacher that returns precomputed logits: times the FrozenTeacher wrapper alone."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    """CPU microseconds of one call (this thread's CPU time, best of 5 repeats of ``number`` calls)."""
    return 1e6 * min(timeit.repeat(fn, number=number, repeat=5, timer=time.thread_time)) / number


def profile_hot_path(bench: Bench, steps: int, number: int, cl: bool) -> list[Piece]:
    """Microseconds per step of each thing fit does that the bound loop does not, each timed alone on
    this case's shapes (a batch of ``batch_size``, ``steps`` steps per epoch)."""
    case = bench.case
    bs = case.batch_size
    n = steps * bs
    data = bench.splits(n).train
    index = next(iter(batch_indices(n, bs)))
    x, y = data.x[index], data.y[index]
    logits_t = torch.randn(bs, case.num_classes)
    logits_s = torch.randn(bs, case.num_classes, requires_grad=True)
    cfg = train_config(bs)
    optimizer = engine_optimizer(bench.new_student())
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    objective = KnowledgeDistillation(TEMPERATURE, ALPHA)
    frozen = FrozenTeacher(FixedLogits(logits_t))
    loss = torch.tensor(1.0)
    watch, watched = LossWatch(torch.device("cpu")), iter(range(10**9))  # observes consecutive steps
    tracker = LossTracker()
    cached = CachedTeacher(TeacherCache(num_classes=case.num_classes, data_checksum=dataset_checksum(data),
                                        logits=torch.randn(n, case.num_classes)))
    cached_logits = cached.cache.logits
    assert cached_logits is not None
    cached(x, index)  # moves the cache to the device once

    def lr_update() -> None:
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(7, 10 * steps, steps, cfg.schedule, base)

    def inference_mode_call() -> None:
        with torch.inference_mode():
            frozen.model(x)

    def autocast_off() -> None:
        with torch.autocast("cpu", dtype=torch.float32, enabled=False):
            pass

    def objective_step() -> None:
        out = StepOutputs(logits=logits_s, labels=y, index=index, teacher=Targets(logits=logits_t), features={},
                          epoch=0.0)
        objective.total(objective(out)).backward()

    def fused_kd() -> None:
        kd_loss(logits_s, logits_t, TEMPERATURE, labels=y, alpha=ALPHA).backward()

    def plain_ce() -> None:
        F.cross_entropy(logits_s, y).backward()

    def finite_flag() -> None:
        watch.observe(loss, next(watched))

    student = bench.new_student()
    F.cross_entropy(student(x), y).backward()  # gradients for the optimizer steps to apply
    fused = engine_optimizer(student)
    per_parameter = torch.optim.SGD([{**g, "fused": False, "foreach": False} for g in fused.param_groups])
    terms = {"kd": loss, "ce": loss}
    same = torch.equal(random_shift(x, case.shift, torch.Generator().manual_seed(0)),
                       shift_by_four_indices(x, case.shift, torch.Generator().manual_seed(0)))
    t = functools.partial(per_call_us, number=number)
    gather_slow = t(lambda: (data.x[index], data.y[index]))
    fused_us, loop_us = t(fused.step), t(per_parameter.step)
    return [
        Piece("learning-rate update (2 parameter groups, cosine `lr_factor`)", t(lr_update),
              where(Schedule.apply)),
        Piece("batch gather `index_select(0, index)` of `x` and `y` (the bound loop's batches are gathered ahead "
              "of time)", t(lambda: (data.x.index_select(0, index), data.y.index_select(0, index))),
              where(TensorBatches.__call__), f"`x[index], y[index]`: {gather_slow:.1f} µs"),
        Piece("the batch converted to channels_last, once for both models (`x_teacher is x`; the bound's batches "
              "are converted ahead of time)" if cl else "the batch converted to channels_last (not done here: "
              "fit chose the contiguous layout)", t(lambda: x.contiguous(memory_format=CL)) if cl else 0.0,
              where(make_views), "a copy unless the tensor already is channels_last (1-channel images are)"),
        Piece("teacher wrapper (`FrozenTeacher`: mode check, `inference_mode`, `clone`, `Targets`)",
              t(lambda: frozen(x, index)) - t(inference_mode_call),
              where(FrozenTeacher.__call__)),
        Piece("autocast context (disabled)", t(autocast_off), where(fit)),
        Piece("objective module (`StepOutputs`, KD term + separate CE, weighted `sum`) over the fused `kd_loss`, "
              "forward + backward", t(objective_step) - t(fused_kd),
              where(StudentStep.forward),
              "the same terms in another order; the sign varies from run to run"),
        Piece("non-finite loss flag (the loss kept; `ok &= loss * 0 == 0`, `finite_steps += ...` 64 steps at a time)",
              t(finite_flag),
              where(LossWatch.observe)),
        Piece("loss tracker (running sums of 3 terms)", t(lambda: tracker.add(terms, loss)),
              where(tracker.add)),
        Piece("epoch permutation (`randperm`, per epoch, divided by the steps)",
              t(lambda: list(batch_indices(n, bs, seed=0, epoch=1))) / steps,
              where(batch_indices)),
        Piece("only with a cached teacher: `CachedTeacher` call over `index_select` of its logits directly (no "
              "range check, no host sync)",
              t(lambda: cached(x, index)) - t(lambda: cached_logits.index_select(0, index)),
              where(CachedTeacher.__call__), per_step=False),
        Piece("only against the plain student step: the KD objective over plain cross-entropy, forward + backward",
              t(objective_step) - t(plain_ce), where(StudentStep.forward),
              "distillation's own loss, which the plain step does not compute", per_step=False),
        Piece("optimizer step: PyTorch's fused kernel (fit's, and the bound's) over its per-parameter loop, a "
              "saving in both", fused_us - loop_us, where(build_optimizer),
              f"fused {fused_us:.0f} µs, per-parameter loop {loop_us:.0f} µs: {fused_us / loop_us:.2f}x",
              per_step=False),
        Piece(f"only with `train.augment.shift`: `random_shift` by {case.shift} px (two `gather`s)",
              t(lambda: random_shift(x, case.shift)),
              where(random_shift),
              f"one 4-D advanced index, as before: {t(lambda: shift_by_four_indices(x, case.shift)):.0f} µs, "
              f"{'identical' if same else 'DIFFERENT'} output", per_step=False),
    ]


# --------------------------------------------------------------------------- running a case


@dataclass
class CaseResult:
    case: Case
    params: dict[str, int]
    gflops: dict[str, float]
    chosen: Chosen  # fit's memory format with the live teacher (and the probe's cost: the case's first)
    chosen_cached: Chosen  # the same with a cached teacher (the student alone)
    fold: TeacherFold | None  # fit's choice for the teacher's batch norms (None: the teacher has none)
    step: Timings
    cached: Timings
    long: LongRun
    epoch: Timings
    batch_sweep: list[SweepPoint]
    teacher_sweep: list[SweepPoint]
    pieces: list[Piece]
    load: str
    wall: float


def run_case(case: Case, budget: Budget) -> CaseResult:
    t0 = time.perf_counter()
    n = max((LONG_SKIPPED_STEPS + budget.max_steps) * case.batch_size, budget.sweep_steps * case.batch_size,
            max(max(1, budget.sweep_examples // bs) * bs for bs in case.batch_sweep))
    bench = build_bench(case, n)
    chosen, chosen_cached = bench.layout(case.batch_size), bench.layout(case.batch_size, teacher=None)  # probes
    print(f"[{case.name}] memory format {chosen.name} {chosen.ms} (cached teacher: {chosen_cached.name} "
          f"{chosen_cached.ms})", file=sys.stderr)
    steps, steps_cached = choose_steps(bench, budget)
    print(f"[{case.name}] {steps} steps per timed epoch ({steps_cached} for the student alone)", file=sys.stderr)
    x = bench.x[: case.batch_size]
    result = CaseResult(
        case=case,
        params={role: sum(p.numel() for p in m.parameters()) for role, m in (("teacher", bench.teacher),
                                                                               ("student", bench.student))},
        gflops={"teacher": flops(bench.teacher, x) / 1e9, "student": flops(bench.new_student().eval(), x) / 1e9},
        chosen=chosen,
        chosen_cached=chosen_cached,
        fold=bench.fold(),
        step=compare_step(bench, steps, budget.rounds, budget.warmup),
        cached=compare_cached(bench, steps_cached, budget.cached_rounds, budget.warmup),
        long=compare_long(bench, steps, budget.rounds, budget.warmup),
        epoch=compare_epoch(bench, steps, budget.rounds, budget.warmup),
        batch_sweep=sweep_batch(bench, budget),
        teacher_sweep=sweep_teacher(bench, budget),
        pieces=profile_hot_path(bench, steps, budget.micro_number, chosen.channels_last),
        load=load_average(),
        wall=0.0,
    )
    result.wall = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- the plot


def plot(results: list[CaseResult], path: Path) -> str:
    """CPU ms/step against batch size and against teacher size; returns a note for the report (empty if drawn)."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (`pip install -c constraints.txt -e \".[plot]\"`): no plot written."
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax_ms, ax_ratio = axes[0]
    for r, color in zip(results, ["tab:blue", "tab:orange", "tab:green"]):
        bs = [p.x for p in r.batch_sweep]
        tim = [p.timings for p in r.batch_sweep]
        ax_ms.plot(bs, [1000 * t.min_ms("fit") / t.batch_size for t in tim], "o-", color=color,
                   label=f"{r.case.name}: fit")
        ax_ms.plot(bs, [1000 * t.min_ms("bound") / t.batch_size for t in tim], "s--", color=color, alpha=0.6,
                   label=f"{r.case.name}: bound")
        ax_ratio.plot(bs, [t.ratio("fit", "bound").of_minima for t in tim], "o-", color=color, label=r.case.name)
    ax_ms.set(xscale="log", yscale="log", xlabel="batch size", ylabel="CPU µs / example (fastest round)",
              title="time per example vs batch size")
    ax_ratio.axhline(STEP_TARGET, color="gray", linestyle=":", label=f"target {STEP_TARGET}")
    ax_ratio.axhline(1.0, color="black", linewidth=0.5)
    ax_ratio.set(xscale="log", xlabel="batch size", ylabel="fit / bound (CPU time, fastest rounds)",
                 title="engine overhead vs batch size")
    for ax in (ax_ms, ax_ratio):
        ax.set_xticks([p.x for p in results[0].batch_sweep], [p.label for p in results[0].batch_sweep])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
    for ax, r in zip(axes[1], results):
        g = [p.x for p in r.teacher_sweep]
        tim = [p.timings for p in r.teacher_sweep]
        ax.plot(g, [t.min_ms("fit") for t in tim], "o-", label="fit")
        ax.plot(g, [t.min_ms("bound") for t in tim], "s--", label="bound loop")
        ax.plot(g, [t.min_ms("teacher_forward") + t.min_ms("student_step") for t in tim], "k:",
                label="teacher forward + student step")
        ax.plot(g, [t.min_ms("teacher_forward") for t in tim], "^-", alpha=0.6, label="teacher forward")
        ax.plot(g, [t.min_ms("student_step") for t in tim], "v-", alpha=0.6, label="student step")
        for p in r.teacher_sweep:
            ax.annotate(p.label, (p.x, p.timings.min_ms("fit")), textcoords="offset points", xytext=(4, 6),
                        fontsize=7)
        ax.set(xlabel=f"teacher forward GFLOPs per batch of {r.case.batch_size}",
               ylabel="CPU ms / step (fastest round)", title=f"{r.case.name}: step time vs teacher size")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if len(results) == 1:
        axes[1][1].axis("off")
    fig.suptitle(f"distill throughput (CPU, {torch.get_num_threads()} torch thread)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


# --------------------------------------------------------------------------- the report


def met(ok: bool) -> str:
    return "✓ met" if ok else "✗ missed"


def best_usual(e: Timings) -> str:
    """The usual loop's faster configuration (wall time: its workers run in other processes)."""
    return min(("usual_w0", "usual_w2"), key=lambda name: e.ms(name, "wall"))


def long_compiled(run: LongRun) -> str:
    """How often ``teacher_compile: auto`` compiled the teacher in the long-run calls, and the probe's times."""
    probes = [d.get("compile_ms") or {} for d in run.decisions if d is not None]
    timed = [p for p in probes if "compiled_ms" in p]
    ms = (f", probe: compiled / eager forward {statistics.median(p['compiled_ms'] / p['eager_ms'] for p in timed):.3f}"
          if timed else "")
    return f"teacher compiled by `teacher_compile: auto` in {run.compiled()} of {len(run.decisions)} calls{ms}"


def short(r: Ratio) -> str:
    return f"**{r.median:.3f}** (IQR {r.q1:.3f}–{r.q3:.3f}; minima {r.of_minima:.3f})"


def summary_rows(r: CaseResult) -> list[str]:
    name, s, e = r.case.name, r.step, r.epoch
    default, step = s.ratio("hand", "fit"), s.ratio("fit", "bound")
    cached = r.cached.ratio("fit_cached", "student_ce")
    long = r.long.timings.ratio("hand", "fit_long")
    usual = best_usual(e)
    return [
        f"| {name} | hand-written loop / default fit (speed-up of the defaults) | {short(default)} | "
        f"{s.ratio('hand', 'fit', 'wall').median:.3f} | ≥ {DEFAULT_TARGET} | "
        f"{met(default.median >= DEFAULT_TARGET)} |",
        f"| {name} | hand-written loop / default fit on a long run (steady steps; {long_compiled(r.long)}) | "
        f"{short(long)} | {r.long.timings.ratio('hand', 'fit_long', 'wall').median:.3f} | ≥ {DEFAULT_TARGET} | "
        f"{met(long.median >= DEFAULT_TARGET)} |",
        f"| {name} | same losses: default fit vs hand-written loop, largest relative difference of an epoch's mean "
        f"loss | {loss_gap(s):.1e} | | ≤ {LOSS_TOLERANCE:.0e} | {met(loss_gap(s) <= LOSS_TOLERANCE)} |",
        f"| {name} | fit step / bound (teacher forward + student step, {r.chosen.name}) | {short(step)} | "
        f"{s.ratio('fit', 'bound', 'wall').median:.3f} | ≤ {STEP_TARGET} | {met(step.median <= STEP_TARGET)} |",
        f"| {name} | fit step with `CachedTeacher` / plain student step (CE, {r.chosen_cached.name}) | "
        f"{short(cached)} | "
        f"{r.cached.ratio('fit_cached', 'student_ce', 'wall').median:.3f} | ≤ {CACHED_TARGET} | "
        f"{met(cached.median <= CACHED_TARGET)} |",
        f"| {name} | fit step with `CachedTeacher` / plain student step with the ReLUs in place as fit runs them | "
        f"{short(r.cached.ratio('fit_cached', 'student_ce_inplace'))} | "
        f"{r.cached.ratio('fit_cached', 'student_ce_inplace', 'wall').median:.3f} | — | |",
        f"| {name} | fit step with `CachedTeacher` / student step with the KD loss on its cached logits (gathered "
        f"ahead) | {short(r.cached.ratio('fit_cached', 'student_kd'))} | "
        f"{r.cached.ratio('fit_cached', 'student_kd', 'wall').median:.3f} | — | |",
        f"| {name} | fit with `train.channels_last: false` / default fit | "
        f"{short(s.ratio('fit_contiguous', 'fit'))} | {s.ratio('fit_contiguous', 'fit', 'wall').median:.3f} | — | |",
        f"| {name} | fit with `train.fold_teacher_batchnorm: false` / default fit | "
        f"{short(s.ratio('fit_unfolded', 'fit'))} | {s.ratio('fit_unfolded', 'fit', 'wall').median:.3f} | — | |",
        f"| {name} | full epoch with shift: usual loop (its best: {usual.replace('usual_w', 'num_workers=')}) / "
        f"default fit | {e.ratio('usual_w0', 'fit').median:.3f} (num_workers=0) | "
        f"{short(e.ratio(usual, 'fit', 'wall'))} | — | |",
    ]


def loss_gap(t: Timings) -> float:
    """The largest relative difference between default fit's and the hand-written loop's mean epoch loss, over the
    rounds (each trains both from the same initial weights on the same batches)."""
    return max(abs(a.loss - b.loss) / abs(b.loss) for a, b in zip(t.samples["fit"], t.samples["hand"])
               if a.loss is not None and b.loss is not None)


def timings_table(t: Timings, names: dict[str, str]) -> list[str]:
    lines = ["| variant | CPU ms/step, median | fastest | wall ms/step, median | fastest | rounds (CPU ms/step) |",
             "|---|---:|---:|---:|---:|---|"]
    for key, what in names.items():
        cpu = (f"{t.ms(key):.2f} | {t.min_ms(key):.2f}" if t.has(key, "cpu") else "— | —")
        seq = ", ".join(f"{1000 * v:.1f}" for v in t.seconds(key, "cpu")) if t.has(key, "cpu") else "—"
        lines.append(f"| {what} | {cpu} | {t.ms(key, 'wall'):.2f} | {t.min_ms(key, 'wall'):.2f} | {seq} |")
    return lines


STEP_NAMES = {
    "fit": "`fit` with its defaults, `FrozenTeacher`, KD (memory format: `auto`)",
    "hand": "hand-written loop: `DataLoader(TensorDataset)` in fit's order, `no_grad` teacher, `F.kl_div` + CE, "
            "`.item()` per step (contiguous)",
    "bound": "bound: batches gathered ahead, teacher (batch norms folded as fit does) under `inference_mode`, "
             "`kd_loss` (fit's memory format)",
    "fit_contiguous": "`fit` with `train.channels_last: false`",
    "fit_unfolded": "`fit` with `train.fold_teacher_batchnorm: false`",
}
CACHED_NAMES = {
    "fit_cached": "`fit` with its defaults, `CachedTeacher` (full float32 logits), KD",
    "student_ce": "plain student step: batches gathered ahead, cross-entropy (fit's memory format)",
    "student_kd": "student step with the KD loss: batches and their cached teacher logits gathered ahead, `kd_loss` "
                  "(fit's memory format)",
    "student_ce_inplace": "plain student step with the student's ReLUs in place where fit puts them",
}
LONG_NAMES = {
    "fit_long": "`fit` with its defaults on a long run (`train.teacher_compile: auto` decides on a compiled teacher)",
    "hand": "hand-written loop, as above",
}
EPOCH_NAMES = {
    "fit": "`fit`, `train.augment.shift`, `FrozenTeacher`, KD",
    "usual_w0": "usual loop, `DataLoader(num_workers=0)`",
    "usual_w2": "usual loop, `DataLoader(num_workers=2, persistent_workers=True)` (CPU: workers not counted)",
    "data_ours": "data alone, ours: gather by index + batched `random_shift`",
    "data_usual_w0": "data alone, usual: iterate `DataLoader(num_workers=0)`",
    "data_usual_w2": "data alone, usual: iterate `DataLoader(num_workers=2)`",
}


def probe_ms(c: Chosen) -> str:
    return ", ".join(f"{k} {v:.2f} ms" for k, v in c.ms.items()) + " per step"


def fold_md(fold: TeacherFold | None) -> str:
    if fold is None:
        return "the teacher has no batch norm"
    if fold.folded:
        return (f"fit folded **{fold.folded}** into the convolutions before them (a copy for the forward; the "
                "bound's teacher is the same folded copy)")
    return f"**not folded** ({fold.decided_by})"


def case_section(r: CaseResult) -> list[str]:
    c, s, e = r.case, r.step, r.epoch
    usual = best_usual(e)
    compute = s.ms("bound")  # teacher forward + student step, same models and batch size
    sweep_rounds = len(r.batch_sweep[0].timings.samples["fit"])
    lines = [f"## {c.name}: {c.title}", "",
             f"Teacher {r.params['teacher'] / 1e6:.3f}M parameters, {r.gflops['teacher']:.2f} GFLOPs forward per "
             f"batch; student {r.params['student'] / 1e6:.3f}M parameters, {r.gflops['student']:.3f} GFLOPs "
             f"forward per batch; batch {c.batch_size}; fit's default training settings (SGD, lr "
             f"{OPTIMIZER.lr:g}, momentum {OPTIMIZER.momentum:g}, weight decay {OPTIMIZER.weight_decay:g} but not on "
             f"1-d parameters; cosine schedule per step); KD at T = {TEMPERATURE:g}, alpha = {ALPHA}. Case wall time "
             f"{fmt_seconds(r.wall)}, load average at its end {r.load}.", "",
             f"Memory format (`train.channels_last: auto`): fit's probe chose **{r.chosen.name}** with the live "
             f"teacher ({probe_ms(r.chosen)}) and **{r.chosen_cached.name}** with a cached one "
             f"({probe_ms(r.chosen_cached)}); each probe took {r.chosen.wall:.2f} s and {r.chosen_cached.wall:.2f} s "
             "of wall time once at start-up (a process probes the same models once).", "",
             f"Teacher batch norms (`train.fold_teacher_batchnorm: auto`): {fold_md(r.fold)}.", "",
             f"### Distillation step ({s.steps} steps per timed epoch, {len(s.samples['fit'])} rounds)", ""]
    lines += timings_table(s, STEP_NAMES)
    losses = ", ".join(f"{a.loss:.6f}/{b.loss:.6f}" for a, b in zip(s.samples["fit"], s.samples["hand"])
                       if a.loss is not None and b.loss is not None)
    lines += ["", f"- hand-written loop / default fit: CPU {s.ratio('hand', 'fit').md()}, wall "
              f"{s.ratio('hand', 'fit', 'wall').md()}.",
              f"- the same training: each round's mean loss, fit/hand: {losses} (largest relative difference "
              f"{loss_gap(s):.1e}).",
              f"- fit / bound: CPU {s.ratio('fit', 'bound').md()}, wall {s.ratio('fit', 'bound', 'wall').md()}; "
              f"fit − bound = {s.ms('fit') - s.ms('bound'):+.2f} ms/step of CPU (medians).",
              f"- fit with `train.channels_last: false` / default fit: {s.ratio('fit_contiguous', 'fit').md()}; "
              f"hand-written loop / fit with `train.channels_last: false`: {s.ratio('hand', 'fit_contiguous').md()}.",
              f"- fit with `train.fold_teacher_batchnorm: false` / default fit: {s.ratio('fit_unfolded', 'fit').md()}.",
              "",
              f"### Cached teacher ({r.cached.steps} steps per timed epoch)", ""]
    lines += timings_table(r.cached, CACHED_NAMES)
    cached_gap = r.cached.ms("fit_cached") - r.cached.ms("student_ce")
    cached_cpu = r.cached.ratio("fit_cached", "student_ce")
    cached_wall = r.cached.ratio("fit_cached", "student_ce", "wall")
    lines += ["", f"- fit with `CachedTeacher` / plain student step: CPU {cached_cpu.md()}, wall {cached_wall.md()}; "
              f"{cached_gap:+.2f} ms/step of CPU.",
              f"- fit with `CachedTeacher` / student step with the KD loss (the arithmetic the method needs): CPU "
              f"{r.cached.ratio('fit_cached', 'student_kd').md()}; the KD loss's own cost, student step with it / "
              f"plain student step: {r.cached.ratio('student_kd', 'student_ce').md()}.",
              "", f"### Long run ({r.long.timings.steps} steps timed after {LONG_SKIPPED_STEPS}, of a run configured "
              f"for {LONG_EPOCHS:,} epochs and stopped after its first)", ""]
    lines += timings_table(r.long.timings, LONG_NAMES)
    lines += ["", f"- hand-written loop / default fit on a long run: CPU "
              f"{r.long.timings.ratio('hand', 'fit_long').md()}, wall "
              f"{r.long.timings.ratio('hand', 'fit_long', 'wall').md()}; {long_compiled(r.long)}.",
              "", f"### Full epoch against the usual loop ({e.steps} steps of {c.batch_size}, random shift of up to "
              f"{c.shift} px)", ""]
    lines += timings_table(e, EPOCH_NAMES)
    lines += ["", f"- usual loop (best: {usual}) / fit, wall: {e.ratio(usual, 'fit', 'wall').md()}; num_workers=0 / "
              f"fit, CPU: {e.ratio('usual_w0', 'fit').md()}; num_workers=2 / fit, wall: "
              f"{e.ratio('usual_w2', 'fit', 'wall').median:.3f}.",
              f"- Where the time goes (CPU): the usual pipeline's data costs {e.ms('data_usual_w0'):.2f} ms/batch "
              f"in the training process (num_workers=0), ours {e.ms('data_ours'):.2f} ms/batch, against "
              f"{compute:.1f} ms/batch of arithmetic (the bound: teacher forward + student step). Even if our data "
              f"were free, ours could be at most {(compute + e.ms('data_usual_w0')) / compute:.3f}x faster than the "
              "usual loop with num_workers=0; with workers, the usual loop moves even that off the training "
              "process.", "",
              f"### Scaling (numbers behind the plot; CPU time, fastest of {sweep_rounds} rounds)", "",
              "| batch | steps | fit ms/step | bound ms/step | fit µs/example | fit / bound, fastest rounds | "
              "fit / bound, median |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in r.batch_sweep:
        t = p.timings
        ratio = t.ratio("fit", "bound")
        lines.append(f"| {p.label} | {t.steps} | {t.min_ms('fit'):.2f} | {t.min_ms('bound'):.2f} | "
                     f"{1000 * t.min_ms('fit') / t.batch_size:.0f} | {ratio.of_minima:.3f} | {ratio.median:.3f} |")
    lines += ["", f"Teacher size (batch {c.batch_size}, {r.teacher_sweep[0].timings.steps} steps per epoch):", "",
              "| teacher | GFLOPs/batch | teacher forward ms | student step ms | sum ms | bound ms | fit ms | "
              "fit / bound |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in r.teacher_sweep:
        t = p.timings
        tf, st = t.min_ms("teacher_forward"), t.min_ms("student_step")
        lines.append(f"| {p.label} | {p.x:.2f} | {tf:.2f} | {st:.2f} | {tf + st:.2f} | {t.min_ms('bound'):.2f} | "
                     f"{t.min_ms('fit'):.2f} | {t.ratio('fit', 'bound').of_minima:.3f} |")
    lines.append("")
    return lines


def profile_section(results: list[CaseResult], number: int) -> list[str]:
    names = [r.case.name for r in results]
    lines = ["## What fit does per step beyond the bound", "",
             f"Each piece timed alone on each case's batch (CPU time of the thread, best of 5 × {number} calls); "
             "`where` is the function that does it (module and qualified name, as imported).", "",
             f"| piece | {' | '.join(f'µs/step, {n}' for n in names)} | where | note |",
             f"|---|{'---:|' * len(names)}---|---|"]
    for i, piece in enumerate(results[0].pieces):
        us = " | ".join(f"{r.pieces[i].us:.1f}" for r in results)
        notes = {r.case.name: r.pieces[i].note for r in results if r.pieces[i].note}
        note = notes[names[0]] if len(set(notes.values())) == 1 else "; ".join(f"{k}: {v}" for k, v in notes.items())
        lines.append(f"| {piece.what} | {us} | `{piece.where}` | {note} |")
    lines.append("")
    for r in results:
        total = sum(p.us for p in r.pieces if p.per_step)
        bound = r.step.ms("bound")
        lines.append(f"- {r.case.name}: the per-step pieces sum to {total:.0f} µs = {100 * total / 1000 / bound:.2f}% "
                     f"of the {bound:.1f} ms bound step; measured fit − bound: "
                     f"{1000 * (r.step.ms('fit') - r.step.ms('bound')):+.0f} µs/step of CPU (medians, "
                     f"IQR of the ratio {r.step.ratio('fit', 'bound').q1:.3f}–{r.step.ratio('fit', 'bound').q3:.3f}).")
    lines.append("")
    return lines


def findings(results: list[CaseResult]) -> list[str]:
    """What the numbers say, written from the numbers (so that a rerun's report stays true)."""

    def each(value: Callable[[CaseResult], float], fmt: str = ".3f") -> str:
        return ", ".join(f"{r.case.name} {value(r):{fmt}}" for r in results)

    def piece_us(r: CaseResult, start: str) -> float:
        return next(p.us for p in r.pieces if p.what.startswith(start))

    default_ok = all(r.step.ratio("hand", "fit").median >= DEFAULT_TARGET for r in results)
    losses_ok = all(loss_gap(r.step) <= LOSS_TOLERANCE for r in results)
    step_ok = all(r.step.ratio("fit", "bound").median <= STEP_TARGET for r in results)
    cached_ok = all(r.cached.ratio("fit_cached", "student_ce").median <= CACHED_TARGET for r in results)
    overhead = max(sum(p.us for p in r.pieces if p.per_step) / 10 / r.step.ms("bound") for r in results)

    def cached_accounted_pct(r: CaseResult) -> float:
        """fit's work beyond the plain student step (bookkeeping, gather, cache lookup, the KD loss), % of it."""
        bookkeeping = sum(p.us for p in r.pieces if p.per_step and not p.what.startswith("objective module"))
        extra = bookkeeping + piece_us(r, "only with a cached teacher") + piece_us(r, "only against the plain")
        return 100 * extra / 1000 / r.cached.ms("student_ce")

    lines = ["## Findings", "",
             f"1. **Default `fit` against the hand-written loop: {each(lambda r: r.step.ratio('hand', 'fit').median)}x "
             f"(CPU time, median; target ≥ {DEFAULT_TARGET}: {'met' if default_ok else 'missed'}), the same "
             f"training: {'losses agree' if losses_ok else 'losses DIFFER'} to a relative "
             f"{max(loss_gap(r.step) for r in results):.0e}.** The gain is the memory format that fit's start-up "
             "probe chose (`train.channels_last: auto`): "
             + ", ".join(f"{r.case.name} {r.chosen.name} ({probe_ms(r.chosen)})" for r in results)
             + "; and the teacher's batch norms folded into its convolutions (`train.fold_teacher_batchnorm: auto`: "
             + ", ".join(f"{r.case.name} {r.fold.folded if r.fold else 0}" for r in results)
             + "; fit with it off / default fit: "
             f"{each(lambda r: r.step.ratio('fit_unfolded', 'fit').median)}). "
             "Hand-written loop / fit with `train.channels_last: false`: "
             f"{each(lambda r: r.step.ratio('hand', 'fit_contiguous').median)}: the hand-written loop could gain "
             "the same by converting its models and batches, which is what the user no longer has to know. On a long "
             "run (a run configured for many epochs, its steps timed once the teacher is compiled where "
             "`train.teacher_compile: auto` finds that it pays): hand-written loop / default fit "
             f"{each(lambda r: r.long.timings.ratio('hand', 'fit_long').median)} ("
             + "; ".join(f"{r.case.name}: {long_compiled(r.long)}" for r in results) + ").",
             f"2. **Per-step overhead: fit / bound {each(lambda r: r.step.ratio('fit', 'bound').median)} (target "
             f"≤ {STEP_TARGET}: {'met' if step_ok else 'missed'}); with a cached teacher, fit / plain student step "
             f"{each(lambda r: r.cached.ratio('fit_cached', 'student_ce').median)} (target ≤ {CACHED_TARGET}: "
             f"{'met' if cached_ok else 'missed'}).** Both bounds are in the memory format fit chose. What fit does "
             "beyond the bound (learning-rate update, batch gather, channels_last conversion of the batch, teacher "
             f"wrapper, autocast context, finite flag, loss tracker) costs at most {overhead:.2f}% of a step (table "
             "below). Against the plain student step the cached run also computes the KD loss and looks up the "
             f"cache: accounted for, {each(cached_accounted_pct, '.1f')} % of the step; the cache lookup itself "
             f"({each(lambda r: piece_us(r, 'only with a cached teacher'), '.1f')} µs over a bare `index_select`) no "
             "longer checks its indices per call (no host sync): fit checks the cache's size once, before training.",
             "3. **The probe** times student forward + backward and teacher forward in each layout on a batch of the "
             "run's size (one warm-up call each, then 2 to 12 interleaved rounds within about 1 s, the fastest of "
             "each) and keeps channels_last when it takes at most 0.95 of a contiguous step. Its one-time cost: "
             f"{each(lambda r: r.chosen.wall, '.1f')} s (wall) at the start of a run, the time of "
             f"{each(lambda r: 1000 * r.chosen.wall / r.step.ms('fit', 'wall'), '.0f')} default steps. "
             "Measured on one CPU thread (torch CPU build, oneDNN); on a GPU the probe decides there (channels_last "
             "pays mostly with AMP)."]
    target = [r for r in results if r.case.name == "fmnist"]
    for r in target:
        e, usual = r.epoch, best_usual(r.epoch)
        compute, data = r.step.ms("bound"), e.ms("data_usual_w0")
        lines.append(
            f"4. **Full epoch with shift augmentation against the usual DataLoader loop: "
            f"{e.ratio(usual, 'fit', 'wall').median:.2f}x (wall, its best configuration)** — mostly the memory "
            f"format again: the usual loop's per-sample pipeline costs {data:.2f} ms per batch of "
            f"{r.case.batch_size} (num_workers=0), ours {e.ms('data_ours'):.2f} ms, against {compute:.1f} ms of "
            "arithmetic.")
    lines.append(
        "5. **Small costs in the hot path** (table below): batches are gathered with `index_select` "
        f"(`{where(TensorBatches.__call__)}`: {each(lambda r: piece_us(r, 'batch gather'), '.0f')} µs, "
        "`x[index]` takes several times longer); a batch both models see is converted to channels_last once "
        f"(`{where(make_views)}`); `random_shift` (`{where(random_shift)}`) takes two `gather`s, bit-identical to "
        "the former 4-D advanced index and faster (the note in the table).")
    lines.append("")
    return lines


def write_report(out: Path, results: list[CaseResult], plot_path: Path, plot_note: str, wall: float,
                 load_start: str, load_end: str, budget: Budget, quick: bool) -> None:
    lines = ["# Throughput: default `fit` against a hand-written loop, the physical bound and the usual PyTorch loop",
             ""]
    if quick:
        lines += ["**Quick mode (smoke test): tiny models and random data; the numbers mean nothing.**", ""]
    lines += [
        "`fit` runs with its defaults (the memory format chosen by its start-up probe, `train.channels_last: auto`; "
        "the teacher's batch norms folded into its convolutions, `train.fold_teacher_batchnorm: auto`), "
        "the hand-written loop with its own (contiguous tensors) and the same training settings, from the same "
        "initial weights, on the same batches in the same order, so that their losses must agree. "
        "The physical bound of a distillation step is (student forward + backward + optimizer step) + (teacher "
        "forward), in the memory format fit chose; with cached teacher outputs, the student step alone. "
        "All times are from one process, on the same "
        "models and data, with the variants of each comparison interleaved round by round (A B C A B C ...; the "
        "first round is warm-up and dropped). A ratio is the **median over rounds** of the per-round ratio, with its "
        "interquartile range and the ratio of the fastest rounds (*minima*: interference only adds time). "
        f"{budget.rounds} measured rounds per comparison ({budget.cached_rounds} for the cached teacher); "
        f"{budget.sweep_rounds} rounds in the sweeps, without a "
        "warm-up round, of which the fastest is shown (a sweep point is indicative: per-round ratios scatter by about "
        "±10% here even on CPU time, as caches and memory bandwidth are shared).", "",
        "Two clocks: **CPU** is the CPU time of the training thread (`time.thread_time()`; torch runs on that one "
        "thread), which leaves out the time the thread waits for a core on this shared machine; **wall** is "
        "elapsed time. The step targets are judged on CPU time (on a loaded machine wall times of the same loop "
        "vary 2-3x between rounds); the full-epoch comparison on wall time, because the usual loop's DataLoader "
        "workers work in other processes. For `fit`, wall is its own `history[-1]['train_time_s']` (the epoch's "
        "training loop; no validation data and no checkpoint directory, so nothing else runs) and CPU is the call "
        "minus the same call with `epochs=0` (its setup). Teachers are randomly initialized (speed does not depend "
        "on the weights).", "",
        "## Summary", "",
        "| case | ratio | CPU: median (IQR; of minima) | wall: median | target | |", "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines += summary_rows(r)
    lines += ["", "The full-epoch row: its CPU column is num_workers=0 / fit on CPU time, its wall column the usual "
              "loop's best configuration / fit.", "",
              f"![throughput]({plot_path.name})" if not plot_note else plot_note, ""]
    lines += findings(results)
    for r in results:
        lines += case_section(r)
    lines += profile_section(results, budget.micro_number)
    lines += [*how_it_was_run(wall, load_start, load_end),
              provenance(),
              f"- `torch.set_num_threads({torch.get_num_threads()})` for the whole run (the DataLoader's workers "
              "use 1 thread each, as PyTorch sets them)", ""]
    save_report(out, lines)


def cached_only(case: Case, budget: Budget) -> str:
    """``--cached-only``: the cached-teacher comparison of one case alone, as one line."""
    t0 = time.perf_counter()
    bench = build_bench(case, max(budget.max_steps, 3) * case.batch_size)
    steps_cached = choose_steps(bench, budget)[1]
    timings = compare_cached(bench, steps_cached, budget.cached_rounds, budget.warmup)
    ratio, kd = timings.ratio("fit_cached", "student_ce"), timings.ratio("fit_cached", "student_kd")
    inplace = timings.ratio("fit_cached", "student_ce_inplace")
    return (f"fit with CachedTeacher / plain student step, CPU time: {ratio.md()}; / student step with the KD loss: "
            f"{kd.md()}; / plain student step with fit's ReLUs in place: {inplace.md()} "
            f"({steps_cached} steps per epoch, {budget.cached_rounds} rounds, "
            f"{time.perf_counter() - t0:.0f} s, load average {load_average()})")


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("tiny models, random data, 1 round: a smoke test")
    p.add_threads(default=1).add_out(DEFAULT_OUT)
    p.add_argument("--cases", default="fmnist,resnet", help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, help="measured rounds per comparison (default: 5, cached: 8; quick: 1)")
    p.add_argument("--sweep-rounds", type=int, help="rounds per point of the sweeps (default: 3; quick: 1)")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG plot (default: %(default)s)")
    p.add_argument("--cached-only", action="store_true",
                   help="only the cached-teacher comparison (fit with CachedTeacher / plain student step), printed, "
                        "no report: to rerun its noisy ratio with more --rounds")
    args = p.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in cases]
    if unknown or not names:
        p.error(f"unknown case(s) {unknown}; choose from {list(cases)}")
    budget = QUICK if args.quick else Budget()
    if args.rounds:
        budget = replace(budget, rounds=args.rounds, cached_rounds=args.rounds)
    if args.sweep_rounds:
        budget = replace(budget, sweep_rounds=args.sweep_rounds)
    torch.set_num_threads(args.threads)

    if args.cached_only:
        for name in names:
            print(f"{name}: " + cached_only(cases[name], budget), flush=True)
        return 0
    load_start = load_average()
    t0 = time.perf_counter()
    results = []
    for name in names:
        results.append(run_case(cases[name], budget))
        for row in summary_rows(results[-1]):
            print(row, flush=True)
    plot_note = plot(results, args.plot)
    write_report(args.out, results, args.plot, plot_note, time.perf_counter() - t0, load_start, load_average(),
                 budget, args.quick)
    print(f"wrote {args.out}" + ("" if plot_note else f" and {args.plot}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
