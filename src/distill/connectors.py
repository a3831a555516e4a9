"""Connectors: small modules that map a student's features to the shape of a teacher's.

Feature distillation compares a student's intermediate features with a teacher's, which
rarely have the same shape; FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets",
ICLR 2015) put a learned *regressor* on the student's side to bridge the difference. Here
the shapes are found by probing both models once (:func:`probe_shapes`, one forward pass on
an example batch), so nothing is hard-coded per teacher/student pair, and
:func:`build_connectors` returns an ``nn.ModuleDict`` that an objective owns (so the
optimizer sees its parameters).

Shapes are per sample, without the batch dimension: maps ``(C, H, W)``, vectors ``(D,)``,
token sequences ``(L, D)``. The kinds:

===================  =====================================================================
``identity``         equal shapes; nothing learned
``resize``           maps with equal channels: adaptive average pooling to a smaller size,
                     bilinear interpolation otherwise; nothing learned
``conv1x1``          maps: [resize] -> 1x1 conv without bias (the FitNets regressor)
``conv1x1_bn``       maps: [resize] -> 1x1 conv -> BatchNorm (the connector of Heo et al.,
                     "A Comprehensive Overhaul of Feature Distillation", ICCV 2019; the
                     ``ConvReg`` of the CRD/mdistiller code is this plus a ReLU)
``conv3x3_bn``       maps: [resize] -> 3x3 conv (padding 1) -> BatchNorm
``strided_conv``     maps, student larger by whole factors r: conv with kernel 2r - 1,
                     stride r, padding r - 1 (for r = 2 the 3x3/2 conv of ``ConvReg``)
``transposed_conv``  maps, student smaller by whole factors r: transposed conv with stride r,
                     padding r // 2 and kernel r + 2 (r // 2) (for r = 2 that of ``ConvReg``)
``linear``           vectors, or token sequences of equal length: ``nn.Linear`` on the last
                     dimension
``flatten_linear``   any shapes: flatten -> ``nn.Linear`` -> reshape to the teacher's shape
                     (its weight has prod(student) x prod(teacher) entries: mind the size)
===================  =====================================================================

``"auto"`` picks the smallest map: ``identity`` for equal shapes; for maps ``resize`` when
the channels agree and ``conv1x1`` when they differ (resampling space without parameters if
the sizes differ); ``linear`` for vectors and equal-length token sequences; ``flatten_linear``
when one side is a vector and the other is not (an MLP student of a CNN teacher). Anything
else needs an explicit kind or a module of your own.

Initialization: convolution weights are ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")`` (He et al., 2015), as in this project's models and the CIFAR reference
code; convolutions have no bias (a following BatchNorm has one). BatchNorm starts at weight 1,
bias 0, and linear layers keep PyTorch's default initialization (with a bias). A connector with
BatchNorm behaves differently in train and eval mode: it follows the mode of the objective that
owns it.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.taps import Tap, TapNames, TapSpec, run_with_taps

__all__ = [
    "CONNECTOR_KINDS",
    "ConnectorShapeError",
    "Resize",
    "build_connectors",
    "connector_key",
    "make_connector",
    "probe_shapes",
]

CONNECTOR_KINDS: tuple[str, ...] = (
    "auto", "identity", "resize", "conv1x1", "conv1x1_bn", "conv3x3_bn", "strided_conv", "transposed_conv",
    "linear", "flatten_linear",
)

Shape = tuple[int, ...]
PairSpec = tuple[TapSpec, TapSpec]


def probe_shapes(model: nn.Module, x: Any, names: TapNames) -> dict[str, torch.Size]:
    """The per-sample shape (batch dimension dropped) of each tapped feature of ``model(x)``.

    ``x`` is an example batch (its content does not matter; two examples are enough). The
    model runs once in eval mode without gradients; the train/eval mode of every submodule is
    restored afterwards, so batch-norm statistics are untouched. A model and input on the meta
    device work too (no memory, no compute).
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            _, features = run_with_taps(model, x, names)
    finally:
        for module, training in modes:
            module.training = training
    batch = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else None
    shapes = {}
    for key, feature in features.items():
        if feature.dim() < 2 or (batch is not None and feature.shape[0] != batch):
            raise ValueError(
                f"feature {key!r} of {type(model).__name__} has shape {tuple(feature.shape)}, which is not "
                f"(batch={batch}, ...) for the probe batch of {batch}: a connector maps per-sample features "
                f"of at least one dimension; tap a module whose output keeps the batch dimension")
        shapes[key] = feature.shape[1:]
    return shapes


class Resize(nn.Module):
    """Parameter-free resampling of ``(N, C, H, W)`` maps from ``in_size`` to ``out_size``:
    adaptive average pooling when no side grows (an exact average for whole factors),
    bilinear interpolation otherwise."""

    def __init__(self, in_size: Sequence[int], out_size: Sequence[int]) -> None:
        super().__init__()
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.pool = all(i >= o for i, o in zip(in_size, out_size))

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            return F.adaptive_avg_pool2d(x, self.out_size)
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.out_size}, mode={'adaptive_avg_pool' if self.pool else 'bilinear'}"


# -- the kinds ------------------------------------------------------------------------------------


class ConnectorShapeError(ValueError):
    """A connector kind that cannot map the student's feature shape to the teacher's."""


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _fail(kind: str, s: Shape, t: Shape, reason: str) -> ConnectorShapeError:
    return ConnectorShapeError(
        f"connector {kind!r} cannot map student features of shape {_fmt(s)} to teacher features of shape "
        f"{_fmt(t)}: {reason}")


def _require_maps(kind: str, s: Shape, t: Shape) -> None:
    if len(s) != 3 or len(t) != 3:
        raise _fail(kind, s, t, "it maps (C, H, W) feature maps to (C, H, W) feature maps; "
                                "use 'linear' or 'flatten_linear' for other shapes")


def _resize_layers(s: Shape, t: Shape) -> list[tuple[str, nn.Module]]:
    return [] if s[1:] == t[1:] else [("resize", Resize(s[1:], t[1:]))]


def _identity(s: Shape, t: Shape) -> nn.Module:
    if s != t:
        raise _fail("identity", s, t, "the shapes differ; use kind='auto'")
    return nn.Identity()


def _resize(s: Shape, t: Shape) -> nn.Module:
    _require_maps("resize", s, t)
    if s[0] != t[0]:
        raise _fail("resize", s, t, f"it cannot change the channels ({s[0]} -> {t[0]}); use 'conv1x1'")
    layers = _resize_layers(s, t)
    return nn.Sequential(OrderedDict(layers)) if layers else nn.Identity()


def _conv(kernel_size: int, batch_norm: bool) -> Callable[[Shape, Shape], nn.Module]:
    kind = f"conv{kernel_size}x{kernel_size}" + ("_bn" if batch_norm else "")

    def build(s: Shape, t: Shape) -> nn.Module:
        _require_maps(kind, s, t)
        layers = _resize_layers(s, t)
        layers.append(("conv", nn.Conv2d(s[0], t[0], kernel_size, padding=kernel_size // 2, bias=False)))
        if batch_norm:
            layers.append(("bn", nn.BatchNorm2d(t[0])))
        return nn.Sequential(OrderedDict(layers))

    return build


def _whole_factors(kind: str, large: Shape, small: Shape, s: Shape, t: Shape, larger: str) -> tuple[int, int]:
    """``large[1:] / small[1:]`` per axis, or an error if not whole numbers >= 1."""
    if any(a < b or a % b for a, b in zip(large[1:], small[1:])):
        raise _fail(kind, s, t, f"the {larger}'s height and width must be whole multiples of the other's; "
                                f"use 'conv1x1' (it resamples without parameters)")
    return (large[1] // small[1], large[2] // small[2])


def _strided_conv(s: Shape, t: Shape) -> nn.Module:
    _require_maps("strided_conv", s, t)
    r = _whole_factors("strided_conv", s, t, s, t, "student")
    conv = nn.Conv2d(s[0], t[0], kernel_size=(2 * r[0] - 1, 2 * r[1] - 1), stride=r,
                     padding=(r[0] - 1, r[1] - 1), bias=False)
    return nn.Sequential(OrderedDict(conv=conv))


def _transposed_conv(s: Shape, t: Shape) -> nn.Module:
    _require_maps("transposed_conv", s, t)
    r = _whole_factors("transposed_conv", t, s, s, t, "teacher")
    # Output size (H - 1) r - 2 p + k = r H with p = r // 2 and k = r + 2 p.
    conv = nn.ConvTranspose2d(s[0], t[0], kernel_size=(r[0] + 2 * (r[0] // 2), r[1] + 2 * (r[1] // 2)),
                              stride=r, padding=(r[0] // 2, r[1] // 2), bias=False)
    return nn.Sequential(OrderedDict(conv=conv))


def _linear(s: Shape, t: Shape) -> nn.Module:
    if not (len(s) == len(t) <= 2 and s[:-1] == t[:-1]):
        raise _fail("linear", s, t, "it maps the last dimension of vectors (D,) or of token sequences (L, D) of "
                                    "the same length; use 'conv1x1' for maps or 'flatten_linear'")
    return nn.Linear(s[-1], t[-1])


def _flatten_linear(s: Shape, t: Shape) -> nn.Module:
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(),
        linear=nn.Linear(math.prod(s), math.prod(t)),
        unflatten=nn.Unflatten(1, t),
    ))


_BUILDERS: dict[str, Callable[[Shape, Shape], nn.Module]] = {
    "identity": _identity,
    "resize": _resize,
    "conv1x1": _conv(1, batch_norm=False),
    "conv1x1_bn": _conv(1, batch_norm=True),
    "conv3x3_bn": _conv(3, batch_norm=True),
    "strided_conv": _strided_conv,
    "transposed_conv": _transposed_conv,
    "linear": _linear,
    "flatten_linear": _flatten_linear,
}


def _auto_kind(s: Shape, t: Shape) -> str:
    if s == t:
        return "identity"
    if len(s) == len(t) == 3:
        return "resize" if s[0] == t[0] else "conv1x1"
    if len(s) == len(t) <= 2 and s[:-1] == t[:-1]:
        return "linear"
    if len(s) == 1 or len(t) == 1:
        return "flatten_linear"
    raise _fail("auto", s, t, "there is no automatic choice between these shapes; pick a kind "
                              f"({', '.join(_BUILDERS)}) or use a module of your own")


def _as_shape(shape: Sequence[int], who: str) -> Shape:
    out = tuple(int(d) for d in shape)
    if not out or min(out) < 1:
        raise ValueError(f"{who} feature shape must be a per-sample shape of positive sizes, like (C, H, W) or "
                         f"(D,), without the batch dimension; got {tuple(shape)}")
    return out


def make_connector(student_shape: Sequence[int], teacher_shape: Sequence[int], kind: str = "auto") -> nn.Module:
    """A module mapping ``(N, *student_shape)`` features to ``(N, *teacher_shape)``.

    ``kind`` is one of :data:`CONNECTOR_KINDS` (see the module's docstring); ``"auto"`` picks
    the smallest map. A kind that cannot map the two shapes raises a ``ValueError`` naming both.
    """
    s, t = _as_shape(student_shape, "student"), _as_shape(teacher_shape, "teacher")
    if kind not in CONNECTOR_KINDS:
        raise ValueError(f"unknown connector kind {kind!r}; choose one of {', '.join(CONNECTOR_KINDS)}")
    if kind == "auto":
        kind = _auto_kind(s, t)
    module = _BUILDERS[kind](s, t)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return module


# -- building them for a teacher/student pair ------------------------------------------------------


def connector_key(name: str) -> str:
    """``name`` as an ``nn.ModuleDict`` key (which may not contain dots): every character other
    than a letter, digit or ``_`` becomes ``_`` (``"layer3.0.relu2:input"`` ->
    ``"layer3_0_relu2_input"``)."""
    return re.sub(r"\W", "_", name)


def _pair_dict(pairs: Mapping[str, PairSpec] | Sequence[PairSpec]) -> dict[str, tuple[Tap, Tap]]:
    """``{name: (student tap, teacher tap)}``; a list of pairs is named by the student specs."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else [(None, pair) for pair in pairs]
    named: dict[str, tuple[Tap, Tap]] = {}
    for name, pair in items:
        if isinstance(pair, (str, Tap)) or len(pair) != 2:
            raise TypeError(f"a pair is (student spec, teacher spec), e.g. ('layer2', 'block2:input'); got {pair!r}")
        student, teacher = Tap.parse(pair[0]), Tap.parse(pair[1])
        name = str(student) if name is None else name
        if name in named:
            raise ValueError(f"two pairs are named {name!r}; pass a dict {{name: (student, teacher)}} to name them")
        named[name] = (student, teacher)
    if not named:
        raise ValueError("no pairs given: name at least one (student module, teacher module) pair")
    return named


def build_connectors(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Mapping[str, PairSpec] | Sequence[PairSpec],
    probe_x: Any,
    kind: str | Mapping[str, str] = "auto",
) -> nn.ModuleDict:
    """One connector per (student feature, teacher feature) pair, sized by probing both models.

    ``pairs`` is ``{name: (student spec, teacher spec)}`` or a list of ``(student spec, teacher
    spec)`` named by their student specs; a spec is a tap (``"layer2"``, ``"layer3:input"``, see
    :mod:`distill.taps`). Both models run once on ``probe_x`` (see :func:`probe_shapes`). The
    result is keyed by :func:`connector_key` of each name, and ``connectors[key](student_feature)``
    has exactly the teacher feature's shape. ``kind`` is one kind for every pair or
    ``{name: kind}`` (pairs left out get ``"auto"``). The connectors are created on ``probe_x``'s
    device (on the CPU when probing on the meta device); whoever owns them must hand their
    parameters to the optimizer (an objective does so by holding them as a submodule).
    """
    named = _pair_dict(pairs)
    if isinstance(kind, Mapping):
        unknown = sorted(set(kind) - set(named))
        if unknown:
            raise ValueError(f"kind names pairs that do not exist: {', '.join(unknown)}; the pairs are "
                             f"{', '.join(named)}")
        kinds = {name: kind.get(name, "auto") for name in named}
    else:
        kinds = dict.fromkeys(named, kind)

    keys: dict[str, str] = {}
    for name in named:
        key = connector_key(name)
        if not key or hasattr(nn.ModuleDict(), key):
            raise ValueError(f"pair name {name!r} cannot be a module key (it gives {key!r}); rename the pair")
        if key in keys.values():
            other = next(n for n, k in keys.items() if k == key)
            raise ValueError(f"pair names {other!r} and {name!r} both become the module key {key!r}; rename one")
        keys[name] = key

    student_shapes = probe_shapes(student, probe_x, {name: s for name, (s, _) in named.items()})
    teacher_shapes = probe_shapes(teacher, probe_x, {name: t for name, (_, t) in named.items()})
    connectors = nn.ModuleDict()
    for name, (s, t) in named.items():
        try:
            connectors[keys[name]] = make_connector(student_shapes[name], teacher_shapes[name], kinds[name])
        except ValueError as e:
            raise type(e)(f"pair {name!r} (student: {s.describe()}, teacher: {t.describe()}): {e}") from None
    if isinstance(probe_x, Tensor) and probe_x.device.type != "meta":
        connectors.to(probe_x.device)
    return connectors
