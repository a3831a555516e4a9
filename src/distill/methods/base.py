"""The contract between the engine and a method: :class:`StepOutputs` in, named loss terms out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from distill.teachers import Targets


@dataclass
class StepOutputs:
    """Everything a loss may consume for one batch.

    ``logits``: student outputs (B, C); ``labels``: (B,) class indices; ``index``: positions of
    the batch's examples in the training set; ``teacher``: the teacher's targets for the same
    views (with its tapped ``features``), or None when training without one; ``features``: the
    student's tapped intermediate tensors, keyed as in ``Objective.student_features``;
    ``epoch``: training progress in epochs (fractional), for methods with a warm-up.
    """

    logits: Tensor
    labels: Tensor
    index: Tensor
    teacher: Targets | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    epoch: float = 0.0


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(out: StepOutputs) -> dict[str, Tensor]``.

    What an objective consumes beyond logits and labels, it declares: ``student_features`` and
    ``teacher_features`` map a key to a tap spec on that model (``"layer3"``, ``"layer3:input"``;
    see :mod:`distill.taps`); the engine captures them with forward hooks and passes them in
    ``StepOutputs.features`` and ``StepOutputs.teacher.features``. Trainable modules whose shapes
    depend on the models (connectors) are built in :meth:`setup`, which the engine calls once
    before it creates the optimizer, so their parameters are optimized with the student.
    """

    needs_teacher: bool = False
    taps_teacher: ClassVar[bool] = False
    """Whether it reads the teacher's intermediate features (so it needs the live teacher model, not cached
    outputs)."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights: dict[str, float] = dict(weights or {})
        self.student_features: dict[str, str] = {}
        self.teacher_features: dict[str, str] = {}

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        """Build modules sized from the two models (``probe``: a couple of training inputs)."""

    def trains_predictions(self) -> bool:
        """Whether it trains the student's predictions (a term on its logits), so that validation accuracy
        can select its checkpoint; a method-only stage (FitNets' hints alone, FT's paraphraser) does not."""
        return True

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated (a term of weight 1 is added as it is: ``1 * v`` is ``v``)."""
        if not terms:
            raise ValueError(f"{type(self).__name__} returned no loss terms; its forward must return at least one "
                             f"named term, e.g. {{'ce': ...}}")
        return tensor_sum(v if (w := self.weights.get(k, 1.0)) == 1.0 else w * v for k, v in terms.items())

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def tensor_sum(values: Iterable[Tensor]) -> Tensor:
    """``v0 + v1 + ...``, added left to right as :func:`sum` does but without its ``0`` start: the same
    value, always a Tensor (``sum`` of no values is the int ``0``; here that is an error)."""
    items = iter(values)
    try:
        total = next(items)
    except StopIteration:
        raise ValueError("tensor_sum: nothing to add (no values)") from None
    for value in items:
        total = total + value
    return total
