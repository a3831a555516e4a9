"""WTTM (Zheng & Yang, ICLR 2024): the loss against numpy, its gradient, TTM, the objective, and a run through
``distill run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.cli import main
from distill.functional import kd_loss, wttm_loss
from distill.methods import build_method, get_method
from distill.methods.wttm import WTTM
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, make_labels, np_kl, np_softmax, to_np


def np_wttm(s, t, gamma, weighted=True):
    """The paper's Eq.: U = sum_c p_c^gamma, q = p^gamma / U, loss = mean_i U_i KL(q_i || softmax(z_i))."""
    out = []
    for zs, zt in zip(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])):
        powered = np_softmax(zt) ** gamma
        u = powered.sum()
        out.append((u if weighted else 1.0) * np_kl(powered / u, np_softmax(zs)))
    return float(np.mean(out))


@pytest.mark.parametrize("gamma", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 7)])
def test_wttm_and_ttm_match_numpy(gamma, shape):
    s, t = make(shape, 0, 2.0), make(shape, 1, 3.0)
    close(wttm_loss(s, t, gamma), np_wttm(to_np(s), to_np(t), gamma))
    close(wttm_loss(s, t, gamma, weighted=False), np_wttm(to_np(s), to_np(t), gamma, weighted=False))


def test_ttm_is_the_teacher_at_temperature_one_over_gamma_against_the_student_at_one():
    s, t = make((6, 5), 2, 2.0), make((6, 5), 3, 3.0)
    # q_t = softmax(v)^g / U = softmax(g v): KL(softmax(v / T) || softmax(z)), T = 1 / g, without T^2
    expected = np.mean([np_kl(np_softmax(b / 4.0), np_softmax(a)) for a, b in zip(to_np(s), to_np(t))])
    close(wttm_loss(s, t, 0.25, weighted=False), expected)
    # gamma = 1: U = 1, so WTTM = TTM = Hinton's KL at T = 1
    close(wttm_loss(s, t, 1.0), kd_loss(s, t, 1.0).item())


def test_the_weight_is_the_teachers_power_sum():
    # a one-hot teacher has U = 1 (no extra weight); a uniform one U = C^(1 - gamma)
    s = make((2, 4), 4, 2.0)
    sure = torch.tensor([[1e4, 0.0, 0.0, 0.0], [0.0, 1e4, 0.0, 0.0]])
    assert allclose(wttm_loss(s, sure, 0.5), wttm_loss(s, sure, 0.5, weighted=False))
    flat = torch.zeros(2, 4)
    assert allclose(wttm_loss(s, flat, 0.5), 4**0.5 * wttm_loss(s, flat, 0.5, weighted=False))


def test_wttm_gradient_is_the_weight_times_the_probability_gap():
    # d/dz_i = U_i (softmax(z_i) - q_i) / B
    s, t = make((5, 6), 5, 2.0).double().requires_grad_(True), make((5, 6), 6, 3.0).double()
    wttm_loss(s, t, 0.3).backward()
    p = torch.softmax(t, -1) ** 0.3
    u = p.sum(-1, keepdim=True)
    expected = u * (torch.softmax(s.detach(), -1) - p / u) / 5
    assert torch.allclose(s.grad, expected, rtol=1e-10, atol=1e-12)
    x = make((3, 4), 7).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: wttm_loss(z, t[:3, :4], 0.3), (x,))


def test_wttm_mask_equals_the_selected_positions_and_errors_name_the_problem():
    s, t = make((3, 4, 5), 8, 2.0), make((3, 4, 5), 9, 2.0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    close(wttm_loss(s, t, 0.2, mask=mask), wttm_loss(s[mask], t[mask], 0.2).item())
    with pytest.raises(ValueError, match=r"gamma must be a finite number > 0, got 0"):
        wttm_loss(s, t, 0)
    with pytest.raises(ValueError, match=r"student has 5 classes, teacher has 4 classes"):
        wttm_loss(s, t[..., :4])


def test_wttm_objective_matches_the_functional_loss_with_its_weights():
    z, v, y = make((8, 10), 10, 2.0), make((8, 10), 11, 3.0), make_labels((8,), 10)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v))
    wttm = WTTM()  # the authors' README: gamma 0.2 (T 5) at weight 4, CE 1
    assert wttm.weights == {"ce": 1.0, "wttm": 4.0} and wttm.temperature == 5.0
    terms = wttm(out)
    assert allclose(terms["wttm"], wttm_loss(z, v, 0.2))
    assert allclose(wttm.total(terms), F.cross_entropy(z, y) + 4.0 * wttm_loss(z, v, 0.2))
    ttm = build_method("wttm", temperature=10.0, kd_weight=45.0, weighted=False, ce_weight=0.0)
    terms = ttm(out)
    assert set(terms) == {"wttm"} and allclose(terms["wttm"], wttm_loss(z, v, 0.1, weighted=False))
    assert get_method("wttm").paper.startswith("Zheng & Yang (2024), Knowledge Distillation Based on Transformed")


@pytest.mark.slow
def test_wttm_runs_through_distill_run(tmp_path):
    cfg = {"name": "wttm", "recipe": "distill", "seed": 0, "device": "cpu", "data": {"name": "digits"},
           "train": {"epochs": 1, "batch_size": 128, "log_every": 1000}, "report": {"latency": False},
           "teacher": {"model": {"name": "mlp", "hidden": [16]}}, "student": {"model": {"name": "mlp", "hidden": [8]}},
           "distill": {"method": "wttm", "options": {"temperature": 4.0, "standardize": True}}}
    path = tmp_path / "wttm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "wttm" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("model") == "distilled" and "train/wttm" in r]
    assert trained and all(np.isfinite(r["train/wttm"]) for r in trained)
    assert set(json.loads((tmp_path / "wttm" / "results.json").read_text())["models"]) == {"teacher", "distilled"}
