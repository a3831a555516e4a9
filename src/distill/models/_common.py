"""Small helpers shared by the architectures (shape checks and weight init)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def image_shape(in_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``in_shape`` as ``(channels, height, width)``, or a ValueError naming ``model``."""
    shape = tuple(int(d) for d in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"{model} expects in_shape = (channels, height, width) for one example, "
            f"e.g. (3, 32, 32) or (1, 28, 28); got {tuple(in_shape)}")
    return shape


def kaiming_init(module: nn.Module, linear_std: float | None = None) -> None:
    """He et al. (2015) init as in the reference CIFAR code.

    Convolutions get ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (i.e.
    ``N(0, 2 / (k*k*out_channels))``) and zero bias; batch norms weight 1 and bias 0.
    Linear layers keep PyTorch's default unless ``linear_std`` is given, in which case
    their weights are ``N(0, linear_std)`` with zero bias (the VGG/MobileNetV2 recipe).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
