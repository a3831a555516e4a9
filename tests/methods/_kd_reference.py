"""An independent float64 numpy reference for KD's losses (temperature softmax, KL, CE, their gradients)."""

from __future__ import annotations

import numpy as np
import torch


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_masked_mean(per_pos: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(per_pos.mean())
    if not mask.any():
        return 0.0
    return float(per_pos[mask].mean())


def np_kl_per_pos(s, T, t=None, tprobs=None) -> np.ndarray:
    log_q = np_log_softmax(np.asarray(s, np.float64) / T)
    if tprobs is None:
        log_p = np_log_softmax(np.asarray(t, np.float64) / T)
        p = np.exp(log_p)
    else:
        p = np.asarray(tprobs, np.float64)
        with np.errstate(divide="ignore"):
            log_p = np.log(p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(-1)


def np_ce_per_pos(s, labels) -> np.ndarray:
    log_q = np_log_softmax(s)
    return -np.take_along_axis(log_q, np.asarray(labels)[..., None], axis=-1)[..., 0]


def np_kd(s, t=None, T=4.0, labels=None, alpha=None, tprobs=None, mask=None) -> float:
    if alpha is None:
        alpha = 0.9 if labels is not None else 1.0
    per = alpha * T**2 * np_kl_per_pos(s, T, t, tprobs)
    if labels is not None:
        lab = np.where(mask, labels, 0) if mask is not None else labels
        per = per + (1 - alpha) * np_ce_per_pos(s, lab)
    return np_masked_mean(per, mask)


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_kd_grad(s, t, T, labels, alpha, mask=None) -> np.ndarray:
    """Analytic d kd_loss / d z_s: alpha*T^2*(q^T - p^T)/T + (1-alpha)*(q - onehot(y)), / #positions."""
    s = np.asarray(s, np.float64)
    g = alpha * T**2 * (np_softmax(s / T) - np_softmax(np.asarray(t, np.float64) / T)) / T
    if labels is not None:
        onehot = np.eye(s.shape[-1])[labels]
        g = g + (1 - alpha) * (np_softmax(s) - onehot)
    if mask is None:
        return g / np.prod(s.shape[:-1])
    return g * mask[..., None] / max(mask.sum(), 1)


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def make(shape, seed=0, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def make_labels(lead, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, C, lead, generator=g)


SHAPES = [(8, 5), (4, 3, 7)]
