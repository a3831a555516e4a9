"""Collapsed predictions are reported, not hidden by model selection (issue 11, item 17)."""

import json
import warnings

import pytest
import torch
from torch import nn

from distill.config import OptimizerConfig, TrainConfig
from distill.data.tensors import DataSplits, TensorData
from distill.diagnostics import (
    GENERIC_ADVICE,
    PredictionCollapseWarning,
    advice_for,
    collapse_warnings,
    training_collapse_warnings,
)
from distill.engine import fit
from distill.objectives import CrossEntropy, DecoupledKD

t = torch.tensor


def test_one_class_taking_most_predictions_is_a_collapse():
    labels = t([0, 1, 2, 3] * 5)  # balanced: each class 25%
    predictions = t([2] * 11 + [0, 1, 3] * 3)  # class 2 takes 11 of 20, accuracy 4/20 (chance 25%)
    assert collapse_warnings(predictions, labels, 4, advice="do X") == [
        "validation predictions collapsed: class 2 takes 55.0% of the 20 predictions (its share of the labels "
        "is 25.0%); do X",
        "validation accuracy 20.0% is at chance (always predicting the most frequent class scores 25.0%); do X",
    ]


def test_a_good_model_gives_no_warning_and_a_frequent_class_is_not_a_collapse():
    labels = t([0, 1, 2, 3] * 5)
    assert collapse_warnings(labels, labels, 4) == []
    # class 0 is 70% of the labels: predicting it 90% of the time (within 25 points of its share) at 80%
    # accuracy is no collapse; predicting it always (100% >= 70% + 25%) is, and scores chance
    skewed = t([0] * 14 + [1, 2, 3] * 2)
    assert collapse_warnings(t([0] * 18 + [2, 3]), skewed, 4, split="test") == []
    assert collapse_warnings(t([0] * 20), skewed, 4, split="test") == [
        "test predictions collapsed: class 0 takes 100.0% of the 20 predictions (its share of the labels is 70.0%); "
        + GENERIC_ADVICE,
        "test accuracy 70.0% is at chance (always predicting the most frequent class scores 70.0%); "
        + GENERIC_ADVICE]


def test_the_thresholds_exactly():
    labels = t([0, 1, 2, 3] * 2)  # 8 examples, 12.5% steps
    half = t([0, 0, 0, 0, 1, 1, 2, 3])  # class 0 takes exactly 50%: not more than half
    assert not any("collapsed" in w for w in collapse_warnings(half, labels, 4))
    over = t([0, 0, 0, 0, 0, 1, 2, 3])  # 62.5% > 50% and >= 25% + 25%
    assert any("class 0 takes 62.5%" in w for w in collapse_warnings(over, labels, 4))
    # accuracy 30% with chance 25%: at the margin (<= chance + 5 points) is at chance; 35% is not
    y10 = t([0, 1, 2, 3] * 5)
    at_margin = y10.clone()
    at_margin[6:] = (y10[6:] + 1) % 4  # 6 of 20 right = 30%
    assert [w for w in collapse_warnings(at_margin, y10, 4) if "chance" in w]
    above = y10.clone()
    above[7:] = (y10[7:] + 1) % 4  # 7 of 20 = 35%
    assert collapse_warnings(above, y10, 4) == []


def test_nothing_to_judge_gives_no_warning_and_shapes_must_match():
    assert collapse_warnings(t([], dtype=torch.long), t([], dtype=torch.long), 10) == []
    assert collapse_warnings(t([0, 0]), t([0, 0]), 1) == []
    with pytest.raises(ValueError, match=r"predictions \(3,\) and labels \(2,\) must have the same shape"):
        collapse_warnings(t([0, 1, 2]), t([0, 1]), 3)


def test_class_names_and_advice():
    warning = collapse_warnings(t([1, 1, 1, 0]), t([0, 1, 2, 0]), 3, class_names=("cat", "dog", "owl"))[0]
    assert warning.startswith("validation predictions collapsed: class 1 (dog) takes 75.0%")
    assert "warmup_epochs" in advice_for(DecoupledKD()) and "nckd_weight" in advice_for(DecoupledKD())
    assert advice_for(object()) == GENERIC_ADVICE


def test_a_fall_to_chance_during_training_is_reported_even_when_selection_hides_it():
    # the shape of DKD's collapse on 5,000 Fashion-MNIST images: fine until the warm-up ends, then at chance
    val_acc = [0.779, 0.8, 0.811, 0.773, 0.121, 0.099, 0.099, 0.1, 0.229, 0.27]
    labels = torch.arange(100) % 10  # chance 10%: at chance means at most 15%
    assert training_collapse_warnings(val_acc, labels, best_epoch=3, advice="do X") == [
        "training collapsed: validation accuracy fell to chance (9.9%; always predicting the most frequent class "
        "scores 10.0%) in 4 of 10 epochs, first in epoch 5 after reaching 81.1%; the selected checkpoint is "
        "from epoch 3; do X"]


def test_a_slow_start_is_not_a_collapse():
    labels = torch.arange(100) % 10
    assert training_collapse_warnings([0.1, 0.12, 0.5, 0.9], labels, best_epoch=4) == []
    assert training_collapse_warnings([0.1, 0.12], labels, best_epoch=2) == []
    assert training_collapse_warnings([], labels, best_epoch=-1) == []
    assert training_collapse_warnings([0.2, 0.15], labels, best_epoch=1, advice="a") == [  # 15% is at chance
        "training collapsed: validation accuracy fell to chance (15.0%; always predicting the most frequent class "
        "scores 10.0%) in 1 of 2 epochs, first in epoch 2 after reaching 20.0%; the selected checkpoint is from "
        "epoch 1; a"]


class Constant(nn.Module):
    """A model that always predicts class 3 (its bias), whatever it is trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 0 + torch.tensor([0.0, 0.0, 0.0, 1e4, 0.0])


def constant_splits() -> DataSplits:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50) % 5
    d = TensorData(x, y)
    return DataSplits("five", d, d, d, 5, tuple("abcde"), torch.zeros(4), torch.ones(4))


def test_fit_reports_a_collapsed_model_on_validation():
    cfg = TrainConfig(epochs=1, batch_size=10, optimizer=OptimizerConfig(name="sgd", lr=1e-3))
    lines: list[str] = []
    result = fit(Constant(), CrossEntropy(), constant_splits(), cfg, progress=lines.append, tag="student")
    expected = [
        "validation predictions collapsed: class 3 (d) takes 100.0% of the 50 predictions (its share of the labels "
        f"is 20.0%); {CrossEntropy.collapse_advice}",
        "validation accuracy 20.0% is at chance (always predicting the most frequent class scores 20.0%); "
        f"{CrossEntropy.collapse_advice}",
    ]
    assert result.warnings == expected
    assert [line for line in lines if "WARNING" in line] == [f"[student] WARNING: {w}" for w in expected]
    with pytest.warns(PredictionCollapseWarning, match=r"\[student\] validation predictions collapsed"):
        fit(Constant(), CrossEntropy(), constant_splits(), cfg, progress=None, tag="student")


class LearnsThenBreaks(nn.Module):
    """Perfect on inputs that are one-hot labels until it has taken ``steps_ok`` training steps, then
    always class 0. The step count is a buffer, so best.pt (epoch 1) holds the healthy model."""

    def __init__(self, steps_ok: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.steps_ok = steps_ok

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        if self.steps > self.steps_ok:
            return torch.zeros_like(x) + torch.tensor([1e4, 0.0, 0.0, 0.0, 0.0]) + self.w
        return 10 * x + self.w


def test_fit_reports_a_collapse_that_the_selected_checkpoint_hides(tmp_path):
    y = torch.arange(50) % 5
    d = TensorData(torch.nn.functional.one_hot(y, 5).float(), y)
    splits = DataSplits("onehot", d, d, d, 5, tuple("abcde"), torch.zeros(5), torch.ones(5))
    cfg = TrainConfig(epochs=3, batch_size=10, optimizer=OptimizerConfig(name="sgd", lr=1e-3))
    result = fit(LearnsThenBreaks(steps_ok=5), CrossEntropy(), splits, cfg, out_dir=tmp_path, progress=None)
    assert result.best_epoch == 1 and [r["val/acc"] for r in result.history] == [1.0, 0.2, 0.2]
    assert result.warnings == [
        "training collapsed: validation accuracy fell to chance (20.0%; always predicting the most frequent class "
        "scores 20.0%) in 2 of 3 epochs, first in epoch 2 after reaching 100.0%; the selected checkpoint is from "
        f"epoch 1; {CrossEntropy.collapse_advice}"]


def test_a_healthy_fit_has_no_warnings(digits_splits):
    from distill.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", 10, digits_splits.in_shape, hidden=(32,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PredictionCollapseWarning)
        result = fit(model, CrossEntropy(), digits_splits, TrainConfig(epochs=3, batch_size=64), progress=None)
    assert result.warnings == []


def test_results_json_carries_the_warnings_per_model(tmp_path, monkeypatch, capsys):
    from distill.cli import main

    monkeypatch.setattr("distill.engine.evaluation.collapse_warnings",
                        lambda *a, **k: ["validation predictions collapsed: (forced)"])
    monkeypatch.setattr("distill.recipes.common.collapse_warnings",
                        lambda *a, split, **k: [f"{split} accuracy at chance (forced)"])
    config = tmp_path / "c.yaml"
    config.write_text("name: c\nrecipe: baseline\ndata: {name: digits}\ntrain: {epochs: 1}\n"
                      "student: {model: {name: mlp}}\n")
    assert main(["run", str(config), "--output-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "c" / "results.json").read_text())["models"]
    assert rows["baseline"]["warnings"] == ["validation predictions collapsed: (forced)",
                                            "test accuracy at chance (forced)"]
    err = capsys.readouterr().err
    assert "[baseline] WARNING: validation predictions collapsed: (forced)" in err
    assert "[baseline] WARNING: test accuracy at chance (forced)" in err
