"""PKT (Passalis & Tefas 2018): the loss against numpy, and the objective."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill import functional as DF
from distill.functional import pkt_loss
from distill.objectives import PKT

from ._objectives import PAIRS, allclose, batch, step
from ._reference import close, make, to_np


def np_pkt(es, et, eps=1e-7):
    def conditional(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        B = len(e)
        K = np.array([[(1 + e[i] @ e[j]) / 2 for j in range(B)] for i in range(B)])
        return K / K.sum(axis=1, keepdims=True)

    ps, pt = conditional(es), conditional(et)
    B = len(es)
    total = sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(B) for j in range(B))
    return total / B**2


def test_pkt_matches_numpy():
    es, et = make((6, 5), 0), make((6, 3), 1)
    close(pkt_loss(es, et), np_pkt(to_np(es), to_np(et)))
    assert pkt_loss(es, et).item() > 0


@pytest.mark.parametrize("pair", list(PAIRS))
def test_pkt_compares_the_batch_relations_of_the_tapped_features(pair):
    teacher, student = PAIRS[pair]()
    x, y = batch()
    pkt = PKT()
    terms, out = step(pkt, student, teacher, x, y)
    assert allclose(terms["pkt"], DF.pkt_loss(out.features["s0"], out.teacher.features["t0"]))
    assert pkt.weights["pkt"] == 30000.0
