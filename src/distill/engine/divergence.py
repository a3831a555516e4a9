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


class LossWatch:
    """The first step (this epoch) whose loss was not finite, kept on the device: no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, loss: Tensor, step: int) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)

    def check(self, tag: str, epoch: int, kept: Callable[[], str]) -> None:
        """Raise if the loss was not finite at some step (on any rank: under DDP one rank's NaN spreads
        to every rank through the averaged gradients, and every rank stops). One sync. ``kept()`` says
        what is left on disk (only asked when raising)."""
        never = torch.iinfo(torch.long).max
        bad = int(distributed.min_over_ranks(torch.where(self.first_bad < 0, never, self.first_bad)))
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
