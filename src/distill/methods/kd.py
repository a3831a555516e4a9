"""Hinton's knowledge distillation: the pure losses (:func:`kd_loss`, :func:`topk_kd_loss` for a top-k cache)
and the objective, registered as ``kd``.

Paper: G. Hinton, O. Vinyals, J. Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531 (the formulas are in :mod:`distill.functional`'s docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods._common import _teacher, distilled_logits, hard_label_terms
from distill.methods._functional import (
    _check_labels,
    _check_logits,
    _check_mask,
    _check_temperature,
    _compute_dtype,
    _cross_entropy_per_position,
    _kl_per_position,
    _reduce,
    _sanitize,
    _shape,
    _teacher_dist,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import register_method
from distill.teachers import Targets

__all__ = ["kd_loss", "topk_kd_loss", "label_and_kd_terms", "KnowledgeDistillation"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    labels: Tensor | None = None,
    alpha: float | None = None,
    *,
    teacher_probs: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Hinton et al. (2015) knowledge-distillation loss.

    .. math::

        \mathcal{L} = \alpha\, T^2\, \mathrm{KL}(p_t^T \,\|\, p_s^T)
                      + (1 - \alpha)\, \mathrm{CE}(z_s, y),
        \qquad p^T = \mathrm{softmax}(z / T)

    i.e. ``loss = alpha * T**2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y)``,
    where the KL is summed over the class dim (the last dim) and both terms are
    averaged over all leading positions (``(B, C)``, ``(B, L, C)``, ...). The
    cross-entropy uses the student's logits at temperature 1.

    Args:
        student_logits: ``(..., C)`` floating tensor (gradients flow here).
        teacher_logits: ``(..., C)`` teacher logits, same shape as the student's.
            Detached (treated as a constant).
        temperature: ``T > 0``, applied to both student and teacher logits.
        labels: optional integer class indices of the leading shape ``(...)``, in
            ``[0, C)``. Values at masked-out positions are ignored (e.g. ``-100``).
        alpha: weight of the soft (distillation) term, ``0 <= alpha <= 1``. ``None``
            means 0.9 when ``labels`` are given and 1.0 (pure distillation) when not.
            With ``labels=None`` only ``alpha`` of ``None`` or ``1.0`` is accepted.
        teacher_probs: instead of ``teacher_logits`` (exactly one of the two must be
            given): the teacher's probabilities **already at the same temperature
            T**, i.e. ``softmax(v / T)`` (e.g. an ensemble average or a cache). They
            are used as is; ``T`` then only softens the student. Exact zeros are
            fine (``0 * log 0 := 0``).
        mask: optional ``torch.bool`` tensor of the leading shape. Positions where it
            is ``False`` contribute nothing (their logits/labels may be garbage);
            the mean is over the ``True`` positions. With no ``True`` position the
            loss is 0 (with a grad path), not NaN.

    Returns:
        Scalar loss, float32 (float64 if the student's logits are float64),
        whatever the input dtype (fp16 / bf16 inputs are upcast before any math).

    Raises:
        ValueError: neither or both teacher inputs; shape mismatches; a label out of
            range; ``alpha`` outside [0, 1] or given (and != 1) without labels;
            ``temperature <= 0``.

    Note:
        The label range check costs one host synchronisation (a single combined
        min/max); it is skipped while tracing under ``torch.compile``.
    """
    s = _check_logits(student_logits, "student_logits")
    temperature = _check_temperature(temperature)
    if alpha is None:
        alpha = 0.9 if labels is not None else 1.0
    else:
        if isinstance(alpha, bool):
            raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
        alpha = float(alpha)
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if labels is None and alpha != 1.0:
            raise ValueError(
                f"alpha={alpha} was given but labels is None: alpha weighs the hard-label "
                f"(cross-entropy) term against the distillation term, so pass labels "
                f"or leave alpha unset (pure distillation, alpha=1)"
            )
    mask = _check_mask(mask, s)
    dtype = _compute_dtype(s)
    # Always validate the teacher input, even when alpha == 0 makes it unused.
    p_t, log_p_t = _teacher_dist(teacher_logits, teacher_probs, s, temperature, dtype, mask)
    safe_labels = _check_labels(labels, s, mask) if labels is not None else None

    s = _sanitize(s.to(dtype), mask)
    if mask is None:  # one sum over positions and classes per term, then one scalar factor (fewer small ops)
        return _unmasked_kd(s, p_t, log_p_t, safe_labels, temperature, alpha)
    per_position: Tensor | None = None
    if alpha > 0.0:
        log_q_t = F.log_softmax(s / temperature if temperature != 1.0 else s, dim=-1)
        per_position = (alpha * temperature**2) * _kl_per_position(p_t, log_p_t, log_q_t)
    if safe_labels is not None and alpha < 1.0:
        ce = _cross_entropy_per_position(F.log_softmax(s, dim=-1), safe_labels)
        ce = (1.0 - alpha) * ce
        per_position = ce if per_position is None else per_position + ce
    assert per_position is not None  # alpha < 1 implies labels were given
    return _reduce(per_position, mask)


def _unmasked_kd(s: Tensor, p_t: Tensor, log_p_t: Tensor, labels: Tensor | None, temperature: float,
                 alpha: float) -> Tensor:
    """:func:`kd_loss` without a mask: ``alpha T² / n · Σ KL terms + (1 - alpha) / n · Σ CE terms`` over the n
    positions, each term summed over positions and classes at once (``0 · log 0 := 0`` as in the masked form)."""
    n = max(s.numel() // max(s.shape[-1], 1), 1)
    loss: Tensor | None = None
    if alpha > 0.0:
        log_q_t = F.log_softmax(s / temperature if temperature != 1.0 else s, dim=-1)
        kl = torch.where(p_t == 0, 0.0, p_t * (log_p_t - log_q_t)).sum()
        loss = kl * (alpha * temperature**2 / n)
    if labels is not None and alpha < 1.0:
        ce = _cross_entropy_per_position(F.log_softmax(s, dim=-1), labels).sum() * ((1.0 - alpha) / n)
        loss = ce if loss is None else loss + ce
    assert loss is not None  # alpha < 1 implies labels were given
    return loss


def topk_kd_loss(
    student_logits: Tensor,
    teacher_indices: Tensor,
    teacher_log_probs: Tensor,
    temperature: float = 4.0,
) -> Tensor:
    r"""``T^2 * KL`` between teacher and student over the teacher's top-k classes plus a tail bucket.

    .. math::

        \mathcal{L} = T^2 \Big[\sum_{i \in K} p_{t,i} \log\frac{p_{t,i}}{p_{s,i}}
                      + \tau_t \log\frac{\tau_t}{\tau_s}\Big],\quad
        \tau_t = 1 - \sum_{i \in K} p_{t,i},\quad \tau_s = \sum_{c \notin K} p_{s,c}

    where ``p = softmax(z / T)`` and ``K`` is the set of the teacher's ``k`` stored classes.
    Summing the student's probability outside ``K`` into one bucket makes this a true KL
    between two distributions on ``k + 1`` outcomes; with ``k = C`` it equals
    ``kd_loss(..., alpha=1)``. Averaged over positions.

    Args:
        student_logits: ``(..., C)`` student logits.
        teacher_indices: ``(..., k)`` integer class indices of the teacher's top-k (distinct).
        teacher_log_probs: ``(..., k)`` the teacher's log-probabilities **at temperature T**
            for those classes (detached).
        temperature: ``T``, the temperature the teacher's probabilities were computed at.
    """
    s = _check_logits(student_logits, "student_logits")
    temperature = _check_temperature(temperature)
    if teacher_indices.shape != teacher_log_probs.shape or teacher_indices.shape[:-1] != s.shape[:-1]:
        raise ValueError(
            f"teacher_indices {_shape(teacher_indices)} and teacher_log_probs {_shape(teacher_log_probs)} must "
            f"both be (..., k) with the student's leading shape {_shape(s)[:-1]}"
        )
    k, num_classes = teacher_indices.shape[-1], s.shape[-1]
    if k > num_classes:
        raise ValueError(f"top-k targets have k={k} classes but the student has only {num_classes}")
    dtype = _compute_dtype(s)
    idx = teacher_indices.long()
    log_p = teacher_log_probs.detach().to(dtype)
    log_q = F.log_softmax(s.to(dtype) / temperature, dim=-1)
    log_q_k = log_q.gather(-1, idx)
    in_k = torch.zeros_like(log_q, dtype=torch.bool).scatter_(-1, idx, True)
    log_q_tail = torch.logsumexp(log_q.masked_fill(in_k, float("-inf")), dim=-1)
    p = log_p.exp()
    p_tail = (1.0 - p.sum(dim=-1)).clamp_min(0.0)
    head = torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q_k)).sum(dim=-1)
    # no tail term where the teacher puts no mass there, or where there is no tail (k = C: the
    # teacher's leftover is then rounding error, and log_q_tail = -inf)
    has_tail = (p_tail > 0) & torch.isfinite(log_q_tail)
    safe_p = torch.where(has_tail, p_tail, torch.ones_like(p_tail))
    safe_q = torch.where(has_tail, log_q_tail, torch.zeros_like(log_q_tail))
    tail = torch.where(has_tail, p_tail * (torch.log(safe_p) - safe_q), torch.zeros_like(p_tail))
    return (temperature**2) * _reduce(head + tail, None)


def label_and_kd_terms(objective: Objective, out: StepOutputs, teacher: Targets | None,
                       temperature: float) -> dict[str, Tensor]:
    """The ``ce`` term (hard labels) and Hinton's ``kd`` term, each only when its weight is not 0."""
    terms = hard_label_terms(objective, out)
    if objective.weights.get("kd", 0.0):
        if teacher is None:
            raise RuntimeError(f"{type(objective).__name__} has a kd term but the step has no teacher targets")
        terms["kd"] = kd_loss(out.logits, teacher.logits, temperature, teacher_probs=teacher.probs)
    return terms


@register_method("kd",
                 paper="Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
                 defaults="T = 4, alpha = 0.9 (the library's default distill.temperature, distill.alpha)",
                 follows_distill_loss=True,
                 order=1)
class KnowledgeDistillation(Objective):
    """Hinton, Vinyals & Dean (2015): ``alpha * kd + (1 - alpha) * ce``.

    ``kd`` = T² · KL(p_t^T ‖ p_s^T) (the T² keeps the soft term's gradients on the scale of the
    hard term's as T changes), ``ce`` = CE(z_s, y). With ``alpha = 1`` the labels are not used
    at all (Beyer et al. 2022's function matching). ``standardize``: distil z-scored logits (Sun et al.,
    CVPR 2024; see :func:`distill.methods._common.distilled_logits`); the CE term keeps the raw logits.
    """

    needs_teacher = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, standardize: bool = False) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__({"kd": alpha, "ce": 1.0 - alpha})
        self.temperature = temperature
        self.alpha = alpha
        self.standardize = standardize

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        t = _teacher(out, "KnowledgeDistillation")
        if self.standardize:
            z, v = distilled_logits(out, "KnowledgeDistillation", True)
            terms = {"kd": kd_loss(z, v, self.temperature)}
        elif t.topk is not None:
            if abs(t.topk.temperature - self.temperature) > 1e-6:
                raise ValueError(
                    f"these top-k targets were computed at temperature {t.topk.temperature} but the loss uses "
                    f"{self.temperature}; set distill.temperature={t.topk.temperature} or rebuild the cache "
                    f"at {self.temperature} (a full-logit cache works at any temperature)"
                )
            terms = {"kd": topk_kd_loss(out.logits, t.topk.indices, t.topk.log_probs, self.temperature)}
        else:
            terms = {"kd": kd_loss(out.logits, t.logits, self.temperature, teacher_probs=t.probs)}
        terms.update(hard_label_terms(self, out))  # weight 1 - alpha: there when alpha < 1 (alpha is in [0, 1])
        return terms

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
