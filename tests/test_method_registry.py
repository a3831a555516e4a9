"""The method registry (distill.methods): a method is one module that registers itself by name.

A toy method written as one file goes through ``distill run`` via the registry alone; ``distill methods``
lists every method with its paper, options and defaults; the methods layer imports nothing above it.
"""

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.methods import METHODS, get_method, list_methods, register_method, registry
from distill.methods.base import Objective

SRC = Path(__file__).resolve().parents[1] / "src" / "distill"

TOY = '''
"""A toy method in one file: its pure loss, its objective with typed options, registered by name."""

import torch.nn.functional as F
from torch import Tensor

from distill.methods import Objective, StepOutputs, register_method


def toy_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Squared distance of the two softmax distributions, summed over classes, averaged over the batch."""
    p_s, p_t = F.softmax(student_logits.float(), -1), F.softmax(teacher_logits.detach().float(), -1)
    return (p_s - p_t).pow(2).sum(-1).mean()


@register_method("toy", paper="none: a test of the registry", defaults="weight 1 (made up)")
class ToyObjective(Objective):
    needs_teacher = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__({"toy": weight, "ce": 1.0})

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"toy": toy_loss(out.logits, out.teacher.logits), "ce": F.cross_entropy(out.logits.float(), out.labels)}
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """Import the toy method's one file (registering ``toy``); the registry is restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    (tmp_path / "toy_distill_method.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_distill_method", raising=False)
    module = importlib.import_module("toy_distill_method")
    yield module
    sys.modules.pop("toy_distill_method", None)


def test_a_toy_method_in_one_file_runs_through_distill_run(toy_module, tmp_path, capsys):
    assert get_method("toy").objective is toy_module.ToyObjective and "toy" in METHODS
    assert [m.name for m in list_methods()][-1] == "toy"  # after the built-ins, which keep their order
    cfg = {"name": "toy", "recipe": "distill", "seed": 0, "device": "cpu", "data": {"name": "digits"},
           "train": {"epochs": 1, "batch_size": 128, "log_every": 1000},
           "teacher": {"model": {"name": "mlp", "hidden": [16]}},
           "student": {"model": {"name": "mlp", "hidden": [8]}},
           "distill": {"method": "toy", "options": {"weight": 0.5}}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "distilled"}
    logged = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/toy" in row for row in logged)  # the toy term was computed and logged by name
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet",
                 "--set", "distill.options.wieght=1"]) == 1
    assert ("distill.options.wieght: method 'toy' (ToyObjective) has no option 'wieght'. Did you mean 'weight'?"
            in capsys.readouterr().err)


def test_distill_methods_lists_every_method_with_its_paper_options_and_defaults(toy_module, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    cards = {card.split()[0]: card for card in out.strip().split("\n\n")}
    assert list(cards) == [m.name for m in list_methods()]
    assert list(cards)[:6] == ["ce", "kd", "logit_matching", "dkd", "dist", "standardized_kd"]
    assert set(cards) >= {"fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft_paraphraser", "ft", "fsp", "nst",
                          "crd", "reviewkd", "simkd", "toy"}
    assert cards["dkd"] == (
        "dkd (DecoupledKD)\n"
        "  paper:    Zhao, Cui, Song, Qiu & Liang (2022), Decoupled Knowledge Distillation, CVPR\n"
        "  defaults: mdistiller's CIFAR-100 CFG.DKD\n"
        "  options:  tckd_weight: float = 1.0, nckd_weight: float = 8.0, temperature: float = 4.0, "
        "warmup_epochs: float = 20.0, ce_weight: float = 1.0, standardize: bool = False")
    assert "  set by the recipe: num_data (the number of training examples)" in cards["crd"].splitlines()
    assert "  set by the recipe: paraphraser (the paraphraser of the ft_paraphraser stage before it)" in cards["ft"]
    assert "teacher_classifier = 'classifier', factor = 2" in cards["simkd"]  # the SimKDStudent's options
    assert "reads the teacher's intermediate features" in cards["at"] and "intermediate" not in cards["kd"]
    assert cards["toy"] == ("toy (ToyObjective)\n  paper:    none: a test of the registry\n"
                            "  defaults: weight 1 (made up)\n  options:  weight: float = 1.0")


def test_a_name_is_registered_once():
    class Other(Objective):
        pass

    with pytest.raises(ValueError, match=r"method 'kd' is already registered by distill\.methods\.kd\."
                                         r"KnowledgeDistillation; choose another name"):
        register_method("kd", paper="x")(Other)
    with pytest.raises(ValueError, match="must be a Python identifier"):
        register_method("my-kd", paper="x")
    with pytest.raises(ValueError, match=r"unknown distillation method 'dkdd'\. Did you mean 'dkd'"):
        get_method("dkdd")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_methods_import_nothing_above_them_and_config_no_recipe():
    above = ("distill.config", "distill.engine", "distill.recipes", "distill.cli", "distill.report", "distill.cache")
    for path in sorted((SRC / "methods").glob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(above))
        assert not bad, f"{path.name} imports {bad}"
    config_imports = {m for path in (SRC / "config").glob("*.py") for m in _imports(path)}
    assert "distill.methods.registry" in config_imports
    assert not [m for m in config_imports if m.startswith(("distill.recipes", "distill.engine"))]


def test_every_builtin_method_is_one_module_of_distill_methods():
    files = {path.stem for path in (SRC / "methods").glob("*.py") if not path.stem.startswith("_")}
    assert files - {"base", "registry"} == {
        "ce", "kd", "logit_matching", "dkd", "dist", "standardized_kd", "mlkd", "ctkd", "wttm",
        "fitnets", "at", "sp", "cc", "vid", "rkd",
        "pkt", "ab", "ft", "fsp", "nst", "crd", "reviewkd", "simkd"}
    for method in list_methods():  # ft's module also holds its first stage, ft_paraphraser
        expected = "ft" if method.name == "ft_paraphraser" else method.name
        assert method.objective.__module__ == f"distill.methods.{expected}", method.name
        assert method.paper


def test_a_method_states_where_it_may_stand_among_the_stages(monkeypatch):
    from distill.config import ConfigError, load_config
    from distill.methods import StagePlan

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def after_kd(plan: StagePlan) -> str | None:
        return None if "kd" in plan.methods[:plan.position] else "second needs a kd stage before it"

    @register_method("second", paper="none: a test", check_plan=after_kd)
    class Second(Objective):
        needs_teacher = True

    base = {"name": "t", "recipe": "distill", "data": {"name": "digits"}, "teacher": {"model": {"name": "mlp"}},
            "student": {"model": {"name": "mlp"}}}
    with pytest.raises(ConfigError, match=r"distill\.method: second needs a kd stage before it"):
        load_config(None, ["distill.method=second"], base=base)
    cfg = load_config(None, ["distill.stages=[{method: kd}, {method: second}]"], base=base)
    assert [s.method for s in cfg.distill.stages] == ["kd", "second"]
    with pytest.raises(ConfigError, match=r"use a method on logits only \(kd, logit_matching, dkd, dist, "
                                          r"standardized_kd, mlkd, ctkd, wttm, second\)"):
        load_config(None, ["distill.method=at", "distill.cache.path=c.npz"], base=base)
