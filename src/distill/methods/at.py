"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

Its pure loss(es) and its objective, registered as ``at``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods._features import Layers, _MapObjective
from distill.methods._functional import _cast_pair, _check_number, _check_same_batch, _check_spatial, _check_tensor
from distill.methods.registry import register_method

__all__ = ["attention_transfer_loss", "AttentionTransfer"]


def _attention_map(f: Tensor, p: float) -> Tensor:
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    r"""Attention transfer (activation-based), for one pair of feature maps.

    S. Zagoruyko, N. Komodakis (2017), "Paying More Attention to Attention", ICLR.

    .. math::

        Q = \frac{\mathrm{vec}(\frac1C \sum_c |f_c|^p)}{\|\mathrm{vec}(\frac1C \sum_c |f_c|^p)\|_2},\qquad
        \mathcal{L} = \frac{1}{B\,HW} \sum_{b} \|Q_s^{(b)} - Q_t^{(b)}\|_2^2

    i.e. the mean squared difference of the L2-normalized spatial attention maps, as the
    authors' code and RepDistiller compute it (the paper's ``beta/2 * ||.||_2`` with
    ``beta = 1000`` becomes a weight: RepDistiller uses 1000). ``p = 2`` as in the paper. For
    odd ``p`` this uses the paper's ``|f|^p``, where RepDistiller's ``f.pow(p)`` keeps the sign.
    Channel counts may differ; **spatial sizes must match** (RepDistiller pools the larger map
    to the smaller; do that before calling). For several pairs of layers, sum the results.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    return (_attention_map(s, p) - _attention_map(t, p)).square().mean()


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
        return attention_transfer_loss(f_s, f_t, self.p)
