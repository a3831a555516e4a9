"""Fully connected networks (multi-layer perceptrons).

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015),
arXiv:1503.02531, Section 3 (MNIST):

* teacher: two hidden layers of 1200 ReLU units, dropout 0.5 on the hidden units and
  0.2 on the input pixels -> ``create_model("mlp", 10, (1, 28, 28), hidden=(1200, 1200),
  dropout=0.5, input_dropout=0.2)``;
* student: two hidden layers of 800 units, no regularisation ->
  ``create_model("mlp", 10, (1, 28, 28), hidden=(800, 800))``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_model

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """Flatten -> [input dropout] -> (Linear -> ReLU -> Dropout) * len(hidden) -> classifier.

    Named modules for feature hooks: ``input_dropout``, ``hidden.fc{i}``, ``hidden.relu{i}``,
    ``hidden.drop{i}`` (i = 1..len(hidden)) and ``classifier``. ``hidden=()`` gives a
    linear (multinomial logistic regression) model.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (1200, 1200),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for p, what in ((dropout, "dropout"), (input_dropout, "input_dropout")):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"mlp: {what} must be in [0, 1), got {p}")
        widths = [int(h) for h in hidden]
        if any(h < 1 for h in widths):
            raise ValueError(f"mlp: hidden widths must be positive, got {tuple(hidden)}")
        self.num_classes = num_classes
        self.flatten = nn.Flatten()
        self.input_dropout = nn.Dropout(input_dropout)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, h in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        self.hidden = nn.Sequential(layers)
        self.classifier = nn.Linear(width, num_classes)
        # outputs of the hidden layers (post-ReLU), for feature distillation
        self.feature_stages: list[str] = [f"hidden.relu{i}" for i in range(1, len(widths) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.input_dropout(self.flatten(x))))


@register_model("mlp")
def mlp(
    num_classes: int,
    in_shape: Sequence[int],
    hidden: Sequence[int] = (1200, 1200),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> MLP:
    """ReLU MLP on the flattened input (any ``in_shape``).

    Defaults are the width of Hinton et al. (2015)'s MNIST teacher (1200-1200); their
    teacher also used ``dropout=0.5, input_dropout=0.2``, their student is
    ``hidden=(800, 800)`` without dropout.
    """
    return MLP(math.prod(in_shape), num_classes, hidden=hidden, dropout=dropout,
               input_dropout=input_dropout)
