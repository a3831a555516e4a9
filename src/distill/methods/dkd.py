"""Decoupled KD (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022): the pure losses
:func:`dkd_terms` / :func:`dkd_loss` and the objective, registered as ``dkd``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods._common import check_weight, distilled_logits, warmup_factor
from distill.methods._functional import (
    _check_classes,
    _check_labels,
    _check_logits,
    _check_mask,
    _check_number,
    _check_same_shape,
    _check_temperature,
    _compute_dtype,
    _kl_per_position,
    _reduce,
    _sanitize,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.kd import label_and_kd_terms
from distill.methods.registry import register_method

__all__ = ["dkd_terms", "dkd_loss", "DecoupledKD"]


def _decouple(z: Tensor, is_target: Tensor) -> tuple[Tensor, Tensor]:
    """For logits ``z`` (already divided by T): ``log [p_target, 1 - p_target]`` (..., 2) and the
    log-distribution among the non-target classes (..., C), with ``-inf`` at the target."""
    log_p = F.log_softmax(z, dim=-1)
    log_target = log_p.masked_fill(~is_target, -math.inf).logsumexp(dim=-1)
    log_rest = log_p.masked_fill(is_target, -math.inf).logsumexp(dim=-1)  # log(1 - p_target), without cancellation
    binary = torch.stack([log_target, log_rest], dim=-1)
    non_target = F.log_softmax(z.masked_fill(is_target, -math.inf), dim=-1)
    return binary, non_target


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The two terms of Decoupled KD, unweighted: ``(tckd, nckd)``, each already times ``T^2``.

    B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang (2022), "Decoupled Knowledge Distillation", CVPR.
    With ``p = softmax(z / T)`` and ``y`` the label of the position:

    .. math::

        \mathrm{TCKD} = T^2\,\mathrm{KL}(b_t \,\|\, b_s),\quad b = [p_y,\ 1 - p_y]

        \mathrm{NCKD} = T^2\,\mathrm{KL}(\hat p_t \,\|\, \hat p_s),\quad
        \hat p_c = \frac{p_c}{1 - p_y} = \mathrm{softmax}_{c \ne y}(z / T)

    both averaged over positions. Hinton's loss decomposes as
    ``T^2 KL(p_t || p_s) = TCKD + (1 - p_t,y) * NCKD`` per position; DKD drops the ``(1 - p_t,y)``
    coupling and weighs the terms freely (:func:`dkd_loss`). Everything is computed in log space
    (``log(1 - p_y)`` as a log-sum-exp over the non-target classes; the target is excluded from
    the non-target softmax with ``-inf``, where the reference subtracts 1000 from its logit).

    Args and result as in :func:`dkd_loss`.
    """
    s = _check_logits(student_logits, "student_logits")
    t = _check_logits(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "DKD (a target and a non-target class)")
    temperature = _check_temperature(temperature)
    mask = _check_mask(mask, s)
    labels = _check_labels(labels, s, mask)
    dtype = _compute_dtype(s)
    z_s = _sanitize(s.to(dtype), mask) / temperature
    z_t = _sanitize(t.detach().to(dtype), mask) / temperature
    is_target = F.one_hot(labels, s.shape[-1]).bool()
    binary_s, rest_s = _decouple(z_s, is_target)
    binary_t, rest_t = _decouple(z_t, is_target)
    tckd = _kl_per_position(binary_t.exp(), binary_t, binary_s)
    nckd = _kl_per_position(rest_t.exp(), rest_t, rest_s)  # 0 at the target: p_t = 0 there
    scale = temperature**2
    return scale * _reduce(tckd, mask), scale * _reduce(nckd, mask)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Decoupled Knowledge Distillation (Zhao et al. 2022): ``alpha * TCKD + beta * NCKD``.

    See :func:`dkd_terms` for the two terms (each times ``T^2``, averaged over positions) and use
    it to log them separately. The defaults ``alpha=1, beta=8, T=4`` are mdistiller's (its
    CIFAR-100 config, ``CFG.DKD``); the paper tunes ``beta`` per teacher (e.g. 0.5 with ``T=1`` on
    ImageNet). The cross-entropy on labels and the linear warm-up of the DKD term over the first
    20 epochs (``min(epoch / 20, 1)`` in mdistiller) are the objective's job.

    Args:
        student_logits: ``(..., C)`` logits, ``C >= 2`` (gradients flow here).
        teacher_logits: ``(..., C)`` teacher logits (detached).
        labels: integer class indices of the leading shape, in ``[0, C)``: they say which class is
            the "target".
        alpha, beta: weights of TCKD and NCKD (``>= 0``).
        temperature: ``T > 0``, for both.
        mask: optional bool tensor of the leading shape, as in :func:`kd_loss`.

    Returns:
        Scalar, float32 (float64 for float64 students).
    """
    alpha = _check_number(alpha, "alpha")
    beta = _check_number(beta, "beta")
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature, mask=mask)
    return alpha * tckd + beta * nckd


@register_method("dkd",
                 paper="Zhao, Cui, Song, Qiu & Liang (2022), Decoupled Knowledge Distillation, CVPR",
                 defaults="mdistiller's CIFAR-100 CFG.DKD",
                 order=3)
class DecoupledKD(Objective):
    """Decoupled KD (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022).

    ``ce`` + w · (``tckd_weight`` · TCKD + ``nckd_weight`` · NCKD), with p = softmax(z / T):

    * TCKD = T² · KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y]) (target vs the rest),
    * NCKD = T² · KL(p̂_t ‖ p̂_s), p̂ = the distribution among the non-target classes,

    and the warm-up w = min(epoch / ``warmup_epochs``, 1) from ``StepOutputs.epoch`` (fractional,
    so it rises every step; mdistiller steps it once per 1-based epoch). The logged ``tckd`` and
    ``nckd`` terms include w. Defaults are mdistiller's CIFAR-100 ``CFG.DKD``: CE 1, alpha 1,
    beta 8, T 4, warm-up 20 epochs (the paper tunes beta per teacher). See
    :func:`distill.functional.dkd_terms`.

    **Sensitive to beta and the warm-up.** With these defaults an MLP student (one hidden layer of
    64) distilled on 5,000 Fashion-MNIST images from a small CNN teacher (75% test accuracy), SGD lr
    0.05, 30 epochs, trained well until the warm-up brought beta 8 to full weight, then collapsed:
    validation accuracy fell to chance (10%) by epoch 12 and recovered only to 27% (seeds 0 and 1).
    Selection on validation hid it: the selected checkpoint (epoch 4 to 6, about 81%) predates DKD's
    full weight. With beta 2 (``nckd_weight``) the same runs trained without a collapse (83.5% test), as
    with lr 0.01. On small data or a weak teacher start with beta 1-2 and a warm-up over a good part
    of the run; the engine warns when a student collapses (:mod:`distill.diagnostics`).

    ``standardize``: distil z-scored logits (Sun et al., CVPR 2024; see
    :func:`distill.methods._common.distilled_logits`); the CE term keeps the raw logits.
    """

    needs_teacher = True
    collapse_advice = ("DKD is sensitive to beta and its warm-up: lower distill.options.nckd_weight (beta, "
                       "default 8; try 1-2), keep distill.options.warmup_epochs a good part of train.epochs, "
                       "or lower train.optimizer.lr")

    def __init__(self, tckd_weight: float = 1.0, nckd_weight: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: float = 20.0, ce_weight: float = 1.0, standardize: bool = False) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "tckd": check_weight(tckd_weight, "tckd_weight"),
                          "nckd": check_weight(nckd_weight, "nckd_weight")})
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.standardize = standardize

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        student_logits, teacher_logits = distilled_logits(out, "DecoupledKD", self.standardize)
        terms = label_and_kd_terms(self, out, None, self.temperature)
        tckd, nckd = dkd_terms(student_logits, teacher_logits, out.labels, self.temperature)
        warmup = warmup_factor(out.epoch, self.warmup_epochs)
        terms.update(tckd=warmup * tckd, nckd=warmup * nckd)
        return terms

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, warmup_epochs={self.warmup_epochs}, weights={self.weights}"
