"""Small builders shared by the engine's probe tests (test_layout, test_teacher_forward): a short SGD training
config and a seeded CNN."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.config import OptimizerConfig, TrainConfig
from distill.models import create_model


def cfg(**kw: Any) -> TrainConfig:
    """One epoch of batches of 64, SGD at lr 0.01, no progress lines; ``kw`` overrides."""
    base: dict[str, Any] = dict(epochs=1, batch_size=64, optimizer=OptimizerConfig(name="sgd", lr=0.01),
                                log_every=1000)
    return TrainConfig(**{**base, **kw})


def cnn(data: Any, seed: int, channels: tuple[int, ...] = (8, 16)) -> nn.Module:
    """The zoo's ``cnn`` for ``data`` (10 classes), initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model("cnn", 10, data.in_shape, channels=channels, hidden=16)
