"""Checks on a trained model's predictions that catch silent failures (a collapsed student).

A student can "train" without error and still predict one class for almost every input (a
distillation loss that overwhelms the labels early, a learning rate too high for the method).
Model selection on validation does not reveal it: the best of bad epochs is still selected.
:func:`collapse_warnings` names the symptom; the engine logs it at the end of ``fit`` and the
recipes put it in ``results.json`` (``"warnings"`` of each model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The most predicted class "dominates" when it takes more than DOMINANT_SHARE of the predictions and
# at least DOMINANT_EXCESS more than its share of the labels (so a truly frequent class is not flagged).
DOMINANT_SHARE = 0.5
DOMINANT_EXCESS = 0.25
# Accuracy "at chance": at most CHANCE_MARGIN above always predicting the most frequent label.
CHANCE_MARGIN = 0.05

class PredictionCollapseWarning(UserWarning):
    """A trained model's predictions collapsed (one class dominates, or accuracy is at chance)."""


GENERIC_ADVICE = ("lower train.optimizer.lr, and check the method's weights (distill.alpha, distill.options) "
                  "and the teacher's accuracy")


def collapse_warnings(predictions: Tensor, labels: Tensor, num_classes: int, *, split: str = "validation",
                      advice: str = GENERIC_ADVICE, class_names: Sequence[str] | None = None) -> list[str]:
    """Warnings (empty when none) about collapsed ``predictions`` (class indices, shape (N,)) against
    ``labels`` (N,) on ``split``:

    - **one class dominates**: the most predicted class takes more than half of the predictions
      and at least 25 points more than its share of the labels (needs ``num_classes >= 2``);
    - **accuracy at chance**: accuracy is at most 5 points above the accuracy of always predicting
      the most frequent label (``1 / num_classes`` on balanced data).

    Each warning ends with ``advice`` (what to change). No data, or one class, gives no warning.
    """
    predictions, labels = predictions.detach().flatten().cpu().long(), labels.detach().flatten().cpu().long()
    if predictions.shape != labels.shape:
        raise ValueError(f"collapse_warnings: predictions {tuple(predictions.shape)} and labels "
                         f"{tuple(labels.shape)} must have the same shape (N,)")
    n = int(labels.numel())
    if n == 0 or num_classes < 2:
        return []
    predicted = torch.bincount(predictions.clamp(0, num_classes - 1), minlength=num_classes).double() / n
    truth = torch.bincount(labels.clamp(0, num_classes - 1), minlength=num_classes).double() / n
    top = int(predicted.argmax())
    share, true_share = float(predicted[top]), float(truth[top])
    accuracy = float((predictions == labels).double().mean())
    chance = float(truth.max())
    name = f"{top} ({class_names[top]})" if class_names is not None and top < len(class_names) else str(top)
    found = []
    if share > DOMINANT_SHARE and share >= true_share + DOMINANT_EXCESS:
        found.append(f"{split} predictions collapsed: class {name} takes {share:.1%} of the {n} predictions "
                     f"(its share of the labels is {true_share:.1%})")
    if accuracy <= chance + CHANCE_MARGIN:
        found.append(f"{split} accuracy {accuracy:.1%} is at chance (always predicting the most frequent class "
                     f"scores {chance:.1%})")
    return [f"{warning}; {advice}" for warning in found]


def training_collapse_warnings(val_accuracies: Sequence[float], labels: Tensor, best_epoch: int, *,
                               advice: str = GENERIC_ADVICE) -> list[str]:
    """A warning (or none) when validation accuracy fell to chance during training after it had been
    above it: ``val_accuracies`` per epoch (epoch 1 first), ``labels`` of the validation split (chance
    is the accuracy of always predicting its most frequent class, plus the 5-point margin), and the
    selected ``best_epoch``. Selection on validation picks an epoch before the collapse, so the
    selected model alone looks healthy; a slow start (at chance in the first epochs) is not a collapse."""
    labels = labels.detach().flatten().cpu().long()
    if not len(val_accuracies) or labels.numel() == 0:
        return []
    chance = float(torch.bincount(labels.clamp(min=0)).max()) / labels.numel()
    limit, best_so_far, fell = chance + CHANCE_MARGIN, float("-inf"), []
    for epoch, accuracy in enumerate(val_accuracies, 1):
        if accuracy <= limit < best_so_far:
            fell.append((epoch, accuracy, best_so_far))
        best_so_far = max(best_so_far, accuracy)
    if not fell:
        return []
    first, _, reached = fell[0]
    lowest = min(accuracy for _, accuracy, _ in fell)
    return [f"training collapsed: validation accuracy fell to chance ({lowest:.1%}; always predicting the most "
            f"frequent class scores {chance:.1%}) in {len(fell)} of {len(val_accuracies)} epochs, first in epoch "
            f"{first} after reaching {reached:.1%}; the selected checkpoint is from epoch {best_epoch}; {advice}"]


def advice_for(objective: object) -> str:
    """What to change when a model trained with ``objective`` collapses: its ``collapse_advice``
    attribute (e.g. :class:`distill.objectives.DecoupledKD`'s), else :data:`GENERIC_ADVICE`."""
    return getattr(objective, "collapse_advice", None) or GENERIC_ADVICE
