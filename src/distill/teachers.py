"""Where targets come from.

A teacher, here, is anything that gives targets for a batch of inputs: ``teacher(x) ->
Targets``. The engine calls it on exactly the views the student sees, together with the
batch's positions in the training set (``index``, which a cache of precomputed outputs looks
up), and knows nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TopK:
    """The teacher's ``k`` most probable classes at ``temperature``; the rest is one tail bucket.

    ``indices`` (B, k) are class indices, ``log_probs`` (B, k) their log-probabilities
    log p_t^T; the tail's mass is ``1 - exp(log_probs).sum(-1)``. A cache of top-k outputs
    gives these (see :func:`distill.functional.topk_kd_loss` for the loss on them).
    """

    indices: Tensor
    log_probs: Tensor
    num_classes: int
    temperature: float

    def __post_init__(self) -> None:
        if self.indices.shape != self.log_probs.shape or self.indices.dim() < 1:
            raise ValueError(f"TopK: indices {tuple(self.indices.shape)} and log_probs "
                             f"{tuple(self.log_probs.shape)} must have the same shape (..., k)")
        if self.indices.shape[-1] > self.num_classes:
            raise ValueError(f"TopK: k={self.indices.shape[-1]} exceeds num_classes={self.num_classes}")


@dataclass(frozen=True)
class Targets:
    """A teacher's outputs for one batch: raw ``logits``, softened ``probs`` or a ``topk`` summary.

    ``probs`` are a distribution at the distillation temperature; ``logits`` are softened by
    the loss; ``topk`` holds only the k largest probabilities and a tail bucket (a compact
    cache). Exactly one is set.
    """

    logits: Tensor | None = None
    probs: Tensor | None = None
    topk: TopK | None = None

    def __post_init__(self) -> None:
        if sum(t is not None for t in (self.logits, self.probs, self.topk)) != 1:
            raise ValueError("Targets needs exactly one of logits, probs or topk")

    @property
    def num_classes(self) -> int:
        if self.topk is not None:
            return self.topk.num_classes
        t = self.logits if self.logits is not None else self.probs
        assert t is not None
        return int(t.shape[-1])


@runtime_checkable
class Teacher(Protocol):
    """Anything that maps a batch of inputs to :class:`Targets` for that batch.

    ``index`` holds the batch's positions in the training (transfer) set; a teacher computed
    from the inputs ignores it, a cache of precomputed outputs reads its rows with it.
    """

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets: ...


class FrozenTeacher:
    """A trained model used as a teacher: eval mode, no gradients, no autograd graph.

    The model is put in eval mode (dropout off, batch-norm running statistics) and its
    parameters stop requiring grad. Each call runs under ``torch.inference_mode`` and returns
    a normal (non-inference) copy of the logits so the loss may save them for backward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        if self.model.training:  # someone called .train() on the shared module
            self.model.eval()
        with torch.inference_mode():
            logits = self.model(x)
        return Targets(logits=logits.clone())

    def __repr__(self) -> str:
        return f"FrozenTeacher({type(self.model).__name__})"
