"""Logit standardization KD (Sun et al. 2024): the z-score and the loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import kd_loss, standardized_kd_loss, zscore_logits
from distill.methods import build_method, logit_methods, method_options
from distill.objectives import StandardizedKD
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, make_labels, np_kl, np_softmax, to_np


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


# -- the standardize switch of every logit method (Sun et al. 2024: a pre-process of any logit method) ----------

STANDARDIZABLE = [name for name in logit_methods() if name != "standardized_kd"]  # that one always standardizes


def test_every_logit_method_has_the_standardize_switch_off_by_default():
    assert {"kd", "logit_matching", "dkd", "dist"} <= set(STANDARDIZABLE)
    for name in STANDARDIZABLE:
        assert method_options(name)["standardize"] is False, name


@pytest.mark.parametrize("name", STANDARDIZABLE)
def test_standardize_distils_the_zscored_logits_and_keeps_the_ce_on_the_raw_ones(name):
    """The method with ``standardize: true`` on raw logits = the method without it on z-scored student and
    teacher logits, term by term, except the cross-entropy on labels, which stays on the raw logits."""
    z, v, y = make((8, 5), 0, 3.0), make((8, 5), 1, 5.0), make_labels((8,), 5)
    index = torch.arange(8)
    on, off = build_method(name, standardize=True), build_method(name)
    raw = StepOutputs(logits=z, labels=y, index=index, teacher=Targets(logits=v), epoch=50.0)
    ref = torch.tensor(np.apply_along_axis(np_zscore, -1, to_np(z)), dtype=torch.float32)
    ref_t = torch.tensor(np.apply_along_axis(np_zscore, -1, to_np(v)), dtype=torch.float32)
    standardized = StepOutputs(logits=ref, labels=y, index=index, teacher=Targets(logits=ref_t), epoch=50.0)
    got, expected = on(raw), off(standardized)
    assert got.keys() == expected.keys() and got
    for term in got:
        if term == "ce":
            assert allclose(got[term], F.cross_entropy(z, y)) and not allclose(got[term], expected[term])
        else:
            assert torch.allclose(got[term], expected[term], rtol=1e-4, atol=1e-5), (name, term)


def test_kd_with_standardize_against_numpy_and_the_standardized_kd_loss():
    z, v, y = make((6, 5), 2, 2.0), make((6, 5), 3, 4.0), make_labels((6,), 5)
    kd = build_method("kd", temperature=2.0, alpha=0.75, standardize=True)
    terms = kd(StepOutputs(logits=z, labels=y, index=torch.arange(6), teacher=Targets(logits=v)))
    ref = np.mean([np_kl(np_softmax(np_zscore(b) / 2.0), np_softmax(np_zscore(a) / 2.0))
                   for a, b in zip(to_np(z), to_np(v))])
    close(terms["kd"], 4.0 * ref)
    assert allclose(terms["kd"], standardized_kd_loss(z, v, 2.0))
    assert allclose(kd.total(terms), 0.75 * terms["kd"] + 0.25 * F.cross_entropy(z, y))


def test_standardize_needs_the_teachers_logits():
    z = make((4, 5), 4)
    probs = torch.softmax(make((4, 5), 5), -1)
    out = StepOutputs(logits=z, labels=torch.arange(4), index=torch.arange(4), teacher=Targets(probs=probs))
    with pytest.raises(ValueError, match=r"KnowledgeDistillation needs the teacher's logits; this teacher gives "
                                         r"probabilities or a top-k summary only"):
        build_method("kd", standardize=True)(out)
    build_method("kd")(out)  # without the switch, probabilities are fine
