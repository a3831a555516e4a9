"""Objectives on logits: hard labels, Hinton's KD, matching logits, DKD, DIST, logit standardization.

Every distillation objective here is ``ce`` on the hard labels plus the method's terms, each with
its own weight in ``objective.weights`` (the engine sums ``weight * term``); a term whose weight
is 0 is not computed.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from distill import functional as DF
from distill.objectives.base import Objective, StepOutputs
from distill.teachers import Targets


def _teacher(out: StepOutputs, who: str) -> Targets:
    if out.teacher is None:
        raise RuntimeError(f"{who} needs teacher targets but the step has none; pass a teacher to the engine")
    return out.teacher


def _teacher_logits(out: StepOutputs, who: str) -> Tensor:
    t = _teacher(out, who)
    if t.logits is None:
        raise ValueError(f"{who} needs the teacher's logits; this teacher gives probabilities or a top-k summary "
                         f"only (use a live teacher or a full-logit cache)")
    return t.logits


def check_weight(value: float, name: str) -> float:
    """A loss weight: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """``min(epoch / warmup_epochs, 1)``: the linear warm-up of mdistiller's DKD and ReviewKD (1 if no warm-up)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


def label_and_kd_terms(objective: Objective, out: StepOutputs, teacher: Targets | None,
                       temperature: float) -> dict[str, Tensor]:
    """The ``ce`` term (hard labels) and Hinton's ``kd`` term, each only when its weight is not 0."""
    terms: dict[str, Tensor] = {}
    if objective.weights.get("ce", 0.0):
        terms["ce"] = F.cross_entropy(out.logits.float(), out.labels)
    if objective.weights.get("kd", 0.0):
        if teacher is None:
            raise RuntimeError(f"{type(objective).__name__} has a kd term but the step has no teacher targets")
        terms["kd"] = DF.kd_loss(out.logits, teacher.logits, temperature, teacher_probs=teacher.probs)
    return terms


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


class DecoupledKD(Objective):
    """Decoupled KD (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022).

    ``ce`` + w · (``tckd_weight`` · TCKD + ``nckd_weight`` · NCKD), with p = softmax(z / T):

    * TCKD = T² · KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y]) (target vs the rest),
    * NCKD = T² · KL(p̂_t ‖ p̂_s), p̂ = the distribution among the non-target classes,

    and the warm-up w = min(epoch / ``warmup_epochs``, 1) from ``StepOutputs.epoch`` (fractional,
    so it rises every step; mdistiller steps it once per 1-based epoch). The logged ``tckd`` and
    ``nckd`` terms include w. Defaults are mdistiller's CIFAR-100 ``CFG.DKD``: CE 1, alpha 1,
    beta 8, T 4, warm-up 20 epochs (the paper tunes beta per teacher). See
    :func:`distill.functional.dkd_terms`.
    """

    needs_teacher = True

    def __init__(self, tckd_weight: float = 1.0, nckd_weight: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: float = 20.0, ce_weight: float = 1.0) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "tckd": check_weight(tckd_weight, "tckd_weight"),
                          "nckd": check_weight(nckd_weight, "nckd_weight")})
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        teacher_logits = _teacher_logits(out, "DecoupledKD")
        terms = label_and_kd_terms(self, out, None, self.temperature)
        tckd, nckd = DF.dkd_terms(out.logits, teacher_logits, out.labels, self.temperature)
        warmup = warmup_factor(out.epoch, self.warmup_epochs)
        terms.update(tckd=warmup * tckd, nckd=warmup * nckd)
        return terms

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, warmup_epochs={self.warmup_epochs}, weights={self.weights}"


class DIST(Objective):
    """DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

    ``ce`` + ``inter_weight`` · inter + ``intra_weight`` · intra, with Y = softmax(Z / T):

    * inter = T² · (1 − mean_i pearson_c(Y_s,i, Y_t,i)) (each sample's class relations),
    * intra = T² · (1 − mean_c pearson_i(Y_s,c, Y_t,c)) (each class's relations across the batch).

    Defaults β = γ = T = 1 and CE 1 are the reference implementation's (hunto/DIST_KD, ImageNet);
    its CIFAR-100 runs use T = 4. Optional Hinton ``kd`` term (``kd_weight``, same T). See
    :func:`distill.functional.dist_loss`.
    """

    needs_teacher = True

    def __init__(self, inter_weight: float = 1.0, intra_weight: float = 1.0, temperature: float = 1.0,
                 ce_weight: float = 1.0, kd_weight: float = 0.0) -> None:
        super().__init__({"ce": check_weight(ce_weight, "ce_weight"), "kd": check_weight(kd_weight, "kd_weight"),
                          "inter": check_weight(inter_weight, "inter_weight"),
                          "intra": check_weight(intra_weight, "intra_weight")})
        self.temperature = temperature

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        teacher = _teacher(out, "DIST")
        teacher_logits = _teacher_logits(out, "DIST")
        terms = label_and_kd_terms(self, out, teacher, self.temperature)
        terms["inter"] = DF.dist_loss(out.logits, teacher_logits, beta=1.0, gamma=0.0, temperature=self.temperature)
        terms["intra"] = DF.dist_loss(out.logits, teacher_logits, beta=0.0, gamma=1.0, temperature=self.temperature)
        return terms


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
        terms: dict[str, Tensor] = {}
        if self.weights["ce"]:
            terms["ce"] = F.cross_entropy(out.logits.float(), out.labels)
        terms["kd"] = DF.standardized_kd_loss(out.logits, teacher_logits, self.temperature)
        return terms


def build_objective(loss: str, temperature: float = 4.0, alpha: float = 0.9) -> Objective:
    """The objective named in a config's ``distill.loss``."""
    if loss == "kd":
        return KnowledgeDistillation(temperature, alpha)
    if loss == "logit_matching":
        return LogitMatching(alpha)
    raise ValueError(f"distill.loss: unknown loss {loss!r}; choose 'kd' or 'logit_matching'")
