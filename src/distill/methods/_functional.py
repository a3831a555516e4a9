"""The tensor checks and distributions that the pure losses of several methods share.

Not a method (the registry skips modules whose name starts with ``_``). The public names here are
re-exported by :mod:`distill.functional`, whose docstring states the notation and the numerics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["softmax_with_temperature", "kl_divergence_with_temperature", "soft_cross_entropy", "zscore_logits"]


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
    # float32 for half/bfloat16/float32, float64 stays float64 (torch.promote_types(x.dtype, torch.float32) for the
    # floating dtypes, without an ATen call per loss)
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    return torch.where(p_t == 0, 0.0, terms).sum(dim=-1)  # a scalar 0: no tensor of zeros to fill


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


def softmax_with_temperature(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Softened probabilities ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` over the last dim.

    Computed in float32 (float64 inputs stay float64); the result has that dtype.
    """
    z = _check_logits(logits, "logits")
    temperature = _check_temperature(temperature)
    z = z.to(_compute_dtype(z))
    return F.softmax(z / temperature if temperature != 1.0 else z, dim=-1)


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
