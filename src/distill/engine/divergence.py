"""Divergence policy: training stops (:class:`NonFiniteLossError`) when the loss, the weights or a
metric stops being finite, and no checkpoint is ever written from non-finite state.

The loss is watched without a host sync per step: a device flag records the first bad step, and it
is read only every ``log_every`` steps and at the end of an epoch. The weights are checked once per
epoch, before the checkpoints are written (a step can turn them NaN with a finite loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from distill import distributed


class NonFiniteLossError(RuntimeError):
    """The loss, the weights or a metric became NaN or inf; training stopped and the last good
    checkpoint (written from finite weights and metrics only) was kept."""


_FOLD = 64  # steps whose losses LossWatch keeps before it checks them (a few small ops on the device)


class LossWatch:
    """Whether the loss was finite at every step so far (this epoch), kept on the device: no sync per step.

    A step only keeps a detached reference to its loss (no arithmetic). Every ``_FOLD`` steps, and whenever the
    watch is read, the kept losses are checked together in a few small ops on the device (no host value):
    ``finite = loss * 0 == 0`` (``inf * 0`` and ``nan * 0`` are NaN), ``finite_steps += ok * (leading finite
    steps of the chunk)``, ``ok &= all(finite)``. ``finite_steps`` counts the leading steps with a finite loss, so
    the first bad step is the first observed step plus that count (steps are observed in order, one by one). The
    same flags as checking each step on its own (tests/test_engine_parts.py), with the step's few small
    operations (each one run cold after the model's large ones) moved to one batch of them."""

    def __init__(self, device: torch.device) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.finite_steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_step = 0  # the step observed first
        self.observed = 0  # steps observed
        self._kept: list[Tensor] = []  # the losses of the steps not yet checked

    def observe(self, loss: Tensor, step: int) -> None:
        if self.observed == 0:
            self.first_step = step
        elif step != self.first_step + self.observed:
            raise ValueError(f"LossWatch observes consecutive steps: expected step {self.first_step + self.observed}, "
                             f"got {step}")
        self._kept.append(loss.detach())
        self.observed += 1
        if len(self._kept) >= _FOLD:
            self._check_kept()

    def _check_kept(self) -> None:
        """Fold the kept losses into ``ok`` and ``finite_steps``, on the device."""
        if not self._kept:
            return
        losses, self._kept = torch.stack(self._kept).flatten(), []
        finite = losses * 0 == 0  # isfinite in two kernels (4 in torch.isfinite): inf * 0 is NaN
        self.finite_steps.add_(finite.cumprod(0).sum() * self.ok)  # counted only while every earlier step was finite
        self.ok.logical_and_(finite.all())

    def _first_bad(self, none: int) -> Tensor:
        """The first step whose loss was not finite, or ``none``, on the device."""
        self._check_kept()
        return torch.where(self.finite_steps < self.observed, self.finite_steps + self.first_step, none)

    @property
    def first_bad(self) -> Tensor:
        """The first step whose loss was not finite, or -1 (a device scalar: reading it syncs)."""
        return self._first_bad(-1)

    def check(self, tag: str, epoch: int, kept: Callable[[], str]) -> None:
        """Raise if the loss was not finite at some step (on any rank: under DDP one rank's NaN spreads
        to every rank through the averaged gradients, and every rank stops). One sync. ``kept()`` says
        what is left on disk (only asked when raising)."""
        never = torch.iinfo(torch.long).max
        bad = int(distributed.min_over_ranks(self._first_bad(never)))
        if bad != never:
            raise NonFiniteLossError(
                f"[{tag}] the loss became NaN or inf at step {bad} (epoch {epoch + 1}); training stopped and "
                f"{kept()}. Lower train.optimizer.lr, set train.clip_grad_norm, or check the inputs "
                "for NaN."
            )


def _finite_states(modules: Iterable[nn.Module], device: torch.device) -> Tensor:
    """One flag on ``device``, without a sync: every floating-point parameter and buffer of
    ``modules`` is finite."""
    flags = [torch.isfinite(t).all().to(device) for m in modules for t in m.state_dict().values()
             if t.is_floating_point() or t.is_complex()]
    return torch.stack(flags).all() if flags else torch.tensor(True, device=device)


def check_saveable(model: nn.Module, objective: nn.Module, record: dict[str, Any], device: torch.device, tag: str,
                   epoch: int, kept: Callable[[], str], log: Callable[[dict[str, Any]], None] | None,
                   at: str | None = None) -> None:
    """Raise unless the weights (the model's and the objective's parameters and buffers) and the
    epoch's metrics are all finite: a step can turn the weights NaN with a finite loss (an inf
    gradient), which the loss check cannot see. One device sync (a reduction over ranks under DDP,
    so that every rank stops alike). The epoch's record is logged first (NaN as null). ``at``: when the
    check runs, if not at the end of epoch ``epoch`` (0-based)."""
    bad_metrics = [k for k, v in record.items()
                   if k.startswith(("train/", "val/")) and isinstance(v, float) and not math.isfinite(v)]
    ok = _finite_states((model, objective), device).to(torch.long)
    weights_ok = bool(distributed.min_over_ranks(ok))
    if weights_ok and not bad_metrics:
        return
    if log is not None:
        log(record)
    parts = []
    if not weights_ok:
        names = [f"{k}" for k, t in model.state_dict().items()
                 if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        parts.append(f"weights ({len(names)} tensors: {shown})" if names else "weights (the objective's)")
    if bad_metrics:
        parts.append("metrics (" + ", ".join(f"{k}={record[k]}" for k in bad_metrics) + ")")
    raise NonFiniteLossError(
        f"[{tag}] {at or f'epoch {epoch + 1} ended'} with non-finite {' and '.join(parts)}, though the loss was "
        f"finite at every step (e.g. an inf or NaN gradient); training stopped and {kept()}: no "
        "checkpoint is written from non-finite weights. Lower train.optimizer.lr, set train.clip_grad_norm, "
        "or check the inputs for NaN."
    )
