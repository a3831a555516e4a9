"""Curriculum temperature KD (Li, Li, Yang, Zhao, Song, Luo, Li & Yang, "Curriculum Temperature for Knowledge
Distillation", AAAI 2023), its global variant: the pure parts (:func:`reverse_gradient`,
:func:`curriculum_strength`, :func:`ctkd_temperature`, :func:`ctkd_loss`) and the objective, registered as
``ctkd``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.methods._common import check_weight, distilled_logits, hard_label_terms
from distill.methods._functional import (
    _check_logits,
    _check_number,
    _check_same_shape,
    _compute_dtype,
    _kl_per_position,
    _reduce,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import register_method

__all__ = ["reverse_gradient", "curriculum_strength", "ctkd_temperature", "ctkd_loss", "CTKD"]


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; the gradient times ``-strength`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    """The gradient reversal layer (Ganin & Lempitsky, ICML 2015): ``x`` unchanged in the forward pass; in the
    backward pass the gradient reaching ``x`` is multiplied by ``-strength``, so a descent step on the loss is an
    ascent step (of ``strength`` times the size) for what produced ``x``."""
    return _ReverseGradient.apply(x, float(strength))


def curriculum_strength(epoch: float, strength: float = 1.0, epochs: float = 10.0) -> float:
    r"""CTKD's cosine curriculum of the reversal strength: from 0 at epoch 0 to ``strength`` at ``epochs``, then
    constant, :math:`\lambda(e) = \lambda_{\max}\,\tfrac12\,(1 - \cos(\pi \min(e, E) / E))`
    (``epochs <= 0``: ``strength`` from the start)."""
    if epochs <= 0:
        return strength
    done = min(max(epoch, 0.0), epochs) / epochs
    return strength * 0.5 * (1.0 - math.cos(math.pi * done))


def ctkd_temperature(raw: Tensor, t_start: float = 1.0, t_range: float = 20.0) -> Tensor:
    """The global temperature from its unconstrained parameter: ``t_start + t_range * sigmoid(raw)``, in
    ``(t_start, t_start + t_range)`` (the authors' ``--t_start 1 --t_end 20``)."""
    return t_start + t_range * torch.sigmoid(raw)


def ctkd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor | float) -> Tensor:
    r"""Hinton's ``T^2 KL(softmax(v / T) || softmax(z / T))`` (summed over classes, averaged over positions) with a
    temperature that may be a tensor with gradients: they reach it through the teacher's softmax, the student's and
    the ``T^2`` factor, as in the CTKD authors' code (the teacher's logits are detached, ``T`` is not).

    Args:
        student_logits, teacher_logits: ``(..., C)``; the teacher's are detached.
        temperature: ``T > 0``, a number or a one-element tensor.
    """
    s = _check_logits(student_logits, "student_logits")
    t = _check_logits(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, "teacher_logits", "teacher")
    dtype = _compute_dtype(s)
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be one number, got a tensor of shape {tuple(temperature.shape)}")
        temp = temperature.reshape(()).to(dtype)
    else:
        temp = torch.tensor(_check_number(temperature, "temperature", positive=True), dtype=dtype, device=s.device)
    log_p_t = F.log_softmax(t.detach().to(dtype) / temp, dim=-1)
    log_q = F.log_softmax(s.to(dtype) / temp, dim=-1)
    return temp.square() * _reduce(_kl_per_position(log_p_t.exp(), log_p_t, log_q), None)


@register_method("ctkd",
                 paper="Li, Li, Yang, Zhao, Song, Luo, Li & Yang (2023), Curriculum Temperature for Knowledge "
                       "Distillation, AAAI (the global temperature)",
                 defaults="the authors' code (zhengli97/CTKD, scripts/run_cifar_distill.sh): CE 0.1, KD 0.9, T in "
                          "(1, 21) from a parameter initialized at 1, reversal strength 0 -> 1 over 10 epochs (cosine)",
                 order=5.2)
class CTKD(Objective):
    """Curriculum temperature KD, the global variant (Li et al., AAAI 2023).

    ``ce_weight`` · CE + ``kd_weight`` · T² · KL(softmax(v / T) ‖ softmax(z / T)) with one learned temperature
    T = ``t_start`` + ``t_range`` · sigmoid(θ). θ (a parameter of the objective, optimized with the student) is
    adversarial: its gradient passes a gradient reversal layer of strength λ, so the student descends the loss
    while the temperature ascends it (it makes the task harder), and λ follows an easy-to-hard curriculum,
    λ(e) = ``lambda_max`` · ½(1 − cos(π · min(e, E) / E)), E = ``lambda_epochs``, from ``StepOutputs.epoch``.
    The learned temperature is logged as the term ``temperature`` (weight 0: not part of the loss).

    Defaults are the authors' (zhengli97/CTKD): CE 0.1, KD 0.9, θ₀ = 1 (T₀ = 1 + 20 σ(1) ≈ 15.6), T in (1, 21),
    λ from 0 to 1 over 10 epochs. Differences: λ rises every step here (the authors' is constant within an
    epoch, computed from the 1-based epoch, so it is already 0.024 in the first one); the engine does not apply
    weight decay to θ (a 1-d parameter), the authors' SGD does (5e-4). The instance-wise temperature variant of
    the paper (an MLP on the two models' logits) is not implemented. ``standardize``: distil z-scored logits
    (Sun et al., CVPR 2024, who combine it with CTKD; see :func:`distill.methods._common.distilled_logits`).
    """

    needs_teacher = True

    def __init__(self, kd_weight: float = 0.9, ce_weight: float = 0.1, t_start: float = 1.0, t_range: float = 20.0,
                 init: float = 1.0, lambda_max: float = 1.0, lambda_epochs: float = 10.0,
                 standardize: bool = False) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "kd": check_weight(kd_weight, "kd_weight"),
                          "temperature": 0.0})
        self.t_start = _check_number(t_start, "t_start", positive=True)
        self.t_range = _check_number(t_range, "t_range")
        self.lambda_max = _check_number(lambda_max, "lambda_max")
        self.lambda_epochs = float(lambda_epochs)
        self.standardize = standardize
        self.raw_temperature = nn.Parameter(torch.full((1,), float(init)))

    @property
    def current_temperature(self) -> float:
        """The current learned temperature."""
        return float(ctkd_temperature(self.raw_temperature.detach(), self.t_start, self.t_range))

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        student_logits, teacher_logits = distilled_logits(out, "CTKD", self.standardize)
        strength = curriculum_strength(out.epoch, self.lambda_max, self.lambda_epochs)
        temperature = ctkd_temperature(reverse_gradient(self.raw_temperature, strength), self.t_start, self.t_range)
        terms = hard_label_terms(self, out)
        terms["kd"] = ctkd_loss(student_logits, teacher_logits, temperature)
        terms["temperature"] = temperature.detach().reshape(()).float()
        return terms

    def extra_repr(self) -> str:
        return (f"t_start={self.t_start}, t_range={self.t_range}, lambda_max={self.lambda_max}, "
                f"lambda_epochs={self.lambda_epochs}, standardize={self.standardize}")
