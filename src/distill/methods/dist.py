"""DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): the pure
loss :func:`dist_loss` and the objective, registered as ``dist``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods._common import _teacher, check_weight, distilled_logits
from distill.methods._functional import (
    _cast_pair,
    _check_classes,
    _check_number,
    _check_same_shape,
    _check_temperature,
    _check_tensor,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.kd import label_and_kd_terms
from distill.methods.registry import register_method

__all__ = ["dist_loss", "DIST"]


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float) -> Tensor:
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    *,
    eps: float = 1e-8,
) -> Tensor:
    r"""DIST: relation (Pearson correlation) matching of predictions.

    T. Huang, S. You, F. Wang, C. Qian, C. Xu (2022), "Knowledge Distillation from A Stronger
    Teacher", NeurIPS. With ``Y = softmax(Z / T)`` row-wise, ``(B, C)``, and
    ``rho(u, v) = <u - mean u, v - mean v> / (||u - mean u|| ||v - mean v|| + eps)``:

    .. math::

        \mathrm{inter} = 1 - \frac1B \sum_i \rho(Y_{s,i:}, Y_{t,i:})\quad\text{(each sample, over classes)}

        \mathrm{intra} = 1 - \frac1C \sum_c \rho(Y_{s,:c}, Y_{t,:c})\quad\text{(each class, over the batch)}

        \mathcal{L} = T^2\,(\beta\,\mathrm{inter} + \gamma\,\mathrm{intra})

    The correlations are of the **probabilities** (as in the paper and its code), so the loss is
    invariant to positive affine maps of the probabilities and to per-sample shifts of the
    logits, not to rescaling the logits. Defaults ``beta = gamma = T = 1`` and ``eps = 1e-8`` are
    the reference implementation's (hunto/DIST_KD, ImageNet); its CIFAR runs use ``T = 4``.

    Args:
        student_logits, teacher_logits: ``(B, C)`` (flatten other positions into ``B`` first);
            the teacher's are detached.
    """
    s = _check_tensor(student_logits, "student_logits", "(B, C) logits", 2, 2)
    t = _check_tensor(teacher_logits, "teacher_logits", "(B, C) logits", 2, 2)
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "dist_loss")
    beta = _check_number(beta, "beta")
    gamma = _check_number(gamma, "gamma")
    temperature = _check_temperature(temperature)
    s, t = _cast_pair(s, t)
    y_s = F.softmax(s / temperature, dim=1)
    y_t = F.softmax(t / temperature, dim=1)
    inter = 1.0 - _pearson(y_s, y_t, dim=1, eps=eps).mean()
    intra = 1.0 - _pearson(y_s, y_t, dim=0, eps=eps).mean()
    return temperature**2 * (beta * inter + gamma * intra)


@register_method("dist",
                 paper="Huang, You, Wang, Qian & Xu (2022), Knowledge Distillation from A Stronger Teacher, NeurIPS",
                 defaults="hunto/DIST_KD (ImageNet); its CIFAR-100 runs use T = 4",
                 order=4)
class DIST(Objective):
    """DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

    ``ce`` + ``inter_weight`` · inter + ``intra_weight`` · intra, with Y = softmax(Z / T):

    * inter = T² · (1 − mean_i pearson_c(Y_s,i, Y_t,i)) (each sample's class relations),
    * intra = T² · (1 − mean_c pearson_i(Y_s,c, Y_t,c)) (each class's relations across the batch).

    Defaults β = γ = T = 1 and CE 1 are the reference implementation's (hunto/DIST_KD, ImageNet);
    its CIFAR-100 runs use T = 4. Optional Hinton ``kd`` term (``kd_weight``, same T, on the raw logits). See
    :func:`distill.functional.dist_loss`. ``standardize``: distil z-scored logits (Sun et al., CVPR 2024; see
    :func:`distill.methods._common.distilled_logits`); the CE term keeps the raw logits.
    """

    needs_teacher = True

    def __init__(self, inter_weight: float = 1.0, intra_weight: float = 1.0, temperature: float = 1.0,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, standardize: bool = False) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "kd": check_weight(kd_weight, "kd_weight"),
                          "inter": check_weight(inter_weight, "inter_weight"),
                          "intra": check_weight(intra_weight, "intra_weight")})
        self.temperature = temperature
        self.standardize = standardize

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        teacher = _teacher(out, "DIST")
        student_logits, teacher_logits = distilled_logits(out, "DIST", self.standardize)
        terms = label_and_kd_terms(self, out, teacher, self.temperature)
        terms["inter"] = dist_loss(student_logits, teacher_logits, beta=1.0, gamma=0.0, temperature=self.temperature)
        terms["intra"] = dist_loss(student_logits, teacher_logits, beta=0.0, gamma=1.0, temperature=self.temperature)
        return terms
