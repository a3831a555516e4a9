"""RKD (Park et al. 2019): the distance and angle losses against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import rkd_angle_loss, rkd_distance_loss, rkd_loss
from distill.objectives import RKD

from ._objectives import PAIRS, allclose, batch, step
from ._reference import close, huber, make, np_unit, to_np


def np_rkd_distance_potential(e):
    B = len(e)
    d = np.zeros((B, B))
    for i in range(B):
        for j in range(B):
            if i != j:
                d[i, j] = np.linalg.norm(e[i] - e[j])
    return d / (d.sum() / (B * (B - 1)))


def np_rkd_angle_potential(e):
    B = len(e)
    a = np.zeros((B, B, B))
    for i in range(B):
        for j in range(B):
            for k in range(B):
                if j != i and k != i:
                    a[i, j, k] = np_unit(e[j] - e[i]) @ np_unit(e[k] - e[i])
    return a


def test_rkd_matches_numpy():
    es, et = make((5, 4), 0, 2.0), make((5, 7), 1, 0.5)
    ref_d = huber(np_rkd_distance_potential(to_np(es)) - np_rkd_distance_potential(to_np(et))).mean()
    ref_a = huber(np_rkd_angle_potential(to_np(es)) - np_rkd_angle_potential(to_np(et))).mean()
    close(rkd_distance_loss(es, et), ref_d)
    close(rkd_angle_loss(es, et), ref_a)
    close(rkd_loss(es, et), 25 * ref_d + 50 * ref_a)
    close(rkd_loss(es, et, distance_weight=1.0, angle_weight=0.0), ref_d)


def test_rkd_invariant_to_similarity_transforms_of_the_teacher():
    # distances are normalized by their mean and angles ignore scale, rotation and translation
    es, et = make((6, 3), 2), make((6, 3), 3)
    q, _ = torch.linalg.qr(make((3, 3), 4))
    moved = 5.0 * et @ q + 2.0
    assert rkd_loss(es, moved).item() == pytest.approx(rkd_loss(es, et).item(), rel=1e-4)
    assert rkd_loss(2.0 * et @ q - 1.0, et).item() < 1e-6


@pytest.mark.parametrize("pair", list(PAIRS))
def test_rkd_compares_the_batch_relations_of_the_tapped_features(pair):
    teacher, student = PAIRS[pair]()
    x, y = batch()
    rkd = RKD()
    terms, out = step(rkd, student, teacher, x, y)
    e_s, e_t = out.features["s0"], out.teacher.features["t0"]
    assert rkd.pairs == [("classifier:input", "classifier:input")]
    assert allclose(rkd.total(terms), F.cross_entropy(out.logits, y) + DF.rkd_loss(e_s, e_t, 25.0, 50.0))
