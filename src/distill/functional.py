r"""Pure distillation losses on tensors (stateless, in the style of ``torch.nn.functional``).

Reference: G. Hinton, O. Vinyals, J. Dean (2015), "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531.

Notation. ``z`` are the student's logits, ``v`` the teacher's, ``T > 0`` the
temperature, ``C`` the number of classes (always the **last** dim), ``y`` the
hard labels. Every other dim is a *position*: ``(B, C)`` for classification,
``(B, L, C)`` for sequences, or any leading shape. All losses are reduced to a
scalar by averaging over positions (over the masked-in positions when ``mask``
is given).

* Softened distribution::

      p_i^T = softmax(z / T)_i = exp(z_i / T) / sum_j exp(z_j / T)

* Distillation loss (Hinton et al. 2015, section 2)::

      KL(p_t^T || p_s^T) = sum_c p_t,c^T * (log p_t,c^T - log p_s,c^T)
      kd_loss = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y)

  The ``T^2`` keeps the magnitude of the soft-target gradients roughly
  independent of ``T`` (they scale as ``1/T^2``), so ``alpha`` means the same
  thing at every temperature.

* Logit matching (Caruana et al. 2006; Hinton's high-temperature limit)::

      logit_matching_loss = 1/(2C) * sum_c (z_c - v_c)^2

  For per-position zero-mean logits, ``T^2 * KL(p_t^T || p_s^T)`` tends to exactly
  this quantity as ``T -> infinity``.

* Top-k distillation (a compact cache of the teacher): the teacher keeps its k largest
  probabilities at T; every other class is pooled into one tail bucket, and the KL is taken
  between the (k + 1)-bucket distributions of teacher and student::

      tail_t = 1 - sum_{i in K} p_t,i^T        tail_s = sum_{c not in K} p_s,c^T
      topk_kd_loss = T^2 * [ sum_{i in K} p_t,i (log p_t,i - log p_s,i) + tail_t (log tail_t - log tail_s) ]

  With k = C it is exactly the full distillation term.

* Soft cross-entropy::

      soft_cross_entropy = -sum_c p_c * log softmax(z)_c

Numerics. Inputs are cast to float32 first (float64 inputs stay float64, so
``torch.autograd.gradcheck`` works); half / bfloat16 inputs therefore give a
float32 loss. Log-probabilities always come from ``log_softmax`` (never
``log(softmax)``), so logits of magnitude 1e4 are fine. Terms ``p * log(...)``
with ``p == 0`` are exactly 0 (no ``0 * -inf = NaN``). Teacher inputs are
detached: no gradient ever flows into the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "softmax_with_temperature",
    "kd_loss",
    "kl_divergence_with_temperature",
    "logit_matching_loss",
    "soft_cross_entropy",
    "topk_kd_loss",
]


# --------------------------------------------------------------------------- helpers


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _is_compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _compute_dtype(x: Tensor) -> torch.dtype:
    # float32 for half/bfloat16/float32, float64 stays float64.
    return torch.promote_types(x.dtype, torch.float32)


def _check_logits(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"{name} must have at least one dim with the classes last (C >= 1), "
            f"got shape {_shape(x)}"
        )
    return x


def _check_same_shape(
    student: Tensor, other: Tensor, other_name: str, who: str, student_name: str = "student_logits"
) -> None:
    if student.shape[-1] != other.shape[-1]:
        raise ValueError(
            f"student has {student.shape[-1]} classes, {who} has {other.shape[-1]} classes "
            f"({student_name} shape {_shape(student)}, {other_name} shape {_shape(other)})"
        )
    if student.shape != other.shape:
        raise ValueError(
            f"{student_name} shape {_shape(student)} and {other_name} shape {_shape(other)} "
            f"must match exactly (same leading/position dims)"
        )


def _check_mask(mask: Tensor | None, student: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool, got {mask.dtype} "
            f"(convert explicitly, e.g. mask.bool() or attention_mask == 1)"
        )
    lead = student.shape[:-1]
    if mask.shape != lead:
        raise ValueError(
            f"mask shape {_shape(mask)} must equal the leading shape {tuple(lead)} of "
            f"student_logits shape {_shape(student)} (one entry per position, no class dim)"
        )
    return mask


def _check_labels(labels: Tensor, student: Tensor, mask: Tensor | None) -> Tensor:
    """Validate hard labels; return int64 labels that are safe to gather (0 where masked out)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"labels must be an integer tensor of class indices, got dtype {labels.dtype} "
            f"(for soft / probability targets use soft_cross_entropy)"
        )
    lead = student.shape[:-1]
    if labels.shape != lead:
        raise ValueError(
            f"labels shape {_shape(labels)} must equal the leading shape {tuple(lead)} of "
            f"student_logits shape {_shape(student)} (one class index per position; "
            f"for one-hot / soft targets use soft_cross_entropy)"
        )
    labels = labels.long()
    if mask is not None:
        # Labels at masked-out positions are ignored (may be e.g. -100).
        labels = labels.masked_fill(~mask, 0)
    num_classes = student.shape[-1]
    if labels.numel() > 0 and not _is_compiling():
        # One host sync for both bounds.
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            hint = (
                "; to ignore positions (e.g. padding labelled -100) pass "
                "mask=(labels != -100)"
                if bad < 0
                else ""
            )
            raise ValueError(
                f"label {bad} is out of range [0, {num_classes}) for student_logits shape "
                f"{_shape(student)} with {num_classes} classes{hint}"
            )
    return labels


def _sanitize(x: Tensor, mask: Tensor | None, fill: float = 0.0) -> Tensor:
    """Replace the rows of masked-out positions by ``fill`` so garbage there (NaN, inf)
    can reach neither the forward value nor the gradient."""
    if mask is None:
        return x
    return torch.where(mask.unsqueeze(-1), x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def _reduce(per_position: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over positions (masked-in ones only). Empty -> 0 that still has a grad path."""
    if mask is None:
        return per_position.sum() / max(per_position.numel(), 1)
    per_position = torch.where(mask, per_position, torch.zeros_like(per_position))
    count = mask.sum().clamp_min(1).to(per_position.dtype)
    return per_position.sum() / count


def _teacher_dist(
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | None,
    student: Tensor,
    temperature: float,
    dtype: torch.dtype,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Validate the teacher input; return detached ``(p_t, log p_t)`` at temperature T."""
    if teacher_logits is not None and teacher_probs is not None:
        raise ValueError(
            "pass exactly one of teacher_logits or teacher_probs, got both "
            f"(teacher_logits shape {_shape(teacher_logits)}, "
            f"teacher_probs shape {_shape(teacher_probs)})"
        )
    if teacher_logits is None and teacher_probs is None:
        raise ValueError("pass exactly one of teacher_logits or teacher_probs, got neither")
    if teacher_logits is not None:
        t = _check_logits(teacher_logits, "teacher_logits")
        _check_same_shape(student, t, "teacher_logits", "teacher")
        t = _sanitize(t.detach().to(dtype), mask)
        log_p = F.log_softmax(t / temperature if temperature != 1.0 else t, dim=-1)
        return log_p.exp(), log_p
    assert teacher_probs is not None
    p = _check_logits(teacher_probs, "teacher_probs")
    _check_same_shape(student, p, "teacher_probs", "teacher")
    p = _sanitize(p.detach().to(dtype), mask)
    return p, torch.log(p)  # log(0) = -inf is never used: see _kl_per_position


def _kl_per_position(p_t: Tensor, log_p_t: Tensor, log_q: Tensor) -> Tensor:
    # sum_c p (log p - log q), with 0 * anything := 0 (0 * log 0, 0 * (-inf - -inf)).
    # Only exact zeros are special-cased: NaN / negative "probabilities" still give NaN.
    terms = p_t * (log_p_t - log_q)
    return torch.where(p_t == 0, torch.zeros_like(terms), terms).sum(dim=-1)


def _cross_entropy_per_position(log_q: Tensor, labels: Tensor) -> Tensor:
    return -log_q.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _kl_core(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | None,
    temperature: float,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Shared validation + per-position KL. Returns (kl_per_position, student_cast, mask)."""
    s = _check_logits(student_logits, "student_logits")
    temperature = _check_temperature(temperature)
    mask = _check_mask(mask, s)
    dtype = _compute_dtype(s)
    p_t, log_p_t = _teacher_dist(teacher_logits, teacher_probs, s, temperature, dtype, mask)
    s = _sanitize(s.to(dtype), mask)
    log_q = F.log_softmax(s / temperature if temperature != 1.0 else s, dim=-1)
    return _kl_per_position(p_t, log_p_t, log_q), s, mask


# --------------------------------------------------------------------------- public API


def softmax_with_temperature(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Softened probabilities ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` over the last dim.

    Computed in float32 (float64 inputs stay float64); the result has that dtype.
    """
    z = _check_logits(logits, "logits")
    temperature = _check_temperature(temperature)
    z = z.to(_compute_dtype(z))
    return F.softmax(z / temperature if temperature != 1.0 else z, dim=-1)


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


def kl_divergence_with_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
    *,
    teacher_probs: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""``KL(p_t^T || p_s^T)`` summed over classes, averaged over positions -- **without** T².

    ``sum_c p_t,c^T (log p_t,c^T - log p_s,c^T)`` with ``p^T = softmax(z / T)``.
    Its gradient w.r.t. the student's logits is ``(p_s^T - p_t^T) / T`` per position
    (divided by the number of positions), which shrinks like ``1/T^2`` for large T;
    multiply by ``T**2`` (as :func:`kd_loss` does) to undo that.

    Exactly one of ``teacher_logits`` / ``teacher_probs`` (the latter already at
    temperature T). ``mask`` as in :func:`kd_loss`. Teacher inputs are detached.
    Result float32 (float64 for float64 students).
    """
    kl, _, mask = _kl_core(student_logits, teacher_logits, teacher_probs, temperature, mask)
    return _reduce(kl, mask)


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


def soft_cross_entropy(
    student_logits: Tensor, target_probs: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    r"""Cross-entropy with soft targets: ``-sum_c p_c log softmax(z)_c``, averaged over positions.

    For soft labels (label smoothing, mixup, an ensemble's averaged probabilities).
    ``target_probs`` has the student's shape and is detached; it should be a
    distribution over the last dim (not checked). Terms with ``p_c == 0`` are exactly
    0. Equals ``KL(p || softmax(z)) + H(p)``, so it has the same gradient as the KL
    at ``T = 1``. ``mask`` as in :func:`kd_loss`. Result float32 (float64 for
    float64 students).
    """
    s = _check_logits(student_logits, "student_logits")
    p = _check_logits(target_probs, "target_probs")
    _check_same_shape(s, p, "target_probs", "target")
    mask = _check_mask(mask, s)
    dtype = _compute_dtype(s)
    s = _sanitize(s.to(dtype), mask)
    p = _sanitize(p.detach().to(dtype), mask)
    log_q = F.log_softmax(s, dim=-1)
    terms = p * log_q
    per_position = -torch.where(p == 0, torch.zeros_like(terms), terms).sum(dim=-1)
    return _reduce(per_position, mask)


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
