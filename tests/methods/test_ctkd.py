"""CTKD (Li et al., AAAI 2023), the global temperature: the loss against numpy, the curriculum, the sign of the
reversed gradient (the temperature ascends the loss, the student descends it), the objective, and a run through
``distill run``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.cli import main
from distill.functional import kd_loss
from distill.methods import build_method
from distill.methods.ctkd import CTKD, ctkd_loss, ctkd_temperature, curriculum_strength, reverse_gradient
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, make_labels, np_kl, np_softmax, to_np


def np_kd(s, t, T):
    return T**2 * float(np.mean([np_kl(np_softmax(b / T), np_softmax(a / T)) for a, b in zip(s, t)]))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("T", [1.5, 4.0, 15.6])
def test_ctkd_loss_is_hintons_at_the_given_temperature(T):
    s, t = make((6, 5), 0, 2.0), make((6, 5), 1, 3.0)
    ref = np_kd(to_np(s), to_np(t), T)
    close(ctkd_loss(s, t, T), ref)
    close(ctkd_loss(s, t, torch.tensor([T])), ref)
    assert allclose(ctkd_loss(s, t, T), kd_loss(s, t, T))


def test_ctkd_temperature_gradient_flows_through_both_softmaxes_and_t_squared():
    # dL/dT against a central difference of the numpy loss (float64): the teacher's softmax depends on T too
    s, t = make((5, 6), 2, 2.0).double(), make((5, 6), 3, 3.0).double()
    T = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    ctkd_loss(s, t, T).backward()
    h = 1e-5
    numeric = (np_kd(to_np(s), to_np(t), 3.0 + h) - np_kd(to_np(s), to_np(t), 3.0 - h)) / (2 * h)
    assert T.grad.item() == pytest.approx(numeric, rel=1e-6)
    with pytest.raises(ValueError, match=r"temperature must be one number, got a tensor of shape \(2,\)"):
        ctkd_loss(s, t, torch.ones(2))


def test_the_curriculum_rises_as_half_a_cosine_then_stays():
    assert curriculum_strength(0.0) == 0.0 and curriculum_strength(10.0) == 1.0 and curriculum_strength(25.0) == 1.0
    assert curriculum_strength(5.0) == pytest.approx(0.5, abs=1e-15)
    assert curriculum_strength(2.5, 0.8, 10.0) == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)) / 2, rel=1e-15)
    assert curriculum_strength(1.0, 0.5, 0.0) == 0.5  # no curriculum: full strength from the start


def test_reverse_gradient_is_the_identity_forward_and_minus_strength_backward():
    x = torch.tensor([0.3, -1.2], requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -0.75]))


@pytest.mark.parametrize("epoch, strength", [(0.0, 0.0), (5.0, 0.5), (10.0, 1.0), (40.0, 1.0)])
def test_the_temperature_gets_the_reversed_gradient_the_student_the_plain_one(epoch, strength):
    """theta's gradient = -lambda(epoch) * d(kd_weight * KD)/d(theta), with d/d(theta) from a central difference of
    the numpy loss at T = 1 + 20 sigmoid(theta); the student's gradient is KD's at that T, not reversed."""
    z = make((6, 5), 4, 2.0).requires_grad_(True)
    v, y = make((6, 5), 5, 3.0), make_labels((6,), 5)
    ctkd = CTKD()
    terms = ctkd(StepOutputs(logits=z, labels=y, index=torch.arange(6), teacher=Targets(logits=v), epoch=epoch))
    ctkd.total(terms).backward()
    h = 1e-5
    loss = lambda theta: 0.9 * np_kd(to_np(z), to_np(v), 1.0 + 20.0 * sigmoid(theta))  # noqa: E731
    d_theta = (loss(1.0 + h) - loss(1.0 - h)) / (2 * h)
    assert ctkd.raw_temperature.grad.item() == pytest.approx(-strength * d_theta, rel=1e-3, abs=1e-9)
    T = 1.0 + 20.0 * sigmoid(1.0)
    zz = z.detach().clone().requires_grad_(True)
    (0.1 * F.cross_entropy(zz, y) + 0.9 * kd_loss(zz, v, T)).backward()
    assert torch.allclose(z.grad, zz.grad, rtol=1e-4, atol=1e-7)
    assert terms["temperature"].item() == pytest.approx(T, rel=1e-6)


def test_a_descent_step_raises_the_kd_loss_through_the_temperature():
    """The adversarial sign: an SGD step on the objective moves the temperature to where the KD loss is higher."""
    z, v, y = make((8, 5), 6, 2.0), make((8, 5), 7, 3.0), make_labels((8,), 5)
    ctkd = CTKD(init=-1.0)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=20.0)
    before_t, before = ctkd.current_temperature, ctkd(out)["kd"].item()
    ctkd.total(ctkd(out)).backward()
    with torch.no_grad():  # an SGD step, lr 1
        ctkd.raw_temperature -= ctkd.raw_temperature.grad
    assert ctkd.current_temperature != before_t and ctkd(out)["kd"].item() > before


def test_ctkd_objective_defaults_and_weights():
    ctkd = build_method("ctkd")
    assert ctkd.weights == {"ce": 0.1, "kd": 0.9, "temperature": 0.0}
    assert ctkd.current_temperature == pytest.approx(1.0 + 20.0 * sigmoid(1.0), rel=1e-6)
    assert [n for n, _ in ctkd.named_parameters()] == ["raw_temperature"]
    z, v, y = make((8, 10), 8, 2.0), make((8, 10), 9, 3.0), make_labels((8,), 10)
    terms = ctkd(StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=3.0))
    T = ctkd.current_temperature
    assert allclose(ctkd.total(terms), 0.1 * F.cross_entropy(z, y) + 0.9 * kd_loss(z, v, T))
    assert allclose(ctkd_temperature(torch.tensor(0.0), 2.0, 10.0), torch.tensor(7.0))


@pytest.mark.slow
def test_ctkd_runs_through_distill_run_and_logs_its_temperature(tmp_path):
    cfg = {"name": "ctkd", "recipe": "distill", "seed": 0, "device": "cpu", "data": {"name": "digits"},
           "train": {"epochs": 2, "batch_size": 128, "log_every": 5}, "report": {"latency": False},
           "teacher": {"model": {"name": "mlp", "hidden": [16]}}, "student": {"model": {"name": "mlp", "hidden": [8]}},
           "distill": {"method": "ctkd", "options": {"lambda_epochs": 1}}}
    path = tmp_path / "ctkd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ctkd" / "metrics.jsonl").read_text().splitlines()]
    temps = [r["train/temperature"] for r in rows if r.get("model") == "distilled" and "train/temperature" in r]
    assert len(temps) >= 2 and all(1.0 < t < 21.0 for t in temps)
    assert temps[-1] != temps[0]  # learned once the reversal strength is above 0
