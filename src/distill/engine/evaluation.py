"""Evaluation and model selection: logits in eval mode, accuracy/NLL on a split, validation under
DDP (each rank a slice, sums reduced), and the selection rule (``train.selection``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import distributed
from distill.data.tensors import DataSplits, TensorData, split_batches
from distill.diagnostics import (
    PredictionCollapseWarning,
    advice_for,
    collapse_warnings,
    training_collapse_warnings,
)
from distill.methods.base import Objective
from distill.engine.progress import Phase
from distill.metrics import expected_calibration_error


@dataclass
class Evaluation:
    """Accuracy, errors, mean NLL and expected calibration error (:data:`~distill.metrics.ECE_BINS` bins) of a
    model on one split, with its top-1 predictions and the labels they are of (``labels``: the split's, less
    any file of a streamed split that could not be decoded)."""

    accuracy: float
    errors: int
    nll: float
    n: int
    predictions: Tensor
    ece: float = float("nan")
    labels: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return default


PHASE_MIN_BATCHES = 8
"""A prediction pass shows progress (``say``) only from this many batches on: shorter ones are over at once."""


def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024,
                   say: Callable[[str], None] | None = None, desc: str = "predicting") -> Tensor:
    """Logits for all of ``x`` in eval mode, without a graph; restores the model's mode.

    ``x`` may live elsewhere than the model (e.g. in host memory): each chunk is moved to the
    model's device; the logits are on the model's device. ``say``: where a long pass (at least
    :data:`PHASE_MIN_BATCHES` batches) shows its progress, as ``desc`` (:class:`distill.engine.progress.Phase`).
    """
    device = _device_of(model, x.device)
    was_training = model.training
    model.eval()
    n = x.shape[0]
    shown = say if -(-n // batch_size) >= PHASE_MIN_BATCHES else None
    try:
        with torch.inference_mode(), Phase(n, desc, unit="example", say=shown) as phase:
            parts = []
            for i in range(0, n, batch_size):
                parts.append(model(x[i : i + batch_size].to(device)).float())
                phase.update(min(batch_size, n - i))
            return torch.cat(parts)
    finally:
        model.train(was_training)


def split_logits(model: nn.Module, data: TensorData, batch_size: int = 1024,
                 say: Callable[[str], None] | None = None, desc: str = "evaluating") -> tuple[Tensor, Tensor]:
    """Logits of every example of ``data`` (:func:`predict_logits`, ``batch_size`` at a time) and their
    labels, on the model's device. A split streamed from disk is read batch by batch in index order (the
    same batches as in memory, so the same logits); its files that cannot be decoded are left out of both.
    ``say`` and ``desc``: the progress of a long pass in memory (:func:`predict_logits`)."""
    if data.stream is None:
        logits = predict_logits(model, data.x, batch_size, say, desc)
        return logits, data.y.to(logits.device)
    device = _device_of(model, torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [(model(x).float(), y) for x, y, _ in split_batches(data, batch_size, device)]
    finally:
        model.train(was_training)
    return torch.cat([z for z, _ in parts]), torch.cat([y for _, y in parts]).to(device)


def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1024,
             say: Callable[[str], None] | None = None, desc: str = "evaluating") -> Evaluation:
    """Accuracy, errors, mean NLL and ECE of ``model`` on ``data`` (eval mode, no graph); ``say`` and ``desc``:
    the progress of a long pass (:func:`predict_logits`)."""
    logits, y = split_logits(model, data, batch_size, say, desc)
    preds = logits.argmax(dim=-1)
    y = y.to(preds.device)
    correct = int((preds == y).sum())
    n = int(y.shape[0])
    nll = float(F.cross_entropy(logits, y, reduction="mean")) if n else float("nan")
    return Evaluation(accuracy=correct / max(n, 1), errors=n - correct, nll=nll, n=n, predictions=preds,
                      ece=expected_calibration_error(logits, y), labels=y)


class Validation(NamedTuple):
    accuracy: float
    nll: float


def validate(model: nn.Module, val: TensorData, batch_size: int, device: torch.device) -> Validation:
    """Validation accuracy and mean NLL. Under DDP each rank evaluates a contiguous slice and the
    sums (correct, NLL, count) are reduced, so every rank gets the same numbers. With more ranks than
    examples a rank's slice is empty: it evaluates nothing and adds zeros, but joins the reduction."""
    start, stop = distributed.shard(len(val))
    if not distributed.is_distributed():
        ev = evaluate(model, val.rows(start, stop), batch_size)
        return Validation(ev.accuracy, ev.nll)
    local = [0, 0.0, 0]  # correct, NLL sum, count: an empty slice's
    if stop > start:
        ev = evaluate(model, val.rows(start, stop), batch_size)
        local = [ev.n - ev.errors, ev.nll * ev.n if ev.n else 0.0, ev.n]
    sums = torch.tensor(local, dtype=torch.float64, device=device)
    correct, nll_sum, n = distributed.all_reduce_sum(sums).tolist()
    return Validation(correct / n, nll_sum / n)


def no_best() -> dict[str, float]:
    """The selection record before any epoch: every validation beats it."""
    return {"epoch": -1, "val_acc": -1.0, "val_nll": math.inf}


def select(val: Validation | None, best: dict[str, float], selection: str, epoch: int) -> dict[str, float] | None:
    """The new selection record if epoch ``epoch`` (1-based) is the best so far under ``selection``
    (``acc``: accuracy, ties broken by NLL; ``nll``; ``last``), else None. Without a validation split
    every epoch is the best (the last one wins)."""
    if val is None or selection == "last":
        improved = True
    elif selection == "nll":
        improved = val.nll < best["val_nll"]
    else:
        improved = (val.accuracy, -val.nll) > (best["val_acc"], -best["val_nll"])
    if not improved:
        return None
    return {"epoch": epoch, "val_acc": val.accuracy if val else float("nan"),
            "val_nll": val.nll if val else float("nan")}


def collapse_check(model: nn.Module, objective: Objective, data: DataSplits, batch_size: int,
                   history: list[dict[str, Any]], best_epoch: int, tag: str,
                   progress: Callable[[str], None] | None, main: bool) -> list[str]:
    """Collapse warnings (:mod:`distill.diagnostics`): the selected model's predictions on the validation
    split, and a fall of validation accuracy to chance during training (which selection hides). Shown
    on rank 0: as progress lines, or as a :class:`PredictionCollapseWarning` when ``progress`` is None
    (a warning is not progress: it is not silenced with it)."""
    if not len(data.val) or not objective.trains_predictions():  # e.g. FitNets' hint stage: not judged
        return []
    advice = advice_for(objective)
    ev = evaluate(model, data.val, batch_size)
    found = collapse_warnings(ev.predictions, ev.labels, data.num_classes, split="validation",
                              advice=advice, class_names=data.class_names)
    found += training_collapse_warnings([r["val/acc"] for r in history if "val/acc" in r], data.val.y,
                                        best_epoch, advice=advice)
    for line in found if main else []:
        if progress is not None:
            progress(f"[{tag}] WARNING: {line}")
        else:
            warnings.warn(f"[{tag}] {line}", PredictionCollapseWarning, stacklevel=3)
    return found
