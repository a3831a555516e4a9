"""Independent float64 numpy helpers for the method losses of distill.functional (written from the papers'
formulas, not from our torch code), and the tensors they are checked on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def make(shape, seed=0, scale=1.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def make_labels(lead, num_classes, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, lead, generator=g)


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p, q) -> float:
    """sum_c p_c log(p_c / q_c), with 0 log 0 = 0."""
    return float(sum(pc * math.log(pc / qc) for pc, qc in zip(p, q) if pc > 0))


def np_unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def block_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of (B, C, H, W) to (size, size) when H and W are multiples of size."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def close(out: torch.Tensor, ref: float, rel=1e-5, abs=1e-7) -> None:
    assert out.dim() == 0
    assert out.item() == pytest.approx(ref, rel=rel, abs=abs)
