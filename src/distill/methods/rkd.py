"""Relational KD (Park, Kim, Lu & Cho, CVPR 2019).

Its pure loss(es) and its objective, registered as ``rkd``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods._features import FeatureObjective, LayerChoice, Layers, _sum
from distill.methods._functional import _check_number, _features, _shape
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["rkd_distance_loss", "rkd_angle_loss", "rkd_loss", "RKD"]


def _rkd_inputs(e_s: Tensor, e_t: Tensor) -> tuple[Tensor, Tensor]:
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    if s.shape[0] < 2:
        raise ValueError(
            f"RKD relates samples to each other and needs a batch of at least 2, got e_s shape {_shape(e_s)}"
        )
    return s, t


def _normalized_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over pairs i != j; 0 on the diagonal.

    As RepDistiller: squared distances are clamped at 1e-12 before the square root (so two equal
    embeddings are at distance 1e-6, and the square root has a finite gradient)."""
    squared = e.square().sum(dim=1)
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    batch = e.shape[0]
    d = d.masked_fill(torch.eye(batch, dtype=torch.bool, device=e.device), 0.0)
    return d / (d.sum() / (batch * (batch - 1)))


def _angles(e: Tensor) -> Tensor:
    """``[i, j, k]`` = cosine of the angle at ``e_i`` between ``e_j`` and ``e_k`` (0 when j or k is i)."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [i, j] = (e_j - e_i) / ||e_j - e_i||
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD distance-wise loss (Park et al. 2019), unweighted.

    With ``psi_D(i, j) = ||e_i - e_j||_2 / mu`` and ``mu`` the mean distance over pairs
    ``i != j`` of the batch: ``mean over all B^2 pairs of huber(psi_D^s - psi_D^t)``, where
    ``huber(x) = x^2/2 if |x| < 1 else |x| - 1/2`` (``F.smooth_l1_loss``). The diagonal is 0 on
    both sides. Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD angle-wise loss (Park et al. 2019), unweighted.

    With ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>`` (the cosine of
    the angle at ``e_i``; 0 when ``j = i`` or ``k = i``, as in RepDistiller): ``mean over all B^3
    triplets of huber(psi_A^s - psi_A^t)`` (``F.smooth_l1_loss``). Memory is ``O(B^2 D + B^3)``.
    Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(e_s: Tensor, e_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    r"""Relational KD: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    W. Park, D. Kim, Y. Lu, M. Cho (2019), "Relational Knowledge Distillation", CVPR. Weights
    25 and 50 are the paper's (and RepDistiller's, mdistiller's). A term with weight 0 is not
    computed.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (maps are flattened per sample), ``B >= 2``;
            ``e_t`` is detached.
    """
    distance_weight = _check_number(distance_weight, "distance_weight")
    angle_weight = _check_number(angle_weight, "angle_weight")
    s, t = _rkd_inputs(e_s, e_t)
    loss = s.new_zeros(())
    if distance_weight > 0:
        loss = loss + distance_weight * F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
    if angle_weight > 0:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


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
    tokens_as_maps = False  # flattened: a transformer's tokens as they are

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, *, student_layers: Layers = None,
                 teacher_layers: Layers = None, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__({"rkd_distance": distance_weight, "rkd_angle": angle_weight}, student_layers=student_layers,
                         teacher_layers=teacher_layers, ce_weight=ce_weight, kd_weight=kd_weight,
                         temperature=temperature)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        terms = {}
        if self.weights["rkd_distance"]:
            terms["rkd_distance"] = _sum([rkd_distance_loss(s, t) for s, t in zip(student, teacher)])
        if self.weights["rkd_angle"]:
            terms["rkd_angle"] = _sum([rkd_angle_loss(s, t) for s, t in zip(student, teacher)])
        return terms
