"""Logit matching (Ba & Caruana 2014; Hinton et al.'s high-temperature limit): the loss against numpy, and
the objective."""

from __future__ import annotations

import pytest
import torch

from distill.functional import logit_matching_loss
from distill.objectives import LogitMatching
from distill.teachers import Targets

from ._kd_reference import make, to_np
from ._objectives import _step


def test_logit_matching_formula():
    s, t = make((3, 4, 7), 18), make((3, 4, 7), 19)
    ref = (0.5 * ((to_np(s) - to_np(t)) ** 2).sum(-1) / 7).mean()
    out = logit_matching_loss(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, rel=1e-6)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    ref_m = (0.5 * ((to_np(s) - to_np(t)) ** 2).mean(-1))[mask.numpy()].mean()
    assert logit_matching_loss(s, t, mask=mask).item() == pytest.approx(ref_m, rel=1e-6)


def test_logit_matching_objective():
    t = torch.randn(6, 5)
    out = _step(Targets(logits=t))
    terms = LogitMatching(alpha=0.5)(out)
    assert torch.allclose(terms["logit_matching"], 0.5 * ((out.logits - t) ** 2).mean())
    with pytest.raises(ValueError, match="teacher logits"):
        LogitMatching()(_step(Targets(probs=torch.softmax(t, -1))))
