"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem conv to 16 channels, then three groups of ``n = (d - 4) / 6``
pre-activation basic blocks (BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3) of widths
16k, 32k, 64k at stride 1, 2, 2, a final BN-ReLU, global average pooling and a linear
classifier. Where a block changes width its shortcut is a 1x1 conv applied to the
*activated* input (as in the authors' and RepDistiller's code).

Named modules for feature hooks: ``conv1`` (stem), ``block1..3`` (group outputs; these are
pre-activations since the blocks are pre-activation), ``bn``/``relu`` (final activation),
``avgpool`` and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape, kaiming_init
from .registry import register_model

__all__ = [
    "WideBasicBlock", "WideResNet", "wrn", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "wrn_28_4", "wrn_28_10",
]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the two convolutions."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_planes != planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(act)
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; works for any input of at least 8x8 pixels."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WRN widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"WRN dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._make_group(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._make_group(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._make_group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(widths[3], num_classes)
        # outputs of the three groups (RepDistiller's feat[1:-1]), for feature distillation
        self.feature_stages: list[str] = ["block1", "block2", "block3"]
        kaiming_init(self)
        nn.init.zeros_(self.classifier.bias)

    @staticmethod
    def _make_group(in_planes: int, planes: int, blocks: int, stride: int,
                    dropout: float) -> nn.Sequential:
        layers = [WideBasicBlock(in_planes, planes, stride, dropout)]
        layers += [WideBasicBlock(planes, planes, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.classifier(self.flatten(self.avgpool(x)))


@register_model("wrn")
def wrn(
    num_classes: int,
    in_shape: Sequence[int],
    depth: int = 16,
    widen_factor: int = 1,
    dropout: float = 0.0,
) -> WideResNet:
    """WRN-depth-widen_factor (depth = 6n + 4); ``dropout`` between the block convs."""
    c, _, _ = image_shape(in_shape, "wrn")
    return WideResNet(depth, widen_factor, num_classes, in_channels=c, dropout=dropout)


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-16-1."""
    return wrn(num_classes, in_shape, depth=16, widen_factor=1, dropout=dropout)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-16-2 (a CRD benchmark student)."""
    return wrn(num_classes, in_shape, depth=16, widen_factor=2, dropout=dropout)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-40-1 (a CRD benchmark student)."""
    return wrn(num_classes, in_shape, depth=40, widen_factor=1, dropout=dropout)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-40-2 (a CRD benchmark teacher)."""
    return wrn(num_classes, in_shape, depth=40, widen_factor=2, dropout=dropout)


@register_model("wrn_28_4")
def wrn_28_4(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-28-4."""
    return wrn(num_classes, in_shape, depth=28, widen_factor=4, dropout=dropout)


@register_model("wrn_28_10")
def wrn_28_10(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis' strongest CIFAR model, ~36.5M parameters)."""
    return wrn(num_classes, in_shape, depth=28, widen_factor=10, dropout=dropout)
