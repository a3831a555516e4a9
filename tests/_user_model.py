"""A user-defined model factory for the import-path tests in test_models.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.classifier(self.body(x))


def tiny(num_classes: int, in_shape: Sequence[int], width: int = 4) -> TinyNet:
    return TinyNet(math.prod(in_shape), num_classes, width)


def not_a_module(num_classes: int, in_shape: Sequence[int]) -> str:
    return "not a module"


def no_in_shape(num_classes: int) -> TinyNet:
    return TinyNet(4, num_classes, 4)


NOT_CALLABLE = 42
