"""Variational information distillation (Ahn et al., CVPR 2019).

Its pure loss(es) and its objective, registered as ``vid``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.methods._features import FeatureObjective, Layers, Shape, _channel_stack, _sum, compared_shapes, resample
from distill.methods._functional import _cast_pair, _check_equal_shapes, _check_tensor, _shape
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["vid_loss", "VID"]


def vid_loss(f_s_mapped: Tensor, f_t: Tensor, raw_variance: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Variational information distillation (VID): Gaussian negative log-likelihood of the teacher.

    S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai (2019), "Variational Information
    Distillation for Knowledge Transfer", CVPR. The student predicts the mean ``mu`` of a Gaussian
    over the teacher's features (``f_s_mapped``, the output of the objective's regressor); the
    variance is one learned value per channel, parameterized by a raw parameter ``alpha_c``:

    .. math::

        \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon,\qquad
        \mathcal{L} = \mathrm{mean}_{b,c,h,w}\ \frac12\Big(\frac{(t_{b,c,h,w} - \mu_{b,c,h,w})^2}{\sigma_c^2}
                      + \log \sigma_c^2\Big)

    (the constant ``log(2 pi)/2`` dropped). The mean over all elements is the authors' code
    (used by RepDistiller and mdistiller with weight 1); ``eps = 1e-5`` as there. The objective
    initializes ``alpha_c`` so that ``sigma_c^2 = 5`` (``alpha = log(exp(5 - eps) - 1)``).

    Args:
        f_s_mapped: ``(B, C, ...)`` predicted mean (gradients flow here).
        f_t: the teacher's features, same shape (detached).
        raw_variance: ``(C,)`` the raw parameter ``alpha`` (gradients flow here): **not** a log
            variance; the variance is ``softplus(alpha) + eps``.
    """
    mu = _check_tensor(f_s_mapped, "f_s_mapped", "(B, C, ...) predicted means", 2)
    t = _check_tensor(f_t, "f_t", "(B, C, ...) teacher features", 2)
    _check_equal_shapes(mu, t, "f_s_mapped", "f_t", " (regress the student's features to the teacher's shape first)")
    alpha = _check_tensor(raw_variance, "raw_variance", "(C,) one raw variance parameter per channel", 1, 1)
    if alpha.shape[0] != mu.shape[1]:
        raise ValueError(
            f"raw_variance shape {_shape(alpha)} must be (C,) with C = {mu.shape[1]} channels of f_t shape {_shape(t)}"
        )
    mu, t = _cast_pair(mu, t)
    variance = F.softplus(alpha.to(mu.dtype)) + eps
    variance = variance.view(1, -1, *([1] * (mu.dim() - 2)))
    return 0.5 * ((t - mu).square() / variance + variance.log()).mean()


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
        losses = [vid_loss(regressor(resample(f_s, s)), resample(f_t, t), raw_variance, self.eps)
                  for regressor, raw_variance, (s, t), f_s, f_t
                  in zip(self.regressors, self.raw_variances, self.shapes, student, teacher)]
        return {"vid": _sum(losses)}
