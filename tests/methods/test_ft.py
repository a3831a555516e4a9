"""Factor transfer (Kim et al. 2018): the loss against numpy, both stages' objectives, and a
two-stage run on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import factor_transfer_loss
from distill.objectives import FactorTransfer, FactorTransferParaphraser

from ._objectives import _fit, _student, _train, allclose, batch, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, np_unit, to_np


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_factor_transfer_matches_numpy(p):
    fs, ft = make((3, 2, 4, 4), 0), make((3, 2, 4, 4), 1, 3.0)
    B = 3
    diff = [np_unit(a.ravel()) - np_unit(b.ravel()) for a, b in zip(to_np(fs), to_np(ft))]
    ref = sum(np.sum(np.abs(d) ** p) for d in diff) / (B * diff[0].size)
    close(factor_transfer_loss(fs, ft, p), ref)
    # scale of either factor is irrelevant
    assert factor_transfer_loss(4.0 * fs, ft, p).item() == pytest.approx(ref, rel=1e-5)


def test_factor_transfer_trains_a_paraphraser_first_then_a_translator():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    first = FactorTransferParaphraser()
    terms, out = step(first, student, teacher, x, y)
    f_t = out.teacher.features["t0"]
    assert first.teacher_layer == "stages.2" and not first.student_features  # the student is not used
    assert allclose(terms["reconstruction"], F.mse_loss(first.paraphraser(f_t), f_t))
    assert first.paraphraser.factor_shape == (32, 2, 2)  # rate 0.5 of the teacher's 64 channels

    ft = FactorTransfer(first)
    terms, out = step(ft, student, teacher, x, y)
    assert ft.pairs == [("layer3", "stages.2")] and ft.weights["ft"] == 200.0
    assert not any(p.requires_grad for p in first.paraphraser.parameters())  # frozen in the second stage
    factor_t = first.paraphraser.encode(out.teacher.features["t0"])
    factor_s = ft.translator(out.features["s0"])
    assert allclose(terms["ft"], DF.factor_transfer_loss(factor_s, factor_t, 1.0))

    with pytest.raises(ValueError, match="needs a trained paraphraser.*FactorTransferParaphraser"):
        step(FactorTransfer(), student, teacher, x, y)


@pytest.mark.slow
def test_factor_transfer_in_two_stages(digits_splits, digits_teacher):
    """Stage 1 trains the paraphraser alone (its reconstruction error falls; the student is
    untouched), stage 2 the student with CE and the factor term, whose gradient reaches the student (paired
    with the same run with the term weighted 0)."""
    paraphraser = FactorTransferParaphraser()
    student = _student(digits_splits)
    before = [p.clone() for p in student.parameters()]
    _, history = _train(paraphraser, digits_splits, digits_teacher, model=student, epochs=2, selection="last")
    assert history[-1]["train/reconstruction"] < history[0]["train/reconstruction"]
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    result = _fit(FactorTransfer(paraphraser), digits_splits, digits_teacher)
    assert result.history[-1]["train/ft"] < result.history[0]["train/ft"]
    without = FactorTransfer(paraphraser)
    without.weights["ft"] = 0.0
    untouched = _fit(without, digits_splits, digits_teacher).model
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(result.model.parameters(), untouched.parameters()))
    assert moved > 1e-4
