"""VID (Ahn et al. 2019): the loss against numpy, the objective, and its variance trained by fit."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import TrainConfig
from distill.engine import fit
from distill.functional import vid_loss
from distill.models import create_model
from distill.objectives import VID
from distill.teachers import FrozenTeacher

from ._objectives import DIGITS, allclose, batch, pool, step, wide_cnn_teacher_resnet_student
from ._reference import close, make, to_np


def test_vid_matches_numpy():
    mu, ft = make((2, 3, 4, 4), 0), make((2, 3, 4, 4), 1)
    alpha = torch.tensor([-1.0, 0.5, 3.0])
    eps = 1e-5
    m, t, a = to_np(mu), to_np(ft), to_np(alpha)
    terms = []
    for idx in np.ndindex(m.shape):
        var = math.log(1 + math.exp(a[idx[1]])) + eps
        terms.append(0.5 * ((t[idx] - m[idx]) ** 2 / var + math.log(var)))
    close(vid_loss(mu, ft, alpha), np.mean(terms))
    # embeddings (B, D) with one variance per dim
    e_mu, e_t = make((4, 3), 2), make((4, 3), 3)
    var = np.log1p(np.exp(a)) + eps
    ref = np.mean(0.5 * ((to_np(e_t) - to_np(e_mu)) ** 2 / var + np.log(var)))
    close(vid_loss(e_mu, e_t, alpha), ref)


def test_vid_initial_variance_convention():
    # the objective initializes alpha = log(exp(5 - eps) - 1) so that the variance is 5
    eps = 1e-5
    alpha = torch.full((2,), math.log(math.exp(5.0 - eps) - 1.0))
    f = make((3, 2), 4)
    close(vid_loss(f, f, alpha), 0.5 * math.log(5.0), rel=1e-6)


def test_vid_owns_regressors_and_a_per_channel_variance_parameter():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    vid = VID()
    terms, out = step(vid, student, teacher, x, y)
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        mu, target = vid.regressors[i](pool(f_s, size)), pool(f_t, size)
        variance = F.softplus(vid.raw_variances[i]) + 1e-5
        assert torch.allclose(variance, torch.full_like(variance, 5.0))  # initialized to sigma^2 = 5
        nll = 0.5 * ((target - mu) ** 2 / variance.view(1, -1, 1, 1) + variance.log().view(1, -1, 1, 1))
        expected = expected + nll.mean()
    assert allclose(terms["vid"], expected)


def test_vid_variance_reaches_the_optimizer_and_gets_gradients(digits_splits):
    """RepDistiller's VID keeps its variance in a criterion the optimizer may never see; here it is
    a parameter of the objective, so ``fit`` optimizes it."""
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    vid = VID(ce_weight=0.0)
    terms, _ = step(vid, student, teacher, x, y)
    owned = {id(p) for p in vid.parameters()}
    assert all(id(p) in owned for p in vid.raw_variances)
    vid.total(terms).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vid.raw_variances)

    torch.manual_seed(0)
    teacher = create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=0)
    student = create_model("cnn", 10, DIGITS, channels=(8, 16), hidden=0)
    vid = VID()
    fit(student, vid, digits_splits, TrainConfig(epochs=1, batch_size=128), teacher=FrozenTeacher(teacher),
        progress=None)
    assert not torch.allclose(F.softplus(vid.raw_variances[0]) + 1e-5, torch.tensor(5.0))
