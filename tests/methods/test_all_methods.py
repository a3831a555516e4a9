"""Every method as an objective (distill.objectives.methods), across methods: gradients reach every trainable
parameter a method owns and the student, never the teacher, for two unlike pairs (a CNN teacher with an MLP
student, and a wider CNN teacher with a ResNet student of other channel counts and spatial sizes); default
layers; the registry; short runs of ``distill.fit`` on digits checked by their wiring. Each method's own
tests (its loss against an independent computation, its objective) are in tests/methods/test_<name>.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.methods import list_methods
from distill.models import create_model
from distill.objectives import (
    FSP,
    METHODS,
    RKD,
    ActivationBoundaries,
    AttentionTransfer,
    CrossEntropy,
    FitNets,
    KnowledgeDistillation,
    build_method,
    build_objective,
    method_options,
)

from ._objectives import (
    DIGITS,
    PAIRS,
    _fit,
    _student,
    _train,
    batch,
    make_method,
    step,
    wide_cnn_teacher_resnet_student,
)


ZOO = [name for name in METHODS if name != "ce"]


def _method_only(name: str) -> dict:
    """Options that leave the method's own terms alone (no CE), so their gradients are what is seen."""
    options = method_options(name)
    if "ce_weight" in options:
        return {"ce_weight": 0.0}
    return {"alpha": 1.0} if "alpha" in options else {}


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_the_objectives_modules_and_the_student_never_the_teacher(name, pair):
    torch.manual_seed(0)
    teacher, student = PAIRS[pair]()
    x, y = batch()
    objective, model = make_method(name, student, teacher, x, **_method_only(name))
    terms, _ = step(objective, model, teacher, x, y)
    total = objective.total(terms)
    assert terms and torch.isfinite(total)
    total.backward()
    owned = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    missing = [n for n, p in owned if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient reaches {missing}"
    assert all(p.grad is None for p in teacher.parameters()), f"{name}: a gradient reached the teacher"
    first_layer = next(student.parameters())
    if name == "ft_paraphraser":  # the paraphraser's stage does not use the student at all
        assert all(p.grad is None for p in student.parameters())
    else:
        assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    if name == "simkd":
        assert all(p.grad is not None for p in model.projector.parameters())


def test_default_layers_pair_the_last_stages_and_explicit_layers_serve_a_model_without_stages():
    class UserNet(nn.Module):  # no feature_stages, no `classifier`
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1),
                                      nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

        def forward(self, x):
            return self.head(self.body(x))

    teacher = create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=0)
    x, y = batch()
    with pytest.raises(ValueError, match=r"AT: the student \(UserNet\) has no `feature_stages`.*student_layers="):
        step(AttentionTransfer(), UserNet(), teacher, x, y)
    with pytest.raises(ValueError, match=r"RKD: cannot tap the student's layers \['classifier:input'\].*UserNet has no "
                                         r"module 'classifier'"):
        step(RKD(), UserNet(), teacher, x, y)
    at = AttentionTransfer(student_layers=["body.1", "body.3"])
    terms, _ = step(at, UserNet(), teacher, x, y)
    assert at.pairs == [("body.1", "stages.0"), ("body.3", "stages.1")] and torch.isfinite(terms["at"])
    at = AttentionTransfer(student_layers="body.3")  # one student layer: paired with the teacher's deepest
    step(at, UserNet(), teacher, x, y)
    assert at.pairs == [("body.3", "stages.1")]


def test_setup_again_keeps_the_trained_modules():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fitnets = FitNets()
    step(fitnets, student, teacher, x, y)
    regressor = fitnets.connectors[0]
    step(fitnets, student, teacher, x, y)
    assert fitnets.connectors[0] is regressor


def test_registry_names_every_method_and_its_options():
    assert set(ZOO) == {"kd", "logit_matching", "dkd", "dist", "standardized_kd", "mlkd", "ctkd", "wttm",
                        "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft_paraphraser", "ft", "fsp", "nst",
                        "crd", "reviewkd", "simkd"}
    assert isinstance(build_method("at", weight=50.0), AttentionTransfer)
    assert build_method("dkd", nckd_weight=2.0).weights["nckd"] == 2.0
    with pytest.raises(ValueError, match=r"unknown distillation method 'fitnet'\. Did you mean 'fitnets'.*The methods "
                                         r"are: ce, kd, "):
        build_method("fitnet")
    with pytest.raises(ValueError, match=r"method 'at' \(AttentionTransfer\) has no option 'wieght'\. Did you mean "
                                         r"'weight'.*Its options: weight=1000\.0, p=2\.0"):
        build_method("at", wieght=1.0)
    with pytest.raises(ValueError, match=r"method 'crd' \(CRD\) needs 'num_data' \(the number of training examples"):
        build_method("crd")


def test_every_zoo_architecture_lists_its_feature_stages():
    from distill.connectors import probe_shapes

    for name in ("mlp", "cnn", "resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"):
        model = create_model(name, 10, (3, 16, 16))
        shapes = probe_shapes(model, torch.randn(2, 3, 16, 16), model.feature_stages)
        assert len(shapes) >= 1, name


def test_build_objective_names_the_choices():
    assert isinstance(build_objective("kd"), KnowledgeDistillation)
    with pytest.raises(ValueError, match="distill.loss: unknown loss 'fitnet'"):
        build_objective("fitnet")


def test_every_method_module_has_its_test_file():
    """Adding a method is one module of distill.methods plus its test file, tests/methods/test_<name>.py,
    holding its loss values (against an independent computation), its objective and, where it has one, its run."""
    src = Path(__file__).resolve().parents[2] / "src" / "distill" / "methods"
    modules = {p.stem for p in src.glob("*.py") if not p.stem.startswith("_")} - {"base", "registry"}
    assert {m.objective.__module__.rsplit(".", 1)[1] for m in list_methods()} <= modules
    tests = {p.stem.removeprefix("test_") for p in Path(__file__).parent.glob("test_*.py")}
    missing = sorted(modules - tests)
    assert not missing, f"no tests/methods/test_<name>.py for the method modules {missing}: add one"
    assert tests - modules == {"all_methods", "all_losses"}, "a test file of tests/methods names no method module"


# Weights differ from the defaults only where the reference's is calibrated for CIFAR's 32x32 maps
# (AT, NST: their terms grow as the maps shrink), or to skip a 20-epoch warm-up in a 4-epoch run (CTKD: its
# curriculum over 10 epochs shortened to 1).
MATCHING = {
    "kd": {}, "dkd": {"warmup_epochs": 0}, "dist": {}, "standardized_kd": {}, "mlkd": {}, "ctkd": {"lambda_epochs": 1},
    "wttm": {},
    "at": {"weight": 50.0}, "nst": {"weight": 5.0}, "sp": {}, "cc": {}, "vid": {}, "rkd": {}, "pkt": {},
    "reviewkd": {"warmup_epochs": 0}, "crd": {"nce_k": 128, "feat_dim": 64},
}


def _matching(name: str, data):
    options = dict(MATCHING[name])
    if name == "crd":
        options["num_data"] = len(data.train)
    return build_method(name, **options)


def _own_terms(name: str, objective) -> list[str]:
    """The method's own loss terms (not the CE/KD terms it adds to them)."""
    return [k for k in objective.weights
            if (k not in ("ce", "kd") or name in ("kd", "standardized_kd", "ctkd")) and objective.weights[k]]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MATCHING))
def test_the_methods_own_term_is_optimized_and_reaches_the_student(name, digits_splits, digits_teacher):
    """Wiring, not a noisy accuracy margin: (1) the logged total is the weighted sum of the logged terms;
    (2) the method's own term decreases; (3) paired seeds: the same run with the method's own terms
    weighted 0 ends with other student weights (the term's gradient reaches the student: a detached
    or unweighted term would leave them bit-identical, as fit is deterministic for a seed)."""
    objective = _matching(name, digits_splits)
    own = _own_terms(name, objective)
    assert own, name
    result = _fit(objective, digits_splits, digits_teacher)
    history = result.history
    for record in history:
        terms = {k[6:]: v for k, v in record.items() if k.startswith("train/") and k != "train/loss"}
        assert set(own) <= set(terms)
        total = sum(objective.weights.get(k, 1.0) * v for k, v in terms.items())
        assert record["train/loss"] == pytest.approx(total, rel=1e-4, abs=1e-6)
    for term in own:
        if name != "crd":  # its term stays near chance here (see test_crd_learns_...)
            first, last = history[0][f"train/{term}"], history[-1][f"train/{term}"]
            assert last < first, f"{name}: its term {term} did not decrease ({first:.4g} -> {last:.4g})"
    if name == "crd":  # the memory is in use
        assert (objective.memory_labels >= 0).all() and math.isfinite(history[-1]["train/crd"])
        assert torch.allclose(objective.memory_student.norm(dim=1), torch.ones(len(digits_splits.train)))
    without = _matching(name, digits_splits)
    for term in own:
        without.weights[term] = 0.0
    untouched = _fit(without, digits_splits, digits_teacher).model
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(result.model.parameters(), untouched.parameters()))
    assert moved > 1e-4, f"{name}: its terms {own} do not reach the student's weights"


@pytest.mark.parametrize("name", ["fitnets", "ab", "fsp"])
def test_staged_methods_initialize_the_student_then_train_it_on_labels(name, digits_splits, digits_teacher):
    """The references train these in two stages: the method's term alone first (FitNets' hints,
    AB's and FSP's initialization), then the student on labels (KD for FitNets, CE for AB and FSP).
    In a few epochs the benefit of the initialization does not show, so this checks what each
    stage does: stage 1 lowers the method's term and leaves the classifier untouched; stage 2 trains
    every parameter of that student on its own objective (the logged total is its weighted terms) and
    its loss falls by more than 10% (measured over student seeds 1-4: the last epoch's loss is 0.39-0.56
    of the first's for FitNets then KD, 0.69-0.71 for AB then CE, 0.70-0.80 for FSP then CE)."""
    first = {"fitnets": FitNets(hint_only=True), "ab": ActivationBoundaries(ce_weight=0.0),
             "fsp": FSP(ce_weight=0.0)}[name]
    term = first.term_names[0]
    student = _student(digits_splits)
    classifier = student.classifier.weight.clone()
    _, history = _train(first, digits_splits, digits_teacher, model=student, epochs=2, selection="last")
    assert history[-1][f"train/{term}"] < history[0][f"train/{term}"]
    assert set(k for k in history[0] if k.startswith("train/")) == {f"train/{term}", "train/loss"}
    assert torch.equal(student.classifier.weight, classifier)
    second = KnowledgeDistillation() if name == "fitnets" else CrossEntropy()
    initialized = [p.detach().clone() for p in student.parameters()]
    _, history = _train(second, digits_splits, digits_teacher, model=student, epochs=2)
    for record in history:
        terms = {k[6:]: v for k, v in record.items() if k.startswith("train/") and k != "train/loss"}
        assert set(terms) == {k for k, w in second.weights.items() if w}
        assert record["train/loss"] == pytest.approx(sum(second.weights[k] * v for k, v in terms.items()), rel=1e-5)
    assert history[-1]["train/loss"] < 0.9 * history[0]["train/loss"]
    assert not any(torch.equal(a, b) for a, b in zip(student.parameters(), initialized))  # the classifier too
