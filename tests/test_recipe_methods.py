"""Every recipe that trains a student from a teacher takes ``distill.method`` / ``distill.stages``:
ensemble, online, born_again, small_data, left_out_class (and specialists, in test_specialists.py).

With no method set each recipe trains exactly as before (paired runs of the old objective path give
the same weights); the ensemble gives each method its combined distribution at the method's own
temperature (exact on a fixed problem); each recipe refuses what it cannot serve before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.checkpoint import load_checkpoint
from distill.config import Config, ConfigError, load_config
from distill.data.tensors import steps_per_epoch
from distill.objectives import (
    Cohort,
    DecoupledKD,
    KnowledgeDistillation,
    MutualLearning,
    PeerMethod,
    StepOutputs,
    build_objective,
)
from distill.recipes import ensemble as ensemble_recipe
from distill.recipes import hinton_experiments, online
from distill.recipes import run_recipe
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED
from distill.recipes.stages import Stage, plan, stage_temperature
from distill.teachers import Ensemble, FrozenTeacher, Targets

BASE = ["data.name=digits", "train.epochs=1", "train.batch_size=64", "train.log_every=1000", "report.latency=false",
        "teacher.model.name=mlp", "teacher.model.hidden=[32]", "student.model.name=mlp", "student.model.hidden=[16]"]
CNN = ["teacher.model.name=cnn", "teacher.model.channels=[8, 16]", "teacher.model.hidden=0",
       "student.model.name=cnn", "student.model.channels=[8, 16]", "student.model.hidden=0"]  # named feature maps
LOGIT_METHODS = "use a method on logits only (kd, logit_matching, dkd, dist, standardized_kd, mlkd, ctkd, wttm)"


def config(recipe: str, *overrides: str) -> Config:
    return load_config(overrides=[f"recipe={recipe}", *BASE, *overrides])


def rows(run_dir: Path, model: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("model") == model and any(k.startswith("train/") for k in r)]


def terms(run_dir: Path, model: str) -> set[str]:
    found = rows(run_dir, model)
    assert found, f"no training rows of {model}"
    return {k for k in found[-1] if k.startswith("train/")}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# ================================================================ what a method sees of an ensemble


def _softmax(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp((z - z.max(-1, keepdims=True)) / T)
    return e / e.sum(-1, keepdims=True)


class Fixed(nn.Module):
    """A 'model' that returns given logits whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("z", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z[: x.shape[0]]


def test_stage_temperature_is_the_methods_own():
    cfg = config("ensemble", "distill.temperature=2.5")
    d, train = cfg.distill, cfg.train

    def at(method: str | None, **options) -> float:
        return stage_temperature(Stage("distilled", method, options, train, "all", "distill"), d)

    assert (at(None), at("kd"), at("logit_matching")) == (2.5, 2.5, 2.5)  # distill.temperature
    assert (at("kd", temperature=3.0), at("dkd"), at("dkd", temperature=3.0), at("dist")) == (3.0, 4.0, 3.0, 1.0)
    assert at("standardized_kd") == 2.0
    assert (at("wttm"), at("mlkd"), at("ctkd")) == (5.0, 2.5, 2.5)  # MLKD, CTKD: no single one, distill.temperature


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_an_ensemble_gives_each_method_its_combined_distribution_at_the_methods_temperature(combine):
    """Members z_1, z_2 with weights 1:3. DKD at T = 3 must see q_3 = mean_w softmax(z_m / 3) (arithmetic) or
    softmax(mean_w z_m / 3) (geometric): its two terms are computed here from q_3 directly; KD at
    distill.temperature = 2 sees q_2."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 6, 5)) * 3
    s, y = rng.normal(size=(6, 5)), rng.integers(0, 5, size=6)
    w = np.array([0.25, 0.75])
    members = [Fixed(torch.tensor(z[m], dtype=torch.float32)) for m in range(2)]
    cfg = config("ensemble", "distill.temperature=2", "distill.method=dkd", "distill.options.temperature=3",
                 f"ensemble.combine={combine}", "ensemble.weights=[1, 3]", "ensemble.members=2")

    def combined(T: float) -> np.ndarray:
        if combine == "arithmetic":
            return sum(w[m] * _softmax(z[m], T) for m in range(2))
        return _softmax(sum(w[m] * z[m] for m in range(2)), T)

    x = torch.zeros(6, 1)
    logits = ensemble_recipe.ensemble_teacher(members, cfg, plan(cfg)[0])(x).logits
    q = combined(3.0)
    np.testing.assert_allclose(torch.softmax(logits.double() / 3, -1).numpy(), q, rtol=1e-5, atol=1e-7)

    out = StepOutputs(torch.tensor(s, dtype=torch.float32), torch.tensor(y), torch.arange(6),
                      teacher=Targets(logits=logits), epoch=100.0)
    got = DecoupledKD(temperature=3.0)(out)
    p, rows_ = _softmax(s, 3.0), np.arange(6)
    qy, py = q[rows_, y], p[rows_, y]
    tckd = (qy * np.log(qy / py) + (1 - qy) * np.log((1 - qy) / (1 - py))).mean() * 9
    q_rest, p_rest = q / (1 - qy)[:, None], p / (1 - py)[:, None]
    off = np.ones_like(q, dtype=bool)
    off[rows_, y] = False
    nckd = np.where(off, q_rest * np.log(q_rest / p_rest), 0).sum(-1).mean() * 9
    np.testing.assert_allclose(float(got["tckd"]), tckd, rtol=1e-5)
    np.testing.assert_allclose(float(got["nckd"]), nckd, rtol=1e-5)

    kd_cfg = config("ensemble", "distill.temperature=2", f"ensemble.combine={combine}", "ensemble.weights=[1, 3]",
                    "ensemble.members=2")  # distill.loss: kd at distill.temperature
    logits = ensemble_recipe.ensemble_teacher(members, kd_cfg, plan(kd_cfg)[0])(x).logits
    kd = KnowledgeDistillation(temperature=2.0, alpha=1.0)(
        StepOutputs(torch.tensor(s, dtype=torch.float32), torch.tensor(y), torch.arange(6),
                    teacher=Targets(logits=logits)))["kd"]
    q2, p2 = combined(2.0), _softmax(s, 2.0)
    np.testing.assert_allclose(float(kd), 4 * (q2 * np.log(q2 / p2)).sum(-1).mean(), rtol=1e-5)

    dist_cfg = config("ensemble", "distill.method=dist", f"ensemble.combine={combine}", "ensemble.weights=[1, 3]",
                      "ensemble.members=2")  # DIST's default temperature, 1
    logits = ensemble_recipe.ensemble_teacher(members, dist_cfg, plan(dist_cfg)[0])(x).logits
    np.testing.assert_allclose(torch.softmax(logits.double(), -1).numpy(), combined(1.0), rtol=1e-5, atol=1e-7)


# ================================================================ online: a method against each peer


def test_peer_method_with_kd_is_mutual_learning():
    """PeerMethod(KD(T, alpha = 1/2)) gives student k ½ mean_l T² KL(p_l || p_k) + ½ CE(z_k): half of
    MutualLearning(T, kl_weight = 1)'s total, term by term."""
    torch.manual_seed(0)
    z, y = torch.randn(3, 6, 5), torch.randint(0, 5, (6,))
    out = StepOutputs(z, y, torch.arange(6))
    ml = MutualLearning(temperature=2.0, kl_weight=1.0)
    peer = PeerMethod(KnowledgeDistillation(temperature=2.0, alpha=0.5))
    ml_terms, peer_terms = ml(out), peer(out)
    torch.testing.assert_close(peer_terms["kd"], ml_terms["mutual"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(peer_terms["ce"], ml_terms["ce"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(2 * peer.total(peer_terms), ml.total(ml_terms), rtol=1e-6, atol=1e-7)


def test_peer_method_gives_each_student_the_gradient_of_its_own_loss():
    torch.manual_seed(0)
    cohort = Cohort([nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 4)]).train()
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    objective = PeerMethod(DecoupledKD(temperature=2.0, warmup_epochs=0.0))
    objective.total(objective(StepOutputs(cohort(x), y, torch.arange(8), epoch=1.0))).backward()
    got = cohort.members[0].weight.grad.clone()
    cohort.zero_grad()
    z = [m(x) for m in cohort.members]
    dkd = DecoupledKD(temperature=2.0, warmup_epochs=0.0)
    own = sum(dkd.total(dkd(StepOutputs(z[0], y, torch.arange(8), teacher=Targets(logits=z[j].detach()), epoch=1.0)))
              for j in (1, 2)) / 2
    own.backward()
    torch.testing.assert_close(got, cohort.members[0].weight.grad)


# ================================================================ refusals, before any training


def refusal(recipe: str, *overrides: str) -> str:
    """What the recipe's registered check says when the config is loaded (before anything trains)."""
    with pytest.raises(ConfigError) as e:
        config(recipe, *overrides)
    return str(e.value).split("<top level>: ", 1)[1]


def test_the_ensemble_refuses_feature_methods_naming_the_key_and_the_logit_methods(tmp_path):
    message = refusal("ensemble", "distill.method=at")
    assert message.startswith("distill.method: recipe ensemble distils from the members' combined predictions "
                              "(logits only), so at, which reads the teacher's intermediate features, cannot be used")
    assert LOGIT_METHODS in message
    message = refusal("ensemble",
                      "distill.stages=[{method: kd}, {method: fitnets}]")
    assert message.startswith("distill.stages.1.method: recipe ensemble") and "so fitnets," in message
    for method in ("kd", "logit_matching", "dkd", "dist", "standardized_kd"):
        config("ensemble", f"distill.method={method}")
    with pytest.raises(ConfigError, match="distill.method: recipe ensemble"):  # before any member trains
        run_recipe(config("ensemble", "distill.method=at"), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_online_refuses_stages_feature_methods_and_mutual_learnings_options():
    assert refusal("online", "distill.stages=[{method: kd}]").startswith(
        "distill.stages: recipe online trains its cohort in one fit; name one method in distill.method")
    message = refusal("online", "distill.method=fitnets")
    assert message.startswith("distill.method: recipe online distils each student from its peers' predictions "
                              "(logits only), so fitnets,") and LOGIT_METHODS in message
    assert refusal("online", "distill.method=dkd", "online.kl_weight=2").startswith(
        "online.kl_weight: it sets deep mutual learning's KL term, which distill.method=dkd replaces; give the "
        "method's options in distill.options")
    config("online", "online.kl_weight=2")  # MutualLearning's own option: fine
    config("online", "distill.method=dist")


def test_born_again_and_hintons_experiments_take_every_method():
    for method in ("at", "fitnets", "simkd", "crd", "dkd"):
        for recipe in ("born_again", "small_data", "left_out_class"):
            assert config(recipe, f"distill.method={method}").distill.method == method


# ================================================================ no method: exactly as before


def test_without_a_method_born_again_and_small_data_train_as_the_old_objective_path(tmp_path):
    """The recipe's gen1 (born_again) and soft_small (small_data) against the same students trained the old
    way (build_objective(distill.loss, ...) through Run.train, paired seeds): the same weights."""
    cfg = config("born_again", "born_again.generations=1")
    run_recipe(cfg, run_dir=tmp_path / "new", progress=False)
    run = Run(cfg, run_dir=tmp_path / "old", progress=False)
    gen0, _ = run.build_model(cfg.student, STUDENT_SEED)
    gen0.load_state_dict(weights(tmp_path / "new" / "gen0" / "best.pt"))
    model, spec = run.build_model(cfg.student, STUDENT_SEED + 100)
    d = cfg.distill
    run.train("gen1", model, spec, build_objective(d.loss, d.temperature, d.alpha), cfg.student,
              teacher=FrozenTeacher(gen0))
    assert_same_weights(tmp_path / "new" / "gen1" / "best.pt", tmp_path / "old" / "gen1" / "best.pt")

    cfg = config("small_data", "small_data.fraction=0.05", "distill.loss=logit_matching", "distill.alpha=0.7")
    results = run_recipe(cfg, run_dir=tmp_path / "new_small", progress=False)
    run = Run(cfg, run_dir=tmp_path / "old_small", progress=False)
    assert cfg.teacher is not None
    teacher, _ = run.build_model(cfg.teacher.model_copy(update={"checkpoint": None}), 1)
    teacher.load_state_dict(weights(tmp_path / "new_small" / "teacher" / "best.pt"))
    small = hinton_experiments.small_subset(run.data, cfg.small_data.fraction, cfg.data.split_seed + 1)
    model, spec = run.build_model(cfg.student, STUDENT_SEED)
    d = cfg.distill
    train = cfg.student.train.model_copy(update={"epochs": results["summary"]["epochs"]})
    run.train("soft_small", model, spec, build_objective(d.loss, d.temperature, d.alpha), cfg.student,
              teacher=FrozenTeacher(teacher), data=small, train=train)
    assert_same_weights(tmp_path / "new_small" / "soft_small" / "best.pt",
                        tmp_path / "old_small" / "soft_small" / "best.pt")


def test_without_a_method_the_ensemble_student_trains_as_the_old_objective_path(tmp_path):
    cfg = config("ensemble", "ensemble.members=2", "distill.temperature=3")
    run_recipe(cfg, run_dir=tmp_path / "new", progress=False)
    run = Run(cfg, run_dir=tmp_path / "old", progress=False)
    assert cfg.teacher is not None
    members = []
    for i in range(2):
        member, _ = run.build_model(cfg.teacher, 1 + 100 * i)
        member.load_state_dict(weights(tmp_path / "new" / f"member{i}" / "best.pt"))
        members.append(member)
    soft = Ensemble(members, cfg.ensemble.combine, cfg.ensemble.weights, temperature=3.0)
    model, spec = run.build_model(cfg.student, STUDENT_SEED)
    d = cfg.distill
    run.train("distilled", model, spec, build_objective(d.loss, d.temperature, d.alpha), cfg.student,
              teacher=FrozenTeacher(soft))
    assert_same_weights(tmp_path / "new" / "distilled" / "best.pt", tmp_path / "old" / "distilled" / "best.pt")


# ================================================================ a method of the registry, end to end


def test_ensemble_distils_with_dkd(tmp_path):
    run_recipe(config("ensemble", "ensemble.members=2", "distill.method=dkd"), run_dir=tmp_path, progress=False)
    assert {"train/ce", "train/tckd", "train/nckd"} <= terms(tmp_path, "distilled")
    assert "train/kd" not in terms(tmp_path, "distilled")


def test_online_trains_each_student_with_dkd_against_its_peers(tmp_path):
    run_recipe(config("online", "distill.method=dkd"), run_dir=tmp_path, progress=False)
    found = terms(tmp_path, "cohort")
    assert {"train/ce", "train/tckd", "train/nckd"} <= found and "train/mutual" not in found


def test_born_again_with_dkd_and_with_attention_transfer(tmp_path):
    run_recipe(config("born_again", "born_again.generations=1", "distill.method=dkd"), run_dir=tmp_path / "dkd",
               progress=False)
    assert {"train/tckd", "train/nckd"} <= terms(tmp_path / "dkd", "gen1")
    run_recipe(config("born_again", "born_again.generations=1", "distill.method=at", "distill.options.weight=1",
                      *CNN), run_dir=tmp_path / "at", progress=False)
    assert {"train/ce", "train/at"} <= terms(tmp_path / "at", "gen1")


@pytest.mark.slow
def test_born_again_in_stages_and_with_simkd(tmp_path):
    fitnets = ("distill.stages=[{method: fitnets, options: {hint_only: true}, epochs: 1, trainable: [stages.0]}, "
               "{method: kd}]")
    run_recipe(config("born_again", "born_again.generations=1", fitnets, *CNN), run_dir=tmp_path / "staged",
               progress=False)
    assert terms(tmp_path / "staged", "gen1/stage1") == {"train/hint", "train/loss"}
    assert {"train/kd", "train/ce"} <= terms(tmp_path / "staged", "gen1/stage2")
    assert_same_weights(tmp_path / "staged" / "gen1" / "best.pt", tmp_path / "staged" / "gen1/stage2" / "best.pt")
    results = run_recipe(config("born_again", "born_again.generations=2", "distill.method=simkd", *CNN),
                         run_dir=tmp_path / "simkd", progress=False)
    assert "train/simkd" in terms(tmp_path / "simkd", "gen2")
    assert list(results["models"]) == ["gen0", "gen1", "gen2", "generations_ensemble"]


@pytest.mark.slow
def test_small_data_with_dist_scales_every_stages_epochs(tmp_path):
    stages = "distill.stages=[{method: dist, epochs: 1}, {method: kd, epochs: 2}]"
    results = run_recipe(config("small_data", "small_data.fraction=0.1", stages), run_dir=tmp_path, progress=False)
    s = results["summary"]
    full, small = steps_per_epoch(results["data"]["train"], 64), steps_per_epoch(s["train_examples"], 64)
    assert s["epochs"] == round(full / small)  # the student's 1 epoch, in optimizer steps
    assert {"train/inter", "train/intra"} <= terms(tmp_path, "soft_small/stage1")
    assert load_checkpoint(tmp_path / "soft_small/stage1/last.pt")["epoch"] == round(full / small)
    assert load_checkpoint(tmp_path / "soft_small/stage2/last.pt")["epoch"] == round(2 * full / small)


@pytest.mark.slow
def test_left_out_class_with_dkd_and_with_attention_transfer(tmp_path):
    results = run_recipe(config("left_out_class", "distill.method=dkd"), run_dir=tmp_path / "dkd", progress=False)
    for tag in ("distilled_full", "distilled_without"):
        assert {"train/tckd", "train/nckd"} <= terms(tmp_path / "dkd", tag)
    assert "distilled_corrected" in results["models"]
    run_recipe(config("left_out_class", "distill.method=at", "distill.options.weight=1", *CNN),
               run_dir=tmp_path / "at", progress=False)
    assert "train/at" in terms(tmp_path / "at", "distilled_without")
