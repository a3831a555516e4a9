"""Attention transfer (Zagoruyko & Komodakis 2017): the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest

from distill import functional as DF
from distill.functional import attention_transfer_loss
from distill.objectives import AttentionTransfer

from ._objectives import allclose, batch, cnn_teacher_mlp_student, pool, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, np_unit, to_np


def np_attention_transfer(fs, ft, p):
    B, total = fs.shape[0], 0.0
    for b in range(B):
        qs = np_unit((np.abs(fs[b]) ** p).mean(axis=0).ravel())
        qt = np_unit((np.abs(ft[b]) ** p).mean(axis=0).ravel())
        total += ((qs - qt) ** 2).sum()
    return total / (B * qs.size)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_attention_transfer_matches_numpy(p):
    fs, ft = make((3, 4, 5, 6), 0), make((3, 7, 5, 6), 1)  # channel counts may differ
    close(attention_transfer_loss(fs, ft, p), np_attention_transfer(to_np(fs), to_np(ft), p))


def test_attention_transfer_sums_over_every_pair_of_stages_pooled_to_the_smaller_map():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    objective, loss = AttentionTransfer(p=2.0), DF.attention_transfer_loss
    terms, out = step(objective, student, teacher, x, y)
    assert objective.pairs == [("layer1", "stages.0"), ("layer2", "stages.1"), ("layer3", "stages.2")]
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        expected = expected + loss(pool(f_s, size), pool(f_t, size))
    name = objective.term_names[0]
    assert allclose(terms[name], expected)
    assert AttentionTransfer().weights["at"] == 1000.0


def test_attention_transfer_maps_an_mlp_students_vector_to_the_teachers_map_shape():
    teacher, student = cnn_teacher_mlp_student()
    x, y = batch()
    at = AttentionTransfer(student_layers=["hidden.relu2"])
    terms, out = step(at, student, teacher, x, y)
    assert at.pairs == [("hidden.relu2", "stages.1")]  # one student layer: paired with the teacher's deepest
    mapped = at.connectors[0](out.features["s0"])
    assert mapped.shape[1:] == (32, 2, 2)
    assert allclose(terms["at"], DF.attention_transfer_loss(mapped, out.teacher.features["t0"]))
    teacher_vector = AttentionTransfer(teacher_layers=["classifier:input"])
    with pytest.raises(ValueError, match=r"AT compares spatial maps.*'classifier:input'.*\(32,\)"):
        step(teacher_vector, student, teacher, x, y)
