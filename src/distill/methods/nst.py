"""Neuron selectivity transfer (Huang & Wang, arXiv 2017).

Its pure loss(es) and its objective, registered as ``nst``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods._features import Layers, _MapObjective
from distill.methods._functional import _cast_pair, _check_same_batch, _check_spatial, _check_tensor
from distill.methods.registry import register_method

__all__ = ["nst_loss", "NST"]


def _poly2_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).square().mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Neuron selectivity transfer: MMD between the channels' spatial activation patterns.

    Z. Huang, N. Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219. Each channel ``i`` gives a sample ``f_i`` = its ``HW`` spatial
    activations, L2-normalized; with the polynomial kernel ``k(x, y) = (x.y + c)^d``, ``d = 2, c = 0``:

    .. math::

        \mathcal{L} = \overline{k(t_i, t_{i'})} + \overline{k(s_j, s_{j'})} - 2\,\overline{k(s_j, t_i)}

    the squared MMD, where each bar is the mean over the batch and all channel pairs (as
    RepDistiller's ``full_loss``; the teacher-teacher term is a constant that makes equal inputs
    give 0). Channel counts may differ; spatial sizes must match. RepDistiller weighs it by 50.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    s, t = _cast_pair(s, t)
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return _poly2_kernel_mean(t, t) + _poly2_kernel_mean(s, s) - 2 * _poly2_kernel_mean(s, t)


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
        return nst_loss(f_s, f_t)
