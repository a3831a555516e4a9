"""Logit standardization KD (Sun et al. 2024): the z-score and the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import kd_loss, standardized_kd_loss, zscore_logits
from distill.objectives import StandardizedKD
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, np_kl, np_softmax, to_np


def np_zscore(z, eps=1e-7):
    return (z - z.mean()) / (z.std(ddof=1) + eps)


def test_zscore_matches_numpy_and_is_affine_invariant():
    z = make((4, 3, 7), 0, 3.0)
    ref = np.apply_along_axis(np_zscore, -1, to_np(z))
    np.testing.assert_allclose(to_np(zscore_logits(z)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(zscore_logits(2.5 * z - 4.0)), ref, rtol=1e-5, atol=1e-5)
    out = zscore_logits(z)
    assert out.mean(-1).abs().max() < 1e-5 and (out.std(-1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_standardized_kd_matches_numpy(T):
    s, t = make((6, 5), 1, 2.0), make((6, 5), 2, 4.0)
    ref = []
    for zs, zt in zip(to_np(s), to_np(t)):
        ref.append(np_kl(np_softmax(np_zscore(zt) / T), np_softmax(np_zscore(zs) / T)))
    close(standardized_kd_loss(s, t, T), T**2 * np.mean(ref))


def test_standardized_kd_invariant_to_shift_and_scale():
    s, t = make((6, 5), 3, 2.0), make((6, 5), 4, 2.0)
    ref = standardized_kd_loss(s, t).item()
    scale = torch.tensor([0.5, 1.0, 3.0, 10.0, 0.1, 2.0])[:, None]  # per sample, > 0
    assert standardized_kd_loss(s, scale * t + 7.0).item() == pytest.approx(ref, rel=1e-5)
    assert standardized_kd_loss(3.0 * s - 1.0, t).item() == pytest.approx(ref, rel=1e-5)
    assert abs(standardized_kd_loss(2.0 * t + 1.0, t).item()) < 1e-6
    # plain KD is not invariant (the test above means something)
    assert kd_loss(s, 3.0 * t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)


def test_standardized_kd_mask_ignores_garbage():
    s, t = make((2, 4, 5), 5, 2.0), make((2, 4, 5), 6, 2.0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    clean = standardized_kd_loss(s, t, mask=mask)
    s2 = s.clone()
    s2[~mask] = float("nan")
    s2.requires_grad_(True)
    dirty = standardized_kd_loss(s2, t, mask=mask)
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-6)
    assert torch.isfinite(s2.grad).all() and (s2.grad[~mask] == 0).all()
    close(clean, standardized_kd_loss(s[mask], t[mask]).item())


def test_standardized_kd_objective_matches_the_functional_loss_with_its_weights():
    z, v, y = torch.randn(8, 10), torch.randn(8, 10), torch.arange(8)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=5.0)
    std = StandardizedKD()  # the authors': CE 0.1, KD 9, base temperature 2
    terms = std(out)
    expected = 0.1 * F.cross_entropy(z, y) + 9.0 * DF.kd_loss(DF.zscore_logits(z), DF.zscore_logits(v), 2.0)
    assert allclose(std.total(terms), expected)
