"""Ensembles, deep mutual learning, born-again networks and Hinton's two soft-target experiments."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from distill.config import TrainConfig, load_config
from distill.data.tensors import DataSplits
from distill.engine import fit
from distill.functional import kd_loss
from distill.objectives import Cohort, KnowledgeDistillation, MutualLearning, StepOutputs
from distill.recipes import run_recipe
from distill.recipes.hinton_experiments import best_bias, class_index, small_subset, with_bias, without_class
from distill.teachers import Ensemble, FrozenTeacher


def _softmax(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp((z - z.max(-1, keepdims=True)) / T)
    return e / e.sum(-1, keepdims=True)


class Fixed(nn.Module):
    """A 'model' that returns given logits whatever the input (for exact formula checks)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("z", logits)
        self.num_classes = logits.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z[: x.shape[0]]


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ensemble_of_identical_members_is_the_member(combine, T):
    z = torch.randn(6, 5) * 3
    e = Ensemble([Fixed(z), Fixed(z), Fixed(z)], combine, temperature=T)
    q = torch.softmax(e(torch.zeros(6, 1)) / T, -1)
    torch.testing.assert_close(q, torch.softmax(z / T, -1), atol=1e-6, rtol=1e-5)


def test_arithmetic_and_geometric_ensembles_against_numpy():
    rng = np.random.default_rng(0)
    zs = [rng.normal(size=(4, 7)) * 2 for _ in range(3)]
    w = np.array([1.0, 2.0, 1.0])
    w = w / w.sum()
    T = 3.0
    members = [Fixed(torch.tensor(z, dtype=torch.float32)) for z in zs]
    x = torch.zeros(4, 1)
    arith = sum(wi * _softmax(z, T) for wi, z in zip(w, zs))
    geo = np.exp(sum(wi * np.log(_softmax(z, T)) for wi, z in zip(w, zs)))
    geo = geo / geo.sum(-1, keepdims=True)
    for combine, ref in [("arithmetic", arith), ("geometric", geo)]:
        e = Ensemble(members, combine, weights=[1.0, 2.0, 1.0], temperature=T)
        got = torch.softmax(e(x) / T, -1).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # the geometric mean of probabilities at T is the softmax of the weighted mean logit at T
    mean_logit = sum(wi * z for wi, z in zip(w, zs))
    np.testing.assert_allclose(geo, _softmax(mean_logit, T), rtol=1e-5, atol=1e-7)


def test_ensemble_members_of_different_architectures_and_errors():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    b = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    out = Ensemble([a, b])(torch.randn(5, 4))
    assert out.shape == (5, 3)
    torch.testing.assert_close(torch.softmax(out, -1).sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="combine"):
        Ensemble([a], "median")
    with pytest.raises(ValueError, match="weights"):
        Ensemble([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        Ensemble([a, b], weights=[-1.0, 2.0])
    with pytest.raises(ValueError, match="same classes"):
        Ensemble([a, nn.Linear(4, 5)])(torch.randn(2, 4))


def test_distilling_from_an_ensemble_of_copies_equals_distilling_from_the_member(digits_splits):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    cfg = TrainConfig(epochs=1, batch_size=64, log_every=1000)
    results = []
    for t in [teacher, Ensemble([teacher, teacher], "arithmetic", temperature=4.0)]:
        torch.manual_seed(1)
        student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg, teacher=FrozenTeacher(t), progress=None)
        results.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-4)


def test_cohort_shapes_and_eval_ensemble():
    torch.manual_seed(0)
    members = [nn.Linear(3, 4), nn.Linear(3, 4)]
    cohort = Cohort(members)
    x = torch.randn(5, 3)
    assert cohort.train()(x).shape == (2, 5, 4)
    ens = cohort.eval()(x)
    ref = torch.log((torch.softmax(members[0](x), -1) + torch.softmax(members[1](x), -1)) / 2)
    torch.testing.assert_close(ens, ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        Cohort([members[0]])


def test_mutual_learning_terms_against_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 6, 5))
    y = rng.integers(0, 5, size=6)
    T = 2.0
    terms = MutualLearning(temperature=T)(StepOutputs(torch.tensor(z), torch.tensor(y), torch.arange(6)))
    log_p1 = np.log(_softmax(z, 1.0))
    ce = sum(-log_p1[k][np.arange(6), y].mean() for k in range(3))
    mutual = 0.0
    for k in range(3):
        for j in range(3):
            if j != k:
                p, q = _softmax(z[j], T), _softmax(z[k], T)
                mutual += T * T * (p * (np.log(p) - np.log(q))).sum(-1).mean() / 2
    np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-6)
    np.testing.assert_allclose(float(terms["mutual"]), mutual, rtol=1e-6)


def test_mutual_learning_gives_each_student_the_gradient_of_its_own_loss():
    torch.manual_seed(0)
    cohort = Cohort([nn.Linear(3, 4), nn.Linear(3, 4)]).train()
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    obj = MutualLearning(temperature=1.0, kl_weight=0.5)
    obj.total(obj(StepOutputs(cohort(x), y, torch.arange(8)))).backward()
    got = cohort.members[0].weight.grad.clone()
    cohort.zero_grad()
    z0, z1 = cohort.members[0](x), cohort.members[1](x).detach()
    own = torch.nn.functional.cross_entropy(z0, y) + 0.5 * kd_loss(z0, z1, 1.0)
    own.backward()
    torch.testing.assert_close(got, cohort.members[0].weight.grad)


def test_small_subset_and_without_class(digits_splits: DataSplits):
    small = small_subset(digits_splits, 0.1, seed=3)
    assert len(small.train) == round(0.1 * len(digits_splits.train))
    assert set(small.train.y.tolist()) == set(range(10))  # stratified: every class is there
    assert torch.equal(small.val.y, digits_splits.val.y) and torch.equal(small.test.y, digits_splits.test.y)
    assert torch.equal(small_subset(digits_splits, 0.1, seed=3).train.x, small.train.x)
    gone = without_class(digits_splits, 3)
    assert 3 not in gone.train.y.tolist() and 3 not in gone.val.y.tolist()
    assert len(gone.train) == int((digits_splits.train.y != 3).sum())
    assert torch.equal(gone.test.y, digits_splits.test.y)
    assert class_index(digits_splits, "3") == 3 and class_index(digits_splits, 7) == 7
    with pytest.raises(ValueError, match="left_out.label"):
        class_index(digits_splits, "three")


def test_best_bias_and_with_bias():
    # class 2 is never predicted; raising its logit by 1.5 fixes both of its examples without new errors
    logits = torch.tensor([[3.0, 0.0, 2.0], [0.0, 3.0, 1.8], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([2, 2, 0, 1])
    b = best_bias(logits, labels, 2, max_bias=10.0)
    assert 1.2 <= b <= 2.95
    assert abs(b - 1.25) < 1e-6  # the smallest shift that fixes both (ties go to the smallest)
    class Head(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.classifier = nn.Linear(3, 3, bias=bias)

        def forward(self, x):
            return self.classifier(x)

    x = torch.randn(4, 3)
    for model in [Head(True), Head(False), nn.Linear(3, 3)]:  # a bias to raise, or a wrapper
        shifted = with_bias(model, 1, 2.5)(x) - model(x)
        torch.testing.assert_close(shifted, torch.tensor([0.0, 2.5, 0.0]).expand(4, 3))


def _cfg(recipe, **extra):
    over = [f"recipe={recipe}", "data.name=digits", "train.epochs=2", "train.batch_size=64",
            "teacher.model.name=mlp", "teacher.model.hidden=[32]", "student.model.name=mlp",
            "student.model.hidden=[16]"]
    return load_config(overrides=over + [f"{k}={v}" for k, v in extra.items()])


def test_ensemble_recipe(tmp_path):
    res = run_recipe(_cfg("ensemble", **{"ensemble.members": 3, "ensemble.combine": "geometric"}),
                     run_dir=tmp_path, progress=False)
    assert set(res["models"]) == {"member0", "member1", "member2", "ensemble", "baseline", "distilled"}
    assert res["models"]["ensemble"]["agreement"] == 1.0
    assert res["summary"]["ensemble_acc"] == res["models"]["ensemble"]["test_acc"]
    for tag in ["member0", "member1", "member2", "distilled"]:
        assert (tmp_path / tag / "best.pt").exists()
    # members start from different seeds, so they differ
    w0 = torch.load(tmp_path / "member0" / "best.pt", weights_only=True)["model"]
    w1 = torch.load(tmp_path / "member1" / "best.pt", weights_only=True)["model"]
    assert not torch.equal(next(iter(w0.values())), next(iter(w1.values())))


def test_ensemble_recipe_refuses_a_teacher_checkpoint(tmp_path):
    cfg = _cfg("ensemble", **{"teacher.checkpoint": str(tmp_path / "t.pt")})
    with pytest.raises(Exception, match=r"t\.pt|teacher.checkpoint"):
        run_recipe(cfg, run_dir=tmp_path / "run", progress=False)


def test_online_recipe_writes_each_student(tmp_path):
    res = run_recipe(_cfg("online", **{"online.members": 3}), run_dir=tmp_path, progress=False)
    assert {"mutual0", "mutual1", "mutual2", "alone0", "alone1", "alone2", "cohort_ensemble"} <= set(res["models"])
    assert len(res["summary"]["gains"]) == 3
    from distill.checkpoint import build_model_from_checkpoint

    model, _ = build_model_from_checkpoint(tmp_path / "mutual1" / "best.pt")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/mutual" in r for r in lines if r["model"] == "cohort")


def test_born_again_recipe(tmp_path):
    res = run_recipe(_cfg("born_again", **{"born_again.generations": 2}), run_dir=tmp_path, progress=False)
    assert list(res["models"]) == ["gen0", "gen1", "gen2", "generations_ensemble"]
    assert len(res["summary"]["accuracy_by_generation"]) == 3
    assert res["models"]["gen0"]["agreement"] == 1.0


def test_small_data_recipe_soft_targets_beat_hard_labels(tmp_path):
    cfg = _cfg("small_data", **{"small_data.fraction": 0.05, "train.epochs": 6, "teacher.model.hidden": "[64]"})
    res = run_recipe(cfg, run_dir=tmp_path, progress=False)
    s = res["summary"]
    assert s["train_examples"] == round(0.05 * res["data"]["train"])
    assert s["epochs"] >= 6 / 0.05 * 0.8  # as many optimizer steps as the full-data student
    # on 80 digits, the teacher's soft targets are worth far more than the hard labels
    assert s["soft_small_acc"] > s["hard_small_acc"] + 0.02


def test_left_out_class_recipe(tmp_path):
    cfg = _cfg("left_out_class", **{"left_out.label": 3, "train.epochs": 5, "teacher.model.hidden": "[64]"})
    res = run_recipe(cfg, run_dir=tmp_path, progress=False)
    s = res["summary"]
    assert s["class"] == 3 and s["bias"] >= 0
    n3 = s["class_test_examples"]
    ce = s["class_errors"]
    assert ce["distilled_without"] > ce["distilled_full"]  # never seeing a 3 costs threes ...
    assert ce["distilled_without"] < n3  # ... but soft targets alone teach some of them
    assert ce["distilled_corrected"] <= ce["distilled_without"]
    assert (tmp_path / "distilled_corrected" / "best.pt").exists()
