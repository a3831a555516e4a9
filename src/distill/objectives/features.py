"""Feature distillation methods as objectives: what the student computes inside, not only its outputs.

Every objective here is ``ce`` on the hard labels (weight ``ce_weight``, 1 by default as in
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
import inspect
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import functional as DF
from distill.connectors import make_connector, probe_shapes
from distill.methods.registry import RunFacts, register_method
from distill.objectives.base import Objective, StepOutputs
from distill.objectives.logits import _teacher, check_weight, label_and_kd_terms, warmup_factor
from distill.taps import Taps, find_module

__all__ = [
    "PENULTIMATE",
    "FeatureObjective",
    "FitNets",
    "AttentionTransfer",
    "NST",
    "SimilarityPreserving",
    "CorrelationCongruence",
    "RKD",
    "PKT",
    "VID",
    "ActivationBoundaries",
    "FSP",
    "FactorTransferParaphraser",
    "FactorTransfer",
    "Paraphraser",
    "ReviewKD",
    "SimKD",
    "SimKDStudent",
    "feature_stages",
    "pair_last",
    "preactivation_taps",
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

    def keep(name: str):
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
                     f"{student} (student) and {teacher} (teacher)")


def resample(x: Tensor, shape: Shape) -> Tensor:
    """``x`` (B, ...) average-pooled to (B, *shape): a map to a smaller map, or a map over all space to a vector."""
    if x.dim() == 4 and len(shape) == 1:
        return x.mean(dim=(2, 3))
    if x.dim() == 4 and tuple(x.shape[2:]) != tuple(shape[1:]):
        return F.adaptive_avg_pool2d(x, tuple(shape[1:]))
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
            return [PENULTIMATE]
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
            terms.update(self.method_terms(student, teacher, out))
        return terms

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{s}->{t}" for s, t in self.pairs) or "(set in setup)"
        return f"pairs: {pairs}; weights={self.weights}"


def _sum(values: list[Tensor]) -> Tensor:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


# --------------------------------------------------------------------------- hints


@register_method("fitnets",
                 paper="Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), FitNets: Hints for Thin Deep Nets, "
                       "ICLR",
                 defaults="RepDistiller / mdistiller (weight 100, CE 1)",
                 order=6)
class FitNets(FeatureObjective):
    """FitNets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``hint`` = Σ_pairs mean((r(f_s) − f_t)²), r a learned regressor (connector) from the student's
    guided layer to the teacher's hint layer; ``weight`` 100 and CE 1 as RepDistiller/mdistiller
    (which train hint and CE jointly). Default layers: the middle stage of each model
    (RepDistiller's ``hint_layer=2``). ``connector``: a kind from :mod:`distill.connectors`; by
    default a 3x3 conv + BN for maps (RepDistiller's ``ConvReg`` without its final ReLU) and a
    linear layer for vectors: always a learned regressor, even between equal shapes, as the paper.

    The paper's two stages: (1) ``FitNets(hint_only=True)`` (``ce`` and ``kd`` weights 0, ``weight``
    1 unless given: alone, the hint's weight only rescales the learning rate) trains the student up
    to its guided layer and the regressor (later layers get no gradient); (2) KD of the whole
    student (:class:`~distill.objectives.KnowledgeDistillation`); the regressor is dropped. In a
    hint-only stage the student's classifier is untrained: select its checkpoint by the last
    epoch, not by validation accuracy.
    """

    method = "FitNets"
    layers: LayerChoice = "middle"

    def __init__(self, weight: float | None = None, *, hint_only: bool = False, connector: str | None = None,
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        if hint_only:
            ce_weight = kd_weight = 0.0
        if weight is None:
            weight = 1.0 if hint_only else 100.0
        super().__init__({"hint": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.connector_kind = connector
        self.hint_only = hint_only

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        self.shapes = [compared_shapes(s, t, self.method) for s, t in zip(student_shapes, teacher_shapes)]
        kinds = [self.connector_kind or ("conv3x3_bn" if len(s) == 3 else "linear") for s, _ in self.shapes]
        self.connectors = nn.ModuleList(make_connector(s, t, kind) for (s, t), kind in zip(self.shapes, kinds))

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        losses = [DF.fitnet_loss(connector(resample(f_s, s)), resample(f_t, t))
                  for connector, (s, t), f_s, f_t in zip(self.connectors, self.shapes, student, teacher)]
        return {"hint": _sum(losses)}


# --------------------------------------------------------------------------- spatial maps: AT, NST


class _MapObjective(FeatureObjective):
    """A method comparing spatial maps of any channel counts (pooled to the smaller size). A student
    vector is first mapped to the teacher's map shape by a learned flatten-linear connector."""

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        connectors = []
        for (_, t_layer), s, t in zip(self.pairs, student_shapes, teacher_shapes):
            if len(t) != 3:
                raise ValueError(f"{self.method} compares spatial maps, but the teacher's layer {t_layer!r} gives "
                                 f"per-sample shape {t}, not (C, H, W); choose teacher_layers with feature maps")
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


@register_method("at",
                 paper="Zagoruyko & Komodakis (2017), Paying More Attention to Attention, ICLR",
                 defaults="RepDistiller / mdistiller (weight 1000, p 2, CE 1)",
                 order=7)
class AttentionTransfer(_MapObjective):
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    ``at`` = Σ_pairs mean_b,hw (Q_s − Q_t)², Q = l2-normalize(vec(mean_c |f_c|^p)), on every pair of
    stages (the larger map average-pooled to the smaller, as RepDistiller); channel counts may
    differ. ``weight`` 1000, ``p`` 2, CE 1 as RepDistiller/mdistiller. See
    :func:`distill.functional.attention_transfer_loss`. The term is a mean over positions of unit
    vectors, so it grows as 1/HW: the reference weight is for CIFAR's 32x32 maps; on small maps
    (8x8 digits give 4x4 and 2x2) a weight near 50 keeps the same balance with CE.
    """

    method = "AT"

    def __init__(self, weight: float = 1000.0, *, p: float = 2.0, student_layers: Layers = None,
                 teacher_layers: Layers = None, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__({"at": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.p = p

    def pair_loss(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return DF.attention_transfer_loss(f_s, f_t, self.p)


@register_method("nst",
                 paper="Huang & Wang (2017), Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, "
                       "arXiv:1707.01219",
                 defaults="RepDistiller / mdistiller (weight 50, CE 1)",
                 order=17)
class NST(_MapObjective):
    """Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", arXiv 2017).

    ``nst`` = Σ_pairs MMD² between the channels' normalized spatial maps (polynomial kernel
    (x·y)², as RepDistiller), on every pair of stages, pooled to the smaller size. ``weight`` 50,
    CE 1 as RepDistiller/mdistiller. See :func:`distill.functional.nst_loss`.
    """

    method = "NST"

    def __init__(self, weight: float = 50.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"nst": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def pair_loss(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return DF.nst_loss(f_s, f_t)


# --------------------------------------------------------------------------- relations


@register_method("sp",
                 paper="Tung & Mori (2019), Similarity-Preserving Knowledge Distillation, ICCV",
                 defaults="RepDistiller / mdistiller (weight 3000, CE 1)",
                 order=8)
class SimilarityPreserving(FeatureObjective):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    ``sp`` = ‖rownorm(F_s F_sᵀ) − rownorm(F_t F_tᵀ)‖²_F / B², F the flattened last-stage features
    (RepDistiller's ``feat[-2]``) of the batch; any shapes. ``weight`` 3000, CE 1 as
    RepDistiller/mdistiller. See :func:`distill.functional.similarity_preserving_loss`.
    """

    method = "SP"
    layers: LayerChoice = "last"

    def __init__(self, weight: float = 3000.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"sp": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        return {"sp": _sum([DF.similarity_preserving_loss(s, t) for s, t in zip(student, teacher)])}


@register_method("cc",
                 paper="Peng et al. (2019), Correlation Congruence for Knowledge Distillation, ICCV",
                 defaults="AberHu's Knowledge-Distillation-Zoo (weight 100, gamma 0.4, order 2)",
                 order=9)
class CorrelationCongruence(FeatureObjective):
    """Correlation congruence (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019).

    ``cc`` = mean (K_s − K_t)², K_ij the order-``order`` Taylor expansion of the Gaussian RBF kernel
    (``gamma``) between the batch's L2-normalized penultimate embeddings. When the dimensions
    differ, a learned linear connector maps the student's embedding to the teacher's dimension
    (RepDistiller embeds both sides to 128). ``weight`` 100, γ 0.4, P 2 as AberHu's
    Knowledge-Distillation-Zoo (the paper's kernel form; RepDistiller's 0.02 is for its different,
    simplified loss). See :func:`distill.functional.correlation_congruence_loss`.
    """

    method = "CC"
    layers: LayerChoice = "embedding"

    def __init__(self, weight: float = 100.0, *, gamma: float = 0.4, order: int = 2, student_layers: Layers = None,
                 teacher_layers: Layers = None, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__({"cc": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.gamma, self.order = gamma, order

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        self.connectors = nn.ModuleList(
            nn.Identity() if math.prod(s) == math.prod(t) else make_connector((math.prod(s),), (math.prod(t),))
            for s, t in zip(student_shapes, teacher_shapes))

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        losses = [DF.correlation_congruence_loss(connector(s.flatten(1)), t, self.gamma, self.order)
                  for connector, s, t in zip(self.connectors, student, teacher)]
        return {"cc": _sum(losses)}


@register_method("rkd",
                 paper="Park, Kim, Lu & Cho (2019), Relational Knowledge Distillation, CVPR",
                 defaults="the paper, RepDistiller and mdistiller (distance 25, angle 50)",
                 order=11)
class RKD(FeatureObjective):
    """Relational KD (Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019).

    ``rkd_distance`` = mean huber(ψ_D^s − ψ_D^t) (pairwise distances over their mean) and
    ``rkd_angle`` = mean huber(ψ_A^s − ψ_A^t) (cosines of the triplet angles), on the penultimate
    embeddings; any dimensions. Weights 25 and 50 (the paper, RepDistiller, mdistiller), CE 1.
    See :func:`distill.functional.rkd_loss`.
    """

    method = "RKD"
    layers: LayerChoice = "embedding"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, *, student_layers: Layers = None,
                 teacher_layers: Layers = None, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__({"rkd_distance": distance_weight, "rkd_angle": angle_weight}, student_layers=student_layers,
                         teacher_layers=teacher_layers, ce_weight=ce_weight, kd_weight=kd_weight,
                         temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        terms = {}
        if self.weights["rkd_distance"]:
            terms["rkd_distance"] = _sum([DF.rkd_distance_loss(s, t) for s, t in zip(student, teacher)])
        if self.weights["rkd_angle"]:
            terms["rkd_angle"] = _sum([DF.rkd_angle_loss(s, t) for s, t in zip(student, teacher)])
        return terms


@register_method("pkt",
                 paper="Passalis & Tefas (2018), Learning Deep Representations with Probabilistic Knowledge "
                       "Transfer, ECCV",
                 defaults="RepDistiller / mdistiller (weight 30000, CE 1)",
                 order=12)
class PKT(FeatureObjective):
    """Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018).

    ``pkt`` = mean_ij p^t_j|i log(p^t_j|i / p^s_j|i), p_j|i the cosine kernel (1 + cos)/2 normalized
    over the batch, on the penultimate embeddings; any dimensions. ``weight`` 30000, CE 1 as
    RepDistiller/mdistiller. See :func:`distill.functional.pkt_loss`.
    """

    method = "PKT"
    layers: LayerChoice = "embedding"

    def __init__(self, weight: float = 30000.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"pkt": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        return {"pkt": _sum([DF.pkt_loss(s, t) for s, t in zip(student, teacher)])}


# --------------------------------------------------------------------------- VID


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


@register_method("vid",
                 paper="Ahn, Hu, Damianou, Lawrence & Dai (2019), Variational Information Distillation for Knowledge "
                       "Transfer, CVPR",
                 defaults="RepDistiller / mdistiller",
                 order=10)
class VID(FeatureObjective):
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019).

    ``vid`` = Σ_pairs mean ½[(t − μ(s))² / σ_c² + log σ_c²], σ_c² = softplus(α_c) + ε: the Gaussian
    negative log-likelihood of the teacher's features given the student's, on every pair of
    stages (pooled to the smaller size). Owned per pair: the regressor μ (1x1 conv – ReLU – 1x1
    conv – ReLU – 1x1 conv with the teacher's channel count in the middle, as RepDistiller; linear
    layers for vectors) and the per-channel variance α (an ``nn.Parameter`` registered on the
    objective, so the optimizer sees it), initialized to σ² = 5. ``weight`` 1, CE 1 as
    RepDistiller/mdistiller. See :func:`distill.functional.vid_loss`.
    """

    method = "VID"

    def __init__(self, weight: float = 1.0, *, init_variance: float = 5.0, eps: float = 1e-5,
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"vid": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        if not init_variance > eps:
            raise ValueError(f"init_variance must be > eps = {eps}, got {init_variance}")
        self.init_variance, self.eps = init_variance, eps

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        self.shapes = [compared_shapes(s, t, self.method) for s, t in zip(student_shapes, teacher_shapes)]
        self.regressors = nn.ModuleList(
            _channel_stack([s[0], t[0], t[0], t[0]], len(s) == 3, activation=nn.ReLU()) for s, t in self.shapes)
        raw = math.log(math.expm1(self.init_variance - self.eps))  # softplus(raw) + eps = init_variance
        self.raw_variances = nn.ParameterList(nn.Parameter(torch.full((t[0],), raw)) for _, t in self.shapes)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        losses = [DF.vid_loss(regressor(resample(f_s, s)), resample(f_t, t), raw_variance, self.eps)
                  for regressor, raw_variance, (s, t), f_s, f_t
                  in zip(self.regressors, self.raw_variances, self.shapes, student, teacher)]
        return {"vid": _sum(losses)}


# --------------------------------------------------------------------------- AB


@register_method("ab",
                 paper="Heo, Lee, Yun & Choi (2019), Knowledge Transfer via Distillation of Activation Boundaries "
                       "Formed by Hidden Neurons, AAAI",
                 defaults="RepDistiller's ABLoss",
                 order=13)
class ActivationBoundaries(FeatureObjective):
    """Activation boundaries (Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of
    Activation Boundaries Formed by Hidden Neurons", AAAI 2019).

    ``ab`` = Σ_i 2^(i−n+1) · 3/1000 · ab_i, ab_i the squared-hinge loss (``margin`` 1) between the
    student's pre-activations (through a connector: 1x1 conv + BN, linear for vectors) and the sign
    of the teacher's, on the n pairs of stages (shallow i = 0 to deep i = n − 1): RepDistiller's
    ``ABLoss``. Default taps are **pre-activations**: the input of the ReLU that computes each
    stage's output (:func:`preactivation_taps`); explicit layers are tapped as given.

    The reference is two-stage: (1) ``ActivationBoundaries(ce_weight=0)`` trains the student's
    layers and the connectors (RepDistiller: 30 epochs); (2) plain CE (or KD) on the student, the
    connectors dropped. ``weight`` 1 and CE 1 by default train both jointly in one stage.
    """

    method = "AB"

    def __init__(self, weight: float = 1.0, *, margin: float = 1.0, student_layers: Layers = None,
                 teacher_layers: Layers = None, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__({"ab": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.margin = margin

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        return preactivation_taps(model, super().default_layers(model, role, probe), probe)

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        self.shapes = [compared_shapes(s, t, self.method) for s, t in zip(student_shapes, teacher_shapes)]
        self.connectors = nn.ModuleList(make_connector(s, t, "conv1x1_bn" if len(s) == 3 else "linear")
                                        for s, t in self.shapes)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        n = len(student)
        losses = []
        for i, (connector, (s, t), f_s, f_t) in enumerate(zip(self.connectors, self.shapes, student, teacher)):
            layer_weight = 2.0 ** (i - n + 1) * 3e-3  # RepDistiller: deeper layers count more; 3/1000 overall
            losses.append(layer_weight * DF.ab_loss(connector(resample(f_s, s)), resample(f_t, t), self.margin))
        return {"ab": _sum(losses)}


# --------------------------------------------------------------------------- FSP


@register_method("fsp",
                 paper="Yim, Joo, Bae & Kim (2017), A Gift from Knowledge Distillation: Fast Optimization, Network "
                       "Minimization and Transfer Learning, CVPR",
                 defaults="RepDistiller",
                 order=16)
class FSP(FeatureObjective):
    """Flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017).

    ``fsp`` = Σ_i mean (G_s,i − G_t,i)², G_i = the FSP matrix (Σ_hw a_c b_c' / HW) between
    consecutive layers i and i + 1 of the list (the "flow" through the section between them). By
    default the list is the model's stages with, in front, the input of the first stage when that
    stage is a block (so a ResNet gives RepDistiller's (f0, f1), (f1, f2), (f2, f3)); a first stage
    that is a bare activation (VGG's ``relu1``, an MLP's ``hidden.relu1``) would only add its own
    pre-activation and is left out. The last k layers of each list are paired; k >= 2.

    The paper needs equal channel counts; here a student layer whose shape differs from the
    teacher's is mapped by a connector (``"auto"``: a parameter-free resize for equal channels, a
    1x1 conv otherwise, flatten-linear for an MLP); the teacher's layers must be maps.

    The reference is two-stage: (1) ``FSP(ce_weight=0)`` trains the student's layers (and any
    connectors) (RepDistiller: 30 epochs, weight 1); (2) plain CE (or KD). With the defaults
    (``weight`` 1, CE 1) both train jointly in one stage.
    """

    method = "FSP"

    def __init__(self, weight: float = 1.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"fsp": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        stages = feature_stages(model, role, self.method)
        is_block = len(list(find_module(model, stages[0]).children())) > 0
        return ([f"{stages[0]}:input"] if is_block else []) + stages

    def pair(self, student_layers: list[str], teacher_layers: list[str]) -> list[tuple[str, str]]:
        pairs = pair_last(student_layers, teacher_layers)
        if len(pairs) < 2:
            raise ValueError(f"FSP compares the flow between consecutive layers and needs at least two on each side; "
                             f"got student {student_layers} and teacher {teacher_layers}: pass student_layers / "
                             f"teacher_layers with two or more")
        return pairs

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        for (_, t_layer), t in zip(self.pairs, teacher_shapes):
            if len(t) != 3:
                raise ValueError(f"FSP needs feature maps from the teacher; the teacher's {t_layer!r} gives per-sample "
                                 f"shape {t}, not (C, H, W)")
        self.connectors = nn.ModuleList(make_connector(s, t) for s, t in zip(student_shapes, teacher_shapes))

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        mapped = [connector(f) for connector, f in zip(self.connectors, student)]
        return {"fsp": DF.fsp_loss(list(zip(mapped[:-1], mapped[1:])), list(zip(teacher[:-1], teacher[1:])))}


# --------------------------------------------------------------------------- FT


def _encoder(shape: Shape, channels: Sequence[int], batch_norm: bool) -> nn.Sequential:
    """3x3 convs (maps) or linear layers (vectors) through ``channels``, each with [BN and]
    LeakyReLU(0.1): the paraphraser's and translator's encoders of Kim et al."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        if len(shape) == 3:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1)] + ([nn.BatchNorm2d(c_out)] if batch_norm else [])
        else:
            layers += [nn.Linear(c_in, c_out)] + ([nn.BatchNorm1d(c_out)] if batch_norm else [])
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's paraphraser: an autoencoder of the teacher's feature (C channels) through a factor of
    ``int(C · rate)`` channels; 3x3 convs (transposed convs in the decoder) with LeakyReLU(0.1) and
    no BN, as RepDistiller (linear layers for vectors). ``encode`` gives the factor."""

    def __init__(self, shape: Shape, rate: float = 0.5) -> None:
        super().__init__()
        if len(shape) not in (1, 3):
            raise ValueError(f"the paraphraser takes vectors (D,) or maps (C, H, W), got per-sample shape {shape}")
        c, k = shape[0], max(1, int(shape[0] * rate))
        self.shape = tuple(shape)
        self.factor_shape: Shape = (k, *shape[1:])
        self.encoder = _encoder(shape, [c, c, k, k], batch_norm=False)
        if len(shape) == 3:
            decoder: list[nn.Module] = []
            for c_in, c_out in ((k, k), (k, c), (c, c)):
                decoder += [nn.ConvTranspose2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1)]
            self.decoder = nn.Sequential(*decoder)
        else:
            self.decoder = _encoder(shape, [k, k, c, c], batch_norm=False)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``."""
        return self.decoder(self.encoder(x))


@register_method("ft_paraphraser",
                 paper="Kim, Park & Kwak (2018), Paraphrasing Complex Network: Network Compression via Factor "
                       "Transfer, NeurIPS (stage 1: the paraphraser)",
                 defaults="RepDistiller",
                 order=14)
class FactorTransferParaphraser(Objective):
    """FT's first stage (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018): train the paraphraser to reconstruct the teacher's last-stage
    feature; the student is not used (it gets no gradient; the engine still runs it).

    One term, ``reconstruction`` = mean (P(f_t) − f_t)² (RepDistiller's ``nn.MSELoss``, 30 epochs;
    it uses lr 0.01 for the CIFAR ResNets/WRNs). Owns :attr:`paraphraser`; pass this objective to
    :class:`FactorTransfer` for the second stage. ``teacher_layer``: default the teacher's last
    feature stage; ``rate``: factor channels / teacher channels (0.5).
    """

    needs_teacher = True
    taps_teacher = True

    def __init__(self, *, rate: float = 0.5, teacher_layer: str | None = None, weight: float = 1.0) -> None:
        super().__init__({"reconstruction": check_weight(weight, "weight")})
        self.rate = rate
        self.teacher_layer = teacher_layer
        self.paraphraser: Paraphraser | None = None

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if teacher is None:
            raise ValueError("FactorTransferParaphraser needs the teacher model itself (a live FrozenTeacher)")
        self.teacher_layer = self.teacher_layer or feature_stages(teacher, "teacher", "FT")[-1]
        self.teacher_features = {"t0": self.teacher_layer}
        (shape,) = _probe(teacher, [self.teacher_layer], probe, "FT", "teacher")
        if self.paraphraser is None:
            self.paraphraser = Paraphraser(shape, self.rate).to(probe.device)
        elif self.paraphraser.shape != shape:
            raise ValueError(f"FT: this paraphraser was built for teacher features of shape {self.paraphraser.shape}, "
                             f"but {self.teacher_layer!r} gives {shape}")
        self.paraphraser.requires_grad_(True)

    def trains_predictions(self) -> bool:
        """False: it trains the paraphraser only."""
        return False

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        targets = _teacher(out, "FactorTransferParaphraser")
        if self.paraphraser is None or targets.features is None:
            raise RuntimeError("FactorTransferParaphraser: call setup (distill.fit does) before the first step")
        f_t = targets.features["t0"].detach()
        return {"reconstruction": F.mse_loss(self.paraphraser(f_t), f_t)}


def _paraphraser_of_earlier_stage(facts: RunFacts) -> dict[str, object]:
    """FT's ``paraphraser``: that of the last ``ft_paraphraser`` stage trained before (None if there is none)."""
    paraphrasers = [o for o in facts.earlier if isinstance(o, FactorTransferParaphraser)]
    return {"paraphraser": paraphrasers[-1] if paraphrasers else None}


@register_method("ft",
                 paper="Kim, Park & Kwak (2018), Paraphrasing Complex Network: Network Compression via Factor "
                       "Transfer, NeurIPS (stage 2)",
                 defaults="RepDistiller and AberHu (weight 200, p 1, CE 1)",
                 order=15,
                 automatic={"paraphraser": "the paraphraser of the ft_paraphraser stage before it"},
                 supply=_paraphraser_of_earlier_stage)
class FactorTransfer(FeatureObjective):
    """Factor transfer (Kim, Park & Kwak, NeurIPS 2018), second stage.

    ``ft`` = mean |T(f_s)/‖T(f_s)‖ − P(f_t)/‖P(f_t)‖|^p, P the paraphraser's (frozen) encoder on the
    teacher's last-stage feature, T the translator (3x3 conv–BN–LeakyReLU x3, as RepDistiller;
    linear layers for vectors) on the student's, compared at the smaller spatial size. ``weight``
    200 (RepDistiller, AberHu), ``p`` 1, CE 1. See :func:`distill.functional.factor_transfer_loss`.

    ``paraphraser``: the trained :class:`FactorTransferParaphraser` objective of the first stage
    (or its :class:`Paraphraser`); its teacher layer is used. The paraphraser is not trained here
    (its parameters stop requiring grad). Owns the translator.
    """

    method = "FT"
    layers: LayerChoice = "last"

    def __init__(self, paraphraser: FactorTransferParaphraser | Paraphraser | None = None, weight: float = 200.0, *,
                 p: float = 1.0, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"ft": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        # The first stage is referenced, not owned (a tuple is not registered as a submodule): its
        # paraphraser is read in setup, after that stage trained it.
        self._first_stage = (paraphraser,) if isinstance(paraphraser, FactorTransferParaphraser) else ()
        self.paraphraser = paraphraser if isinstance(paraphraser, Paraphraser) else None
        self.p = p

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        if self.paraphraser is None:
            raise ValueError("FactorTransfer needs a trained paraphraser: train one first with "
                             "FactorTransferParaphraser (a stage of its own, the student unused), then pass "
                             "FactorTransfer(paraphraser=<that objective>)")
        if len(self.pairs) != 1 or self.paraphraser.shape != teacher_shapes[0]:
            raise ValueError(f"FT: the paraphraser was built for one teacher feature of shape "
                             f"{self.paraphraser.shape}; the teacher layers {[t for _, t in self.pairs]} give "
                             f"{teacher_shapes}")
        s_shape, self.factor_shape = compared_shapes(student_shapes[0], self.paraphraser.factor_shape, self.method)
        self.student_shape = s_shape
        k = self.factor_shape[0]
        self.translator = _encoder(s_shape, [s_shape[0], s_shape[0], k, k], batch_norm=True)

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if self._first_stage:
            first = self._first_stage[0]
            self.paraphraser = first.paraphraser
            if self.teacher_layers is None and first.teacher_layer is not None:
                self.teacher_layers = [first.teacher_layer]
        super().setup(student, teacher, probe)
        assert self.paraphraser is not None
        self.paraphraser.requires_grad_(False)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        assert self.paraphraser is not None
        with torch.no_grad():
            factor_t = resample(self.paraphraser.encode(teacher[0]), self.factor_shape)
        factor_s = self.translator(resample(student[0], self.student_shape))
        return {"ft": DF.factor_transfer_loss(factor_s, factor_t, self.p)}


# --------------------------------------------------------------------------- ReviewKD


class _AttentionFusion(nn.Module):
    """ReviewKD's ABF: 1x1 conv–BN on the student's feature, fused with the deeper level's output by
    two spatial attention maps, then 3x3 conv–BN to the teacher's channels (mdistiller's ``ABF``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            assert deeper is not None
            deeper = F.interpolate(deeper, size=tuple(x.shape[2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if tuple(x.shape[2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@register_method("reviewkd",
                 paper="Chen, Liu, Zhao & Jia (2021), Distilling Knowledge via Knowledge Review, CVPR",
                 defaults="mdistiller's CIFAR-100 config",
                 order=19)
class ReviewKD(FeatureObjective):
    """Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

    The student's stage features and penultimate embedding (as a 1x1 map) are fused from the
    deepest level to the shallowest by attention-based fusion modules (owned, one per level,
    1x1 → ``min(max_mid_channels, deepest student channels)`` → 3x3 to the teacher's channels);
    level i's output is compared with the teacher's level i by the hierarchical context loss:
    ``reviewkd`` = w · Σ_levels HCL, w = min(epoch / ``warmup_epochs``, 1) (included in the logged
    term). Teacher stages are tapped at their pre-activations (:func:`preactivation_taps`), as
    mdistiller. Vectors are 1x1 maps, so any pair works. ``weight`` 1, warm-up 20, CE 1 as
    mdistiller's CIFAR-100 config. See :func:`distill.functional.hcl_loss`.
    """

    method = "ReviewKD"

    def __init__(self, weight: float = 1.0, *, warmup_epochs: float = 20.0, max_mid_channels: int = 512,
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"reviewkd": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.warmup_epochs, self.max_mid_channels = warmup_epochs, max_mid_channels

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        stages = feature_stages(model, role, self.method)
        if role == "teacher":
            stages = preactivation_taps(model, stages, probe)
        return [*stages, PENULTIMATE]

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        for (s_layer, t_layer), s, t in zip(self.pairs, student_shapes, teacher_shapes):
            if len(s) not in (1, 3) or len(t) not in (1, 3):
                raise ValueError(f"ReviewKD fuses vectors (D,) and maps (C, H, W); {s_layer!r} gives {s} and "
                                 f"{t_layer!r} gives {t}")
        self.out_sizes = [tuple(t[1:]) if len(t) == 3 else (1, 1) for t in teacher_shapes]
        mid = min(self.max_mid_channels, student_shapes[-1][0])
        n = len(student_shapes)
        self.fusions = nn.ModuleList(_AttentionFusion(s[0], mid, t[0], fuse=i < n - 1)
                                     for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes)))

    def fuse(self, student: list[Tensor]) -> list[Tensor]:
        """The fusion modules' outputs, level by level (shallow to deep), from the student's features."""
        results: list[Tensor] = []
        deeper = None
        for i in reversed(range(len(student))):
            out, deeper = self.fusions[i](_as_map(student[i]), deeper, self.out_sizes[i])
            results.insert(0, out)
        return results

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        hcl = DF.hcl_loss(self.fuse(student), [_as_map(t) for t in teacher])
        return {"reviewkd": warmup_factor(out.epoch, self.warmup_epochs) * hcl}


# --------------------------------------------------------------------------- SimKD


class SimKDStudent(nn.Module):
    """A student that predicts with the teacher's classifier: SimKD's deployable model.

    ``forward(x)`` = ``classifier_t(pool(projector(f_s(x))))``: the student's feature at
    ``student_layer`` (default: its last feature stage), a projector to the teacher's feature, and
    a frozen copy of the teacher's final ``nn.Linear`` (``teacher_classifier``, default
    ``"classifier"``). The projector is the reference's bottleneck (1x1 conv → 3x3 conv → 1x1 conv
    to the teacher's channels, each with BN and ReLU, ``factor`` 2; linear layers for vectors).
    The student map is average-pooled to the teacher's spatial size first when it is larger.

    ``teacher_layer`` (default: the teacher's last stage when its global average pool is exactly
    the teacher classifier's input, checked on ``probe``, as for the CIFAR ResNets; else
    ``"classifier:input"`` itself) must satisfy that check: the teacher's classifier then reads the
    pooled projection as it reads its own features. Train it with :class:`SimKD` and deploy the
    whole module (its ``state_dict`` holds student, projector and classifier).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, probe: Tensor, *, student_layer: str | None = None,
                 teacher_layer: str | None = None, teacher_classifier: str = "classifier", factor: int = 2) -> None:
        super().__init__()
        self.student = student
        self.student_layer = student_layer or feature_stages(student, "student", "SimKD")[-1]
        source = find_module(teacher, teacher_classifier)
        if not isinstance(source, nn.Linear):
            raise ValueError(f"SimKD reuses the teacher's final linear layer, but its {teacher_classifier!r} is a "
                             f"{type(source).__name__}; pass teacher_classifier=<path of that nn.Linear>")
        self.classifier = nn.Linear(source.in_features, source.out_features, bias=source.bias is not None)
        self.classifier.load_state_dict(source.state_dict())
        self.classifier.requires_grad_(False)
        self.teacher_layer = teacher_layer or self._default_teacher_layer(teacher, probe, teacher_classifier)
        self._check_teacher_layer(teacher, probe, teacher_classifier)
        (s_shape,) = _probe(student, [self.student_layer], probe, "SimKD", "student")
        (t_shape,) = _probe(teacher, [self.teacher_layer], probe, "SimKD", "teacher")
        self.student_shape, self.target_shape = compared_shapes(s_shape, t_shape, "SimKD")
        c_t = self.target_shape[0]
        mid = max(1, c_t // factor)
        if len(self.student_shape) == 3:
            self.projector = nn.Sequential(
                nn.Conv2d(self.student_shape[0], mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU())
        else:
            self.projector = _channel_stack([self.student_shape[0], mid, mid, c_t], False, batch_norm=True,
                                            activation=nn.ReLU(), final_activation=True)
        self.num_classes = getattr(student, "num_classes", getattr(teacher, "num_classes", None))
        self._taps = Taps(student, {"feature": self.student_layer})
        self.to(probe.device)

    @staticmethod
    def _pooled_equals_classifier_input(teacher: nn.Module, probe: Tensor, layer: str, classifier: str) -> bool:
        modes = [(m, m.training) for m in teacher.modules()]
        teacher.eval()
        try:
            with torch.no_grad(), Taps(teacher, {"f": layer, "c": f"{classifier}:input"}) as taps:
                _, features = taps(probe)
        finally:
            for m, training in modes:
                m.training = training
        f, c = features["f"], features["c"]
        pooled = f.mean(dim=tuple(range(2, f.dim()))) if f.dim() > 2 else f
        return pooled.shape == c.shape and torch.allclose(pooled, c, rtol=1e-4, atol=1e-5)

    def _default_teacher_layer(self, teacher: nn.Module, probe: Tensor, classifier: str) -> str:
        stages = getattr(teacher, "feature_stages", None) or []
        if stages and self._pooled_equals_classifier_input(teacher, probe, stages[-1], classifier):
            return stages[-1]
        return f"{classifier}:input"

    def _check_teacher_layer(self, teacher: nn.Module, probe: Tensor, classifier: str) -> None:
        if not self._pooled_equals_classifier_input(teacher, probe, self.teacher_layer, classifier):
            raise ValueError(
                f"SimKD: the global average pool of the teacher's {self.teacher_layer!r} is not the input of its "
                f"{classifier!r}, so the teacher's classifier cannot read the student's projection of it; use "
                f"teacher_layer='{classifier}:input' (the default when the last stage does not qualify)")

    def forward(self, x: Tensor) -> Tensor:
        self.student(x)
        projected = self.projector(resample(self._taps["feature"], self.student_shape))
        return self.classifier(projected.mean(dim=(2, 3)) if projected.dim() == 4 else projected)


SIMKD_STUDENT_OPTIONS = {k: inspect.signature(SimKDStudent.__init__).parameters[k].default
                         for k in ("student_layer", "teacher_layer", "teacher_classifier", "factor")}
"""Options of ``simkd`` that go to the :class:`SimKDStudent` it trains, not to the objective, with their defaults."""


@register_method("simkd",
                 paper="Chen, Mei, Zhang, Wang, Feng & Chen (2022), Knowledge Distillation with the Reused Teacher "
                       "Classifier, CVPR",
                 defaults="the authors' code (SimKD)",
                 order=20,
                 model_options=SIMKD_STUDENT_OPTIONS)
class SimKD(Objective):
    """SimKD (Chen, Mei, Zhang, Wang, Feng & Chen, "Knowledge Distillation with the Reused Teacher
    Classifier", CVPR 2022).

    ``simkd`` = mean (P(f_s) − f_t)², the student's projected feature against the teacher's (the
    teacher's pooled to the student's size when larger); ``weight`` 1 and no CE, as the reference.
    The model trained must be a :class:`SimKDStudent` (it owns the projector and the teacher's
    frozen classifier, and predicts with them, so validation and the saved checkpoint are those of
    the deployable model):
    ``fit(SimKDStudent(student, teacher, probe), SimKD(), data, cfg, teacher=FrozenTeacher(teacher))``.
    ``ce_weight`` > 0 adds CE on its predictions.
    """

    needs_teacher = True
    taps_teacher = True

    def __init__(self, weight: float = 1.0, *, ce_weight: float = 0.0) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "simkd": check_weight(weight, "weight")})
        self.target_shape: Shape = ()

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if not isinstance(student, SimKDStudent):
            raise ValueError(
                f"SimKD trains a SimKDStudent, which predicts with the teacher's classifier; got "
                f"{type(student).__name__}. Wrap it first: model = SimKDStudent(student, teacher_model, "
                f"data.train.x[:2]), then train and deploy that model")
        self.student_features = {"s0": "projector"}
        self.teacher_features = {"t0": student.teacher_layer}
        self.target_shape = student.target_shape

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        targets = _teacher(out, "SimKD")
        if targets.features is None or "s0" not in out.features:
            raise RuntimeError("SimKD: call setup (distill.fit does) before the first step")
        terms = label_and_kd_terms(self, out, targets, 1.0)
        terms["simkd"] = DF.simkd_loss(out.features["s0"], resample(targets.features["t0"].detach(), self.target_shape))
        return terms
