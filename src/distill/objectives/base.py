"""The contract between the engine and a method."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from distill.teachers import Targets


@dataclass
class StepOutputs:
    """Everything a loss may consume for one batch.

    ``logits``: student outputs (B, C); ``labels``: (B,) class indices; ``index``: positions of
    the batch's examples in the training set; ``teacher``: the teacher's targets for the same
    views, or None when training without one.
    """

    logits: Tensor
    labels: Tensor
    index: Tensor
    teacher: Targets | None = None


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(out: StepOutputs) -> dict[str, Tensor]``."""

    needs_teacher: bool = False

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights: dict[str, float] = dict(weights or {})

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated."""
        return sum(self.weights.get(k, 1.0) * v for k, v in terms.items())  # type: ignore[return-value]

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
