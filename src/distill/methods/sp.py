"""Similarity-preserving KD (Tung & Mori, ICCV 2019).

Its pure loss(es) and its objective, registered as ``sp``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods._features import FeatureObjective, LayerChoice, Layers, _sum
from distill.methods._functional import _features
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["similarity_preserving_loss", "SimilarityPreserving"]


def _row_normalized_gram(f: Tensor) -> Tensor:
    return F.normalize(f @ f.T, dim=1)


def similarity_preserving_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Similarity-preserving KD: match the batch's pairwise-similarity matrices.

    F. Tung, G. Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV.
    With ``F`` the ``(B, D)`` flattened features, ``G = row_normalize(F F^T)`` (each row scaled
    to unit L2 norm):

    .. math::

        \mathcal{L} = \frac{1}{B^2}\,\|G_s - G_t\|_F^2

    Feature sizes of student and teacher may differ (only the batch must match). RepDistiller
    weighs it by 3000.

    Args:
        f_s, f_t: ``(B, ...)`` features (maps are flattened per sample); ``f_t`` is detached.
    """
    s, t = _features(f_s, f_t, "f_s", "f_t", "(B, ...) features")
    batch = s.shape[0]
    return (_row_normalized_gram(s) - _row_normalized_gram(t)).square().sum() / batch**2


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
    tokens_as_maps = False  # flattened: a transformer's tokens as they are

    def __init__(self, weight: float = 3000.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"sp": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        return {"sp": _sum([similarity_preserving_loss(s, t) for s, t in zip(student, teacher)])}
