"""Activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019).

Its pure loss(es) and its objective, registered as ``ab``.

Its initialization stage is a ``distill.stages`` entry with ``options: {ce_weight: 0}``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.connectors import make_connector
from distill.methods._features import (
    FeatureObjective,
    Layers,
    Shape,
    _sum,
    compared_shapes,
    preactivation_taps,
    resample,
)
from distill.methods._functional import _cast_pair, _check_equal_shapes, _check_number, _check_tensor
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["ab_loss", "ActivationBoundaries"]


def ab_loss(f_s: Tensor, f_t: Tensor, margin: float = 1.0) -> Tensor:
    r"""Activation-boundary (AB) loss: the squared-hinge approximation, for one layer.

    B. Heo, M. Lee, S. Yun, J. Y. Choi (2019), "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI. The student learns which neurons the teacher
    activates (sign of the pre-ReLU response), with margin ``m``:

    .. math::

        \mathcal{L} = \frac1B \sum \Big[(s + m)^2\,\mathbb 1[s > -m]\,\mathbb 1[t \le 0]
                      + (s - m)^2\,\mathbb 1[s \le m]\,\mathbb 1[t > 0]\Big]

    summed over all neurons (channels and positions) and averaged over the batch. Both inputs
    are **pre-activation** responses: tap the *input* of the ReLU (the student's through the
    objective's connector). RepDistiller additionally scales layer ``i`` of ``n`` by
    ``2^(i - n + 1)`` and everything by ``3/1000``; those weights are the objective's. Margin 1
    as in the paper and the authors' code.

    Args:
        f_s: ``(B, ...)`` student pre-ReLU responses (after the connector).
        f_t: the teacher's, same shape (detached; only its sign is used).
    """
    s = _check_tensor(f_s, "f_s", "(B, ...) pre-activation features", 1)
    t = _check_tensor(f_t, "f_t", "(B, ...) pre-activation features", 1)
    _check_equal_shapes(s, t, "f_s", "f_t", " (map the student's features with a connector first)")
    margin = _check_number(margin, "margin")
    s, t = _cast_pair(s, t)
    teacher_on = t > 0
    loss = torch.where(teacher_on, (s - margin).square() * (s <= margin), (s + margin).square() * (s > -margin))
    return loss.sum() / s.shape[0]


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
            losses.append(layer_weight * ab_loss(connector(resample(f_s, s)), resample(f_t, t), self.margin))
        return {"ab": _sum(losses)}
