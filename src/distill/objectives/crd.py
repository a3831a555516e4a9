"""Contrastive representation distillation (CRD) with its memory bank on the device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import functional as DF
from distill.methods.registry import RunFacts, register_method
from distill.objectives.base import StepOutputs
from distill.objectives.features import FeatureObjective, LayerChoice, Layers, Shape


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
            losses.append(DF.crd_nce_loss(scores[:, 0], scores[:, 1:], self.num_data, self.nce_temperature,
                                          normalizer=self.normalizers[side]))
        if self.training:
            self.update_memory(index, g_s.detach(), g_t.detach())
        return {"crd": losses[0] + losses[1]}

    @torch.no_grad()
    def update_memory(self, index: Tensor, g_s: Tensor, g_t: Tensor) -> None:
        for memory, g in ((self.memory_student, g_s), (self.memory_teacher, g_t)):
            memory[index] = F.normalize(self.momentum * memory[index] + (1 - self.momentum) * g, dim=1)
