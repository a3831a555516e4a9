"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Its pure loss(es) and its objective, registered as ``pkt``."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.methods._features import FeatureObjective, LayerChoice, Layers, _sum
from distill.methods._functional import _features
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["pkt_loss", "PKT"]


def _pkt_conditional(e: Tensor, eps: float) -> Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.T + 1.0) / 2.0  # cosine similarity moved to [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Probabilistic knowledge transfer (PKT): match conditional distributions over the batch.

    N. Passalis, A. Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV. The kernel is the cosine similarity mapped to ``[0, 1]``, turned into
    conditional probabilities row-wise:

    .. math::

        K_{ij} = \frac{1 + \cos(e_i, e_j)}{2},\qquad p_{j|i} = \frac{K_{ij}}{\sum_k K_{ik}},\qquad
        \mathcal{L} = \frac{1}{B^2} \sum_{i,j} p^t_{j|i} \log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    i.e. the KL of each row, summed, divided by ``B^2`` (the mean over the matrix), and
    ``cos(a, b) = a.b / ((||a|| + eps)(||b|| + eps))``, exactly as the authors' code (used by
    RepDistiller with weight 30000). The diagonal ``i = j`` is included, as there.

    Args:
        e_s, e_t: ``(B, D_s)``, ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    p_s, p_t = _pkt_conditional(s, eps), _pkt_conditional(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


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
    tokens_as_maps = False  # flattened: a transformer's tokens as they are

    def __init__(self, weight: float = 30000.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"pkt": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        return {"pkt": _sum([pkt_loss(s, t) for s, t in zip(student, teacher)])}
