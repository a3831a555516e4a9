"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020): the pure losses, the objective
(with its memory bank), registered as ``crd``; the recipe supplies ``num_data``, the size of the training set."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.methods._features import FeatureObjective, LayerChoice, Layers, Shape
from distill.methods._functional import _check_temperature, _check_tensor, _compute_dtype, _shape
from distill.methods.base import StepOutputs
from distill.methods.registry import RunFacts, register_method

__all__ = ["crd_nce_loss", "CRD"]


def crd_nce_loss(
    positive_scores: Tensor,
    negative_scores: Tensor,
    num_data: int | None = None,
    temperature: float = 0.07,
    *,
    normalizer: float | Tensor | None = None,
    mode: str = "nce",
    eps: float = 1e-7,
) -> Tensor:
    r"""Contrastive representation distillation (CRD): the contrastive loss of one anchor side.

    Y. Tian, D. Krishnan, P. Isola (2020), "Contrastive Representation Distillation", ICLR.
    Inputs are similarity scores ``s = <g(x), m>`` of unit-norm embeddings: for each anchor, one
    positive (the other network's memory entry for the same sample) and ``K`` negatives.

    ``mode="nce"`` (the paper's Eq. 18, as RepDistiller's ``ContrastLoss``): with
    ``P = exp(s / T) / Z`` and noise ``P_n = 1 / N`` (``N = num_data``, the dataset size),

    .. math::

        \mathcal{L} = -\frac1B \sum_b \Big[\log\frac{P_{b,0}}{P_{b,0} + K P_n + \epsilon}
                      + \sum_{k=1}^{K} \log\frac{K P_n}{P_{b,k} + K P_n + \epsilon}\Big]

    ``Z`` is the reference's Monte-Carlo estimate of the partition function,
    ``Z = N * mean(exp(s / T))`` over all ``B (K + 1)`` scores of the **first** batch, then held
    fixed for the whole run. Pass that constant as ``normalizer`` to reproduce the reference; with
    ``normalizer=None`` it is estimated (detached) from this batch.

    ``mode="softmax"``: InfoNCE, ``CE([s_0, s_1, ..., s_K] / T, target 0)`` averaged over
    anchors (CMC's ``NCESoftmaxLoss``); ``Z`` and ``N`` do not enter.

    CRD sums this loss for both anchor sides (student embedding against the teacher memory and
    vice versa). Nothing is detached here: the teacher-side embedding head is trained too; the
    memory bank, its momentum update and negative sampling (``K = 16384``, and the dataset's
    "exact"/"relax" choice of positives) are the objective's job. ``T = 0.07`` and
    ``eps = 1e-7`` are the reference's; RepDistiller weighs the sum by 0.8.

    Args:
        positive_scores: ``(B,)`` scores of the positive pairs.
        negative_scores: ``(B, K)`` scores of the negative pairs, ``K >= 1``.
        num_data: ``N``, the number of training samples (required for ``mode="nce"``).
        temperature: ``T > 0``.
        normalizer: ``Z > 0`` (``mode="nce"`` only).
        mode: ``"nce"`` or ``"softmax"``.
    """
    pos = _check_tensor(positive_scores, "positive_scores", "(B,) scores of the positive pairs", 1, 1)
    neg = _check_tensor(negative_scores, "negative_scores", "(B, K) scores of the negative pairs", 2, 2)
    if neg.shape[0] != pos.shape[0] or neg.shape[1] < 1:
        raise ValueError(
            f"negative_scores must be (B, K) with K >= 1 and the B = {pos.shape[0]} of positive_scores "
            f"shape {_shape(pos)}, got shape {_shape(neg)}"
        )
    temperature = _check_temperature(temperature)
    dtype = _compute_dtype(pos)
    scores = torch.cat([pos.to(dtype)[:, None], neg.to(dtype)], dim=1) / temperature  # (B, 1 + K), positive first
    if mode == "softmax":
        return -F.log_softmax(scores, dim=1)[:, 0].mean()
    if mode != "nce":
        raise ValueError(f"mode must be 'nce' or 'softmax', got {mode!r}")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"mode='nce' needs num_data, the number of training samples (an int >= 1), got {num_data!r}")
    if normalizer is None:
        # log Z = log N + log mean exp(s / T), estimated from this batch and treated as a constant
        log_z = math.log(num_data) + torch.logsumexp(scores.detach().flatten(), dim=0) - math.log(scores.numel())
    else:
        z = torch.as_tensor(normalizer, dtype=dtype, device=scores.device).detach()
        if z.numel() != 1 or not bool(z > 0):
            raise ValueError(f"normalizer Z must be a single number > 0, got {normalizer!r}")
        log_z = z.log().reshape(())
    num_negatives = neg.shape[1]
    noise = num_negatives / num_data  # K * P_n
    log_p = scores - log_z  # log P = s / T - log Z
    log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, math.log(noise + eps)))  # log(P + K Pn + eps)
    log_d_positive = log_p[:, 0] - log_denominator[:, 0]
    log_d_negative = math.log(noise) - log_denominator[:, 1:]
    return -(log_d_positive.sum() + log_d_negative.sum()) / pos.shape[0]


def _training_set_size(facts: RunFacts) -> dict[str, object]:
    """CRD's ``num_data``: the number of training examples (the size of its memory bank)."""
    return {"num_data": facts.num_data}


@register_method("crd",
                 paper="Tian, Krishnan & Isola (2020), Contrastive Representation Distillation, ICLR",
                 defaults="RepDistiller (feat_dim 128, nce_k 16384)",
                 order=18,
                 automatic={"num_data": "the number of training examples"},
                 supply=_training_set_size)
class CRD(FeatureObjective):
    """Contrastive representation distillation (Tian, Krishnan & Isola, "Contrastive Representation
    Distillation", ICLR 2020), as RepDistiller's ``CRDLoss`` + ``ContrastMemory``.

    The penultimate embeddings of student and teacher go through owned linear heads to
    ``feat_dim`` and are L2-normalized: g_s, g_t. A memory bank holds one unit vector per
    training example for each side (buffers ``memory_student``, ``memory_teacher`` of
    ``num_data x feat_dim``, updated after each step with momentum: m_i ← normalize(μ·m_i + (1 − μ)·g_i)).
    For each example the objective draws, **on the device**, a positive and ``nce_k`` negatives
    from the dataset indices and scores s = <g, m>:

    ``crd`` = NCE(g_s vs the teacher memory) + NCE(g_t vs the student memory), the NCE loss of
    :func:`distill.functional.crd_nce_loss` with temperature T and, per side, the reference's
    normalizer Z = N · mean(exp(s / T)) estimated on the first batch and then held fixed (buffers).

    Positives (``mode``): ``"exact"`` (the paper's default): the example itself. ``"relax"``: a
    random training example of the same class. Negatives are drawn, with replacement, from the
    examples of other classes, as RepDistiller's sampling dataset does. Labels are learned as the
    examples are seen (buffer ``memory_labels``, -1 until seen): during the first epoch an unseen
    example may be drawn as a negative even if it is of the same class, and "relax" draws only
    among the same-class examples seen so far (the example itself at first).

    ``num_data`` must be the size of the training set the engine indexes (``StepOutputs.index``):
    ``len(data.train)``. Defaults are RepDistiller's: ``feat_dim`` 128, ``nce_k`` 16384,
    T 0.07, momentum 0.5, ``weight`` 0.8, CE 1 (add ``kd_weight=1`` for CRD+KD). Teacher-side
    gradients stop at its embedding head.

    Precision follows the models: :meth:`setup` moves the heads and the memory bank to the student's
    floating dtype, at least float32 (a float64 student and teacher give a float64 bank and loss;
    under mixed precision the bank stays float32). ``objective.to(dtype)`` moves them too, and
    features wider than the objective's dtype upcast it on first use; nothing downcasts the bank.
    """

    method = "CRD"
    layers: LayerChoice = "embedding"
    tokens_as_maps = False  # flattened: a transformer's tokens as they are
    memory_student: Tensor  # buffers (N, feat_dim): the memory bank of student and teacher embeddings
    memory_teacher: Tensor
    memory_labels: Tensor  # (N,) long, -1 until the example is seen
    normalizers: Tensor  # (2,): Z of the student and teacher anchors, -1 until estimated
    embed_student: nn.Linear  # the embedding heads, made by build()
    embed_teacher: nn.Linear

    def __init__(self, num_data: int, weight: float = 0.8, *, feat_dim: int = 128, nce_k: int = 16384,
                 nce_temperature: float = 0.07, momentum: float = 0.5, mode: str = "exact",
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"crd": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 2:
            raise ValueError(f"CRD: num_data must be the number of training examples (an int >= 2), got {num_data!r}")
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD: mode must be 'exact' (the example itself is the positive) or 'relax' (an example "
                             f"of the same class), got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CRD: momentum must be in [0, 1), got {momentum}")
        self.num_data, self.feat_dim, self.nce_k = num_data, feat_dim, nce_k
        self.nce_temperature, self.momentum, self.mode = nce_temperature, momentum, mode
        bound = 1.0 / math.sqrt(feat_dim / 3)  # RepDistiller's uniform initialization of the memory
        self.register_buffer("memory_student", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_teacher", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_labels", torch.full((num_data,), -1, dtype=torch.long))
        self.register_buffer("normalizers", torch.full((2,), -1.0))  # Z of the student and teacher anchors

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        super().setup(student, teacher, probe)
        dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), probe.dtype)
        self._follow(torch.promote_types(torch.promote_types(dtype, torch.float32), self.dtype))

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the memory bank, the heads and the scores."""
        return self.memory_student.dtype

    def _follow(self, dtype: torch.dtype) -> None:
        """Move the heads and the float buffers (memory bank, normalizers) to ``dtype`` if they are not in it."""
        tensors = [*self.parameters(), *self.buffers()]
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
            self.to(dtype)

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        if len(self.pairs) != 1:
            raise ValueError(f"CRD contrasts one embedding per model; got the pairs {self.pairs}")
        self.embed_student = nn.Linear(math.prod(student_shapes[0]), self.feat_dim)
        self.embed_teacher = nn.Linear(math.prod(teacher_shapes[0]), self.feat_dim)

    @torch.no_grad()
    def sample(self, index: Tensor, labels: Tensor) -> Tensor:
        """``(B, 1 + nce_k)`` dataset indices: the positive first, then the negatives."""
        known = self.memory_labels
        if self.mode == "exact":
            positives = index[:, None]
        else:
            same = known[None, :] == labels[:, None]
            same[torch.arange(len(index), device=index.device), index] = True
            positives = torch.multinomial(same.float(), 1)
        other_class = (known[None, :] != labels[:, None]).float()  # unseen examples (-1) count as other classes
        negatives = torch.multinomial(other_class, self.nce_k, replacement=True)
        return torch.cat([positives, negatives], dim=1)

    def scores(self, anchors: Tensor, memory: Tensor, contrast: Tensor) -> Tensor:
        """``(B, 1 + K)``: <anchor_b, memory[contrast_b,k]>."""
        return torch.bmm(memory[contrast], anchors.unsqueeze(2)).squeeze(2)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        # at least float32 (mixed-precision features are computed as before); wider features upcast the
        # heads and the memory bank (never the other way)
        self._follow(torch.promote_types(torch.promote_types(student[0].dtype, teacher[0].dtype), self.dtype))
        g_s = F.normalize(self.embed_student(student[0].flatten(1).to(self.dtype)), dim=1)
        g_t = F.normalize(self.embed_teacher(teacher[0].flatten(1).to(self.dtype)), dim=1)
        index, labels = out.index, out.labels
        if self.training:
            self.memory_labels[index] = labels
        contrast = self.sample(index, labels)
        scores_s = self.scores(g_s, self.memory_teacher, contrast)  # student anchors, teacher memory
        scores_t = self.scores(g_t, self.memory_student, contrast)
        losses = []
        for side, scores in enumerate((scores_s, scores_t)):
            # Z: the reference's Monte-Carlo estimate on the first batch (while unset, < 0), then kept fixed
            with torch.no_grad():
                estimate = self.num_data * torch.exp(scores / self.nce_temperature).mean()
                self.normalizers[side] = torch.where(self.normalizers[side] < 0, estimate, self.normalizers[side])
            losses.append(crd_nce_loss(scores[:, 0], scores[:, 1:], self.num_data, self.nce_temperature,
                                          normalizer=self.normalizers[side]))
        if self.training:
            self.update_memory(index, g_s.detach(), g_t.detach())
        return {"crd": losses[0] + losses[1]}

    @torch.no_grad()
    def update_memory(self, index: Tensor, g_s: Tensor, g_t: Tensor) -> None:
        for memory, g in ((self.memory_student, g_s), (self.memory_teacher, g_t)):
            memory[index] = F.normalize(self.momentum * memory[index] + (1 - self.momentum) * g, dim=1)
