"""Supervised training on the hard labels (no teacher): registered as ``ce``, the baseline."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import register_method

__all__ = ["CrossEntropy"]


@register_method("ce", paper="none: cross-entropy on the hard labels, the supervised baseline", order=0)
class CrossEntropy(Objective):
    """Supervised training on hard labels: one term ``ce``."""

    collapse_advice = "lower train.optimizer.lr or train for more epochs, and check the labels"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__({"ce": 1.0})
        self.label_smoothing = label_smoothing

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(out.logits.float(), out.labels, label_smoothing=self.label_smoothing)}
