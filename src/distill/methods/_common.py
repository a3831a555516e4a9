"""What the objectives of several methods share: reading the teacher's targets, checking a loss weight,
the linear warm-up, the logits a logit method distils (standardized or not). Not a method (the registry skips
modules whose name starts with ``_``)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from distill.methods._functional import zscore_logits
from distill.methods.base import Objective, StepOutputs
from distill.teachers import Targets

__all__ = ["check_weight", "warmup_factor", "distilled_logits", "hard_label_terms"]


def _teacher(out: StepOutputs, who: str) -> Targets:
    if out.teacher is None:
        raise RuntimeError(f"{who} needs teacher targets but the step has none; pass a teacher to the engine")
    return out.teacher


def _teacher_logits(out: StepOutputs, who: str) -> Tensor:
    t = _teacher(out, who)
    if t.logits is None:
        raise ValueError(f"{who} needs the teacher's logits; this teacher gives probabilities or a top-k summary "
                         f"only (use a live teacher or a full-logit cache)")
    return t.logits


def check_weight(value: float, name: str) -> float:
    """A loss weight: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def hard_label_terms(objective: Objective, out: StepOutputs) -> dict[str, Tensor]:
    """``{"ce": CE(z_s, y)}``, the cross-entropy of the student's raw logits (in float32) on the hard labels, when
    ``objective`` weighs a ``ce`` term (its weight not 0); else ``{}``. A logit method starts its terms with it
    (or adds it last): the order in which :meth:`~distill.methods.base.Objective.total` adds them."""
    if not objective.weights.get("ce", 0.0):
        return {}
    return {"ce": F.cross_entropy(out.logits.float(), out.labels)}


def warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """``min(epoch / warmup_epochs, 1)``: the linear warm-up of mdistiller's DKD and ReviewKD (1 if no warm-up)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


def distilled_logits(out: StepOutputs, who: str, standardize: bool) -> tuple[Tensor, Tensor]:
    """``(student logits, teacher logits)`` that a logit method's distillation terms read: as they are, or, with
    ``standardize`` (the ``standardize`` option every logit method has), each z-scored over the classes,
    ``(z - mean z) / (std z + 1e-7)`` (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024; :func:`~distill.methods._functional.zscore_logits`).

    This is the one place the switch acts: a method computes its cross-entropy on the labels from the raw
    ``out.logits`` (as the authors' code does) and its distillation terms from these. With standardized logits
    a method's temperature is the paper's *base* temperature (it divides logits of unit standard deviation; the
    authors use 2, or 3 for some pairs). The teacher must give logits (a live teacher or a full-logit cache)."""
    teacher = _teacher_logits(out, who)
    if not standardize:
        return out.logits, teacher
    return zscore_logits(out.logits), zscore_logits(teacher.detach())
