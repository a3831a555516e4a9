"""Logit standardization (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024):
the pure losses :func:`zscore_logits` / :func:`standardized_kd_loss` and the objective, registered as
``standardized_kd``."""

from __future__ import annotations

from torch import Tensor

from distill.methods._common import _teacher_logits, check_weight, hard_label_terms
from distill.methods._functional import (
    _check_classes,
    _check_logits,
    _check_mask,
    _check_same_shape,
    _sanitize,
    zscore_logits,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.kd import kd_loss
from distill.methods.registry import register_method

__all__ = ["zscore_logits", "standardized_kd_loss", "StandardizedKD"]


def standardized_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    *,
    eps: float = 1e-7,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Hinton's KD term on z-scored logits (Sun et al. 2024, "Logit Standardization in KD").

    .. math::

        \mathcal{L} = T^2\,\mathrm{KL}\big(\mathrm{softmax}(\mathcal Z(v)/T) \,\|\,
                      \mathrm{softmax}(\mathcal Z(z)/T)\big),\qquad
        \mathcal Z(x) = \frac{x - \bar x}{\sigma(x) + \epsilon}

    per position (see :func:`zscore_logits`), averaged over positions; ``mask`` as in
    :func:`kd_loss`. Standardizing each side removes its per-sample shift and scale, so the
    student need only match the teacher's logit *relations*, not their magnitude.

    Base temperature: ``temperature`` here divides the **standardized** logits, so the effective
    temperature on the raw logits is ``T * sigma(z)``, different per sample and for student and
    teacher. The authors call it the base temperature (``--base-temp``, default 2, 3 for some
    pairs) and use a KD weight of 9 instead of mdistiller's 0.9 (the weights are the objective's).
    ``T^2`` uses the base temperature, as their code does.
    """
    s = _check_logits(student_logits, "student_logits")
    t = _check_logits(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "standardized_kd_loss")
    mask = _check_mask(mask, s)
    # sanitize before standardizing, so garbage in masked-out rows reaches no gradient
    z_s = zscore_logits(_sanitize(s, mask), eps)
    z_t = zscore_logits(_sanitize(t.detach(), mask), eps)
    return kd_loss(z_s, z_t, temperature, mask=mask)


@register_method("standardized_kd",
                 paper="Sun, Ren, Li, Wang & Cao (2024), Logit Standardization in Knowledge Distillation, CVPR",
                 defaults="the authors' mdistiller configs",
                 order=5)
class StandardizedKD(Objective):
    """Logit standardization (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024): Hinton's KD on z-scored logits.

    ``ce`` + ``kd_weight`` · T² · KL(softmax(Z(v) / T) ‖ softmax(Z(z) / T)), Z(x) = (x − mean x) / std x,
    so the student matches the teacher's logit relations, not their scale. ``temperature`` is the
    base temperature applied to standardized logits. Defaults are the authors' (their mdistiller
    configs): CE 0.1, KD 9, T 2. See :func:`distill.functional.standardized_kd_loss`.
    """

    needs_teacher = True

    def __init__(self, kd_weight: float = 9.0, temperature: float = 2.0, ce_weight: float = 0.1) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "kd": check_weight(kd_weight, "kd_weight")})
        self.temperature = temperature

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        teacher_logits = _teacher_logits(out, "StandardizedKD")
        terms = hard_label_terms(self, out)
        terms["kd"] = standardized_kd_loss(out.logits, teacher_logits, self.temperature)
        return terms
