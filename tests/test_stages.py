"""The method zoo from a config: ``distill.method``/``options``, ``distill.stages``, SimKD's deployable
student, CRD's ``num_data``, resume per stage, the shipped staged and CIFAR-100 configs.

Every run distils tiny CNNs on digits from one teacher trained once (``teacher.checkpoint``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.checkpoint import build_model_from_checkpoint, load_checkpoint
from distill.config import ConfigError, TrainConfig, load_config, to_yaml
from distill.engine import evaluate
from distill.models import create_model
from distill.objectives import KnowledgeDistillation, build_method
from distill.recipes import run_recipe
from distill.recipes.common import augment_views
from distill.recipes.hinton import STUDENT_SEED
from distill.recipes.stages import Stage, stage_objective, trainable_only

ROOT = Path(__file__).resolve().parents[1]
STUDENT = {"name": "cnn", "channels": [8, 16, 16], "hidden": 0}  # stages 8x8 -> 4x4 -> 2x2 -> 2x2
BASE = {"name": "t", "recipe": "distill", "seed": 0, "device": "cpu", "data": {"name": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "log_every": 1000},
        "teacher": {"model": {"name": "cnn", "channels": [16, 32], "hidden": 0}, "train": {"epochs": 4}},
        "student": {"model": STUDENT}}
FITNETS = ("distill.stages=[{method: fitnets, options: {hint_only: true}, epochs: 2, "
           "trainable: [stages.0, stages.1]}, {method: kd}]")
FT = "distill.stages=[{method: ft_paraphraser, trainable: objective, epochs: 2}, {method: ft}]"


def config(*overrides: str, base: dict | None = None):
    return load_config(None, list(overrides), base=base or BASE)


def error(*overrides: str, base: dict | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        config(*overrides, base=base)
    return str(e.value)


# ================================================================ configuration


def test_loss_configs_keep_working_and_method_kd_takes_their_temperature_and_alpha():
    cfg = config("distill.temperature=8", "distill.alpha=0.5")
    assert cfg.distill.loss == "kd" and cfg.distill.method is None and cfg.distill.stages is None
    stage = Stage("distilled", "kd", {}, cfg.student.train, "all", "distill")
    kd = stage_objective(stage, cfg.distill, num_data=10, earlier=[])
    assert isinstance(kd, KnowledgeDistillation) and (kd.temperature, kd.alpha) == (8.0, 0.5)
    stage.options = {"temperature": 2.0}
    assert stage_objective(stage, cfg.distill, num_data=10, earlier=[]).temperature == 2.0
    for path in sorted((ROOT / "configs").glob("*.yaml")):  # the shipped configs are still valid
        load_config(path)


def test_method_and_options_are_checked_when_the_config_is_loaded():
    assert config("distill.method=at", "distill.options.weight=50").distill.options == {"weight": 50}
    message = error("distill.method=fitnet")
    assert "distill.method: unknown method 'fitnet'. Did you mean 'fitnets'" in message and "simkd" in message
    message = error("distill.method=at", "distill.options.wieght=50")
    assert "distill.options.wieght: method 'at' (AttentionTransfer) has no option 'wieght'" in message
    assert "Did you mean 'weight'?" in message and "Its options: weight=1000.0, p=2.0" in message
    message = error("distill.method=at", "distill.options.weight=-1")  # values too: the objective is built once
    assert "distill.options: the weight of at must be a finite number >= 0, got -1" in message
    assert "distill.options.num_data: the recipe sets it" in error("distill.method=crd", "distill.options.num_data=9")
    assert "CRD: mode must be" in error("distill.method=crd", "distill.options.mode=loose")
    assert "distill.options are the options of distill.method, which is not set" in error("distill.options.weight=1")
    assert "no ce or kd term" in error("distill.method=fitnets", "distill.options.hint_only=true")
    assert "ft needs a trained paraphraser" in error("distill.method=ft")
    simkd = config("distill.method=simkd", "distill.options.factor=4", "distill.options.teacher_layer=stages.1")
    assert simkd.distill.options == {"factor": 4, "teacher_layer": "stages.1"}  # SimKDStudent's options too


def test_methods_that_tap_the_teacher_refuse_a_cache_and_other_recipes():
    assert "live teacher model, but distill.cache.path is set" in error("distill.method=at", "distill.cache.path=c.npz")
    assert "fix/rs distils from the teacher's outputs" in error("distill.method=vid", "distill.views.mode=fix/rs")
    assert config("distill.method=dkd", "distill.cache.path=c.npz").distill.method == "dkd"  # logits only: fine
    # the recipe's registered check refuses it when the config is loaded (tests/test_recipe_methods.py)
    assert "distill.method: recipe ensemble distils from the members' combined" in error("distill.method=at",
                                                                                          "recipe=ensemble")
    assert config("distill.method=at", "recipe=teacher").recipe == "teacher"


def test_stage_errors_name_the_stage():
    assert "distill.stages.1.options.hnt_only: method 'fitnets'" in error(
        "distill.stages=[{method: kd}, {method: fitnets, options: {hnt_only: true}}]")
    assert "distill.stages.0.method: unknown method 'atention'" in error("distill.stages=[{method: atention}]")
    assert "distill.stages.0.method: ft needs a trained paraphraser" in error("distill.stages=[{method: ft}]")
    assert "distill.stages.0.method: simkd must be the last stage" in error(
        "distill.stages=[{method: simkd}, {method: kd}]")
    assert "distill.stages.1: fitnets with these options has no ce or kd term" in error(
        "distill.stages=[{method: kd}, {method: fitnets, options: {hint_only: true}}]")
    assert "distill.stages.0: epochs (2) and train.epochs (3) differ" in error(
        "distill.stages=[{method: kd, epochs: 2, train: {epochs: 3}}]")
    assert "distill.stages.0.trainable" in error("distill.stages=[{method: kd, trainable: []}]")
    assert "distill.stages.0.train.epoch: unknown key" in error("distill.stages=[{method: kd, train: {epoch: 3}}]")
    assert "distill.stages is empty" in error("distill.stages=[]")
    assert "distill.method and distill.stages both name" in error("distill.method=kd", "distill.stages=[{method: kd}]")


def test_stages_merge_over_student_train_and_method_only_stages_select_the_last_epoch(tmp_path):
    base = {**BASE, "student": {"model": STUDENT, "train": {"optimizer": {"lr": 0.2}, "selection": "nll"}}}
    stages = ("distill.stages=[{method: fitnets, options: {hint_only: true}, epochs: 5, train: {optimizer: {name: "
              "adam, lr: 0.001}}}, {method: ab, options: {ce_weight: 0}, train: {selection: acc}}, {method: kd}]")
    cfg = config(stages, base=base)
    hint, ab, kd = cfg.distill.stages
    assert (hint.train.epochs, hint.train.optimizer.name, hint.train.optimizer.lr, hint.train.batch_size) == \
        (5, "adam", 0.001, 64)
    assert hint.train.selection == "last" and ab.train.selection == "acc"  # the default, or the stage's own
    assert (kd.train.epochs, kd.train.optimizer.lr, kd.train.selection) == (2, 0.2, "nll")
    assert hint.trainable == "all"
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg  # the resolved config reads back to the same stages


def test_trainable_only_freezes_the_rest_and_restores_it():
    model = create_model("cnn", 10, (1, 8, 8), **{k: v for k, v in STUDENT.items() if k != "name"})
    model.classifier.bias.requires_grad_(False)
    with trainable_only(model, ["stages.0", "classifier"], "distill.stages.0"):
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained == {"stages.0.conv.weight", "stages.0.bn.weight", "stages.0.bn.bias", "classifier.weight"}
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["classifier.bias"]
    with trainable_only(model, "objective", "k"):
        assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"distill.stages.0.trainable: 'stage.0' is not a module of the student "
                                         r"\(SmallCNN\) with parameters\. Did you mean 'stages.0'.*stages, classifier"):
        with trainable_only(model, ["stage.0"], "distill.stages.0"):
            pass


def test_augment_crop_and_flip_become_views():
    data = type("D", (), {"in_shape": (3, 32, 32)})()
    assert augment_views(TrainConfig(), data) is None
    views = augment_views(TrainConfig(augment={"crop_padding": 4, "flip": True}), data)
    assert (views.mode, views.padding, views.flip, views.image_size) == ("same/rc", 4, True, (32, 32))
    x = torch.randn(8, 3, 32, 32)
    student, teacher = views(x)
    assert student is teacher and student.shape == x.shape and not torch.equal(student, x)
    with pytest.raises(ConfigError, match="shift and crop_padding are two forms"):
        config("train.augment.shift=1", "train.augment.crop_padding=2")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "cifar100").glob("*.yaml")), ids=lambda p: p.name)
def test_cifar100_configs_are_repdistillers_recipe(path):
    cfg = load_config(path, ["distill.method=crd"])
    assert cfg.data.name == "cifar100" and cfg.data.download
    for role in (cfg.teacher, cfg.student):
        t = role.train
        assert (t.epochs, t.batch_size, t.optimizer.name, t.optimizer.lr, t.optimizer.momentum) == \
            (240, 64, "sgd", 0.05, 0.9)
        assert t.optimizer.weight_decay == 5e-4 and (t.schedule.name, t.schedule.milestones) == \
            ("multistep", [150, 180, 210])
        assert (t.augment.crop_padding, t.augment.flip) == (4, True)


# ================================================================ runs on digits


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teacher")
    run_recipe(config("recipe=teacher"), run_dir=out, progress=False)
    return str(out / "teacher" / "best.pt")


def distil(run_dir: Path, teacher: str, *overrides: str, resume: bool = False) -> dict:
    cfg = config(f"teacher.checkpoint={teacher}", *overrides)
    return run_recipe(cfg, run_dir=run_dir, resume=resume, progress=False)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def weighted_terms(row: dict, weights: dict[str, float]) -> float:
    """The total of a metrics row's logged terms (``train/<term>``) under the objective's ``weights``; every
    logged term must have a nonzero weight and every weighted term must be logged."""
    terms = {k[len("train/"):]: v for k, v in row.items() if k.startswith("train/") and k != "train/loss"}
    assert set(terms) == {k for k, w in weights.items() if w}, (sorted(terms), weights)
    return sum(weights[k] * v for k, v in terms.items())


@pytest.mark.parametrize("method, term", [("at", "at"), ("vid", "vid")])
def test_a_feature_method_from_the_config(method, term, teacher_checkpoint, tmp_path, digits_splits):
    """The configured method and options reach the objective (the logged total is the configured
    weighting of the logged terms: AT's default weight 1000 would fail it), its term is optimized, and
    the recorded accuracy is the saved student's (no noisy accuracy bar)."""
    options = ["distill.options.weight=1"] if method == "at" else []  # AT on 2x2 maps: see its docstring
    results = distil(tmp_path, teacher_checkpoint, f"distill.method={method}", *options, "recipe=compare")
    assert set(results["models"]) == {"teacher", "baseline", "distilled"}
    rows = [r for r in metrics(tmp_path) if r["model"] == "distilled"]
    assert rows[-1][f"train/{term}"] < rows[0][f"train/{term}"] and "train/ce" in rows[0]
    weights = build_method(method, **({"weight": 1.0} if method == "at" else {})).weights
    for row in rows:
        assert row["train/loss"] == pytest.approx(weighted_terms(row, weights), rel=1e-5)
    model, _ = build_model_from_checkpoint(tmp_path / "distilled" / "best.pt")
    assert evaluate(model, digits_splits.test).accuracy == results["models"]["distilled"]["test_acc"]


def test_fitnets_in_two_stages(teacher_checkpoint, tmp_path, digits_splits):
    """Stage 1 trains only the student up to its guided layer (the hint is the middle stage) and the
    regressor; stage 2 trains the whole student with KD."""
    results = distil(tmp_path, teacher_checkpoint, FITNETS)
    torch.manual_seed(BASE["seed"] + STUDENT_SEED)  # the student's initial weights, as the recipe builds them
    initial = create_model("cnn", 10, (1, 8, 8), **{k: v for k, v in STUDENT.items() if k != "name"}).state_dict()
    stage1, stage2 = weights(tmp_path / "distilled/stage1/best.pt"), weights(tmp_path / "distilled/stage2/best.pt")
    params = [n for n, _ in create_model("cnn", 10, (1, 8, 8), channels=[8, 16, 16], hidden=0).named_parameters()]
    for name in params:
        guided = name.startswith(("stages.0.", "stages.1."))
        assert torch.equal(stage1[name], initial[name]) != guided, name
        assert not torch.equal(stage2[name], stage1[name]), name
    assert torch.equal(weights(tmp_path / "distilled/best.pt")["classifier.weight"], stage2["classifier.weight"])
    rows = metrics(tmp_path)
    assert {k for k in rows[0] if k.startswith("train/")} == {"train/hint", "train/loss"}
    assert [r["model"] for r in rows] == ["distilled/stage1"] * 2 + ["distilled/stage2"] * 2
    assert {"train/kd", "train/ce"} <= set(rows[-1])
    for row, weighting in zip(rows, [{"hint": 1.0}] * 2 + [KnowledgeDistillation().weights] * 2):
        assert row["train/loss"] == pytest.approx(weighted_terms(row, weighting), rel=1e-5)  # each stage's objective
    assert rows[1]["train/hint"] < rows[0]["train/hint"] and rows[3]["train/loss"] < rows[2]["train/loss"]
    model, _ = build_model_from_checkpoint(tmp_path / "distilled" / "best.pt")  # stage 2's student is the result
    assert evaluate(model, digits_splits.test).accuracy == results["models"]["distilled"]["test_acc"]


@pytest.mark.slow
def test_factor_transfer_paraphraser_then_ft(teacher_checkpoint, tmp_path):
    distil(tmp_path, teacher_checkpoint, FT)
    torch.manual_seed(BASE["seed"] + STUDENT_SEED)
    initial = create_model("cnn", 10, (1, 8, 8), **{k: v for k, v in STUDENT.items() if k != "name"}).state_dict()
    stage1 = load_checkpoint(tmp_path / "distilled/stage1/last.pt")
    assert all(torch.equal(stage1["model"][n], initial[n]) for n in initial if not n.endswith(("running_mean",
                                                                                              "running_var",
                                                                                              "num_batches_tracked")))
    stage2 = load_checkpoint(tmp_path / "distilled/stage2/last.pt")
    for name, value in stage1["objective"].items():  # FT reads the paraphraser trained in stage 1, frozen
        assert torch.equal(stage2["objective"][name], value), name
    rows = metrics(tmp_path)
    first, second = [r for r in rows if r["model"].endswith("1")], [r for r in rows if r["model"].endswith("2")]
    assert first[-1]["train/reconstruction"] < first[0]["train/reconstruction"]
    assert second[-1]["train/ft"] < second[0]["train/ft"]


def test_simkd_trains_and_deploys_the_wrapped_student(teacher_checkpoint, tmp_path, digits_splits):
    results = distil(tmp_path, teacher_checkpoint, "distill.method=simkd")
    model, ckpt = build_model_from_checkpoint(tmp_path / "distilled" / "best.pt")  # what `distill eval` does
    assert type(model).__name__ == "SimKDStudent" and ckpt["model_spec"]["kwargs"]["teacher"]["name"] == "cnn"
    assert ckpt["model_spec"]["name"] == "simkd_student"  # a builder of the registry, not an import path
    assert evaluate(model, digits_splits.test).accuracy == results["models"]["distilled"]["test_acc"]
    rows = [r for r in metrics(tmp_path) if r["model"] == "distilled"]
    assert rows[-1]["train/simkd"] < rows[0]["train/simkd"]  # its only term is optimized (no noisy accuracy bar)


def test_crd_gets_the_size_of_the_training_set(teacher_checkpoint, tmp_path):
    results = distil(tmp_path, teacher_checkpoint, "distill.method=crd", "distill.options={nce_k: 64, feat_dim: 16}")
    memory = load_checkpoint(tmp_path / "distilled" / "last.pt")["objective"]["memory_student"]
    assert memory.shape == (results["data"]["train"], 16)
    assert "train/crd" in metrics(tmp_path)[-1]


@pytest.mark.slow
def test_a_staged_run_resumes_stage_by_stage(teacher_checkpoint, tmp_path, monkeypatch):
    """Interrupted in stage 2, the run resumes there (stage 1 is not trained again, and FT gets its
    paraphraser back from stage 1's checkpoint); with stage 2 lost, stage 2 starts over. Both end
    bit-identical to an uninterrupted run."""
    whole = tmp_path / "whole"
    distil(whole, teacher_checkpoint, FT)
    expected = weights(whole / "distilled" / "best.pt")

    import distill.recipes.common as common

    fit = common.fit

    def interrupted_in_stage_2(*args, **kwargs):
        if kwargs["tag"] == "distilled/stage2":
            kwargs["stop_after_epochs"] = 1
        return fit(*args, **kwargs)

    cut = tmp_path / "cut"
    monkeypatch.setattr(common, "fit", interrupted_in_stage_2)
    distil(cut, teacher_checkpoint, FT)
    monkeypatch.setattr(common, "fit", fit)
    assert [r["model"] for r in metrics(cut)] == ["distilled/stage1"] * 2 + ["distilled/stage2"]
    distil(cut, teacher_checkpoint, FT, resume=True)
    assert [r["model"] for r in metrics(cut)] == ["distilled/stage1"] * 2 + ["distilled/stage2"] * 2
    for name, value in weights(cut / "distilled" / "best.pt").items():
        assert torch.equal(value, expected[name]), name

    for path in (cut / "distilled" / "stage2").iterdir():
        path.unlink()
    distil(cut, teacher_checkpoint, FT, resume=True)
    for name, value in weights(cut / "distilled" / "best.pt").items():
        assert torch.equal(value, expected[name]), name


def test_fitnets_digits_config_is_two_stages():
    cfg = load_config(ROOT / "configs" / "fitnets_digits.yaml")
    hint, kd = cfg.distill.stages
    assert (hint.method, hint.options, hint.train.selection) == ("fitnets", {"hint_only": True}, "last")
    assert (kd.method, kd.trainable, kd.train.selection) == ("kd", "all", "acc")
    student = create_model(cfg.student.model.name, 10, (1, 8, 8), **cfg.student.model.kwargs)
    with trainable_only(student, hint.trainable, "distill.stages.0"):  # the prefixes name the student's modules
        assert not student.classifier.weight.requires_grad
