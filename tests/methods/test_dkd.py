"""DKD (Zhao et al. 2022): the loss against numpy, and the objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import dkd_loss, dkd_terms, kd_loss
from distill.objectives import DecoupledKD
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, make_labels, np_kl, np_softmax, to_np


def np_dkd_terms(s, t, y, T):
    C = s.shape[-1]
    s, t, y = s.reshape(-1, C), t.reshape(-1, C), y.reshape(-1)
    tckd, nckd = [], []
    for zs, zt, label in zip(s, t, y):
        ps, pt = np_softmax(zs / T), np_softmax(zt / T)
        tckd.append(np_kl([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]]))
        others = [c for c in range(C) if c != label]
        nckd.append(np_kl(pt[others] / pt[others].sum(), ps[others] / ps[others].sum()))
    return T**2 * np.mean(tckd), T**2 * np.mean(nckd)


@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 6)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_numpy(shape, T):
    s, t = make(shape, 0, 2.0), make(shape, 1, 2.0)
    y = make_labels(shape[:-1], shape[-1])
    tckd, nckd = dkd_terms(s, t, y, T)
    ref_t, ref_n = np_dkd_terms(to_np(s), to_np(t), y.numpy(), T)
    close(tckd, ref_t)
    close(nckd, ref_n)
    close(dkd_loss(s, t, y, alpha=1.5, beta=3.0, temperature=T), 1.5 * ref_t + 3.0 * ref_n)
    assert dkd_loss(s, t, y).item() == pytest.approx(dkd_loss(s, t, y, 1.0, 8.0, 4.0).item(), rel=1e-7)


def test_dkd_decomposes_hintons_loss():
    # Zhao et al. Eq. 2: T^2 KL = TCKD + (1 - p_t,y) NCKD, per sample.
    T = 3.0
    s, t = make((6, 7), 2, 2.0), make((6, 7), 3, 2.0)
    y = make_labels((6,), 7)
    for i in range(6):
        tckd, nckd = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], T)
        p_target = torch.softmax(t[i] / T, -1)[y[i]].item()
        close(kd_loss(s[i : i + 1], t[i : i + 1], T), (tckd + (1 - p_target) * nckd).item())


def test_dkd_one_hot_teacher():
    # Teacher certain of the label and indifferent among the others: b_t = [1, 0] and the
    # non-target distribution is uniform, so (hand-derived)
    #   TCKD = -T^2 log p_s,y   and   NCKD = T^2 (-log(C - 1) - mean_{c != y} log p^_s,c).
    T, C = 4.0, 5
    s = make((4, C), 4, 2.0)
    y = torch.tensor([0, 3, 4, 1])
    t = torch.zeros(4, C)
    t[torch.arange(4), y] = 1e4
    tckd, nckd = dkd_terms(s, t, y, T)
    ref_t, ref_n = [], []
    for zs, label in zip(to_np(s), y.tolist()):
        p = np_softmax(zs / T)
        others = np.delete(p, label)
        ref_t.append(-math.log(p[label]))
        ref_n.append(-math.log(C - 1) - np.log(others / others.sum()).mean())
    close(tckd, T**2 * np.mean(ref_t))
    close(nckd, T**2 * np.mean(ref_n))


def test_dkd_identical_logits_give_zero_and_extreme_logits_stay_finite():
    t = make((5, 6), 5, 3.0)
    y = make_labels((5,), 6)
    tckd, nckd = dkd_terms(t.clone(), t, y)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-6
    s = (make((5, 6), 6) * 1e4).requires_grad_(True)
    out = dkd_loss(s, make((5, 6), 7) * 1e4, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_dkd_mask_equals_selected_positions():
    s, t = make((3, 4, 5), 8, 2.0), make((3, 4, 5), 9, 2.0)
    y = make_labels((3, 4), 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    y_padded = y.masked_fill(~mask, -100)
    out = dkd_loss(s, t, y_padded, mask=mask)
    close(out, dkd_loss(s[mask], t[mask], y[mask]).item())


def test_dkd_objective_matches_the_functional_losses_with_its_weights():
    z, v, y = torch.randn(8, 10), torch.randn(8, 10), torch.arange(8)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=5.0)
    dkd = DecoupledKD()  # mdistiller: CE 1, alpha 1, beta 8, T 4, warm-up 20 epochs
    assert dkd.weights == {"ce": 1.0, "tckd": 1.0, "nckd": 8.0}
    terms = dkd(out)
    tckd, nckd = DF.dkd_terms(z, v, y, 4.0)
    assert allclose(terms["tckd"], 5 / 20 * tckd) and allclose(terms["nckd"], 5 / 20 * nckd)
    assert allclose(dkd.total(terms), F.cross_entropy(z, y) + 0.25 * DF.dkd_loss(z, v, y, 1.0, 8.0, 4.0))
    assert allclose(dkd(StepOutputs(z, y, torch.arange(8), Targets(logits=v), epoch=40.0))["nckd"], nckd)
