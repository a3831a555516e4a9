"""VGG with batch norm for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015), in the form used by the CRD/RepDistiller
benchmark (Tian et al., ICLR 2020): the three 4096-wide FC layers are replaced by global
average pooling and a single ``Linear(512, num_classes)``.

Five groups of conv3x3(bias)-BN-ReLU layers; the configurations are

    vgg8  = [64], [128], [256], [512], [512]
    vgg11 = [64], [128], [256]*2, [512]*2, [512]*2
    vgg13 = [64]*2, [128]*2, [256]*2, [512]*2, [512]*2
    vgg16 = [64]*2, [128]*2, [256]*3, [512]*3, [512]*3
    vgg19 = [64]*2, [128]*2, [256]*4, [512]*4, [512]*4

A 2x2 max-pool follows each of the first four groups *while the map is at least 8x8*.
This reproduces RepDistiller exactly on 32x32 inputs (pools after groups 1-3 only, so the
last two groups see 4x4 maps) and on 64x64 inputs (all four pools), and keeps small inputs
(8x8 digits: one pool) from collapsing to nothing.

Named modules for feature hooks: ``block0..4`` (group outputs *before* their last ReLU,
i.e. pre-activations), ``relu0..4`` (post-activations), ``pool0..3``, ``avgpool`` and
``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape, kaiming_init
from .registry import register_model

__all__ = ["VGG", "VGG_CONFIGS", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

# A group's output is pooled only if its maps are at least this large (-> >= 4x4 after).
_MIN_POOL_SIZE = 8


def _make_group(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """conv-BN-ReLU for each width, without the final ReLU (applied by the caller)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """CIFAR VGG-BN with five conv groups, global average pooling and one linear layer."""

    # Registered by name in __init__ (add_module), declared here for the type checker.
    relu0: nn.ReLU
    relu1: nn.ReLU
    relu2: nn.ReLU
    relu3: nn.ReLU
    relu4: nn.ReLU
    pool0: nn.MaxPool2d
    pool1: nn.MaxPool2d
    pool2: nn.MaxPool2d
    pool3: nn.MaxPool2d

    def __init__(
        self,
        cfg: Sequence[Sequence[int]],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(cfg) != 5 or not all(len(g) > 0 for g in cfg):
            raise ValueError(f"VGG cfg must have 5 non-empty groups, got {cfg}")
        self.num_classes = num_classes
        self.block0 = _make_group(in_channels, cfg[0])
        self.block1 = _make_group(cfg[0][-1], cfg[1])
        self.block2 = _make_group(cfg[1][-1], cfg[2])
        self.block3 = _make_group(cfg[2][-1], cfg[3])
        self.block4 = _make_group(cfg[3][-1], cfg[4])
        for i in range(5):
            self.add_module(f"relu{i}", nn.ReLU())
        for i in range(4):
            self.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        # post-ReLU outputs of groups 1-4 (RepDistiller's feat[1:-1]; group 0 plays the stem)
        self.feature_stages: list[str] = ["relu1", "relu2", "relu3", "relu4"]
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        relus = (self.relu0, self.relu1, self.relu2, self.relu3, self.relu4)
        pools = (self.pool0, self.pool1, self.pool2, self.pool3)
        for i, (block, relu) in enumerate(zip(blocks, relus)):
            x = relu(block(x))
            if i < 4 and min(x.shape[-2:]) >= _MIN_POOL_SIZE:
                x = pools[i](x)
        return self.classifier(self.flatten(self.avgpool(x)))


def _build(name: str, num_classes: int, in_shape: Sequence[int]) -> VGG:
    c, _, _ = image_shape(in_shape, name)
    return VGG(VGG_CONFIGS[name], num_classes, in_channels=c)


@register_model("vgg8")
def vgg8(num_classes: int, in_shape: Sequence[int]) -> VGG:
    """VGG-8 with batch norm (RepDistiller's ``vgg8_bn``, config "S")."""
    return _build("vgg8", num_classes, in_shape)


@register_model("vgg11")
def vgg11(num_classes: int, in_shape: Sequence[int]) -> VGG:
    """VGG-11 with batch norm (config "A")."""
    return _build("vgg11", num_classes, in_shape)


@register_model("vgg13")
def vgg13(num_classes: int, in_shape: Sequence[int]) -> VGG:
    """VGG-13 with batch norm (config "B"; a CRD benchmark teacher)."""
    return _build("vgg13", num_classes, in_shape)


@register_model("vgg16")
def vgg16(num_classes: int, in_shape: Sequence[int]) -> VGG:
    """VGG-16 with batch norm (config "D")."""
    return _build("vgg16", num_classes, in_shape)


@register_model("vgg19")
def vgg19(num_classes: int, in_shape: Sequence[int]) -> VGG:
    """VGG-19 with batch norm (config "E")."""
    return _build("vgg19", num_classes, in_shape)
