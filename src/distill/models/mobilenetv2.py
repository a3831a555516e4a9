"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals
and Linear Bottlenecks", CVPR 2018), CIFAR variant of the CRD/RepDistiller benchmark
(``mobile_half``: width multiplier 0.5, expansion 6).

Differences from the ImageNet network, following RepDistiller so parameter counts match:

* the second stage (24 channels) keeps stride 1, so the total stride is 16 (32x32 -> 2x2);
* ReLU instead of ReLU6; channels are ``int(c * width_mult)`` (no rounding to 8);
* the first bottleneck (expansion 1) still has its 1x1 expansion conv;
* the last 1x1 conv has 1280 channels unless ``width_mult > 1``.

Named modules for feature hooks: ``conv1`` (stem), ``blocks.{0..6}`` (the seven stages of
inverted residuals), ``conv2`` (last 1x1 conv-BN-ReLU), ``avgpool`` and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape, kaiming_init
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# (expansion t, output channels c, repeats n, first stride s); t=None -> the `expansion` argument.
_SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            _conv_bn_relu(in_channels, hidden, 1),
            _conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 of width ``width_mult``; works for any input of at least 8x8."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expansion: int = 6,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}")
        self.num_classes = num_classes
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, stride=2)
        stages = []
        for t, c, n, s in _SETTINGS:
            out_channels = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_channels, s if i == 0 else 1,
                                               expansion if t is None else t))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(self.last_channels, num_classes)
        # the stage outputs RepDistiller returns as feat[1:-1], for feature distillation
        self.feature_stages: list[str] = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.blocks(self.conv1(x)))
        return self.classifier(self.flatten(self.avgpool(x)))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int,
    in_shape: Sequence[int],
    width_mult: float = 0.5,
    expansion: int = 6,
) -> MobileNetV2:
    """CIFAR MobileNetV2; the default is RepDistiller's ``mobile_half`` (width 0.5, t=6)."""
    c, _, _ = image_shape(in_shape, "mobilenetv2")
    return MobileNetV2(num_classes, in_channels=c, width_mult=width_mult, expansion=expansion)
