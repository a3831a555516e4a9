"""Objectives on logits: hard labels, Hinton's KD, matching logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill import functional as DF
from distill.objectives.base import Objective, StepOutputs


def _teacher(out: StepOutputs, who: str):
    if out.teacher is None:
        raise RuntimeError(f"{who} needs teacher targets but the step has none; pass a teacher to the engine")
    return out.teacher


class CrossEntropy(Objective):
    """Supervised training on hard labels: one term ``ce``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__({"ce": 1.0})
        self.label_smoothing = label_smoothing

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(out.logits.float(), out.labels, label_smoothing=self.label_smoothing)}


class KnowledgeDistillation(Objective):
    """Hinton, Vinyals & Dean (2015): ``alpha * kd + (1 - alpha) * ce``.

    ``kd`` = T² · KL(p_t^T ‖ p_s^T) (the T² keeps the soft term's gradients on the scale of the
    hard term's as T changes), ``ce`` = CE(z_s, y). With ``alpha = 1`` the labels are not used
    at all (Beyer et al. 2022's function matching).
    """

    needs_teacher = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__({"kd": alpha, "ce": 1.0 - alpha})
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        t = _teacher(out, "KnowledgeDistillation")
        if t.topk is not None:
            if abs(t.topk.temperature - self.temperature) > 1e-6:
                raise ValueError(
                    f"these top-k targets were computed at temperature {t.topk.temperature} but the loss uses "
                    f"{self.temperature}; set distill.temperature={t.topk.temperature} or rebuild the cache "
                    f"at {self.temperature} (a full-logit cache works at any temperature)"
                )
            terms = {"kd": DF.topk_kd_loss(out.logits, t.topk.indices, t.topk.log_probs, self.temperature)}
        else:
            terms = {"kd": DF.kd_loss(out.logits, t.logits, self.temperature, teacher_probs=t.probs)}
        if self.alpha < 1.0:
            terms["ce"] = F.cross_entropy(out.logits.float(), out.labels)
        return terms

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


class LogitMatching(Objective):
    """Caruana et al. (2006) / Hinton's high-temperature limit: ``alpha * mse + (1 - alpha) * ce``.

    ``logit_matching`` = ½ · mean_c (z_s − z_t)², the T → ∞ limit of T² · KL for zero-mean logits,
    so ``alpha`` means the same as in :class:`KnowledgeDistillation`.
    """

    needs_teacher = True

    def __init__(self, alpha: float = 0.9) -> None:
        super().__init__({"logit_matching": alpha, "ce": 1.0 - alpha})
        self.alpha = alpha

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        t = _teacher(out, "LogitMatching")
        if t.logits is None:
            raise ValueError("logit matching needs teacher logits; this teacher gives probabilities or a top-k "
                             "summary only (use a full-logit cache, or distill.loss=kd)")
        terms = {"logit_matching": DF.logit_matching_loss(out.logits, t.logits)}
        if self.alpha < 1.0:
            terms["ce"] = F.cross_entropy(out.logits.float(), out.labels)
        return terms


def build_objective(loss: str, temperature: float = 4.0, alpha: float = 0.9) -> Objective:
    """The objective named in a config's ``distill.loss``."""
    if loss == "kd":
        return KnowledgeDistillation(temperature, alpha)
    if loss == "logit_matching":
        return LogitMatching(alpha)
    raise ValueError(f"distill.loss: unknown loss {loss!r}; choose 'kd' or 'logit_matching'")
