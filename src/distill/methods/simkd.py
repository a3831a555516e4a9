"""SimKD (Chen et al., "Knowledge Distillation with the Reused Teacher Classifier", CVPR 2022).

Its pure loss(es) and its objective, registered as ``simkd``.

SimKD trains a :class:`SimKDStudent` (the student, a projector and the teacher's classifier), which the
recipe builds around the student; its options ``student_layer``, ``teacher_layer``, ``teacher_classifier``
and ``factor`` are that model's (``model_options``)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.methods._common import _teacher, check_weight
from distill.methods._features import (
    Shape,
    _channel_stack,
    _grid_shape,
    _probe,
    compared_shapes,
    feature_stages,
    resample,
    token_grid,
    tokens_to_map,
)
from distill.methods._functional import _mse
from distill.methods.base import Objective, StepOutputs
from distill.methods.kd import label_and_kd_terms
from distill.methods.registry import StagePlan, register_method
from distill.models import create_model
from distill.taps import Taps, find_module

__all__ = [
    "simkd_loss",
    "SimKDStudent",
    "SIMKD_STUDENT_OPTIONS",
    "SimKD",
    "SIMKD_FACTORY",
    "wrap_simkd",
    "simkd_student",
]


def simkd_loss(f_s_projected: Tensor, f_t: Tensor) -> Tensor:
    r"""SimKD's feature loss: ``mean((f_s_projected - f_t)^2)``, the mean over all elements.

    D. Chen, J.-P. Mei, H. Zhang, C. Wang, Y. Feng, C. Chen (2022), "Knowledge Distillation with
    the Reused Teacher Classifier", CVPR. ``f_s_projected`` is the student's final feature map
    after the objective's projector, ``f_t`` the teacher's final feature map (same shape;
    detached). Matches the reference (``nn.MSELoss``, weight 1, no cross-entropy); predicting with
    the reused teacher classifier is the objective's job.
    """
    hint = " (project the student's features to the teacher's shape first)"
    return _mse(f_s_projected, f_t, "f_s_projected", "f_t", hint)


class SimKDStudent(nn.Module):
    """A student that predicts with the teacher's classifier: SimKD's deployable model.

    ``forward(x)`` = ``classifier_t(pool(projector(f_s(x))))``: the student's feature at
    ``student_layer`` (default: its last feature stage), a projector to the teacher's feature, and
    a frozen copy of the teacher's final ``nn.Linear`` (``teacher_classifier``, default
    ``"classifier"``, or the module of the teacher's ``embedding_layer`` when it has no ``classifier``: a
    Hugging Face, timm or torchvision model). A vision transformer student's tokens are read as the map of
    its patch grid (:func:`~distill.methods._features.token_grid`). The projector is the reference's bottleneck (1x1 conv → 3x3 conv → 1x1 conv
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
        embedding = getattr(teacher, "embedding_layer", None)  # a model of another library names its classifier
        if teacher_classifier == "classifier" and embedding and "classifier" not in dict(teacher.named_modules()):
            teacher_classifier = embedding.rpartition(":")[0]
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
        self._grid = token_grid(student, s_shape, "SimKD")  # a vision transformer's tokens: a map of its patches
        s_shape = _grid_shape(self._grid, s_shape)
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
        projected = self.projector(resample(tokens_to_map(self._taps["feature"], self._grid), self.student_shape))
        return self.classifier(projected.mean(dim=(2, 3)) if projected.dim() == 4 else projected)


SIMKD_STUDENT_OPTIONS = {k: inspect.signature(SimKDStudent.__init__).parameters[k].default
                         for k in ("student_layer", "teacher_layer", "teacher_classifier", "factor")}
"""Options of ``simkd`` that go to the :class:`SimKDStudent` it trains, not to the objective, with their defaults."""


SIMKD_FACTORY = "simkd_student"
"""The model name a SimKD checkpoint records: one of the registry's ``BUILTIN_BUILDERS`` (checkpoints
written before it recorded the import path ``distill.recipes.stages:simkd_student``, now a legacy name)."""


def wrap_simkd(student: nn.Module, spec: dict[str, Any], teacher: nn.Module, teacher_spec: dict[str, Any],
               probe: torch.Tensor, options: dict[str, Any]) -> tuple[SimKDStudent, dict[str, Any]]:
    """The :class:`SimKDStudent` around ``student`` and its ``model_spec``: :func:`simkd_student` with the
    two architectures and the resolved layers, so a checkpoint rebuilds without the teacher's weights."""
    wrapper_options = {k: v for k, v in options.items() if k in SIMKD_STUDENT_OPTIONS}
    model = SimKDStudent(student, teacher, probe, **wrapper_options)
    kwargs = {"student": {"name": spec["name"], "kwargs": spec["kwargs"]},
              "teacher": {"name": teacher_spec["name"], "kwargs": teacher_spec["kwargs"],
                          "in_shape": list(teacher_spec["in_shape"])},
              **wrapper_options, "student_layer": model.student_layer, "teacher_layer": model.teacher_layer}
    return model, {**spec, "name": SIMKD_FACTORY, "kwargs": kwargs}


def simkd_student(num_classes: int, in_shape: Sequence[int], student: dict[str, Any], teacher: dict[str, Any],
                  student_layer: str | None = None, teacher_layer: str | None = None,
                  teacher_classifier: str = "classifier", factor: int = 2) -> SimKDStudent:
    """A :class:`SimKDStudent` with fresh weights, as a SimKD checkpoint's ``model_spec`` describes it:
    ``student`` and ``teacher`` are ``{name, kwargs[, in_shape]}`` of the two architectures (the teacher
    is built only to size the projector and copy its classifier's shape; the checkpoint holds the weights)."""
    s = create_model(student["name"], num_classes, in_shape, **student.get("kwargs", {}))
    t = create_model(teacher["name"], num_classes, teacher.get("in_shape", in_shape), **teacher.get("kwargs", {}))
    probe = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    return SimKDStudent(s, t, probe, student_layer=student_layer, teacher_layer=teacher_layer,
                        teacher_classifier=teacher_classifier, factor=factor)


def _last_stage_at_the_teachers_resolution(plan: StagePlan) -> str | None:
    if plan.position == len(plan.methods) - 1 and not plan.resized_student:
        return None
    return ("simkd must be the last stage (it wraps the student in the SimKDStudent that is deployed) and the "
            "student must see the teacher's resolution")


@register_method("simkd",
                 paper="Chen, Mei, Zhang, Wang, Feng & Chen (2022), Knowledge Distillation with the Reused Teacher "
                       "Classifier, CVPR",
                 defaults="the authors' code (SimKD)",
                 order=20,
                 model_options=SIMKD_STUDENT_OPTIONS,
                 check_plan=_last_stage_at_the_teachers_resolution,
                 wrap_student=wrap_simkd)
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
        terms["simkd"] = simkd_loss(out.features["s0"], resample(targets.features["t0"].detach(), self.target_shape))
        return terms
