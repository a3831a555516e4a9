"""Matching logits (Ba & Caruana 2014; the high-temperature limit of Hinton et al. 2015): the pure loss
:func:`logit_matching_loss` and the objective, registered as ``logit_matching``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods._common import _teacher, distilled_logits
from distill.methods._functional import (
    _check_logits,
    _check_mask,
    _check_same_shape,
    _compute_dtype,
    _reduce,
    _sanitize,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import register_method

__all__ = ["logit_matching_loss", "LogitMatching"]


def logit_matching_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    r"""Logit regression ``1/(2C) * sum_c (z_s,c - z_t,c)^2``, averaged over positions.

    That is ``0.5 * mean squared error over the class dim`` (Caruana et al. 2006,
    "Model compression" / Ba & Caruana 2014), averaged over positions (masked-in
    ones only when ``mask`` is given).

    Why the ``1/2`` and the mean (not sum) over classes: this is exactly Hinton et
    al.'s high-temperature limit of the scaled distillation loss. For large T,
    ``softmax(z/T)_i ~ (1 + z_i/T) / C`` for zero-mean ``z``, so (Hinton §2.1) the
    unscaled soft-target loss has gradient ``dL/dz_i ~ (z_i - v_i) / (C T^2)``, and

        T^2 * KL(p_t^T || p_s^T)  ->  1/(2C) * sum_c (z_c - v_c)^2      (T -> inf)

    whenever the per-position means of ``z`` and ``v`` agree (e.g. both zero-mean;
    KL is shift-invariant per position, squared error is not). With this
    normalisation the two losses are interchangeable at the same weight ``alpha``.

    Teacher logits are detached. Result float32 (float64 for float64 students).
    """
    s = _check_logits(student_logits, "student_logits")
    t = _check_logits(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, "teacher_logits", "teacher")
    mask = _check_mask(mask, s)
    dtype = _compute_dtype(s)
    s = _sanitize(s.to(dtype), mask)
    t = _sanitize(t.detach().to(dtype), mask)
    per_position = 0.5 * (s - t).square().mean(dim=-1)
    return _reduce(per_position, mask)


@register_method("logit_matching",
                 paper="Ba & Caruana (2014), Do Deep Nets Really Need to be Deep?, NeurIPS; the T -> infinity limit of "
                       "Hinton et al. (2015)'s kd",
                 defaults="alpha = 0.9, as kd",
                 follows_distill_loss=True,
                 order=2)
class LogitMatching(Objective):
    """Caruana et al. (2006) / Hinton's high-temperature limit: ``alpha * mse + (1 - alpha) * ce``.

    ``logit_matching`` = ½ · mean_c (z_s − z_t)², the T → ∞ limit of T² · KL for zero-mean logits,
    so ``alpha`` means the same as in :class:`KnowledgeDistillation`. ``standardize``: distil z-scored
    logits (Sun et al., CVPR 2024; see :func:`distill.methods._common.distilled_logits`); the CE term keeps the
    raw logits.
    """

    needs_teacher = True

    def __init__(self, alpha: float = 0.9, standardize: bool = False) -> None:
        super().__init__({"logit_matching": alpha, "ce": 1.0 - alpha})
        self.alpha = alpha
        self.standardize = standardize

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        t = _teacher(out, "LogitMatching")
        if t.logits is None:
            raise ValueError("logit matching needs teacher logits; this teacher gives probabilities or a top-k "
                             "summary only (use a full-logit cache, or distill.loss=kd)")
        student_logits, teacher_logits = distilled_logits(out, "LogitMatching", self.standardize)
        terms = {"logit_matching": logit_matching_loss(student_logits, teacher_logits)}
        if self.alpha < 1.0:
            terms["ce"] = F.cross_entropy(out.logits.float(), out.labels)
        return terms
