"""A small, fast convolutional network for MNIST-like or sklearn-digits-sized images.

Not from a paper: a plain LeNet/VGG-style baseline (LeCun et al., 1998; Simonyan &
Zisserman, 2015) with batch norm (Ioffe & Szegedy, 2015), meant for quick experiments and
tests where the CIFAR networks are overkill.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape, kaiming_init
from .registry import register_model

__all__ = ["SmallCNN", "cnn"]


class ConvStage(nn.Module):
    """conv3x3 -> [BN] -> ReLU, then a 2x2 max-pool while the map is at least 4x4.

    The pool is skipped at run time on smaller maps, so 8x8 inputs go 8 -> 4 -> 2 and
    never collapse to 0x0.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        if min(x.shape[-2:]) >= 4:
            x = self.pool(x)
        return x


class SmallCNN(nn.Module):
    """``len(channels)`` conv stages -> global average pool -> [Linear(hidden) -> ReLU ->
    Dropout] -> ``classifier``. ``hidden=0`` drops the hidden linear layer.

    Named modules: ``stages.{i}`` (and ``.conv``, ``.bn``, ``.relu``), ``avgpool``,
    ``fc``, ``relu``, ``dropout``, ``classifier``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 1:
            raise ValueError(f"cnn: channels must be a non-empty sequence of positive ints, got {channels}")
        if hidden < 0:
            raise ValueError(f"cnn: hidden must be >= 0, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"cnn: dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        stages = []
        width = in_channels
        for c in widths:
            stages.append(ConvStage(width, c, batch_norm))
            width = c
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        if hidden > 0:
            self.fc: nn.Module = nn.Linear(width, hidden)
            width = hidden
        else:
            self.fc = nn.Identity()
        self.relu: nn.Module = nn.ReLU() if hidden > 0 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        # outputs of the conv stages, for feature distillation
        self.feature_stages: list[str] = [f"stages.{i}" for i in range(len(widths))]
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.avgpool(self.stages(x)))
        x = self.dropout(self.relu(self.fc(x)))
        return self.classifier(x)


@register_model("cnn")
def cnn(
    num_classes: int,
    in_shape: Sequence[int],
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> SmallCNN:
    """Small conv net for (C, H, W) inputs of at least 8x8 (digits, MNIST, CIFAR)."""
    c, _, _ = image_shape(in_shape, "cnn")
    return SmallCNN(c, num_classes, channels=channels, hidden=hidden, dropout=dropout,
                    batch_norm=batch_norm)
