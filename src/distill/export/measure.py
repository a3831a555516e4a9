"""What an exported model is worth: parity with the PyTorch student, accuracy, NLL, calibration, latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.export.formats import Predict

ECE_BINS = 15
LATENCY_BATCHES = (1, 64)
LATENCY_WARMUP = 3
LATENCY_REPS = 20


def expected_calibration_error(logits: Tensor, y: Tensor, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al., 2017, "On Calibration of Modern Neural
    Networks", eq. 3): sum over bins of |accuracy - mean confidence| weighted by the bin's share of
    examples. The confidence is the top-1 softmax probability; bin b holds confidences in ((b-1)/B, b/B]."""
    if y.numel() == 0:
        return float("nan")
    conf, pred = F.softmax(logits.double(), dim=-1).max(dim=-1)
    correct = (pred == y).double()
    which = (conf * bins).ceil().clamp(1, bins).long() - 1
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += float(in_bin.double().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs())
    return ece


def quality(logits: Tensor, y: Tensor, reference: Tensor) -> dict[str, Any]:
    """Accuracy, mean NLL, ECE and top-1 agreement with ``reference`` (the fp32 student's logits),
    and how far the logits are from the reference: the largest absolute difference."""
    pred = logits.argmax(-1)
    return {
        "accuracy": float((pred == y).double().mean()),
        "errors": int((pred != y).sum()),
        "nll": float(F.cross_entropy(logits.double(), y)),
        "ece": expected_calibration_error(logits, y),
        "agreement": float((pred == reference.argmax(-1)).double().mean()),
        "max_abs_diff": float((logits - reference).abs().max()) if logits.numel() else 0.0,
    }


def first_difference(logits: Tensor, reference: Tensor, atol: float) -> int | None:
    """The first sample whose top-1 differs from the reference's, or whose logits differ by more than
    ``atol``; None if there is none."""
    bad = ((logits - reference).abs().amax(dim=-1) > atol) | (logits.argmax(-1) != reference.argmax(-1))
    where = bad.nonzero()
    return int(where[0, 0]) if where.numel() else None


def latency(predict: Predict, x: Tensor, batch: int, reps: int = LATENCY_REPS,
            warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """p50 and p95 of ``reps`` timed calls on ``batch`` inputs (drawn from ``x``, cycled if short), after
    ``warmup`` untimed ones, in milliseconds, with PyTorch on one thread (onnxruntime sessions are made
    with one thread too: the numbers then do not depend on the machine's other load or core count)."""
    idx = torch.arange(batch) % x.shape[0]
    inputs = x[idx].contiguous()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            predict(inputs)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            predict(inputs)
            times.append(1000 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    q = statistics.quantiles(times, n=20, method="inclusive")  # q[9]: the median, q[18]: the 95th percentile
    return {"p50_ms": q[9], "p95_ms": q[18]}
