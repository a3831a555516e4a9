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

Method zoo: one function per published loss (paper, defaults and the reference implementation
each follows are in its docstring). Their trainable parts (connectors, VID's variance, FT's
paraphraser/translator, CRD's embeddings and memory, ReviewKD's fusion, SimKD's projector) are
the objectives'; these functions take their outputs. Each reduces as its reference
implementation does (stated per function), so the published loss weights carry over. ``f`` are
feature maps ``(B, C, H, W)``, ``e`` embeddings ``(B, D)``, ``p = softmax(z / T)``, ``y`` the
label, ``mean`` over all elements.

* Logits::

      dkd_loss             = alpha * T^2 KL([p_t,y, 1 - p_t,y] || [p_s,y, 1 - p_s,y])        (TCKD)
                           + beta  * T^2 KL(p_t,c|c!=y || p_s,c|c!=y)                         (NCKD)
      dist_loss            = T^2 [beta (1 - mean_i pearson_c(p_s,ic, p_t,ic))
                                  + gamma (1 - mean_c pearson_i(p_s,ic, p_t,ic))]
      zscore_logits        = (z - mean_c z) / (std_c z + eps)
      standardized_kd_loss = T^2 KL(softmax(zscore(v) / T) || softmax(zscore(z) / T))

* Features and relations::

      attention_transfer_loss     = mean (Q_s - Q_t)^2,  Q = l2normalize(vec(mean_c |f_c|^p))
      similarity_preserving_loss  = ||rownorm(F_s F_s^T) - rownorm(F_t F_t^T)||_F^2 / B^2
      correlation_congruence_loss = mean (K_s - K_t)^2,  K_ij = sum_{p<=P} e^{-2g} (2g)^p / p! cos(e_i, e_j)^p
      rkd_loss                    = 25 mean huber(psiD_s - psiD_t) + 50 mean huber(psiA_s - psiA_t),
                                    psiD_ij = ||e_i - e_j|| / mean_{i!=j} ||e_i - e_j||,
                                    psiA_ijk = cos of the angle at e_i between e_j and e_k
      pkt_loss                    = mean_ij p^t_j|i log((p^t_j|i + eps) / (p^s_j|i + eps)),
                                    p_j|i = K_ij / sum_k K_ik,  K = (1 + cos) / 2
      nst_loss                    = MMD^2 of the channels' normalized spatial maps, kernel (x.y)^2
      fsp_loss                    = sum_pairs mean (G_s - G_t)^2,  G_ij = sum_hw a_i b_j / HW
      factor_transfer_loss        = mean |F_s / ||F_s|| - F_t / ||F_t|| |^p
      vid_loss                    = mean 1/2 [(t - mu)^2 / s2_c + log s2_c],  s2_c = softplus(alpha_c) + eps
      ab_loss                     = sum [(s + m)^2 1[s > -m, t <= 0] + (s - m)^2 1[s <= m, t > 0]] / B
      crd_nce_loss                = -1/B sum [log D(P_pos) + sum_k log(1 - D(P_k))],
                                    D(P) = P / (P + K/N),  P = exp(s / T) / Z
      hcl_loss                    = [mse + sum_k 2^-k mse(pool_l_k)] / (1 + sum_k 2^-k), summed over pairs
      simkd_loss = fitnet_loss    = mean (f_s - f_t)^2

Numerics. Inputs are cast to float32 first (float64 inputs stay float64, so
``torch.autograd.gradcheck`` works); half / bfloat16 inputs therefore give a
float32 loss. Log-probabilities always come from ``log_softmax`` (never
``log(softmax)``), so logits of magnitude 1e4 are fine. Terms ``p * log(...)``
with ``p == 0`` are exactly 0 (no ``0 * -inf = NaN``). Teacher inputs are
detached: no gradient ever flows into the teacher. (``crd_nce_loss`` takes similarity
scores, not teacher outputs, and detaches nothing: CRD trains the teacher-side embedding.)
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
    # method zoo
    "dkd_loss",
    "dkd_terms",
    "dist_loss",
    "zscore_logits",
    "standardized_kd_loss",
    "attention_transfer_loss",
    "similarity_preserving_loss",
    "correlation_congruence_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "pkt_loss",
    "nst_loss",
    "fsp_matrix",
    "fsp_loss",
    "factor_transfer_loss",
    "vid_loss",
    "ab_loss",
    "crd_nce_loss",
    "hcl_loss",
    "simkd_loss",
    "fitnet_loss",
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


# =========================================================================== the method zoo
# Pure losses of published distillation methods. Trainable parts (connectors, VID's variance,
# FT's paraphraser/translator, CRD's embeddings and memory bank, ReviewKD's fusion, SimKD's
# projector) live in the objectives; these functions take their outputs as tensors.

# --------------------------------------------------------------------------- zoo helpers


def _check_tensor(x: object, name: str, layout: str, min_dim: int, max_dim: int | None = None) -> Tensor:
    """A floating-point tensor with ``min_dim <= x.dim() <= max_dim``; ``layout`` describes what is expected."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        raise ValueError(f"{name} must be {layout}, got shape {_shape(x)}")
    return x


def _check_number(value: object, name: str, *, positive: bool = False) -> float:
    """A finite float, >= 0 (or > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


def _check_same_batch(s: Tensor, t: Tensor, s_name: str, t_name: str) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{s_name} and {t_name} must have the same batch size (dim 0), "
            f"got shapes {_shape(s)} and {_shape(t)}"
        )


def _check_equal_shapes(s: Tensor, t: Tensor, s_name: str, t_name: str, hint: str = "") -> None:
    if s.shape != t.shape:
        raise ValueError(f"{s_name} shape {_shape(s)} and {t_name} shape {_shape(t)} must match{hint}")


def _check_spatial(s: Tensor, t: Tensor, s_name: str, t_name: str) -> None:
    if s.shape[2:] != t.shape[2:]:
        small = tuple(min(a, b) for a, b in zip(s.shape[2:], t.shape[2:]))
        raise ValueError(
            f"{s_name} spatial size {tuple(s.shape[2:])} and {t_name} spatial size {tuple(t.shape[2:])} must match "
            f"(shapes {_shape(s)} and {_shape(t)}); pool the larger map first, "
            f"e.g. F.adaptive_avg_pool2d(x, {small})"
        )


def _check_classes(x: Tensor, name: str, what: str) -> None:
    if x.shape[-1] < 2:
        raise ValueError(f"{what} needs at least 2 classes (last dim), got {name} shape {_shape(x)}")


def _cast_pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Student in its compute dtype (float32, or float64), teacher detached in the same dtype."""
    dtype = _compute_dtype(student)
    return student.to(dtype), teacher.detach().to(dtype)


def _features(s: object, t: object, s_name: str, t_name: str, layout: str) -> tuple[Tensor, Tensor]:
    """Validate a student/teacher pair of per-sample features with the same batch size; cast; flatten to (B, D)."""
    s = _check_tensor(s, s_name, layout, 2)
    t = _check_tensor(t, t_name, layout, 2)
    _check_same_batch(s, t, s_name, t_name)
    s, t = _cast_pair(s, t)
    return s.flatten(1), t.flatten(1)


def _mse(f_s: object, f_t: object, s_name: str, t_name: str, hint: str) -> Tensor:
    s = _check_tensor(f_s, s_name, "a feature tensor", 1)
    t = _check_tensor(f_t, t_name, "a feature tensor", 1)
    _check_equal_shapes(s, t, s_name, t_name, hint)
    s, t = _cast_pair(s, t)
    return F.mse_loss(s, t)


# --------------------------------------------------------------------------- logit methods


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


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float) -> Tensor:
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    *,
    eps: float = 1e-8,
) -> Tensor:
    r"""DIST: relation (Pearson correlation) matching of predictions.

    T. Huang, S. You, F. Wang, C. Qian, C. Xu (2022), "Knowledge Distillation from A Stronger
    Teacher", NeurIPS. With ``Y = softmax(Z / T)`` row-wise, ``(B, C)``, and
    ``rho(u, v) = <u - mean u, v - mean v> / (||u - mean u|| ||v - mean v|| + eps)``:

    .. math::

        \mathrm{inter} = 1 - \frac1B \sum_i \rho(Y_{s,i:}, Y_{t,i:})\quad\text{(each sample, over classes)}

        \mathrm{intra} = 1 - \frac1C \sum_c \rho(Y_{s,:c}, Y_{t,:c})\quad\text{(each class, over the batch)}

        \mathcal{L} = T^2\,(\beta\,\mathrm{inter} + \gamma\,\mathrm{intra})

    The correlations are of the **probabilities** (as in the paper and its code), so the loss is
    invariant to positive affine maps of the probabilities and to per-sample shifts of the
    logits, not to rescaling the logits. Defaults ``beta = gamma = T = 1`` and ``eps = 1e-8`` are
    the reference implementation's (hunto/DIST_KD, ImageNet); its CIFAR runs use ``T = 4``.

    Args:
        student_logits, teacher_logits: ``(B, C)`` (flatten other positions into ``B`` first);
            the teacher's are detached.
    """
    s = _check_tensor(student_logits, "student_logits", "(B, C) logits", 2, 2)
    t = _check_tensor(teacher_logits, "teacher_logits", "(B, C) logits", 2, 2)
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "dist_loss")
    beta = _check_number(beta, "beta")
    gamma = _check_number(gamma, "gamma")
    temperature = _check_temperature(temperature)
    s, t = _cast_pair(s, t)
    y_s = F.softmax(s / temperature, dim=1)
    y_t = F.softmax(t / temperature, dim=1)
    inter = 1.0 - _pearson(y_s, y_t, dim=1, eps=eps).mean()
    intra = 1.0 - _pearson(y_s, y_t, dim=0, eps=eps).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def zscore_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Logit standardization: ``(z - mean(z)) / (std(z) + eps)`` over the last (class) dim.

    S. Sun, W. Ren, J. Li, R. Wang, X. Cao (2024), "Logit Standardization in Knowledge
    Distillation", CVPR. ``std`` is the *unbiased* one (divides by ``C - 1``), as in the authors'
    code (``torch.std``); the paper writes the population std, which differs by the constant
    ``sqrt(C / (C - 1))`` (a 0.5% change of the effective temperature at C = 100). Computed in
    float32 (float64 stays float64); needs ``C >= 2``. Gradients flow through the input.
    """
    z = _check_logits(logits, "logits")
    _check_classes(z, "logits", "zscore_logits")
    z = z.to(_compute_dtype(z))
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def standardized_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    *,
    eps: float = 1e-7,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Hinton's KD term on z-scored logits (Sun et al. 2024, "Logit Standardization in KD").

    .. math::

        \mathcal{L} = T^2\,\mathrm{KL}\big(\mathrm{softmax}(\mathcal Z(v)/T) \,\|\,
                      \mathrm{softmax}(\mathcal Z(z)/T)\big),\qquad
        \mathcal Z(x) = \frac{x - \bar x}{\sigma(x) + \epsilon}

    per position (see :func:`zscore_logits`), averaged over positions; ``mask`` as in
    :func:`kd_loss`. Standardizing each side removes its per-sample shift and scale, so the
    student need only match the teacher's logit *relations*, not their magnitude.

    Base temperature: ``temperature`` here divides the **standardized** logits, so the effective
    temperature on the raw logits is ``T * sigma(z)``, different per sample and for student and
    teacher. The authors call it the base temperature (``--base-temp``, default 2, 3 for some
    pairs) and use a KD weight of 9 instead of mdistiller's 0.9 (the weights are the objective's).
    ``T^2`` uses the base temperature, as their code does.
    """
    s = _check_logits(student_logits, "student_logits")
    t = _check_logits(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "standardized_kd_loss")
    mask = _check_mask(mask, s)
    # sanitize before standardizing, so garbage in masked-out rows reaches no gradient
    z_s = zscore_logits(_sanitize(s, mask), eps)
    z_t = zscore_logits(_sanitize(t.detach(), mask), eps)
    return kd_loss(z_s, z_t, temperature, mask=mask)


# --------------------------------------------------------------------------- feature methods


def _attention_map(f: Tensor, p: float) -> Tensor:
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    r"""Attention transfer (activation-based), for one pair of feature maps.

    S. Zagoruyko, N. Komodakis (2017), "Paying More Attention to Attention", ICLR.

    .. math::

        Q = \frac{\mathrm{vec}(\frac1C \sum_c |f_c|^p)}{\|\mathrm{vec}(\frac1C \sum_c |f_c|^p)\|_2},\qquad
        \mathcal{L} = \frac{1}{B\,HW} \sum_{b} \|Q_s^{(b)} - Q_t^{(b)}\|_2^2

    i.e. the mean squared difference of the L2-normalized spatial attention maps, as the
    authors' code and RepDistiller compute it (the paper's ``beta/2 * ||.||_2`` with
    ``beta = 1000`` becomes a weight: RepDistiller uses 1000). ``p = 2`` as in the paper. For
    odd ``p`` this uses the paper's ``|f|^p``, where RepDistiller's ``f.pow(p)`` keeps the sign.
    Channel counts may differ; **spatial sizes must match** (RepDistiller pools the larger map
    to the smaller; do that before calling). For several pairs of layers, sum the results.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    return (_attention_map(s, p) - _attention_map(t, p)).square().mean()


def _row_normalized_gram(f: Tensor) -> Tensor:
    return F.normalize(f @ f.T, dim=1)


def similarity_preserving_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Similarity-preserving KD: match the batch's pairwise-similarity matrices.

    F. Tung, G. Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV.
    With ``F`` the ``(B, D)`` flattened features, ``G = row_normalize(F F^T)`` (each row scaled
    to unit L2 norm):

    .. math::

        \mathcal{L} = \frac{1}{B^2}\,\|G_s - G_t\|_F^2

    Feature sizes of student and teacher may differ (only the batch must match). RepDistiller
    weighs it by 3000.

    Args:
        f_s, f_t: ``(B, ...)`` features (maps are flattened per sample); ``f_t`` is detached.
    """
    s, t = _features(f_s, f_t, "f_s", "f_t", "(B, ...) features")
    batch = s.shape[0]
    return (_row_normalized_gram(s) - _row_normalized_gram(t)).square().sum() / batch**2


def _cc_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    e = F.normalize(e, dim=1)
    cosine = e @ e.T
    coefficients = [math.exp(-2 * gamma) * (2 * gamma) ** k / math.factorial(k) for k in range(order + 1)]
    return sum(c * cosine**k for k, c in enumerate(coefficients))


def correlation_congruence_loss(e_s: Tensor, e_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    r"""Correlation congruence (CC): match the batch's kernel (correlation) matrices.

    B. Peng, X. Jin, J. Liu, D. Li, Y. Wu, Y. Liu, S. Zhou, Z. Zhang (2019), "Correlation
    Congruence for Knowledge Distillation", ICCV. The correlation of two embeddings is the
    Gaussian RBF kernel, approximated by its order-``P`` Taylor series. For L2-normalized
    embeddings ``||x - y||^2 = 2 - 2 x.y``, so

    .. math::

        k(x, y) = e^{-\gamma \|x - y\|^2} = e^{-2\gamma} e^{2\gamma\, x\cdot y}
                \approx \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!} (x\cdot y)^p,
        \qquad
        \mathcal{L} = \frac{1}{B^2} \|K_s - K_t\|_F^2

    with ``K_ij = k(e_i, e_j)`` over the batch. Defaults ``gamma = 0.4, P = 2`` are those of the
    widely used implementation in AberHu's Knowledge-Distillation-Zoo (the paper gives the
    expansion). Note: RepDistiller's ``Correlation`` class ships a different, simplified loss
    (``mean_i sum_d |s - t|_i,d |s - t|_{i+1},d``, "code emailed by the author"), weighted 0.02;
    this function is the paper's kernel form.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
        gamma: the RBF kernel's ``gamma`` (>= 0). order: ``P``, an int >= 0.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    gamma = _check_number(gamma, "gamma")
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be an int >= 0 (the Taylor order P), got {order!r}")
    return (_cc_correlation(s, gamma, order) - _cc_correlation(t, gamma, order)).square().mean()


def _rkd_inputs(e_s: object, e_t: object) -> tuple[Tensor, Tensor]:
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    if s.shape[0] < 2:
        raise ValueError(
            f"RKD relates samples to each other and needs a batch of at least 2, got e_s shape {_shape(e_s)}"
        )
    return s, t


def _normalized_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over pairs i != j; 0 on the diagonal.

    As RepDistiller: squared distances are clamped at 1e-12 before the square root (so two equal
    embeddings are at distance 1e-6, and the square root has a finite gradient)."""
    squared = e.square().sum(dim=1)
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    batch = e.shape[0]
    d = d.masked_fill(torch.eye(batch, dtype=torch.bool, device=e.device), 0.0)
    return d / (d.sum() / (batch * (batch - 1)))


def _angles(e: Tensor) -> Tensor:
    """``[i, j, k]`` = cosine of the angle at ``e_i`` between ``e_j`` and ``e_k`` (0 when j or k is i)."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [i, j] = (e_j - e_i) / ||e_j - e_i||
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD distance-wise loss (Park et al. 2019), unweighted.

    With ``psi_D(i, j) = ||e_i - e_j||_2 / mu`` and ``mu`` the mean distance over pairs
    ``i != j`` of the batch: ``mean over all B^2 pairs of huber(psi_D^s - psi_D^t)``, where
    ``huber(x) = x^2/2 if |x| < 1 else |x| - 1/2`` (``F.smooth_l1_loss``). The diagonal is 0 on
    both sides. Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD angle-wise loss (Park et al. 2019), unweighted.

    With ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>`` (the cosine of
    the angle at ``e_i``; 0 when ``j = i`` or ``k = i``, as in RepDistiller): ``mean over all B^3
    triplets of huber(psi_A^s - psi_A^t)`` (``F.smooth_l1_loss``). Memory is ``O(B^2 D + B^3)``.
    Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(e_s: Tensor, e_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    r"""Relational KD: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    W. Park, D. Kim, Y. Lu, M. Cho (2019), "Relational Knowledge Distillation", CVPR. Weights
    25 and 50 are the paper's (and RepDistiller's, mdistiller's). A term with weight 0 is not
    computed.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (maps are flattened per sample), ``B >= 2``;
            ``e_t`` is detached.
    """
    distance_weight = _check_number(distance_weight, "distance_weight")
    angle_weight = _check_number(angle_weight, "angle_weight")
    s, t = _rkd_inputs(e_s, e_t)
    loss = s.new_zeros(())
    if distance_weight > 0:
        loss = loss + distance_weight * F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
    if angle_weight > 0:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


def _pkt_conditional(e: Tensor, eps: float) -> Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.T + 1.0) / 2.0  # cosine similarity moved to [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Probabilistic knowledge transfer (PKT): match conditional distributions over the batch.

    N. Passalis, A. Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV. The kernel is the cosine similarity mapped to ``[0, 1]``, turned into
    conditional probabilities row-wise:

    .. math::

        K_{ij} = \frac{1 + \cos(e_i, e_j)}{2},\qquad p_{j|i} = \frac{K_{ij}}{\sum_k K_{ik}},\qquad
        \mathcal{L} = \frac{1}{B^2} \sum_{i,j} p^t_{j|i} \log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    i.e. the KL of each row, summed, divided by ``B^2`` (the mean over the matrix), and
    ``cos(a, b) = a.b / ((||a|| + eps)(||b|| + eps))``, exactly as the authors' code (used by
    RepDistiller with weight 30000). The diagonal ``i = j`` is included, as there.

    Args:
        e_s, e_t: ``(B, D_s)``, ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    p_s, p_t = _pkt_conditional(s, eps), _pkt_conditional(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _poly2_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).square().mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Neuron selectivity transfer: MMD between the channels' spatial activation patterns.

    Z. Huang, N. Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219. Each channel ``i`` gives a sample ``f_i`` = its ``HW`` spatial
    activations, L2-normalized; with the polynomial kernel ``k(x, y) = (x.y + c)^d``, ``d = 2, c = 0``:

    .. math::

        \mathcal{L} = \overline{k(t_i, t_{i'})} + \overline{k(s_j, s_{j'})} - 2\,\overline{k(s_j, t_i)}

    the squared MMD, where each bar is the mean over the batch and all channel pairs (as
    RepDistiller's ``full_loss``; the teacher-teacher term is a constant that makes equal inputs
    give 0). Channel counts may differ; spatial sizes must match. RepDistiller weighs it by 50.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    s, t = _cast_pair(s, t)
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return _poly2_kernel_mean(t, t) + _poly2_kernel_mean(s, s) - 2 * _poly2_kernel_mean(s, t)


def fsp_matrix(f_a: Tensor, f_b: Tensor) -> Tensor:
    r"""The FSP ("flow of solution procedure") matrix of two layers: ``(B, C_a, C_b)``.

    J. Yim, D. Joo, J. Bae, J. Kim (2017), "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR:

    .. math::

        G_{ij} = \frac{1}{HW} \sum_{h,w} a_{i,h,w}\, b_{j,h,w}

    If the spatial sizes differ, the larger map is average-pooled to the smaller
    (``F.adaptive_avg_pool2d``), as RepDistiller does; a map larger in one dim and smaller in the
    other is an error. Nothing is detached here (use :func:`fsp_loss`). Result float32
    (float64 for float64 ``f_a``).
    """
    a = _check_tensor(f_a, "f_a", "a feature map (B, C, H, W)", 4, 4)
    b = _check_tensor(f_b, "f_b", "a feature map (B, C, H, W)", 4, 4)
    _check_same_batch(a, b, "f_a", "f_b")
    dtype = _compute_dtype(a)
    a, b = a.to(dtype), b.to(dtype)
    size_a, size_b = tuple(a.shape[2:]), tuple(b.shape[2:])
    if size_a != size_b:
        if size_a[0] >= size_b[0] and size_a[1] >= size_b[1]:
            a = F.adaptive_avg_pool2d(a, size_b)
        elif size_b[0] >= size_a[0] and size_b[1] >= size_a[1]:
            b = F.adaptive_avg_pool2d(b, size_a)
        else:
            raise ValueError(
                f"fsp_matrix: f_a spatial size {size_a} and f_b spatial size {size_b} cannot be pooled to a "
                f"common size (one is larger in H, the other in W); pool them yourself first"
            )
    return a.flatten(2) @ b.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def _fsp_pair(pair: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (f_a, f_b) of feature maps, got {type(pair).__name__}")
    return pair[0], pair[1]


def fsp_loss(
    pairs_s: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
    pairs_t: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
) -> Tensor:
    r"""FSP loss (Yim et al. 2017): ``sum over pairs of mean((G_s - G_t)^2)``.

    ``G`` is :func:`fsp_matrix` of each pair of layers (e.g. the input and output of a stage).
    Per pair the squared difference is averaged over ``(B, C_a, C_b)``, and the pairs are summed,
    as RepDistiller does (the paper: ``1/N sum_x sum_i lambda_i ||G_i^t - G_i^s||_2^2`` with equal
    ``lambda_i``: the same up to a constant per pair). The teacher's maps are detached. Student
    and teacher layers of a pair must have the same channel counts (FSP has no connector).

    Args:
        pairs_s: sequence of ``(f_a, f_b)`` student feature-map pairs, each ``(B, C, H, W)``.
        pairs_t: the teacher's pairs, same length and channel counts.
    """
    if not isinstance(pairs_s, (list, tuple)) or not isinstance(pairs_t, (list, tuple)):
        raise TypeError(
            f"pairs_s and pairs_t must be lists of (f_a, f_b) pairs, got {type(pairs_s).__name__} "
            f"and {type(pairs_t).__name__}"
        )
    if len(pairs_s) != len(pairs_t) or not pairs_s:
        raise ValueError(
            f"pairs_s and pairs_t must hold the same number (>= 1) of pairs, got {len(pairs_s)} and {len(pairs_t)}"
        )
    total: Tensor | None = None
    for i, (pair_s, pair_t) in enumerate(zip(pairs_s, pairs_t)):
        g_s = fsp_matrix(*_fsp_pair(pair_s, f"pairs_s[{i}]"))
        a_t, b_t = _fsp_pair(pair_t, f"pairs_t[{i}]")
        g_t = fsp_matrix(a_t.detach(), b_t.detach()).to(g_s.dtype)
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"pair {i}: student FSP matrix {_shape(g_s)} and teacher FSP matrix {_shape(g_t)} differ; "
                f"FSP needs the same batch and channel counts (B, C_a, C_b) in student and teacher"
            )
        term = (g_s - g_t).square().mean()
        total = term if total is None else total + term
    assert total is not None
    return total


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, p: float = 1.0) -> Tensor:
    r"""Factor transfer (FT): distance between L2-normalized factors.

    J. Kim, S. Park, N. Kwak (2018), "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS. ``factor_t`` is the teacher's paraphraser output, ``factor_s`` the
    student's translator output (both trained modules are the objective's):

    .. math::

        \mathcal{L} = \frac{1}{B D} \sum_{b,d} \Big|\frac{F_s^{(b)}}{\|F_s^{(b)}\|_2}
                      - \frac{F_t^{(b)}}{\|F_t^{(b)}\|_2}\Big|_d^{\,p}

    with ``F`` flattened per sample to ``D`` values; ``p = 1`` as in the paper. This is the
    authors' code (``nn.L1Loss`` on ``F.normalize(x.view(B, -1))``, weight 500 there): the mean
    over elements, not the paper's per-sample norm sum (a constant factor). RepDistiller's
    ``FactorTransfer`` instead compares channel-mean-squared ("attention") maps of the factors;
    this function follows the paper and the authors.

    Args:
        factor_s, factor_t: ``(B, ...)`` factors with the same number of values per sample;
            ``factor_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(factor_s, "factor_s", "(B, ...) factors", 2)
    t = _check_tensor(factor_t, "factor_t", "(B, ...) factors", 2)
    _check_same_batch(s, t, "factor_s", "factor_t")
    if s[0].numel() != t[0].numel():
        raise ValueError(
            f"factor_s shape {_shape(s)} and factor_t shape {_shape(t)} must have the same number of values per "
            f"sample (the translator's output matches the paraphraser's factor)"
        )
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    diff = F.normalize(s.flatten(1), dim=1) - F.normalize(t.flatten(1), dim=1)
    return diff.abs().pow(p).mean()


def vid_loss(f_s_mapped: Tensor, f_t: Tensor, raw_variance: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Variational information distillation (VID): Gaussian negative log-likelihood of the teacher.

    S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai (2019), "Variational Information
    Distillation for Knowledge Transfer", CVPR. The student predicts the mean ``mu`` of a Gaussian
    over the teacher's features (``f_s_mapped``, the output of the objective's regressor); the
    variance is one learned value per channel, parameterized by a raw parameter ``alpha_c``:

    .. math::

        \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon,\qquad
        \mathcal{L} = \mathrm{mean}_{b,c,h,w}\ \frac12\Big(\frac{(t_{b,c,h,w} - \mu_{b,c,h,w})^2}{\sigma_c^2}
                      + \log \sigma_c^2\Big)

    (the constant ``log(2 pi)/2`` dropped). The mean over all elements is the authors' code
    (used by RepDistiller and mdistiller with weight 1); ``eps = 1e-5`` as there. The objective
    initializes ``alpha_c`` so that ``sigma_c^2 = 5`` (``alpha = log(exp(5 - eps) - 1)``).

    Args:
        f_s_mapped: ``(B, C, ...)`` predicted mean (gradients flow here).
        f_t: the teacher's features, same shape (detached).
        raw_variance: ``(C,)`` the raw parameter ``alpha`` (gradients flow here): **not** a log
            variance; the variance is ``softplus(alpha) + eps``.
    """
    mu = _check_tensor(f_s_mapped, "f_s_mapped", "(B, C, ...) predicted means", 2)
    t = _check_tensor(f_t, "f_t", "(B, C, ...) teacher features", 2)
    _check_equal_shapes(mu, t, "f_s_mapped", "f_t", " (regress the student's features to the teacher's shape first)")
    alpha = _check_tensor(raw_variance, "raw_variance", "(C,) one raw variance parameter per channel", 1, 1)
    if alpha.shape[0] != mu.shape[1]:
        raise ValueError(
            f"raw_variance shape {_shape(alpha)} must be (C,) with C = {mu.shape[1]} channels of f_t shape {_shape(t)}"
        )
    mu, t = _cast_pair(mu, t)
    variance = F.softplus(alpha.to(mu.dtype)) + eps
    variance = variance.view(1, -1, *([1] * (mu.dim() - 2)))
    return 0.5 * ((t - mu).square() / variance + variance.log()).mean()


def ab_loss(f_s: Tensor, f_t: Tensor, margin: float = 1.0) -> Tensor:
    r"""Activation-boundary (AB) loss: the squared-hinge approximation, for one layer.

    B. Heo, M. Lee, S. Yun, J. Y. Choi (2019), "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI. The student learns which neurons the teacher
    activates (sign of the pre-ReLU response), with margin ``m``:

    .. math::

        \mathcal{L} = \frac1B \sum \Big[(s + m)^2\,\mathbb 1[s > -m]\,\mathbb 1[t \le 0]
                      + (s - m)^2\,\mathbb 1[s \le m]\,\mathbb 1[t > 0]\Big]

    summed over all neurons (channels and positions) and averaged over the batch. Both inputs
    are **pre-activation** responses: tap the *input* of the ReLU (the student's through the
    objective's connector). RepDistiller additionally scales layer ``i`` of ``n`` by
    ``2^(i - n + 1)`` and everything by ``3/1000``; those weights are the objective's. Margin 1
    as in the paper and the authors' code.

    Args:
        f_s: ``(B, ...)`` student pre-ReLU responses (after the connector).
        f_t: the teacher's, same shape (detached; only its sign is used).
    """
    s = _check_tensor(f_s, "f_s", "(B, ...) pre-activation features", 1)
    t = _check_tensor(f_t, "f_t", "(B, ...) pre-activation features", 1)
    _check_equal_shapes(s, t, "f_s", "f_t", " (map the student's features with a connector first)")
    margin = _check_number(margin, "margin")
    s, t = _cast_pair(s, t)
    teacher_on = t > 0
    loss = torch.where(teacher_on, (s - margin).square() * (s <= margin), (s + margin).square() * (s > -margin))
    return loss.sum() / s.shape[0]


def crd_nce_loss(
    positive_scores: Tensor,
    negative_scores: Tensor,
    num_data: int | None = None,
    temperature: float = 0.07,
    *,
    normalizer: float | Tensor | None = None,
    mode: str = "nce",
    eps: float = 1e-7,
) -> Tensor:
    r"""Contrastive representation distillation (CRD): the contrastive loss of one anchor side.

    Y. Tian, D. Krishnan, P. Isola (2020), "Contrastive Representation Distillation", ICLR.
    Inputs are similarity scores ``s = <g(x), m>`` of unit-norm embeddings: for each anchor, one
    positive (the other network's memory entry for the same sample) and ``K`` negatives.

    ``mode="nce"`` (the paper's Eq. 18, as RepDistiller's ``ContrastLoss``): with
    ``P = exp(s / T) / Z`` and noise ``P_n = 1 / N`` (``N = num_data``, the dataset size),

    .. math::

        \mathcal{L} = -\frac1B \sum_b \Big[\log\frac{P_{b,0}}{P_{b,0} + K P_n + \epsilon}
                      + \sum_{k=1}^{K} \log\frac{K P_n}{P_{b,k} + K P_n + \epsilon}\Big]

    ``Z`` is the reference's Monte-Carlo estimate of the partition function,
    ``Z = N * mean(exp(s / T))`` over all ``B (K + 1)`` scores of the **first** batch, then held
    fixed for the whole run. Pass that constant as ``normalizer`` to reproduce the reference; with
    ``normalizer=None`` it is estimated (detached) from this batch.

    ``mode="softmax"``: InfoNCE, ``CE([s_0, s_1, ..., s_K] / T, target 0)`` averaged over
    anchors (CMC's ``NCESoftmaxLoss``); ``Z`` and ``N`` do not enter.

    CRD sums this loss for both anchor sides (student embedding against the teacher memory and
    vice versa). Nothing is detached here: the teacher-side embedding head is trained too; the
    memory bank, its momentum update and negative sampling (``K = 16384``, and the dataset's
    "exact"/"relax" choice of positives) are the objective's job. ``T = 0.07`` and
    ``eps = 1e-7`` are the reference's; RepDistiller weighs the sum by 0.8.

    Args:
        positive_scores: ``(B,)`` scores of the positive pairs.
        negative_scores: ``(B, K)`` scores of the negative pairs, ``K >= 1``.
        num_data: ``N``, the number of training samples (required for ``mode="nce"``).
        temperature: ``T > 0``.
        normalizer: ``Z > 0`` (``mode="nce"`` only).
        mode: ``"nce"`` or ``"softmax"``.
    """
    pos = _check_tensor(positive_scores, "positive_scores", "(B,) scores of the positive pairs", 1, 1)
    neg = _check_tensor(negative_scores, "negative_scores", "(B, K) scores of the negative pairs", 2, 2)
    if neg.shape[0] != pos.shape[0] or neg.shape[1] < 1:
        raise ValueError(
            f"negative_scores must be (B, K) with K >= 1 and the B = {pos.shape[0]} of positive_scores "
            f"shape {_shape(pos)}, got shape {_shape(neg)}"
        )
    temperature = _check_temperature(temperature)
    dtype = _compute_dtype(pos)
    scores = torch.cat([pos.to(dtype)[:, None], neg.to(dtype)], dim=1) / temperature  # (B, 1 + K), positive first
    if mode == "softmax":
        return -F.log_softmax(scores, dim=1)[:, 0].mean()
    if mode != "nce":
        raise ValueError(f"mode must be 'nce' or 'softmax', got {mode!r}")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"mode='nce' needs num_data, the number of training samples (an int >= 1), got {num_data!r}")
    if normalizer is None:
        # log Z = log N + log mean exp(s / T), estimated from this batch and treated as a constant
        log_z = math.log(num_data) + torch.logsumexp(scores.detach().flatten(), dim=0) - math.log(scores.numel())
    else:
        z = torch.as_tensor(normalizer, dtype=dtype, device=scores.device).detach()
        if z.numel() != 1 or not bool(z > 0):
            raise ValueError(f"normalizer Z must be a single number > 0, got {normalizer!r}")
        log_z = z.log().reshape(())
    num_negatives = neg.shape[1]
    noise = num_negatives / num_data  # K * P_n
    log_p = scores - log_z  # log P = s / T - log Z
    log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, math.log(noise + eps)))  # log(P + K Pn + eps)
    log_d_positive = log_p[:, 0] - log_denominator[:, 0]
    log_d_negative = math.log(noise) - log_denominator[:, 1:]
    return -(log_d_positive.sum() + log_d_negative.sum()) / pos.shape[0]


def hcl_loss(
    features_s: Tensor | list[Tensor] | tuple[Tensor, ...],
    features_t: Tensor | list[Tensor] | tuple[Tensor, ...],
    levels: tuple[int, ...] = (4, 2, 1),
) -> Tensor:
    r"""ReviewKD's hierarchical context loss (HCL), summed over pairs of feature maps.

    P. Chen, S. Liu, H. Zhao, J. Jia (2021), "Distilling Knowledge via Knowledge Review", CVPR.
    For one pair, the MSE at full resolution and after average-pooling both maps to each
    ``l x l`` of ``levels``, with weights halving at each level, normalized by their sum:

    .. math::

        \mathcal{L} = \frac{\mathrm{MSE}(s, t) + \sum_k 2^{-k}\,\mathrm{MSE}(\mathrm{pool}_{l_k}(s),
                      \mathrm{pool}_{l_k}(t))}{1 + \sum_k 2^{-k}}

    where levels with ``l >= min(H, W)`` are skipped and ``k`` counts only the levels kept (for
    square maps this is the reference rule ``l >= h``; a ``1 x 1`` map gives the plain MSE).
    MSE is the mean over elements; pairs are summed, as in the reference (ReviewKD's code and
    mdistiller, weight 1 with a 20-epoch warm-up done by the objective). The student maps are the
    outputs of ReviewKD's fusion modules (the objective's).

    Args:
        features_s, features_t: a ``(B, C, H, W)`` map or a sequence of them, pairwise the same
            shape; the teacher's are detached.
        levels: pooled sizes, positive ints, in the order their weights halve.
    """
    list_s = [features_s] if isinstance(features_s, Tensor) else features_s
    list_t = [features_t] if isinstance(features_t, Tensor) else features_t
    if not isinstance(list_s, (list, tuple)) or not isinstance(list_t, (list, tuple)):
        raise TypeError("features_s and features_t must be (B, C, H, W) tensors or lists of them")
    if len(list_s) != len(list_t) or not list_s:
        raise ValueError(
            f"features_s and features_t must hold the same number (>= 1) of maps, got {len(list_s)} and {len(list_t)}"
        )
    if any(isinstance(level, bool) or not isinstance(level, int) or level < 1 for level in levels):
        raise ValueError(f"levels must be positive ints (pooled sizes), got {levels!r}")
    total: Tensor | None = None
    for i, (f_s, f_t) in enumerate(zip(list_s, list_t)):
        s = _check_tensor(f_s, f"features_s[{i}]", "a feature map (B, C, H, W)", 4, 4)
        t = _check_tensor(f_t, f"features_t[{i}]", "a feature map (B, C, H, W)", 4, 4)
        _check_equal_shapes(s, t, f"features_s[{i}]", f"features_t[{i}]")
        s, t = _cast_pair(s, t)
        loss, weight, weight_sum = F.mse_loss(s, t), 1.0, 1.0
        for level in levels:
            if level >= min(s.shape[2], s.shape[3]):
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            weight_sum += weight
        term = loss / weight_sum
        total = term if total is None else total + term
    assert total is not None
    return total


def simkd_loss(f_s_projected: Tensor, f_t: Tensor) -> Tensor:
    r"""SimKD's feature loss: ``mean((f_s_projected - f_t)^2)``, the mean over all elements.

    D. Chen, J.-P. Mei, H. Zhang, C. Wang, Y. Feng, C. Chen (2022), "Knowledge Distillation with
    the Reused Teacher Classifier", CVPR. ``f_s_projected`` is the student's final feature map
    after the objective's projector, ``f_t`` the teacher's final feature map (same shape;
    detached). Matches the reference (``nn.MSELoss``, weight 1, no cross-entropy); predicting with
    the reused teacher classifier is the objective's job.
    """
    hint = " (project the student's features to the teacher's shape first)"
    return _mse(f_s_projected, f_t, "f_s_projected", "f_t", hint)


def fitnet_loss(f_s_mapped: Tensor, f_t: Tensor) -> Tensor:
    r"""FitNets hint loss: ``mean((f_s_mapped - f_t)^2)``, the mean over all elements.

    A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio (2015), "FitNets: Hints
    for Thin Deep Nets", ICLR. The paper writes ``1/2 ||u_h - r(v_g)||^2`` (a sum over the
    elements of each sample); this is the normalization of the reference implementations
    (RepDistiller's ``HintLoss`` = ``nn.MSELoss()``, mdistiller's ``F.mse_loss``): the mean over
    all elements, without the 1/2, so that their published weight (100 on CIFAR-100) carries
    over unchanged and the loss does not grow with the size of the hint layer. It is
    ``2 / (numel / B)`` times the paper's per-sample value averaged over the batch.

    Args:
        f_s_mapped: the student's guided-layer features after the objective's regressor.
        f_t: the teacher's hint-layer features, same shape (detached).
    """
    return _mse(f_s_mapped, f_t, "f_s_mapped", "f_t", " (map the student's features with a regressor first)")
