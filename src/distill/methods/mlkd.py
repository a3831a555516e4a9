"""Multi-level logit distillation (Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023): the pure losses
:func:`mlkd_terms` / :func:`mlkd_loss` and the objective, registered as ``mlkd``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods._common import check_weight, distilled_logits, hard_label_terms
from distill.methods._functional import (
    _cast_pair,
    _check_classes,
    _check_number,
    _check_same_shape,
    _check_tensor,
    _kl_per_position,
)
from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import register_method

__all__ = ["MLKD_TEMPERATURES", "mlkd_terms", "mlkd_loss", "MLKD"]

MLKD_TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)
"""The temperatures of the authors' code (its base temperature 4 and 2, 3, 5, 6)."""


def _temperatures(temperatures: Sequence[float]) -> list[float]:
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence) or not temperatures:
        raise ValueError(f"temperatures must be a non-empty list of numbers > 0, got {temperatures!r}")
    return [_check_number(t, "each of temperatures", positive=True) for t in temperatures]


def mlkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperatures: Sequence[float] = MLKD_TEMPERATURES,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The three alignments of multi-level logit distillation, unweighted: ``(instance, batch, class)``.

    Y. Jin, J. Wang, D. Lin (2023), "Multi-Level Logit Distillation", CVPR. Each is summed over the
    temperatures ``T`` of the prediction augmentation, with ``P = softmax(Z / T)`` row-wise, ``(B, C)``:

    .. math::

        \mathrm{instance} = \sum_T T^2\,\frac1B \sum_i \mathrm{KL}(P_{t,i} \,\|\, P_{s,i})

        \mathrm{batch} = \sum_T \frac1B\,\big\| P_s P_s^\top - P_t P_t^\top \big\|_F^2
            \quad\text{(the samples' } B \times B \text{ similarities)}

        \mathrm{class} = \sum_T \frac1C\,\big\| P_s^\top P_s - P_t^\top P_t \big\|_F^2
            \quad\text{(the classes' } C \times C \text{ correlations over the batch)}

    reduced as the authors' code (Jin-Ying/Multi-Level-Logit-Distillation): KL summed over classes, averaged
    over the batch, times ``T^2``; the Gram differences squared, summed, divided by ``B`` or ``C`` (no ``T^2``).
    Defaults: its temperatures 2, 3, 4, 5, 6.

    Args:
        student_logits, teacher_logits: ``(B, C)``; the teacher's are detached. The batch and class terms
            depend on the whole batch.
    """
    s = _check_tensor(student_logits, "student_logits", "(B, C) logits", 2, 2)
    t = _check_tensor(teacher_logits, "teacher_logits", "(B, C) logits", 2, 2)
    _check_same_shape(s, t, "teacher_logits", "teacher")
    _check_classes(s, "student_logits", "mlkd_terms")
    temps = _temperatures(temperatures)
    s, t = _cast_pair(s, t)
    batch_size, num_classes = s.shape
    instance, batch, klass = [], [], []
    for temperature in temps:
        log_q, log_p = F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1)
        q, p = log_q.exp(), log_p.exp()
        instance.append(temperature**2 * _kl_per_position(p, log_p, log_q).mean())
        batch.append((q @ q.T - p @ p.T).square().sum() / batch_size)
        klass.append((q.T @ q - p.T @ p).square().sum() / num_classes)
    return torch.stack(instance).sum(), torch.stack(batch).sum(), torch.stack(klass).sum()


def mlkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperatures: Sequence[float] = MLKD_TEMPERATURES,
    instance_weight: float = 1.0,
    batch_weight: float = 1.0,
    class_weight: float = 1.0,
) -> Tensor:
    """``instance_weight * instance + batch_weight * batch + class_weight * class`` of :func:`mlkd_terms`."""
    weights = [_check_number(w, name) for w, name in ((instance_weight, "instance_weight"),
                                                      (batch_weight, "batch_weight"), (class_weight, "class_weight"))]
    terms = mlkd_terms(student_logits, teacher_logits, temperatures)
    return weights[0] * terms[0] + weights[1] * terms[1] + weights[2] * terms[2]


@register_method("mlkd",
                 paper="Jin, Wang & Lin (2023), Multi-Level Logit Distillation, CVPR",
                 defaults="the authors' code (Jin-Ying/Multi-Level-Logit-Distillation, KD_ours with its CFG.KD): "
                          "temperatures 2-6, CE 0.1, each level 0.9; one view (no weak/strong pair, no masks)",
                 order=5.1)
class MLKD(Objective):
    """Multi-level logit distillation (Jin, Wang & Lin, CVPR 2023), on one view.

    ``ce_weight`` · CE + ``instance_weight`` · instance + ``batch_weight`` · batch + ``class_weight`` · class,
    each level summed over the ``temperatures`` (prediction augmentation), P = softmax(Z / T):

    * instance = Σ_T T² · mean_i KL(P_t,i ‖ P_s,i) (each sample's distribution),
    * batch = Σ_T ‖P_s P_sᵀ − P_t P_tᵀ‖² / B (the similarities between the batch's samples),
    * class = Σ_T ‖P_sᵀ P_s − P_tᵀ P_t‖² / C (the correlations between classes over the batch).

    Defaults from the authors' code (``KD_ours`` with its ``CFG.KD``): temperatures 2, 3, 4, 5, 6, CE 0.1, every
    level 0.9. **What differs (one view).** The authors train on two augmentations of each image, weak and strong,
    with CE on both, instance terms on both, and batch and class terms on the weak view only; the weak view's
    terms are multiplied by confidence masks (samples, or classes, whose teacher confidence is at most the batch
    median), but the masks multiply already averaged losses, so in effect they scale those terms by the fraction
    of samples (or classes) kept, about ½. Here the engine gives one view per step: every level is computed on it
    without a mask (absorb the ½ into the weights to mimic the weak view alone; use ``distill.views`` for the
    augmentation). See :func:`distill.functional.mlkd_terms`. The batch and class terms need batches of more
    than one example. ``standardize``: distil z-scored logits (Sun et al., CVPR 2024, who combine it with MLKD;
    see :func:`distill.methods._common.distilled_logits`).

    **Strong gradients at these defaults.** The instance level sums T² · KL over five temperatures, so its
    gradient on the logits is about 5 times Hinton's KD at T = 4 (and the class level adds about 1.5 times
    more, on a random batch of 64 with 10 classes). With ``configs/digits_kd.yaml`` (MLP student, SGD lr 0.05,
    Nesterov, cosine, 30 epochs, teacher 99.3%) the student collapsed to chance (12.2% test; 19.6% at lr 0.025,
    the authors' lr at batch 64; 58.2% with every level at 0.3), while lr 0.01 gave 96.9% and
    ``standardize: true`` at lr 0.05 gave 98.2% (KD at its defaults: 98.7%; one seed each). Lower
    ``train.optimizer.lr`` or standardize the logits; the engine warns when a student collapses.
    """

    needs_teacher = True
    collapse_advice = ("MLKD's summed terms (five temperatures, three levels) have strong gradients: lower "
                       "train.optimizer.lr (e.g. 0.01), or set distill.options.standardize=true")

    def __init__(self, temperatures: Sequence[float] = MLKD_TEMPERATURES, instance_weight: float = 0.9,
                 batch_weight: float = 0.9, class_weight: float = 0.9, ce_weight: float = 0.1,
                 standardize: bool = False) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"),
                          "instance": check_weight(instance_weight, "instance_weight"),
                          "batch": check_weight(batch_weight, "batch_weight"),
                          "class": check_weight(class_weight, "class_weight")})
        self.temperatures = tuple(_temperatures(temperatures))
        self.standardize = standardize

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        student_logits, teacher_logits = distilled_logits(out, "MLKD", self.standardize)
        terms = hard_label_terms(self, out)
        terms["instance"], terms["batch"], terms["class"] = mlkd_terms(student_logits, teacher_logits,
                                                                       self.temperatures)
        return terms

    def extra_repr(self) -> str:
        return f"temperatures={self.temperatures}, standardize={self.standardize}"
