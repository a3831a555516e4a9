"""DIST (Huang et al. 2022): the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import dist_loss
from distill.objectives import DIST
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, np_softmax, to_np


def np_pearson(u, v, eps=1e-8):
    u, v = u - u.mean(), v - v.mean()
    return (u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v) + eps)


def np_dist(s, t, beta, gamma, T):
    ys = np.stack([np_softmax(row / T) for row in s])
    yt = np.stack([np_softmax(row / T) for row in t])
    B, C = ys.shape
    inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(B)])
    intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(C)])
    return T**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_matches_numpy(beta, gamma, T):
    s, t = make((7, 5), 0, 2.0), make((7, 5), 1, 2.0)
    close(dist_loss(s, t, beta, gamma, T), np_dist(to_np(s), to_np(t), beta, gamma, T))


def test_dist_invariances():
    s, t = make((6, 8), 2, 2.0), make((6, 8), 3, 2.0)
    ref = dist_loss(s, t, temperature=2.0).item()
    # a per-sample shift of either side's logits leaves the probabilities unchanged
    shift = torch.linspace(-3, 3, 6)[:, None]
    assert dist_loss(s + shift, t - 2 * shift, temperature=2.0).item() == pytest.approx(ref, rel=1e-5)
    # relabelling the classes and reordering the batch (the same for both) changes nothing
    rows, cols = torch.randperm(6), torch.randperm(8)
    assert dist_loss(s[rows][:, cols], t[rows][:, cols], temperature=2.0).item() == pytest.approx(ref, rel=1e-5)
    # identical predictions: both correlations are 1 (up to float32 rounding and the reference's eps)
    assert abs(dist_loss(t.clone(), t).item()) < 1e-5


def test_dist_objective_matches_the_functional_loss_with_its_weights():
    z, v, y = torch.randn(8, 10), torch.randn(8, 10), torch.arange(8)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=5.0)
    dist = DIST(inter_weight=2.0, intra_weight=3.0, temperature=4.0)
    assert allclose(dist.total(dist(out)), F.cross_entropy(z, y) + DF.dist_loss(z, v, 2.0, 3.0, 4.0))
