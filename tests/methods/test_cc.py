"""Correlation congruence (Peng et al. 2019): the loss against numpy, and the objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from distill import functional as DF
from distill.functional import correlation_congruence_loss
from distill.objectives import CorrelationCongruence

from ._objectives import PAIRS, allclose, batch, step
from ._reference import close, make, np_unit, to_np


def np_cc(es, et, gamma, order):
    def kernel(e):
        e = np.stack([np_unit(row) for row in e])
        B = len(e)
        K = np.zeros((B, B))
        for i in range(B):
            for j in range(B):
                x = e[i] @ e[j]
                K[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * x**p for p in range(order + 1)
                )
        return K

    return ((kernel(es) - kernel(et)) ** 2).mean()


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 0), (0.7, 3)])
def test_correlation_congruence_matches_numpy(gamma, order):
    es, et = make((6, 5), 0), make((6, 9), 1)
    close(correlation_congruence_loss(es, et, gamma, order), np_cc(to_np(es), to_np(et), gamma, order))


def test_correlation_congruence_tends_to_the_gaussian_rbf_kernel():
    # For unit vectors the order-P Taylor series converges to exp(-gamma ||x - y||^2).
    gamma = 0.8
    es, et = make((5, 4), 2), make((5, 6), 3)

    def rbf(e):
        e = np.stack([np_unit(row) for row in e])
        return np.array([[math.exp(-gamma * np.sum((a - b) ** 2)) for b in e] for a in e])

    ref = ((rbf(to_np(es)) - rbf(to_np(et))) ** 2).mean()
    close(correlation_congruence_loss(es.double(), et.double(), gamma, order=30), ref, rel=1e-9)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_cc_compares_the_batch_relations_of_the_tapped_features(pair):
    teacher, student = PAIRS[pair]()
    x, y = batch()
    cc = CorrelationCongruence()
    terms, out = step(cc, student, teacher, x, y)
    e_s, e_t = out.features["s0"], out.teacher.features["t0"]
    if e_s.shape[1] == e_t.shape[1]:
        assert isinstance(cc.connectors[0], nn.Identity)
    else:  # the MLP's 24 dims to the teacher's 32 by a learned linear embedding
        assert isinstance(cc.connectors[0], nn.Linear) and cc.connectors[0].out_features == e_t.shape[1]
    assert allclose(terms["cc"], DF.correlation_congruence_loss(cc.connectors[0](e_s), e_t, 0.4, 2))
