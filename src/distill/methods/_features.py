"""What the feature methods share: the choice of layers, probing shapes, pooling, and :class:`FeatureObjective`.

Not a method (the registry skips modules whose name starts with ``_``); each feature method is one module
of :mod:`distill.methods`.

Every feature objective is ``ce`` on the hard labels (weight ``ce_weight``, 1 by default as in
RepDistiller and mdistiller), an optional Hinton ``kd`` term (``kd_weight``, 0 by default, at
``temperature``) and the method's own term(s) (weight ``weight``: the reference's beta). A term
whose weight is 0 is not computed, so ``ce_weight=0`` gives a method-only stage (FitNets' hint
stage, AB's and FSP's initialization). The math is in :mod:`distill.functional`; an objective
chooses the layers, owns the trainable modules (connectors, regressors, ...) and wires them.

Which layers. ``student_layers`` / ``teacher_layers`` are tap specs (module paths as
``model.named_modules()`` lists them; ``"path:input"`` for a module's input, see
:mod:`distill.taps`). Left out, they come from the model: every zoo model lists the outputs of
its main stages in ``model.feature_stages`` (ResNet ``["layer1", "layer2", "layer3"]``, ...) and
each method takes what its reference takes: all stages (AT, NST, VID, AB, FSP, ReviewKD), the
last (SP, FT, SimKD), the middle one (FitNets' hint: RepDistiller's ``feat[2]``), or the
penultimate embedding ``"classifier:input"`` (CC, RKD, PKT, CRD). A model without
``feature_stages`` needs explicit layers. When the two lists differ in length, the **last k** of
each are paired (deepest with deepest), k the shorter length.

Unlike shapes. Maps are ``(C, H, W)`` per sample, vectors ``(D,)``. Methods that compare a pair
directly (FitNets, VID, AB, FT, SimKD) do so at the smaller spatial size (the larger map is
average-pooled, as RepDistiller does) and, when one side is a vector (an MLP student of a CNN
teacher), after averaging the other side's map over space; their modules then only map channels.
AT and NST compare spatial maps: a student vector is first mapped to the teacher's map shape by a
learned flatten-linear connector (not in the papers, which assume two CNNs); a teacher vector is
an error. Relation methods (SP, CC, RKD, PKT, CRD) flatten each sample and accept any shapes.

All modules are built in :meth:`Objective.setup` from one probing forward pass of both models
(so any teacher/student pair works) and only once: calling ``setup`` again, e.g. when the same
objective trains a second stage, keeps the trained modules. Teacher features are detached: no
gradient reaches the teacher.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import make_connector, probe_shapes
from distill.methods._common import _teacher, check_weight
from distill.methods.base import Objective, StepOutputs, tensor_sum
from distill.methods.kd import label_and_kd_terms

__all__ = [
    "PENULTIMATE",
    "FeatureObjective",
    "feature_stages",
    "pair_last",
    "preactivation_taps",
    "compared_shapes",
    "resample",
    "token_grid",
    "tokens_hint",
    "tokens_to_map",
]


PENULTIMATE = "classifier:input"
"""The penultimate embedding: the input of the model's final ``classifier`` (every zoo model has one)."""

Shape = tuple[int, ...]
Layers = str | Sequence[str] | None
LayerChoice = Literal["stages", "last", "middle", "embedding"]


# --------------------------------------------------------------------------- layers


def feature_stages(model: nn.Module, role: str, method: str) -> list[str]:
    """``model.feature_stages``, or an error saying how to name the layers to tap."""
    stages = getattr(model, "feature_stages", None)
    if stages is None or len(stages) == 0:
        why = "has no `feature_stages` attribute" if stages is None else "has an empty `feature_stages`"
        raise ValueError(
            f"{method}: the {role} ({type(model).__name__}) {why}, so there is no default layer to tap; pass "
            f"{role}_layers=[module paths] (distill.taps.module_names(model) lists them) or set "
            f"model.feature_stages")
    return [str(s) for s in stages]


def pair_last(student_layers: Sequence[str], teacher_layers: Sequence[str]) -> list[tuple[str, str]]:
    """Pair the last ``k = min(len(student_layers), len(teacher_layers))`` layers of each, deepest with deepest."""
    k = min(len(student_layers), len(teacher_layers))
    return list(zip(student_layers[len(student_layers) - k:], teacher_layers[len(teacher_layers) - k:]))


def preactivation_taps(model: nn.Module, stages: Sequence[str], probe: Tensor) -> list[str]:
    """Where each stage's pre-activation is: ``"<relu>:input"`` when the stage's output is computed by
    an ``nn.ReLU`` inside it (a ResNet stage ends in its last block's ReLU; VGG's ``relu1`` is one),
    else the stage itself (a WRN group ends in an addition: already a pre-activation; a stage that
    ends in a max-pool is tapped as it is: max(relu(x)) = relu(max(x)) is > 0 exactly where the
    pooled pre-activation is, the sign pattern AB transfers).

    Found by running ``model`` once on ``probe`` (eval mode, no gradients, modes restored).
    """
    relus = {name for name, m in model.named_modules() if isinstance(m, nn.ReLU) and not m.inplace}
    watched = relus | set(stages)
    outputs: dict[str, list[Tensor]] = {}

    def keep(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        return lambda module, args, output: outputs.setdefault(name, []).append(output)

    handles = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if name in watched]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    taps = []
    for stage in stages:
        out = outputs.get(stage, [None])[-1]
        producers = [name for name in relus if (name == stage or name.startswith(stage + "."))
                     and len(outputs.get(name, [])) == 1 and outputs[name][0] is out]
        taps.append(f"{producers[0]}:input" if producers and out is not None else stage)
    return taps


def _as_layers(layers: Layers, name: str) -> list[str] | None:
    if layers is None:
        return None
    out = [layers] if isinstance(layers, str) else list(layers)
    if not out or not all(isinstance(x, str) for x in out):
        raise ValueError(f"{name} must be a module path or a non-empty list of them, got {layers!r}")
    return out


def _probe(model: nn.Module, specs: Sequence[str], probe: Tensor, method: str, role: str) -> list[Shape]:
    """Per-sample shapes of the tapped ``specs`` of ``model``, with the method and role in any error."""
    try:
        shapes = probe_shapes(model, probe, {str(i): spec for i, spec in enumerate(specs)})
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{method}: cannot tap the {role}'s layers {list(specs)}: {e}") from None
    return [tuple(shapes[str(i)]) for i in range(len(specs))]


# --------------------------------------------------------------------------- shapes


def compared_shapes(student: Shape, teacher: Shape, method: str = "this method") -> tuple[Shape, Shape]:
    """The shapes at which a pair is compared: maps at the smaller spatial size of the two (per axis);
    a vector and a map as two vectors (the map averaged over space)."""
    if len(student) == 3 and len(teacher) == 3:
        size = (min(student[1], teacher[1]), min(student[2], teacher[2]))
        return (student[0], *size), (teacher[0], *size)
    if len(student) in (1, 3) and len(teacher) in (1, 3):
        return student[:1], teacher[:1]
    raise ValueError(f"{method} compares vectors (D,) and feature maps (C, H, W); got per-sample shapes "
                     f"{student} (student) and {teacher} (teacher){tokens_hint(student, teacher)}")


def resample(x: Tensor, shape: Shape) -> Tensor:
    """``x`` (B, ...) average-pooled to (B, *shape): a map to a smaller map, or a map over all space to a vector."""
    if x.dim() == 4 and len(shape) == 1:
        return x.mean(dim=(2, 3))
    if x.dim() == 4 and tuple(x.shape[2:]) != tuple(shape[1:]):
        _, height, width = shape  # a map's (C, H, W)
        return F.adaptive_avg_pool2d(x, (height, width))
    return x


def _pool_to_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two ``(B, C, H, W)`` maps average-pooled to their smaller spatial size (per axis)."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))

    def to_size(x: Tensor) -> Tensor:
        return x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size)

    return to_size(a), to_size(b)


def _as_map(x: Tensor) -> Tensor:
    """A ``(B, D)`` vector as a ``(B, D, 1, 1)`` map; maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


# --------------------------------------------------------------------------- transformer tokens


MAX_PREFIX_TOKENS = 2  # ViT's class token; DeiT's class and distillation tokens


def token_grid(model: nn.Module, shape: Shape, method: str) -> tuple[int, int] | None:
    """``(prefix, side)`` when ``shape`` is ``(N, D)`` tokens of a vision transformer (``model.patch_tokens``, as
    the Hugging Face adapter sets for ViT-like models): ``prefix`` leading tokens (class, distillation: at most
    :data:`MAX_PREFIX_TOKENS`) then ``side x side`` patch tokens in row-major order (ViT's patch embedding);
    None for any other shape or model. Tokens that form no square grid are an error naming the shape."""
    if len(shape) != 2 or not getattr(model, "patch_tokens", False):
        return None
    n = shape[0]
    for prefix in range(min(MAX_PREFIX_TOKENS, n - 1) + 1):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix:
            return prefix, side
    raise ValueError(f"{method}: the {type(model).__name__}'s tokens (N, D) = {tuple(shape)} are not a square grid "
                     f"of patches after up to {MAX_PREFIX_TOKENS} class/distillation tokens, so they cannot be read "
                     f"as a feature map; tap another layer, or use a method that flattens (sp, rkd, pkt, cc, crd)")


def tokens_hint(*shapes: Shape) -> str:
    """For an error about shapes: what to do when one of them is ``(N, D)``, a transformer's tokens."""
    if not any(len(shape) == 2 for shape in shapes):
        return ""
    return ("; if a 2-D shape is a transformer's tokens (N, D), they are read as a map of its patch grid only for a "
            "model that sets patch_tokens = True (Hugging Face ViTs do), or use a method that flattens (sp, rkd, pkt, "
            "cc, crd)")


def _grid_shape(grid: tuple[int, int] | None, shape: Shape) -> Shape:
    return shape if grid is None else (shape[1], grid[1], grid[1])


def tokens_to_map(x: Tensor, grid: tuple[int, int] | None) -> Tensor:
    """Tokens ``(B, N, D)`` as the map ``(B, D, side, side)`` of their patch tokens (the ``prefix`` leading
    class/distillation tokens left out), for ``grid = (prefix, side)`` from :func:`token_grid`; ``x`` itself
    for ``grid`` None."""
    if grid is None:
        return x
    prefix, side = grid
    return x[:, prefix:, :].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


# --------------------------------------------------------------------------- the base class


class FeatureObjective(Objective):
    """``ce`` + ``kd`` + the method's terms on tapped student/teacher features.

    Subclasses set ``method`` (its name in messages), ``layers`` (the default choice of layers:
    ``"stages"``, ``"last"``, ``"middle"`` or ``"embedding"``), build their modules in
    :meth:`build` and compute their terms in :meth:`method_terms` from the paired features
    (``student[i]`` and ``teacher[i]`` come from ``self.pairs[i]``).
    """

    needs_teacher = True
    taps_teacher = True
    method: str = "feature method"
    layers: LayerChoice = "stages"
    #: a vision transformer's tokens are read as maps of its patch grid (:func:`token_grid`); the relation methods,
    #: which flatten each sample, take the tokens as they are
    tokens_as_maps: bool = True
    _grids: tuple[list[tuple[int, int] | None], list[tuple[int, int] | None]] = ([], [])

    def __init__(self, terms: dict[str, float], *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        weights = {"ce": check_weight(ce_weight, "ce_weight"), "kd": check_weight(kd_weight, "kd_weight")}
        weights.update({name: check_weight(w, f"the weight of {name}") for name, w in terms.items()})
        super().__init__(weights)
        self.term_names = tuple(terms)
        self.student_layers = _as_layers(student_layers, "student_layers")
        self.teacher_layers = _as_layers(teacher_layers, "teacher_layers")
        self.temperature = temperature
        self.pairs: list[tuple[str, str]] = []
        self.built_for: tuple[list[Shape], list[Shape]] | None = None  # the shapes the modules were sized for

    # -- choosing and probing the layers ---------------------------------------------------------

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        """The layers tapped when none are given (see the module docstring)."""
        if self.layers == "embedding":
            return [getattr(model, "embedding_layer", None) or PENULTIMATE]
        stages = feature_stages(model, role, self.method)
        if self.layers == "last":
            return stages[-1:]
        if self.layers == "middle":
            return [stages[(len(stages) - 1) // 2]]
        return stages

    def pair(self, student_layers: list[str], teacher_layers: list[str]) -> list[tuple[str, str]]:
        """The (student tap, teacher tap) pairs compared; by default the last k of each."""
        return pair_last(student_layers, teacher_layers)

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if teacher is None:
            raise ValueError(f"{self.method} needs the teacher model itself (a live FrozenTeacher, not cached "
                             f"outputs) to tap its intermediate features")
        s_layers = self.student_layers or self.default_layers(student, "student", probe)
        t_layers = self.teacher_layers or self.default_layers(teacher, "teacher", probe)
        self.pairs = self.pair(s_layers, t_layers)
        self.student_features = {f"s{i}": s for i, (s, _) in enumerate(self.pairs)}
        self.teacher_features = {f"t{i}": t for i, (_, t) in enumerate(self.pairs)}
        s_shapes = _probe(student, [s for s, _ in self.pairs], probe, self.method, "student")
        t_shapes = _probe(teacher, [t for _, t in self.pairs], probe, self.method, "teacher")
        if self.tokens_as_maps:  # a vision transformer's tokens (N, D) as a map (D, h, w) of its patches
            self._grids = ([token_grid(student, shape, self.method) for shape in s_shapes],
                           [token_grid(teacher, shape, self.method) for shape in t_shapes])
            s_shapes = [_grid_shape(g, shape) for g, shape in zip(self._grids[0], s_shapes)]
            t_shapes = [_grid_shape(g, shape) for g, shape in zip(self._grids[1], t_shapes)]
        if self.built_for is None:
            self.build(s_shapes, t_shapes)
            self.to(probe.device)
            self.built_for = (s_shapes, t_shapes)
        elif self.built_for != (s_shapes, t_shapes):
            raise ValueError(f"{self.method}: this objective's modules were built for student features "
                             f"{self.built_for[0]} and teacher features {self.built_for[1]}, not {s_shapes} and "
                             f"{t_shapes}; use a new objective for another pair of models")

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        """Create the trainable modules, sized from the per-sample shapes of the paired features."""

    # -- the loss ------------------------------------------------------------------------------

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def trains_predictions(self) -> bool:
        """Whether it has a ``ce`` or ``kd`` term: without (FitNets' hints alone, AB's or FSP's initialization)
        it does not train the student's predictions, so validation accuracy cannot select its checkpoint."""
        return bool(self.weights["ce"] or self.weights["kd"])

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        targets = _teacher(out, self.method)
        terms = label_and_kd_terms(self, out, targets, self.temperature)
        if any(self.weights[name] for name in self.term_names):
            if not self.pairs or targets.features is None:
                raise RuntimeError(f"{self.method}: no features were tapped; train with distill.fit (it calls "
                                   f"objective.setup) or call objective.setup(student, teacher, probe) first")
            student = [out.features[f"s{i}"] for i in range(len(self.pairs))]
            teacher = [targets.features[f"t{i}"].detach() for i in range(len(self.pairs))]
            if self.tokens_as_maps:
                student = [tokens_to_map(x, g) for x, g in zip(student, self._grids[0])]
                teacher = [tokens_to_map(x, g) for x, g in zip(teacher, self._grids[1])]
            terms.update(self.method_terms(student, teacher, out))
        return terms

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{s}->{t}" for s, t in self.pairs) or "(set in setup)"
        return f"pairs: {pairs}; weights={self.weights}"


_sum = tensor_sum  # the feature methods' name for it


class _MapObjective(FeatureObjective):
    """A method comparing spatial maps of any channel counts (pooled to the smaller size). A student
    vector is first mapped to the teacher's map shape by a learned flatten-linear connector."""

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        connectors: list[nn.Module] = []
        for (_, t_layer), s, t in zip(self.pairs, student_shapes, teacher_shapes):
            if len(t) != 3:
                raise ValueError(f"{self.method} compares spatial maps, but the teacher's layer {t_layer!r} gives "
                                 f"per-sample shape {t}, not (C, H, W); choose teacher_layers with feature maps"
                                 f"{tokens_hint(t)}")
            if len(s) == 3:
                connectors.append(nn.Identity())
            else:
                connectors.append(make_connector(s, t, "flatten_linear"))
        self.connectors = nn.ModuleList(connectors)

    def pair_loss(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        raise NotImplementedError

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        losses = [self.pair_loss(*_pool_to_common(connector(f_s), f_t))
                  for connector, f_s, f_t in zip(self.connectors, student, teacher)]
        return {self.term_names[0]: _sum(losses)}


def _channel_stack(channels: Sequence[int], is_map: bool, batch_norm: bool = False,
                   activation: nn.Module | None = None, final_activation: bool = False) -> nn.Sequential:
    """1x1 convs (maps) or linear layers (vectors) through ``channels``, with BN and activation
    between them (and after the last one with ``final_activation``)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv2d(c_in, c_out, 1, bias=False) if is_map else nn.Linear(c_in, c_out, bias=False))
        last = i == len(channels) - 2
        if batch_norm and (not last or final_activation):
            layers.append(nn.BatchNorm2d(c_out) if is_map else nn.BatchNorm1d(c_out))
        if activation is not None and (not last or final_activation):
            layers.append(copy.deepcopy(activation))
    return nn.Sequential(*layers)
