"""MLKD (Jin, Wang & Lin, CVPR 2023): the three levels against numpy, their gradients, the objective, and a run
through ``distill run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.cli import main
from distill.functional import kd_loss, mlkd_loss, mlkd_terms
from distill.methods import build_method, method_options
from distill.methods.mlkd import MLKD
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose
from ._reference import close, make, make_labels, np_kl, np_softmax, to_np


def np_levels(s, t, temperatures):
    """Written from the paper's description and the authors' reductions, in float64 numpy."""
    b, c = s.shape
    instance = batch = klass = 0.0
    for T in temperatures:
        ps = np.stack([np_softmax(row / T) for row in s])
        pt = np.stack([np_softmax(row / T) for row in t])
        instance += T**2 * np.mean([np_kl(pt[i], ps[i]) for i in range(b)])
        batch += ((ps @ ps.T - pt @ pt.T) ** 2).sum() / b
        klass += ((ps.T @ ps - pt.T @ pt) ** 2).sum() / c
    return instance, batch, klass


@pytest.mark.parametrize("temperatures", [(2.0, 3.0, 4.0, 5.0, 6.0), (1.0,), (4.0, 0.5)])
def test_mlkd_levels_match_numpy(temperatures):
    s, t = make((7, 5), 0, 2.0), make((7, 5), 1, 3.0)
    got = mlkd_terms(s, t, temperatures)
    for value, ref in zip(got, np_levels(to_np(s), to_np(t), temperatures)):
        close(value, ref)
    close(mlkd_loss(s, t, temperatures, 0.5, 2.0, 3.0), float(np.dot([0.5, 2.0, 3.0], [g.item() for g in got])))


def test_the_instance_level_is_hintons_kd_summed_over_the_temperatures():
    s, t = make((6, 4), 2, 2.0), make((6, 4), 3, 3.0)
    instance, _, _ = mlkd_terms(s, t)
    assert allclose(instance, sum(kd_loss(s, t, T) for T in (2.0, 3.0, 4.0, 5.0, 6.0)))


def test_a_hand_computed_batch_and_class_level():
    # B = 2, C = 2, one temperature 1: the student uniform, the teacher one-hot on class 0 for both samples.
    # P_s = 1/2 everywhere: P_s P_s' = [[.5, .5], [.5, .5]], P_s' P_s = the same.
    # P_t = [[1, 0], [1, 0]]: P_t P_t' = [[1, 1], [1, 1]], P_t' P_t = [[2, 0], [0, 0]].
    # batch = 4 * 0.25 / 2 = 0.5;  class = ((1.5)^2 + 0.25 + 0.25 + 0.25) / 2 = 1.5
    s = torch.zeros(2, 2)
    t = torch.tensor([[1e4, 0.0], [1e4, 0.0]])
    _, batch, klass = mlkd_terms(s, t, (1.0,))
    close(batch, 0.5)
    close(klass, 1.5)


def test_identical_logits_give_zero_and_the_gradients_reach_the_student_only():
    t = make((5, 6), 4, 2.0)
    for level in mlkd_terms(t.clone(), t):
        assert abs(level.item()) < 1e-6
    s = make((4, 5), 5).double().requires_grad_(True)
    teacher = make((4, 5), 6, 2.0).double().requires_grad_(True)
    for k in range(3):
        assert torch.autograd.gradcheck(lambda x, k=k: mlkd_terms(x, teacher.detach(), (2.0, 5.0))[k], (s,))
    mlkd_loss(s, teacher).backward()
    assert teacher.grad is None and s.grad.abs().sum() > 0


def test_mlkd_errors_name_the_problem():
    s, t = make((4, 5), 7), make((4, 5), 8)
    with pytest.raises(ValueError, match=r"temperatures must be a non-empty list of numbers > 0, got \(\)"):
        mlkd_terms(s, t, ())
    with pytest.raises(ValueError, match=r"each of temperatures must be a finite number > 0, got 0"):
        mlkd_terms(s, t, (2.0, 0))
    with pytest.raises(ValueError, match=r"student_logits must be \(B, C\) logits, got shape \(2, 2, 5\)"):
        mlkd_terms(s.reshape(2, 2, 5), t.reshape(2, 2, 5))


def test_mlkd_objective_matches_the_functional_losses_with_its_weights():
    z, v, y = make((8, 10), 9, 2.0), make((8, 10), 10, 3.0), make_labels((8,), 10)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v))
    mlkd = MLKD()  # the authors' code: temperatures 2-6, CE 0.1, every level 0.9
    assert mlkd.weights == {"ce": 0.1, "instance": 0.9, "batch": 0.9, "class": 0.9}
    assert mlkd.temperatures == (2.0, 3.0, 4.0, 5.0, 6.0)
    assert method_options("mlkd")["temperatures"] == (2.0, 3.0, 4.0, 5.0, 6.0)
    terms = mlkd(out)
    expected = 0.1 * F.cross_entropy(z, y) + mlkd_loss(z, v, (2.0, 3.0, 4.0, 5.0, 6.0), 0.9, 0.9, 0.9)
    assert allclose(mlkd.total(terms), expected)
    assert build_method("mlkd", temperatures=[4.0]).temperatures == (4.0,)  # a YAML list


@pytest.mark.slow
def test_mlkd_runs_through_distill_run(tmp_path):
    cfg = {"name": "mlkd", "recipe": "distill", "seed": 0, "device": "cpu", "data": {"name": "digits"},
           "train": {"epochs": 1, "batch_size": 128, "log_every": 1000}, "report": {"latency": False},
           "teacher": {"model": {"name": "mlp", "hidden": [16]}}, "student": {"model": {"name": "mlp", "hidden": [8]}},
           "distill": {"method": "mlkd", "options": {"temperatures": [2, 4], "standardize": True}}}
    path = tmp_path / "mlkd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "mlkd" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("model") == "distilled" and "train/instance" in r]
    assert trained and all(np.isfinite(r[f"train/{k}"]) for r in trained for k in ("instance", "batch", "class"))
