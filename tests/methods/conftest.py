"""Fixtures of the method tests."""

import pytest
import torch

from distill.config import TrainConfig
from distill.engine import evaluate, fit
from distill.models import create_model
from distill.objectives import CrossEntropy


# A 16/32-channel CNN learns from a 32/64-channel CNN teacher. The methods are checked by their wiring
# (paired seeds: the same run with the method's term weighted 0), not by an accuracy margin over a
# baseline: the baseline alone moves by 2 points across seeds, so such a margin passes on a broken term.


@pytest.fixture(scope="session")
def digits_teacher(digits_splits):
    torch.manual_seed(0)
    teacher = create_model("cnn", 10, digits_splits.in_shape, channels=(32, 64), hidden=0)
    fit(teacher, CrossEntropy(), digits_splits, TrainConfig(epochs=6, batch_size=64), progress=None)
    assert evaluate(teacher, digits_splits.test).accuracy > 0.96
    return teacher
