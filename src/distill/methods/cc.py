"""Correlation congruence (Peng et al., ICCV 2019).

Its pure loss(es) and its objective, registered as ``cc``."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import make_connector
from distill.methods._features import FeatureObjective, LayerChoice, Layers, Shape, _sum
from distill.methods._functional import _check_number, _features
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["correlation_congruence_loss", "CorrelationCongruence"]


def _cc_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    e = F.normalize(e, dim=1)
    cosine = e @ e.T
    coefficients = [math.exp(-2 * gamma) * (2 * gamma) ** k / math.factorial(k) for k in range(order + 1)]
    return _sum([c * cosine**k for k, c in enumerate(coefficients)])


def correlation_congruence_loss(e_s: Tensor, e_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    r"""Correlation congruence (CC): match the batch's kernel (correlation) matrices.

    B. Peng, X. Jin, J. Liu, D. Li, Y. Wu, Y. Liu, S. Zhou, Z. Zhang (2019), "Correlation
    Congruence for Knowledge Distillation", ICCV. The correlation of two embeddings is the
    Gaussian RBF kernel, approximated by its order-``P`` Taylor series. For L2-normalized
    embeddings ``||x - y||^2 = 2 - 2 x.y``, so

    .. math::

        k(x, y) = e^{-\gamma \|x - y\|^2} = e^{-2\gamma} e^{2\gamma\, x\cdot y}
                \approx \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!} (x\cdot y)^p,
        \qquad
        \mathcal{L} = \frac{1}{B^2} \|K_s - K_t\|_F^2

    with ``K_ij = k(e_i, e_j)`` over the batch. Defaults ``gamma = 0.4, P = 2`` are those of the
    widely used implementation in AberHu's Knowledge-Distillation-Zoo (the paper gives the
    expansion). Note: RepDistiller's ``Correlation`` class ships a different, simplified loss
    (``mean_i sum_d |s - t|_i,d |s - t|_{i+1},d``, "code emailed by the author"), weighted 0.02;
    this function is the paper's kernel form.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
        gamma: the RBF kernel's ``gamma`` (>= 0). order: ``P``, an int >= 0.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    gamma = _check_number(gamma, "gamma")
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be an int >= 0 (the Taylor order P), got {order!r}")
    return (_cc_correlation(s, gamma, order) - _cc_correlation(t, gamma, order)).square().mean()


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
    tokens_as_maps = False  # flattened: a transformer's tokens as they are

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
        losses = [correlation_congruence_loss(connector(s.flatten(1)), t, self.gamma, self.order)
                  for connector, s, t in zip(self.connectors, student, teacher)]
        return {"cc": _sum(losses)}
