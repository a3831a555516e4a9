"""ShuffleNet V1 and V2, CIFAR variants of the CRD/RepDistiller benchmark.

* ShuffleNet V1: Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional
  Neural Network for Mobile Devices", CVPR 2018. RepDistiller's ``ShuffleV1``: groups 3,
  stage widths (240, 480, 960), (4, 8, 4) units per stage.
* ShuffleNet V2: Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient
  CNN Architecture Design", ECCV 2018. RepDistiller's ``ShuffleV2`` (net size 1x): stage
  widths (116, 232, 464), a final 1x1 conv to 1024 channels, and one downsampling unit plus
  (3, 7, 3) basic units per stage.

For 32x32 inputs both use a 1x1 stem conv to 24 channels with no downsampling (no 3x3
stride-2 conv and no max-pool as on ImageNet), so the three stages give 16, 8 and 4 pixel
maps. As in RepDistiller, ShuffleNet V1 applies a ReLU after the depthwise conv as well,
and both keep PyTorch's default initialisation.

Named modules for feature hooks: ``conv1``/``bn1``/``relu`` (stem), ``layer1..3`` (stage
outputs), ``avgpool`` and ``classifier``; V2 also ``conv2``/``bn2``/``relu2`` (last 1x1 conv).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape
from .registry import register_model

__all__ = [
    "ChannelShuffle", "ShuffleNetV1", "ShuffleNetV2", "ShuffleV1Unit", "ShuffleV2DownUnit",
    "ShuffleV2Unit", "shufflenetv1", "shufflenetv2",
]

_STEM_CHANNELS = 24


class ChannelShuffle(nn.Module):
    """Interleave channels across ``groups``: (N, g*k, H, W) -> view (N, g, k) -> (N, k, g)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.groups == 1:
            return x
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# --------------------------------------------------------------------------- ShuffleNet V1


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit: 1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv.

    With stride 2 the shortcut is a 3x3 average pool whose output is *concatenated*, so the
    residual branch produces ``out_channels - in_channels`` channels; with stride 1 it is
    added. The first 1x1 conv of the network's first unit is not grouped (its input, the
    24-channel stem, is too narrow), as in the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int,
                 group_first_conv: bool = True) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        if branch_channels <= 0:
            raise ValueError(f"ShuffleNet V1 unit cannot map {in_channels} to {out_channels} channels")
        mid = branch_channels // 4
        g1 = groups if group_first_conv else 1
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = ChannelShuffle(g1)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.shortcut: nn.Module = (nn.AvgPool2d(3, stride=2, padding=1) if stride == 2
                                    else nn.Identity())
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], dim=1) if self.stride == 2 else out + res
        return self.relu3(out)


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNet V1; works for any input of at least 8x8 pixels."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_channels: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        if len(out_channels) != 3 or len(num_blocks) != 3:
            raise ValueError("ShuffleNet V1 needs three stages")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, _STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.relu = nn.ReLU()
        width = _STEM_CHANNELS
        stages = []
        for s, (c, n) in enumerate(zip(out_channels, num_blocks)):
            units = []
            for i in range(n):
                units.append(ShuffleV1Unit(width, c, stride=2 if i == 0 else 1, groups=groups,
                                           group_first_conv=not (s == 0 and i == 0)))
                width = c
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(width, num_classes)
        # outputs of the three stages (RepDistiller's feat[1:-1]), for feature distillation
        self.feature_stages: list[str] = ["layer1", "layer2", "layer3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.flatten(self.avgpool(x)))


# --------------------------------------------------------------------------- ShuffleNet V2


class ShuffleV2Unit(nn.Module):
    """Basic V2 unit: split channels in half, transform one half (1x1 -> 3x3 dw -> 1x1),
    concatenate with the untouched half, shuffle with 2 groups."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"ShuffleNet V2 unit needs an even channel count, got {channels}")
        half = channels // 2
        self.half_channels = half  # not `self.half`: that would hide nn.Module.half()
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.half_channels], x[:, self.half_channels :]
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], dim=1))


class ShuffleV2DownUnit(nn.Module):
    """Spatial-downsampling V2 unit: both branches see the full input, stride 2, and their
    outputs (``out_channels / 2`` each) are concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch: 3x3 depthwise (stride 2) -> 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        # right branch: 1x1 -> 3x3 depthwise (stride 2) -> 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], dim=1))


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNet V2 (1x); works for any input of at least 8x8 pixels."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        if len(out_channels) != 4 or len(num_blocks) != 3:
            raise ValueError("ShuffleNet V2 needs three stage widths plus the final width")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, _STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.relu = nn.ReLU()
        width = _STEM_CHANNELS
        stages = []
        for c, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(ShuffleV2DownUnit(width, c),
                                        *[ShuffleV2Unit(c) for _ in range(n)]))
            width = c
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(width, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(out_channels[3], num_classes)
        # outputs of the three stages (RepDistiller's feat[1:-1]), for feature distillation
        self.feature_stages: list[str] = ["layer1", "layer2", "layer3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.classifier(self.flatten(self.avgpool(x)))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int, in_shape: Sequence[int]) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3 (RepDistiller's ``ShuffleV1``)."""
    c, _, _ = image_shape(in_shape, "shufflenetv1")
    return ShuffleNetV1(num_classes, in_channels=c)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_shape: Sequence[int]) -> ShuffleNetV2:
    """ShuffleNet V2 1x (RepDistiller's ``ShuffleV2``)."""
    c, _, _ = image_shape(in_shape, "shufflenetv2")
    return ShuffleNetV2(num_classes, in_channels=c)
