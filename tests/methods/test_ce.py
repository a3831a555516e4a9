"""Cross-entropy on the labels (no teacher): the objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.objectives import CrossEntropy
from distill.teachers import Targets

from ._objectives import _step


def test_ce_objective():
    t = torch.randn(6, 5)
    out = _step(Targets(logits=t))
    assert CrossEntropy()(out)["ce"].item() == pytest.approx(F.cross_entropy(out.logits, out.labels).item())
