"""SimKD (Chen et al. 2022): the loss against numpy, the wrapped student and objective, and a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.functional import simkd_loss
from distill.objectives import SimKD, SimKDStudent
from distill.taps import run_with_taps

from ._objectives import (
    _student,
    _train,
    allclose,
    batch,
    cnn_teacher_mlp_student,
    step,
    wide_cnn_teacher_resnet_student,
)
from ._reference import close, make, to_np


def test_simkd_loss_matches_numpy():
    fs, ft = make((3, 4, 2, 2), 0), make((3, 4, 2, 2), 1)
    close(simkd_loss(fs, ft), np.mean((to_np(fs) - to_np(ft)) ** 2))


def test_simkd_predicts_with_the_teachers_classifier_on_the_projected_feature():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    wrapped = SimKDStudent(student, teacher, x[:2])
    # the teacher's last stage, averaged over space, is its classifier's input: match the maps there
    assert wrapped.teacher_layer == "stages.2" and wrapped.student_layer == "layer3"
    simkd = SimKD()
    terms, out = step(simkd, wrapped, teacher, x, y)
    assert set(terms) == {"simkd"}  # no CE, as the reference
    projected = wrapped.projector(run_with_taps(student, x, ["layer3"])[1]["layer3"])
    assert allclose(out.logits, F.linear(projected.mean(dim=(2, 3)), teacher.classifier.weight, teacher.classifier.bias))
    assert allclose(terms["simkd"], F.mse_loss(projected, out.teacher.features["t0"]))
    assert not any(p.requires_grad for p in wrapped.classifier.parameters())

    teacher, student = cnn_teacher_mlp_student()  # the CNN's hidden layer sits between its stages and classifier
    wrapped = SimKDStudent(student, teacher, x[:2])
    assert wrapped.teacher_layer == "classifier:input" and wrapped.target_shape == (32,)
    with pytest.raises(ValueError, match="global average pool of the teacher's 'stages.1' is not the input"):
        SimKDStudent(student, teacher, x[:2], teacher_layer="stages.1")
    with pytest.raises(ValueError, match="SimKD trains a SimKDStudent.*Wrap it first"):
        step(SimKD(), student, teacher, x, y)


def test_simkd_student_learns_the_teachers_features(digits_splits, digits_teacher):
    """SimKD has no CE: the student only learns to project its features onto the teacher's, and the
    teacher's classifier reads them. The reference trains 240 epochs; here the feature term falls, and
    the wrapped student, deployed as it is, predicts exactly as the teacher's classifier, unchanged by
    the training, reading the trained projection of the student's feature."""
    student = SimKDStudent(_student(digits_splits), digits_teacher, digits_splits.train.x[:2])
    accuracy, history = _train(SimKD(), digits_splits, digits_teacher, model=student)
    assert history[-1]["train/simkd"] < 0.8 * history[0]["train/simkd"]
    classifier = digits_teacher.classifier
    assert torch.equal(student.classifier.weight, classifier.weight)
    assert torch.equal(student.classifier.bias, classifier.bias)
    x, y = digits_splits.test.x, digits_splits.test.y
    with torch.no_grad():
        feature = run_with_taps(student.student, x, [student.student_layer])[1][student.student_layer]
        logits = F.linear(student.projector(feature).mean(dim=(2, 3)), classifier.weight, classifier.bias)
    assert accuracy == pytest.approx((logits.argmax(1) == y).sum().item() / len(y), abs=1e-9)
