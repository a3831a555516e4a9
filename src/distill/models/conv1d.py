"""1-D convolutional networks for signals and time series: ``fcn1d`` and ``resnet1d``.

Wang, Yan & Oates (2017), "Time series classification from scratch with deep neural networks: a strong
baseline" (IJCNN): the fully convolutional network (three conv blocks of 128, 256, 128 filters with
kernels 8, 5, 3, each conv -> BN -> ReLU, then global average pooling) and the ResNet (three residual
blocks of 64, 128, 128 filters, each three such convs with kernels 8, 5, 3 and a shortcut: a 1x1
conv + BN where the width changes, BN otherwise). "same" padding keeps the length; no pooling until
the global one, so any length >= 1 works.

Inputs: ``(N, C, L)``, or a signal stored as one row ``(N, C, 1, L)``: the layout of 1-D data in
distill's views and augmentation (``distill.views``: crops and shifts along the signal; ``in_shape``
``(C, 1, L)``), taken as ``(N, C, L)``. Named modules: ``blocks.{i}`` (outputs ``(N, width, L)``),
``rows.{i}`` (the same as one-row maps ``(N, width, 1, L)``: the ``feature_stages``, so that the feature
methods made for maps apply), ``pool``, ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model

__all__ = ["SignalNet", "fcn1d", "resnet1d", "signal_shape"]

KERNELS = (8, 5, 3)


def signal_shape(in_shape: Sequence[int], model: str) -> tuple[int, int]:
    """``(channels, length)`` from ``in_shape`` ``(C, L)`` or ``(C, 1, L)``, or a ValueError naming ``model``."""
    shape = tuple(int(d) for d in in_shape)
    if len(shape) == 2 and min(shape) >= 1:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[1] == 1 and min(shape) >= 1:
        return shape[0], shape[2]
    raise ValueError(f"{model} takes 1-D signals: in_shape (channels, length) or (channels, 1, length) for one "
                     f"example; got {tuple(in_shape)} (store signals as (N, C, 1, L) arrays to use distill's 1-D "
                     f"views, or as (N, C, L))")


class SameConv1d(nn.Conv1d):
    """A bias-free Conv1d with "same" padding for any kernel: ``(k - 1) // 2`` zeros on the left, ``k // 2`` on
    the right (as TensorFlow's, the reference implementation's)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, kernel, bias=False)
        self.same = ((kernel - 1) // 2, kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.same))


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [SameConv1d(in_channels, out_channels, kernel), nn.BatchNorm1d(out_channels)]


class AsRow(nn.Module):
    """``(N, C, L) -> (N, C, 1, L)``: a block's output as a one-row feature map, the layout of 1-D signals in
    distill, so that the feature methods made for maps ``(C, H, W)`` (FitNets, AT, ...) take it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2)


class ConvBlock(nn.Module):
    """Conv1d(kernel) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv, self.bn = _conv_bn(in_channels, out_channels, kernel)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """Three conv blocks (kernels 8, 5, 3; the last without its ReLU) plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(in_channels, out_channels, KERNELS[0])
        self.conv2 = ConvBlock(out_channels, out_channels, KERNELS[1])
        self.conv3, self.bn3 = _conv_bn(out_channels, out_channels, KERNELS[2])
        self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1)) if in_channels != out_channels \
            else nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv3(self.conv2(self.conv1(x))))
        return self.relu(out + self.shortcut(x))


class SignalNet(nn.Module):
    """``blocks`` -> global average pool over the length -> ``classifier`` (a Linear). After each block,
    ``rows.{i}`` (:class:`AsRow`) gives its output as a one-row map ``(N, C, 1, L)``: the ``feature_stages``."""

    def __init__(self, blocks: Sequence[nn.Module], width: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.blocks = nn.ModuleList(blocks)
        self.rows = nn.ModuleList(AsRow() for _ in blocks)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(width, num_classes)
        self.feature_stages: list[str] = [f"rows.{i}" for i in range(len(blocks))]
        for m in self.modules():  # He et al. (2015) for the convs, as the image zoo
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            if x.shape[2] != 1:
                raise ValueError(f"a 1-D model takes (N, C, L) or one-row signals (N, C, 1, L); got {tuple(x.shape)}")
            x = x.squeeze(2)
        for block, row in zip(self.blocks, self.rows):
            x = row(block(x)).squeeze(2)  # row(...) is what a feature tap sees
        return self.classifier(self.flatten(self.pool(x)))


def _widths(channels: Sequence[int], model: str, count: int | None = None) -> list[int]:
    widths = [int(c) for c in channels]
    if not widths or min(widths) < 1 or (count is not None and len(widths) != count):
        many = f"{count} " if count is not None else ""
        raise ValueError(f"{model}: channels must be {many}positive ints, got {list(channels)}")
    return widths


@register_model("fcn1d")
def fcn1d(num_classes: int, in_shape: Sequence[int], channels: Sequence[int] = (128, 256, 128)) -> SignalNet:
    """Wang et al. (2017)'s fully convolutional network for signals ``(C, L)`` or ``(C, 1, L)``."""
    c, _ = signal_shape(in_shape, "fcn1d")
    widths = _widths(channels, "fcn1d", len(KERNELS))  # one per kernel 8, 5, 3
    blocks = [ConvBlock(w_in, w, k) for w_in, w, k in zip([c, *widths[:-1]], widths, KERNELS)]
    return SignalNet(blocks, widths[-1], num_classes)


@register_model("resnet1d")
def resnet1d(num_classes: int, in_shape: Sequence[int], channels: Sequence[int] = (64, 128, 128)) -> SignalNet:
    """Wang et al. (2017)'s ResNet for signals ``(C, L)`` or ``(C, 1, L)``: one residual block per width."""
    c, _ = signal_shape(in_shape, "resnet1d")
    widths = _widths(channels, "resnet1d")
    blocks = [ResidualBlock(w_in, w) for w_in, w in zip([c, *widths[:-1]], widths)]
    return SignalNet(blocks, widths[-1], num_classes)
