"""NST (Huang & Wang 2017): the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np

from distill import functional as DF
from distill.functional import nst_loss
from distill.objectives import NST

from ._objectives import allclose, batch, pool, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, np_unit, to_np


def np_nst(fs, ft):
    B = fs.shape[0]
    S = np.stack([[np_unit(ch.ravel()) for ch in sample] for sample in fs])  # (B, Cs, HW)
    T = np.stack([[np_unit(ch.ravel()) for ch in sample] for sample in ft])

    def kernel_mean(X, Y):
        pairs = [(b, i, j) for b in range(B) for i in range(X.shape[1]) for j in range(Y.shape[1])]
        return np.mean([(X[b, i] @ Y[b, j]) ** 2 for b, i, j in pairs])

    return kernel_mean(T, T) + kernel_mean(S, S) - 2 * kernel_mean(S, T)


def test_nst_matches_numpy():
    fs, ft = make((3, 4, 3, 5), 0), make((3, 6, 3, 5), 1)
    close(nst_loss(fs, ft), np_nst(to_np(fs), to_np(ft)), rel=1e-4, abs=1e-6)
    assert nst_loss(fs, ft).item() > 0


def test_nst_sums_over_every_pair_of_stages_pooled_to_the_smaller_map():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    objective, loss = NST(), DF.nst_loss
    terms, out = step(objective, student, teacher, x, y)
    assert objective.pairs == [("layer1", "stages.0"), ("layer2", "stages.1"), ("layer3", "stages.2")]
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        expected = expected + loss(pool(f_s, size), pool(f_t, size))
    name = objective.term_names[0]
    assert allclose(terms[name], expected)
    assert NST().weights["nst"] == 50.0
