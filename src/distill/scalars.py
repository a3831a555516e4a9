"""Python numbers as cached 0-dim CPU tensors, for the few scalar operations in the training step.

On the CPU, ``tensor * 0.9`` is five ATen operations: PyTorch wraps the Python number in a float64 0-dim tensor
and casts it to the tensor's dtype (``to``, ``_to_copy``, ``empty_strided``, ``copy_``) before the one that
multiplies. ``tensor * scalar(0.9, tensor)``, with the number already a 0-dim tensor of that dtype, is the one
operation, and the same number: the wrapped value is cast to the tensor's dtype before any arithmetic either way
(tests/test_scalars.py checks this bit for bit). In a step of a small model every ATen call costs microseconds
of dispatch, so the cached-teacher step spends a measurable share of its time on such casts
(benchmarks/profile_cached.py).

Only for float32 and float64 tensors on the CPU: elsewhere the number is returned as it is (float16 and bfloat16
arithmetic on the CPU computes in float32 with the number unrounded, which a 0-dim float16 tensor would round;
``torch.compile`` handles Python numbers itself).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["scalar"]


def scalar(value: float, like: Tensor) -> Tensor | float:
    """``value`` as a 0-dim CPU tensor of ``like``'s dtype, made once per (value, dtype) and reused, where
    ``like`` is a float32 or float64 CPU tensor; else ``value`` itself. Use it only as an operand that is never
    written to (it is shared)."""
    if like.dtype not in _EXACT or like.device.type != "cpu" or _compiling():
        return value
    return _cached(float(value), math.copysign(1.0, value), like.dtype)


_EXACT = (torch.float32, torch.float64)  # dtypes whose arithmetic with a Python number rounds the number to them
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch.compiler.is_compiling: torch >= 2.3


@functools.lru_cache(maxsize=256)
def _cached(value: float, sign: float, dtype: torch.dtype) -> Tensor:
    # sign: 0.0 and -0.0 are equal keys but not the same number; a normal (not an inference) tensor even when first
    # asked for under torch.inference_mode, so that autograd may save it for a later training step's backward
    with torch.inference_mode(False):
        return torch.tensor(math.copysign(value, sign) if value == 0.0 else value, dtype=dtype)
