"""Statistics of results: calibration, the spread over seeds, and paired bootstrap intervals of a gain.

Pure functions of tensors and numbers; :mod:`distill.report` and the multi-seed runs use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ECE_BINS = 15
"""Bins of the expected calibration error in every results table (Guo et al. 2017 use 15)."""


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017, "On Calibration of Modern Neural
    Networks"): the top-1 confidence ``c_i = max_k softmax(z_i)_k`` falls into one of ``bins`` equal-width
    bins of (0, 1] (bin ``b`` holds ``(b/bins, (b+1)/bins]``), and

        ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)| = (1/n) sum_b |sum_{i in B_b} (1[pred_i = y_i] - c_i)|.

    0 for a perfectly calibrated model; 0.0 for an empty set."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    n = labels.shape[0]
    if n == 0:
        return 0.0
    probs = torch.softmax(logits.detach().float(), dim=-1)
    confidence, predictions = probs.max(dim=-1)
    correct = (predictions == labels.to(predictions.device)).float()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    gap = torch.zeros(bins, dtype=torch.float64, device=logits.device)
    gap.index_add_(0, index, (correct - confidence).double())
    return float(gap.abs().sum() / n)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``; None for one value) of a metric over seeds."""

    mean: float
    sd: float | None
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.sd is None else f"{self.mean:.4f} ± {self.sd:.4f}"


def spread(values: Sequence[float]) -> Spread:
    """:class:`Spread` of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread of no values")
    mean = math.fsum(values) / len(values)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Spread(mean, sd, tuple(float(v) for v in values))


@dataclass(frozen=True)
class Interval:
    """The mean difference of two models' accuracy and its percentile bootstrap interval at ``level``."""

    difference: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def includes_zero(self) -> bool:
        """True when the interval does not exclude "no difference": the gain is within noise."""
        return self.low <= 0.0 <= self.high


def paired_bootstrap(correct_a: Tensor, correct_b: Tensor, *, resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Paired bootstrap interval of ``accuracy(a) - accuracy(b)`` (Efron & Tibshirani 1993; as in Dror et al.
    2018 for comparing models on one test set), over seeds and test examples.

    ``correct_a`` and ``correct_b``: (seeds, examples) booleans, row ``s`` of both from seed ``s`` (the same
    initial weights and data order for both models), columns the same test examples. Each resample draws
    seeds with replacement, then test examples with replacement (the same examples for both models: the
    pairing), and takes the mean of ``correct_a - correct_b`` over them; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means."""
    if correct_a.shape != correct_b.shape or correct_a.dim() != 2:
        raise ValueError(f"correct_a and correct_b must be (seeds, examples) of one shape, got "
                         f"{tuple(correct_a.shape)} and {tuple(correct_b.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    diff = correct_a.double() - correct_b.double()  # (S, N) in {-1, 0, 1}
    seeds, n = diff.shape
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        rows = torch.randint(seeds, (size, seeds), generator=generator)  # seeds of each resample
        cols = torch.randint(n, (size, n), generator=generator)  # test examples of each resample
        per_seed = torch.stack([diff[rows[:, j]].gather(1, cols).mean(dim=1) for j in range(seeds)], dim=1)
        means[start:start + size] = per_seed.mean(dim=1)
    quantiles = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(float(diff.mean()), float(quantiles[0]), float(quantiles[1]), level, resamples)
