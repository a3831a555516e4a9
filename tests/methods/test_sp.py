"""Similarity-preserving KD (Tung & Mori 2019): the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest

from distill import functional as DF
from distill.functional import similarity_preserving_loss
from distill.objectives import SimilarityPreserving

from ._objectives import PAIRS, allclose, batch, step
from ._reference import close, make, np_unit, to_np


def np_similarity_preserving(fs, ft):
    B = fs.shape[0]
    Fs, Ft = fs.reshape(B, -1), ft.reshape(B, -1)
    Gs = np.stack([np_unit(Fs @ Fs[i]) for i in range(B)])
    Gt = np.stack([np_unit(Ft @ Ft[i]) for i in range(B)])
    return ((Gs - Gt) ** 2).sum() / B**2


def test_similarity_preserving_matches_numpy():
    fs, ft = make((5, 3, 4, 4), 0), make((5, 8, 2, 2), 1)
    close(similarity_preserving_loss(fs, ft), np_similarity_preserving(to_np(fs), to_np(ft)))
    es, et = make((6, 10), 2), make((6, 4), 3)
    close(similarity_preserving_loss(es, et), np_similarity_preserving(to_np(es), to_np(et)))


@pytest.mark.parametrize("pair", list(PAIRS))
def test_sp_compares_the_batch_relations_of_the_tapped_features(pair):
    teacher, student = PAIRS[pair]()
    x, y = batch()
    sp = SimilarityPreserving()
    terms, out = step(sp, student, teacher, x, y)
    assert sp.pairs[0][1] == teacher.feature_stages[-1]  # RepDistiller's feat[-2]: the last stage
    assert allclose(terms["sp"], DF.similarity_preserving_loss(out.features["s0"], out.teacher.features["t0"]))
