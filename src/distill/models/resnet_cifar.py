"""ResNets for CIFAR (He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, Section 4.2), with the variants used by the CRD/RepDistiller benchmark
(Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020).

A 3x3 stem conv, then three stages of ``n`` BasicBlocks (depth = 6n + 2) at stride 1, 2,
2; a shortcut is a 1x1 conv + BN projection where the shape changes (option B), identity
elsewhere. ``resnetX`` use filters (16 | 16, 32, 64); ``resnet8x4``/``resnet32x4`` are 4x
wider stages (64, 128, 256) after a 32-channel stem.

Named modules for feature hooks: ``conv1``/``bn1``/``relu`` (stem), ``layer1..3`` (the
stage outputs, post-ReLU), ``layerK.{i}.relu2`` (its *input* is the pre-activation of a
block), ``avgpool`` and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape, kaiming_init
from .registry import register_model

__all__ = [
    "BasicBlock", "CifarResNet", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44",
    "resnet56", "resnet110", "resnet8x4", "resnet32x4",
]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; ReLU after the addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet of depth ``6n + 2`` with stem width ``filters[0]`` and stage
    widths ``filters[1:]``; works for any input of at least 8x8 pixels (adaptive pooling)."""

    def __init__(
        self,
        depth: int,
        filters: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(filters) != 4:
            raise ValueError(f"filters must be (stem, stage1, stage2, stage3), got {filters}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        stem = filters[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(stem, filters[1], n, stride=1)
        self.layer2 = self._make_stage(filters[1], filters[2], n, stride=2)
        self.layer3 = self._make_stage(filters[2], filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(filters[3], num_classes)
        # outputs of the three stages (RepDistiller's feat[1:-1]), for feature distillation
        self.feature_stages: list[str] = ["layer1", "layer2", "layer3"]
        kaiming_init(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.flatten(self.avgpool(x)))


# (stem, stage1, stage2, stage3) widths, as RepDistiller's ``num_filters``.
_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _build(name: str, depth: int, filters: Sequence[int], num_classes: int,
           in_shape: Sequence[int]) -> CifarResNet:
    c, _, _ = image_shape(in_shape, name)
    return CifarResNet(depth, filters, num_classes, in_channels=c)


@register_model("resnet8")
def resnet8(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 8. Stages 16/32/64."""
    return _build("resnet8", 8, _SMALL, num_classes, in_shape)


@register_model("resnet14")
def resnet14(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 14. Stages 16/32/64."""
    return _build("resnet14", 14, _SMALL, num_classes, in_shape)


@register_model("resnet20")
def resnet20(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 20. Stages 16/32/64."""
    return _build("resnet20", 20, _SMALL, num_classes, in_shape)


@register_model("resnet32")
def resnet32(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 32. Stages 16/32/64."""
    return _build("resnet32", 32, _SMALL, num_classes, in_shape)


@register_model("resnet44")
def resnet44(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 44. Stages 16/32/64."""
    return _build("resnet44", 44, _SMALL, num_classes, in_shape)


@register_model("resnet56")
def resnet56(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 56. Stages 16/32/64."""
    return _build("resnet56", 56, _SMALL, num_classes, in_shape)


@register_model("resnet110")
def resnet110(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 110. Stages 16/32/64."""
    return _build("resnet110", 110, _SMALL, num_classes, in_shape)


@register_model("resnet8x4")
def resnet8x4(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 8. 4x wide: stages 64/128/256 after a 32-channel stem."""
    return _build("resnet8x4", 8, _X4, num_classes, in_shape)


@register_model("resnet32x4")
def resnet32x4(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    """CIFAR ResNet, depth 32. 4x wide: stages 64/128/256 after a 32-channel stem."""
    return _build("resnet32x4", 32, _X4, num_classes, in_shape)
