"""Issue 14 item 2: ``distill tune``, a search over method, temperature, alpha, learning rate, augmentation and
schedule length on the validation split, with Optuna (the tests of the study skip without it)."""

from __future__ import annotations

from typing import Any

import pytest

from distill.config import load_config
from distill.engine import Callback
from distill.recipes import run_recipe

TINY = ["data.name=digits", "data.val_size=0.2", "train.epochs=2", "train.batch_size=128", "report.latency=false",
        "teacher.model={name: mlp, hidden: [32]}", "student.model={name: mlp, hidden: [16]}"]


class Epochs(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.seen.append((epoch, record["val/acc"]))


def test_a_recipe_hands_its_callbacks_to_every_fit(tmp_path):
    cfg = load_config(None, [*TINY, "recipe=baseline"], settings={"output_dir": str(tmp_path)})
    listener = Epochs()
    results = run_recipe(cfg, run_dir=tmp_path / "run", progress=False, callbacks=[listener])
    assert [e for e, _ in listener.seen] == [0, 1]
    assert "baseline" in results["models"]
