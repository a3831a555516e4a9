"""Activation boundaries (Heo et al. 2019): the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import torch

from distill import functional as DF
from distill.functional import ab_loss
from distill.objectives import ActivationBoundaries

from ._objectives import allclose, batch, pool, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, to_np


def test_ab_matches_numpy():
    fs, ft = make((3, 2, 3, 3), 0, 1.5), make((3, 2, 3, 3), 1)
    m = 1.0
    total = 0.0
    for idx in np.ndindex(fs.shape):
        s, t = to_np(fs)[idx], to_np(ft)[idx]
        if t > 0 and s <= m:
            total += (s - m) ** 2
        elif t <= 0 and s > -m:
            total += (s + m) ** 2
    close(ab_loss(fs, ft, m), total / 3)
    # a student beyond the margin on the teacher's side of every boundary has zero loss
    beyond = torch.where(ft > 0, ft.abs() + 1.5, -ft.abs() - 1.5)
    assert ab_loss(beyond, ft).item() == 0.0


def test_activation_boundaries_taps_pre_activations_through_connectors():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    ab = ActivationBoundaries()
    terms, out = step(ab, student, teacher, x, y)
    # a ResNet stage ends in its last block's ReLU: tap that ReLU's input; the CNN's first stages end
    # in a max-pool (tapped as they are), its last (a 2x2 map, not pooled) in its ReLU
    assert ab.pairs == [("layer1.0.relu2:input", "stages.0"), ("layer2.0.relu2:input", "stages.1"),
                        ("layer3.0.relu2:input", "stages.2.relu:input")]
    assert float(out.features["s0"].detach().min()) < 0  # a pre-activation
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        expected = expected + 2.0 ** (i - 2) * 3 / 1000 * DF.ab_loss(ab.connectors[i](pool(f_s, size)),
                                                                     pool(f_t, size), 1.0)
    assert allclose(terms["ab"], expected)
