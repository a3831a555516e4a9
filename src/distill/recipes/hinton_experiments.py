"""Two experiments of Hinton, Vinyals & Dean (2015) that show what soft targets carry.

``small_data`` (section 6, "soft targets as regularizers"): a student that sees only a small
fraction of the training set (the paper: 3%) trained on hard labels overfits; the same student
trained on the teacher's soft targets for that fraction keeps most of the full-data accuracy.
Paper (speech, frame accuracy): 44.5% hard labels on 3%, 57.0% soft targets on 3%, 58.9% the
baseline on all the data.

``left_out_class`` (section 3, MNIST): the transfer set lacks every example of one class, yet
the student learns that class from the soft targets the teacher gives on the other classes'
images. Only the class's bias is off, and a single number fixes it. Paper: 206 test errors,
133 of them on the 1010 threes; with the threes' bias raised by 3.5, 109 errors, 14 on threes.

Both distil from the live teacher model with ``distill.loss``, or any method or stages
(``distill.method``, ``distill.stages``; :mod:`distill.recipes.stages`): ``soft_small``,
``distilled_full`` and ``distilled_without`` are each trained as the ``distill`` recipe trains
``distilled`` (in ``small_data`` with every stage's epochs scaled to the small split).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from distill import distributed
from distill.checkpoint import save_checkpoint
from distill.data.tensors import DataSplits, TensorData, steps_per_epoch, stratified_split
from distill.engine import predict_logits
from distill.config import Section, TrainConfig, register_recipe
from distill.objectives import CrossEntropy
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED, _teacher_and_spec
from distill.recipes.stages import train_stages, train_stages_with_spec
from distill.teachers import FrozenTeacher


class SmallDataConfig(Section):
    """``recipe: small_data``: soft targets as a regularizer (Hinton et al. 2015, section 6)."""

    fraction: float = Field(0.03, gt=0, le=1, description="fraction of the training set the students see")
    epochs: int | None = Field(None, gt=0, description="epochs of the small-data students (default: as many "
                               "optimizer steps as the full-data student takes)")


class LeftOutConfig(Section):
    """``recipe: left_out_class``: distil with one class missing from the transfer set (Hinton et al. 2015,
    section 3), then correct the missing class's bias."""

    label: int | str = Field(3, description="the class left out (index or name)")
    max_bias: float = Field(10.0, gt=0, description="the bias correction is searched in [0, max_bias] on "
                            "the validation split")


def small_subset(data: DataSplits, fraction: float, seed: int) -> DataSplits:
    """``data`` with its training split replaced by a stratified, seeded ``fraction`` of it."""
    n = len(data.train)
    k = max(data.num_classes, round(fraction * n))
    if k >= n:
        return data
    _, chosen = stratified_split(data.train.y, k, seed)
    return dataclasses.replace(data, train=data.train.subset(chosen))


@register_recipe("small_data", options=SmallDataConfig, reads=("teacher", "student", "distill"),
                 roles=("teacher", "student"), pairs=lambda tags: [("soft_small", "hard_small")])
def small_data(run: Run) -> dict[str, Any]:
    """Soft targets as a regularizer (Hinton et al. 2015, section 6): students on a few percent of the data,
    on hard labels and on the teacher's soft targets."""
    cfg = run.cfg
    student = cfg.student
    assert student is not None
    f = cfg.options(SmallDataConfig)
    teacher, teacher_spec = _teacher_and_spec(run)
    small = small_subset(run.data, f.fraction, cfg.data.split_seed + 1)

    def small_train(train: TrainConfig) -> TrainConfig:
        """``train`` on the small split: ``small_data.epochs``, or as many optimizer steps as on the full one."""
        steps = steps_per_epoch(len(run.data.train), train.batch_size) * train.epochs
        epochs = f.epochs or max(1, round(steps / steps_per_epoch(len(small.train), train.batch_size)))
        return train.model_copy(update={"epochs": epochs})

    epochs = small_train(student.train).epochs
    run.say(f"small-data students: {len(small.train)} of {len(run.data.train)} training examples "
            f"({100 * f.fraction:g}%), {epochs} epochs")

    model, spec = run.build_model(student, STUDENT_SEED)
    full = run.train("baseline_full", model, spec, CrossEntropy(), student).model
    model, spec = run.build_model(student, STUDENT_SEED)
    hard = run.train("hard_small", model, spec, CrossEntropy(), student, data=small,
                     train=small_train(student.train)).model
    model, spec = run.build_model(student, STUDENT_SEED)
    soft = train_stages(run, model, spec, FrozenTeacher(teacher), small, teacher_model=teacher,
                        teacher_spec=teacher_spec, tag="soft_small", adjust_train=small_train)

    def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"fraction": f.fraction, "train_examples": len(small.train), "epochs": epochs,
                "hard_small_acc": rows["hard_small"]["test_acc"], "soft_small_acc": rows["soft_small"]["test_acc"],
                "baseline_full_acc": rows["baseline_full"]["test_acc"],
                "paper_speech_frame_acc": {"hard_3pct": 0.445, "soft_3pct": 0.570, "baseline_full": 0.589}}

    return run.finish({"teacher": teacher, "baseline_full": full, "hard_small": hard, "soft_small": soft}, teacher,
                      extra={"small_data": f.model_dump(mode="json")}, summarize=summarize)


def class_index(data: DataSplits, label: int | str, key: str = "left_out.label") -> int:
    """The index of class ``label`` (an index or one of the dataset's class names)."""
    if isinstance(label, int):
        if not 0 <= label < data.num_classes:
            raise ValueError(f"{key}: class {label} is out of range for {data.name} ({data.num_classes} classes)")
        return label
    names = [str(n) for n in data.class_names]
    if label in names:
        return names.index(label)
    if label.isdigit() and 0 <= int(label) < data.num_classes:
        return int(label)
    raise ValueError(f"{key}: {data.name} has no class {label!r}; classes are {', '.join(names)}")


def without_class(data: DataSplits, c: int) -> DataSplits:
    """``data`` with every example of class ``c`` removed from its train and validation splits."""
    def drop(t: TensorData) -> TensorData:
        return t.subset(torch.nonzero(t.y != c).flatten())

    return dataclasses.replace(data, train=drop(data.train), val=drop(data.val))


def best_bias(logits: Tensor, labels: Tensor, c: int, max_bias: float, step: float = 0.05) -> float:
    """The shift of class ``c``'s logit in [0, max_bias] (grid of ``step``) with the fewest errors on
    ``(logits, labels)``; ties go to the smallest shift."""
    grid = torch.arange(0.0, max_bias + step / 2, step, device=logits.device)
    onehot = torch.zeros(logits.shape[-1], device=logits.device)
    onehot[c] = 1.0
    shifted = logits.unsqueeze(0) + grid.view(-1, 1, 1) * onehot  # (G, N, C)
    errors = (shifted.argmax(-1) != labels.unsqueeze(0)).sum(-1)
    return round(float(grid[int(torch.argmin(errors))]), 4)  # argmin returns the first (smallest) minimum


def with_bias(model: nn.Module, c: int, bias: float) -> nn.Module:
    """A copy of ``model`` whose output ``c`` is raised by ``bias`` (its classifier's bias, if it has one)."""
    out = copy.deepcopy(model)
    head = getattr(out, "classifier", None)
    if isinstance(head, nn.Linear) and head.bias is not None:
        with torch.no_grad():
            head.bias[c] += bias
        return out
    return _ShiftLogit(out, c, bias)


class _ShiftLogit(nn.Module):
    def __init__(self, model: nn.Module, c: int, bias: float) -> None:
        super().__init__()
        self.model, self.c, self.bias = model, c, bias

    def forward(self, x: Tensor) -> Tensor:
        z = self.model(x)
        return z + self.bias * torch.nn.functional.one_hot(torch.tensor(self.c), z.shape[-1]).to(z)


def _class_errors(model: nn.Module, test: TensorData, c: int) -> tuple[int, int]:
    preds = predict_logits(model, test.x).argmax(-1)
    mask = test.y == c
    return int((preds[mask] != c).sum()), int(mask.sum())


@register_recipe("left_out_class", options=LeftOutConfig, section="left_out",
                 reads=("teacher", "student", "distill"), roles=("teacher", "student"),
                 pairs=lambda tags: [("distilled_corrected", "distilled_without")])
def left_out_class(run: Run) -> dict[str, Any]:
    """Distil with one class missing from the transfer set, then correct its bias (Hinton et al. 2015,
    section 3)."""
    cfg = run.cfg
    student = cfg.student
    assert student is not None
    lo = cfg.options(LeftOutConfig)
    c = class_index(run.data, lo.label)
    name = str(run.data.class_names[c]) if run.data.class_names else str(c)
    teacher, teacher_spec = _teacher_and_spec(run)
    frozen = FrozenTeacher(teacher)
    model, spec = run.build_model(student, STUDENT_SEED)
    full = train_stages(run, model, spec, frozen, run.data, teacher_model=teacher, teacher_spec=teacher_spec,
                        tag="distilled_full")
    transfer = without_class(run.data, c)
    run.say(f"transfer set without class {c} ({name}): {len(transfer.train)} of {len(run.data.train)} examples")
    model, spec = run.build_model(student, STUDENT_SEED)
    missing, spec = train_stages_with_spec(run, model, spec, frozen, transfer, teacher_model=teacher,
                                           teacher_spec=teacher_spec, tag="distilled_without")
    # the one number that uses labels of the missing class: chosen on validation, never on test
    bias = best_bias(predict_logits(missing, run.data.val.x), run.data.val.y, c, lo.max_bias)
    corrected = with_bias(missing, c, bias)
    if distributed.is_main():
        (run.dir / "distilled_corrected").mkdir(exist_ok=True)
        save_checkpoint(run.dir / "distilled_corrected" / "best.pt",
                        {"model": corrected.state_dict(), "model_spec": spec, "data": run.data_record(),
                         "bias_correction": {"class": c, "bias": bias}})
    run.say(f"bias of class {c} ({name}) raised by {bias:.2f} (chosen on the validation split)")
    models = {"teacher": teacher, "distilled_full": full, "distilled_without": missing,
              "distilled_corrected": corrected}
    class_errors = {tag: _class_errors(m, run.data.test, c) for tag, m in models.items()}

    def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"class": c, "class_name": name, "bias": bias,
                "errors": {tag: r["test_errors"] for tag, r in rows.items()},
                "class_errors": {tag: e for tag, (e, _) in class_errors.items()},
                "class_test_examples": class_errors["teacher"][1],
                "paper_mnist": {"without_3": {"errors": 206, "errors_on_3": 133},
                                "bias_3.5": {"errors": 109, "errors_on_3": 14}, "threes_in_test": 1010}}

    return run.finish(models, teacher, extra={"left_out": lo.model_dump(mode="json")}, summarize=summarize)
