"""FitNets (Romero et al. 2015): the hint loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from distill.functional import fitnet_loss
from distill.objectives import FitNets

from ._objectives import allclose, batch, pool, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, to_np


def test_fitnet_loss_matches_numpy():
    fs, ft = make((3, 4, 2, 2), 0), make((3, 4, 2, 2), 1)
    close(fitnet_loss(fs, ft), np.mean((to_np(fs) - to_np(ft)) ** 2))


def test_fitnets_hints_the_middle_stages_through_a_learned_regressor():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fitnets = FitNets()
    terms, out = step(fitnets, student, teacher, x, y)
    assert fitnets.pairs == [("layer2", "stages.1")]  # RepDistiller's hint_layer=2: the second stage
    assert fitnets.weights == {"ce": 1.0, "kd": 0.0, "hint": 100.0}
    regressor = fitnets.connectors[0]  # student (32, 4, 4) pooled to (2, 2), 3x3 conv + BN to 48 channels
    f_s, f_t = out.features["s0"], out.teacher.features["t0"]
    assert allclose(terms["hint"], F.mse_loss(regressor(pool(f_s, (2, 2))), f_t))
    assert allclose(terms["ce"], F.cross_entropy(out.logits, y))

    hint_only = FitNets(hint_only=True)  # the paper's first stage: the hint alone
    terms, _ = step(hint_only, student, teacher, x, y)
    assert set(terms) == {"hint"} and hint_only.weights["hint"] == 1.0
