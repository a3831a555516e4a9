"""FSP (Yim et al. 2017): the flow matrices and loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from distill import functional as DF
from distill.functional import fsp_loss, fsp_matrix
from distill.objectives import FSP

from ._objectives import allclose, batch, cnn_teacher_mlp_student, step, wide_cnn_teacher_resnet_student
from ._reference import block_pool, close, make, to_np


def np_fsp_matrix(a, b):
    B, C1, H, W = a.shape
    C2 = b.shape[1]
    G = np.zeros((B, C1, C2))
    for n in range(B):
        for i in range(C1):
            for j in range(C2):
                G[n, i, j] = np.sum(a[n, i] * b[n, j]) / (H * W)
    return G


def test_fsp_matches_numpy():
    a_s, b_s = make((2, 3, 4, 4), 0), make((2, 5, 4, 4), 1)
    a_t, b_t = make((2, 3, 8, 8), 2), make((2, 5, 4, 4), 3)  # the teacher's first map is pooled 8 -> 4
    np.testing.assert_allclose(to_np(fsp_matrix(a_s, b_s)), np_fsp_matrix(to_np(a_s), to_np(b_s)), rtol=1e-5)
    G_t = np_fsp_matrix(block_pool(to_np(a_t), 4), to_np(b_t))
    np.testing.assert_allclose(to_np(fsp_matrix(a_t, b_t)), G_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(to_np(fsp_matrix(b_t, a_t)), G_t.transpose(0, 2, 1), rtol=1e-5, atol=1e-7)
    G_s = np_fsp_matrix(to_np(a_s), to_np(b_s))
    G_s2 = np_fsp_matrix(to_np(b_s), to_np(a_s))
    G_t2 = np_fsp_matrix(to_np(b_t), block_pool(to_np(a_t), 4))
    ref = ((G_s - G_t) ** 2).mean() + ((G_s2 - G_t2) ** 2).mean()
    close(fsp_loss([(a_s, b_s), (b_s, a_s)], [(a_t, b_t), (b_t, a_t)]), ref)


def test_fsp_compares_the_flow_matrices_between_consecutive_layers():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fsp = FSP()
    terms, out = step(fsp, student, teacher, x, y)
    # the input of the first stage, then the stages: RepDistiller's (f0, f1), (f1, f2), (f2, f3)
    assert fsp.pairs == [("layer1:input", "stages.0:input"), ("layer1", "stages.0"), ("layer2", "stages.1"),
                         ("layer3", "stages.2")]
    mapped = [fsp.connectors[i](out.features[f"s{i}"]) for i in range(4)]
    assert isinstance(fsp.connectors[3], nn.Identity)  # equal shapes: nothing to learn, as the paper
    teacher_maps = [out.teacher.features[f"t{i}"] for i in range(4)]
    expected = sum(((DF.fsp_matrix(mapped[k], mapped[k + 1])
                     - DF.fsp_matrix(teacher_maps[k], teacher_maps[k + 1])) ** 2).mean() for k in range(3))
    assert allclose(terms["fsp"], expected)

    teacher, student = cnn_teacher_mlp_student()  # an MLP's first stage is a bare ReLU: no input point
    fsp = FSP()
    step(fsp, student, teacher, x, y)
    assert fsp.pairs == [("hidden.relu1", "stages.0"), ("hidden.relu2", "stages.1")]
    with pytest.raises(ValueError, match="FSP compares the flow between consecutive layers and needs at least two"):
        step(FSP(student_layers=["hidden.relu2"]), student, teacher, x, y)
