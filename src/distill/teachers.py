"""Where targets come from.

A teacher, here, is anything that gives targets for a batch of inputs: ``teacher(x) ->
Targets``. The engine calls it on exactly the views the student sees and knows nothing else
about it. This module holds the frozen single model; ensembles, specialists and cached
outputs are further implementations of the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Targets:
    """A teacher's outputs for one batch: raw ``logits`` or already-softened ``probs``.

    ``probs`` are a distribution at the distillation temperature (from an ensemble or a
    cache); ``logits`` are softened by the loss. Exactly one is set.
    """

    logits: Tensor | None = None
    probs: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.probs is None):
            raise ValueError("Targets needs exactly one of logits or probs")

    @property
    def num_classes(self) -> int:
        t = self.logits if self.logits is not None else self.probs
        assert t is not None
        return int(t.shape[-1])


@runtime_checkable
class Teacher(Protocol):
    """Anything that maps a batch of inputs to :class:`Targets` for that batch."""

    def __call__(self, x: Tensor) -> Targets: ...


class FrozenTeacher:
    """A trained model used as a teacher: eval mode, no gradients, no autograd graph.

    The model is put in eval mode (dropout off, batch-norm running statistics) and its
    parameters stop requiring grad. Each call runs under ``torch.inference_mode`` and returns
    a normal (non-inference) copy of the logits so the loss may save them for backward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, x: Tensor) -> Targets:
        if self.model.training:  # someone called .train() on the shared module
            self.model.eval()
        with torch.inference_mode():
            logits = self.model(x)
        return Targets(logits=logits.clone())

    def __repr__(self) -> str:
        return f"FrozenTeacher({type(self.model).__name__})"
