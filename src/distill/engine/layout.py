"""The memory format of a run, chosen once before the loop: channels_last (NHWC) or contiguous (NCHW).

Convolutions run on layout-specific kernels. On the CPU (oneDNN) a channels_last step of the
benchmark's conv pairs takes 0.49-0.77x the time of a contiguous one
(``benchmarks/results/throughput.md``); on CUDA, channels_last pays mostly under AMP (tensor cores)
and can be slower in fp32. Which one wins depends on the device, the precision and the models, so
``train.channels_last: auto`` (the default) measures: :func:`probe` times a few steps of each layout
on a real batch and :func:`decide` keeps the faster. ``true``/``false`` override it and skip the
probe. A run without a convolution on images (4-d inputs and an ``nn.Conv2d`` in the student or
the teacher) stays contiguous, unprobed. Student, live teacher and objective (its connectors) are
converted in place for the run and back to contiguous when ``fit`` returns; each batch is converted
once (once for both models when they see the same tensor).

**Mixed precision** (``train.amp: auto`` on CUDA, where bf16 runs): the same probe also decides the student's
autocast. It times each layout in fp32 and under bf16 autocast (a grid: ``contiguous``, ``channels_last``,
``contiguous+bf16``, ``channels_last+bf16``; the contiguous layout only for a run without convolutions on images)
and keeps bf16 only when its fastest step takes at most :data:`AMP_MARGIN` of the fastest fp32 one: small models
on a fast GPU are bound by kernel launches, and autocast's casts add kernels (on an H200 the Fashion-MNIST CNN
pair's bf16 step was slower than its fp32 one); then the layout is the faster under that precision. The choice is
``amp`` in the record (``bf16`` or ``off``); on the CPU ``auto`` stays fp32 unprobed, and an explicit
``train.amp`` is not probed.

Both layouts compute the same functions; results agree to float tolerance, not bit for bit (the
kernels sum in different orders). So the choice is logged and recorded in every epoch's record
(``memory_format``) and in ``last.pt``; a run resumed under ``auto`` keeps the layout it was trained
in; a process probes the same models once (:func:`measured`), so its runs of them agree bit for bit.
Two processes agree unless the layouts are within a few percent of each other, where timing noise
can pick either: set ``train.channels_last`` to pin it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

CHANNELS_LAST, CONTIGUOUS = "channels_last", "contiguous"

MARGIN = 0.95
"""channels_last is chosen when its step takes at most this fraction of a contiguous one: within 5% the two are
the same speed as far as a few steps on a shared machine can tell, and the plain layout stays."""

AMP_MARGIN = 0.9
"""Under ``train.amp: auto`` bf16 is kept when its fastest probed step takes at most this fraction of the fastest
fp32 step: mixed precision changes the numbers, so only for a clear gain."""
AMP_NAMES: dict[torch.dtype, str] = {torch.bfloat16: "bf16", torch.float16: "fp16"}

PROBE_ROUNDS = (2, 12)  # timed rounds per layout (at least, at most), after one warm-up call of each
PROBE_BUDGET_S = 1.0  # no more rounds than the minimum once the timed rounds have taken this long

_probed: dict[tuple[Any, ...], dict[str, float]] = {}
"""Probes already made in this process, by what they depend on (:func:`measured`)."""

cpu_clock: Callable[[], float] = time.process_time
"""The probe's clock on the CPU: the process's CPU time, which a busy shared machine cannot inflate by taking the
core away mid-step (wall time there once timed both layouts alike). Tests replace it with a fake one."""
wall_clock: Callable[[], float] = time.perf_counter
"""The probe's clock on an accelerator: wall time, the device synchronized before each reading."""


@dataclass(frozen=True)
class MemoryFormat:
    """The run's layout, why (``decided_by``), and the probe's milliseconds per step of each layout."""

    name: str  # CHANNELS_LAST or CONTIGUOUS
    decided_by: str  # "train.channels_last", "probe", "probe failed (<error>)" or "not convolutional"
    ms_per_step: dict[str, float] = field(default_factory=dict)
    amp: str | None = None  # train.amp: auto on CUDA, probed: "bf16" or "off" (None: not probed, train.amp rules)

    @property
    def channels_last(self) -> bool:
        return self.name == CHANNELS_LAST

    def record(self) -> dict[str, Any]:
        """What the history and ``last.pt`` record (JSON)."""
        out = {"format": self.name, "decided_by": self.decided_by, "ms_per_step": dict(self.ms_per_step)}
        return out if self.amp is None else {**out, "amp": self.amp}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MemoryFormat:
        return cls(record["format"], record.get("decided_by", "train.channels_last"),
                   dict(record.get("ms_per_step") or {}), record.get("amp"))

    def line(self) -> str:
        """The one log line."""
        ms = ", ".join(f"{k} {v:.2f}" for k, v in self.ms_per_step.items())
        if self.amp is not None:
            how = {"probe": "train.channels_last: auto", "not convolutional": "no Conv2d on 4-d inputs"}.get(
                self.decided_by, self.decided_by)
            return f"memory format: {self.name}, amp {self.amp} ({how}; train.amp: auto; probe, ms per step: {ms})"
        if self.decided_by == "probe":
            return f"memory format: {self.name} (train.channels_last: auto; probe, ms per step: {ms})"
        if self.decided_by.startswith("probe failed"):
            return f"memory format: {self.name} (train.channels_last: auto; the {self.decided_by})"
        if self.decided_by == "not convolutional":
            return f"memory format: {self.name} (no Conv2d on 4-d inputs)"
        return f"memory format: {self.name} (train.channels_last)"


def is_convolutional(x: Tensor, models: Iterable[nn.Module | None]) -> bool:
    """4-d inputs and an ``nn.Conv2d`` in one of ``models``: where the memory format matters."""
    return x.dim() == 4 and any(isinstance(m, nn.Conv2d) for model in models if model is not None
                                for m in model.modules())


def decide(ms_per_step: dict[str, float], margin: float = MARGIN) -> str:
    """The layout to train in, from the probe's milliseconds per step: channels_last when it takes at most
    ``margin`` of a contiguous step, else contiguous."""
    return CHANNELS_LAST if ms_per_step[CHANNELS_LAST] <= margin * ms_per_step[CONTIGUOUS] else CONTIGUOUS


def variant(layout: str, amp: torch.dtype | None) -> str:
    """The probe's name of a layout under an autocast dtype: ``contiguous``, ``channels_last+bf16``, ..."""
    return layout if amp is None else f"{layout}+{AMP_NAMES[amp]}"


def decide_amp(ms_per_step: dict[str, float], low: torch.dtype, margin: float = AMP_MARGIN) -> str:
    """``train.amp: auto``'s choice from the probe's grid: the low precision's name when its fastest step takes at
    most ``margin`` of the fastest fp32 one, else ``off``."""
    name = AMP_NAMES[low]
    fp32 = min(v for k, v in ms_per_step.items() if "+" not in k)
    lowest = min(v for k, v in ms_per_step.items() if k.endswith("+" + name))
    return name if lowest <= margin * fp32 else "off"


def convert(modules: Iterable[nn.Module | None], name: str) -> None:
    """Put the 4-d parameters and buffers of ``modules`` in layout ``name`` (in place: the parameters stay the
    same objects, so an optimizer built on them still holds them)."""
    fmt = torch.channels_last if name == CHANNELS_LAST else torch.contiguous_format
    for module in modules:
        if module is not None:
            module.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack the keyword


def in_layout(x: Tensor, name: str) -> Tensor:
    """``x`` in the memory format ``name``; a tensor that is not 4-d (no channels_last layout) as it is."""
    if x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last if name == CHANNELS_LAST else torch.contiguous_format)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU), so that the clock times the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def _side_effects_undone(student: nn.Module, teacher: nn.Module | None, device: torch.device) -> Iterator[None]:
    """The probe leaves no trace: the random streams, the buffers (batch-norm statistics) and the gradients are
    as before."""
    modules = [m for m in (student, teacher) if m is not None]
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    grads = [(p, p.grad) for p in student.parameters()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for p, g in grads:
                p.grad = g


def _shape_of(model: nn.Module | None) -> tuple[Any, ...]:
    if model is None:
        return ()
    return (tuple(type(m).__name__ for m in model.modules()),
            tuple((tuple(t.shape), t.dtype) for t in (*model.parameters(), *model.buffers())))


def measured(student: nn.Module, teacher: nn.Module | None, x: Tensor, x_teacher: Tensor, device: torch.device,
             amp_dtype: torch.dtype | None = None, layouts: tuple[str, ...] = (CONTIGUOUS, CHANNELS_LAST),
             amps: tuple[torch.dtype | None, ...] | None = None) -> dict[str, float]:
    """:func:`probe`, once per process for the same architectures, batch shapes, device, precision(s) and
    layouts: later runs of the same models (a sweep, the stages of a recipe, a rerun in a notebook) reuse its
    numbers, so they train in the same layout and give the same numbers as each other."""
    key = (str(device), amp_dtype, _shape_of(student), _shape_of(teacher), tuple(x.shape), x.dtype,
           tuple(x_teacher.shape), x_teacher is x, layouts, amps)
    if key not in _probed:
        _probed[key] = probe(student, teacher, x, x_teacher, device, amp_dtype, layouts=layouts, amps=amps)
    return dict(_probed[key])


def probe(student: nn.Module, teacher: nn.Module | None, x: Tensor, x_teacher: Tensor, device: torch.device,
          amp_dtype: torch.dtype | None = None, rounds: tuple[int, int] = PROBE_ROUNDS,
          budget_s: float = PROBE_BUDGET_S, layouts: tuple[str, ...] = (CONTIGUOUS, CHANNELS_LAST),
          amps: tuple[torch.dtype | None, ...] | None = None) -> dict[str, float]:
    """Milliseconds per step of each layout: the student's forward and backward (in training mode, under the
    run's autocast) plus the teacher's forward (``inference_mode``, fp32) on the batch ``x`` (the teacher's view
    ``x_teacher``). One untimed warm-up call per layout, then timed rounds, the layouts alternating (so that a change
    of load hits both): at least ``rounds[0]``, and more up to ``rounds[1]`` while the timed rounds have taken
    less than ``budget_s`` (a small model gets many, a large one the minimum). Of each layout the fastest round
    counts (interference only adds time). Timed in CPU time of the process on the CPU (:data:`cpu_clock`), in
    wall time on an accelerator (:data:`wall_clock`). Leaves the models contiguous, and the random streams, buffers and
    gradients as they were. With ``amps`` (autocast dtypes, None for fp32) each of ``layouts`` is timed under each
    (named by :func:`variant`) instead of under ``amp_dtype`` alone."""
    models = [student, teacher]
    same = x_teacher is x
    grid = {variant(name, amp) if amps is not None else name: (name, amp)
            for amp in (amps if amps is not None else (amp_dtype,)) for name in layouts}

    def step(key: str) -> None:
        name, amp = grid[key]
        xs = in_layout(x, name)
        xt = xs if same else in_layout(x_teacher, name)
        if teacher is not None:  # a live teacher runs in its own precision, not under the student's autocast
            with torch.inference_mode():  # (engine.teacher_forward): fp32 here, the same in every variant
                teacher(xt)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = student(xs)
        if isinstance(out, Tensor) and out.requires_grad:  # a frozen student (a stage that trains connectors only)
            out.float().mean().backward()                  # has no backward through it
        student.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {key: [] for key in grid}
    clock = cpu_clock if device.type == "cpu" else wall_clock
    was_training = student.training
    with _side_effects_undone(student, teacher, device):
        try:
            student.train()
            for name in times:  # warm-up: first calls allocate, pick kernels, fill caches
                convert(models, grid[name][0])
                step(name)
            spent = 0.0
            for r in range(rounds[1]):
                for name in times:
                    convert(models, grid[name][0])
                    synchronize(device)
                    t0 = clock()
                    step(name)
                    synchronize(device)
                    times[name].append(clock() - t0)
                    spent += times[name][-1]
                if r + 1 >= rounds[0] and spent > budget_s:
                    break
        finally:
            convert(models, CONTIGUOUS)
            student.train(was_training)
    return {name: round(1e3 * min(t), 3) for name, t in times.items()}
