"""The recipe registry (issue 12 item 2): the core config knows no recipe; a recipe registers itself with the
model of its own section, and a config's recipe options are validated by that model with key-path errors.

A toy recipe written as one file goes through ``distill run`` via the registry alone."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from distill.cli import main
from distill.config import CORE_SECTIONS, Config, ConfigError, config_model, find_recipe, load_config, recipe_names
from distill.config.registry import _RECIPES, register_recipe

BUILT_IN = ["teacher", "baseline", "distill", "compare", "cache", "ensemble", "small_data", "left_out_class",
            "online", "born_again", "qat", "specialists", "tune"]

TOY = textwrap.dedent('''
    """A toy recipe in one file: its options model, registered by name with the sections it reads."""
    from typing import Any

    from pydantic import Field

    from distill.config import Section, register_recipe
    from distill.objectives import CrossEntropy
    from distill.recipes import Run


    class ToyOptions(Section):
        """The toy's own section."""

        widths: list[int] = Field(default_factory=lambda: [8], description="hidden widths of the students")
        repeat: int = Field(1, ge=1, le=3, description="students per width")


    @register_recipe("toy", options=ToyOptions, reads=("student",), roles=("student",))
    def toy(run: Run) -> dict[str, Any]:
        """Students of several widths, trained on hard labels."""
        opts = run.cfg.options(ToyOptions)
        role = run.cfg.student
        models = {}
        for width in opts.widths:
            for k in range(opts.repeat):
                spec = role.model.model_copy(update={"hidden": [width]})
                model, model_spec = run.build_model(role.model_copy(update={"model": spec}), 100 + k)
                models[f"w{width}_{k}"] = run.train(f"w{width}_{k}", model, model_spec, CrossEntropy(), role).model
        return run.finish(models, None, extra={"toy": opts.model_dump(mode="json")})
''')


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """Import the toy recipe's one file (registering ``toy``); the registry is restored afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "toy_distill_recipe.py").write_text(TOY)
    monkeypatch.delitem(sys.modules, "toy_distill_recipe", raising=False)
    before = dict(_RECIPES)
    module = importlib.import_module("toy_distill_recipe")
    yield module
    _RECIPES.clear()
    _RECIPES.update(before)
    sys.modules.pop("toy_distill_recipe", None)


def test_the_core_schema_has_no_recipe_section():
    assert list(Config.model_fields) == list(CORE_SECTIONS)
    assert recipe_names() == BUILT_IN
    composed = list(config_model().model_fields)
    assert composed == [*CORE_SECTIONS, "ensemble", "small_data", "left_out", "online", "born_again", "qat", "specialists",
                        "tune"]


def test_a_toy_recipe_in_one_file_runs_through_distill_run(toy_module, tmp_path, capsys):
    assert find_recipe("toy").options is toy_module.ToyOptions
    cfg = {"name": "toy", "recipe": "toy", "seed": 0, "device": "cpu", "data": {"name": "digits", "train_size": 200},
           "train": {"epochs": 1, "batch_size": 64, "optimizer": {"lr": 0.01}}, "report": {"latency": False},
           "student": {"model": {"name": "mlp", "hidden": [4]}}, "toy": {"widths": [4, 6], "repeat": 1}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert results["toy"] == {"widths": [4, 6], "repeat": 1}
    assert list(results["models"]) == ["w4_0", "w6_0"]
    assert results["models"]["w6_0"]["params"] == 64 * 6 + 6 + 6 * 10 + 10  # the toy's width, not student.model's
    saved = yaml.safe_load((tmp_path / "toy" / "config.yaml").read_text())
    assert saved["toy"] == {"widths": [4, 6], "repeat": 1}
    assert main(["recipes"]) == 0
    assert "toy: Students of several widths, trained on hard labels." in capsys.readouterr().out


def test_a_recipe_section_is_validated_by_its_own_model_with_key_paths(toy_module):
    base = {"recipe": "toy", "student": {"model": {"name": "mlp"}}}
    with pytest.raises(ConfigError) as e:
        load_config(base=base, overrides=["toy.repeat=4", "toy.width=3"])
    message = str(e.value)
    assert "  toy.repeat: Input should be less than or equal to 3 (got 4)" in message
    assert "  toy.width: unknown key" in message
    with pytest.raises(ConfigError, match="ensemble.members: Input should be greater than or equal to 1"):
        load_config(base={"recipe": "ensemble", "teacher": {"model": {"name": "mlp"}},
                          "student": {"model": {"name": "mlp"}}}, overrides=["ensemble.members=0"])


def test_an_unknown_recipe_or_section_lists_what_exists():
    with pytest.raises(ConfigError, match=r"recipe: unknown recipe 'ensemble_of_one'; choose one of teacher, "
                                          r"baseline, distill, compare"):
        load_config(base={"recipe": "ensemble_of_one"})
    with pytest.raises(ConfigError, match=r"ensembel: unknown key"):
        load_config(base={"recipe": "baseline", "student": {"model": {"name": "mlp"}}, "ensembel": {"members": 2}})


def test_registration_refuses_taken_names_and_sections():
    with pytest.raises(ValueError, match="recipe 'toy2': section 'ensemble' is taken by recipe 'ensemble'"):
        register_recipe("toy2", options=Config, section="ensemble")
    with pytest.raises(ValueError, match="section 'train' is a section of the core config"):
        register_recipe("toy2", options=Config, section="train")
    with pytest.raises(ValueError, match="reads names ensemble, not sections of the core config"):
        register_recipe("toy2", reads=("ensemble",))
    with pytest.raises(ValueError, match="recipe 'teacher' is already registered"):
        register_recipe("teacher")(lambda run: {})
    assert recipe_names() == BUILT_IN


def test_the_core_loader_says_to_import_the_recipes_when_none_is_registered():
    code = ("from distill.config import load_config, ConfigError\n"
            "base = {'teacher': {'model': {'name': 'mlp'}}, 'student': {'model': {'name': 'mlp'}}}\n"
            "try:\n    load_config(base=base)\nexcept ConfigError as e:\n    print(e)\n"
            "import distill.recipes\nprint(load_config(base=base).recipe)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "recipe: recipe 'compare': no recipe is registered yet; import distill.recipes first" in out
    assert out.splitlines()[-1] == "compare"


def test_the_specialists_section_inherits_the_shared_train_section_only_for_its_recipe():
    base = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}, "train": {"epochs": 7}}
    assert load_config(base={**base, "recipe": "specialists"}).options(
        find_recipe("specialists").options).train.epochs == 7
    other = load_config(base={**base, "recipe": "compare"})
    assert other.model_dump()["specialists"]["train"]["epochs"] == 10  # as before: untouched defaults
    with pytest.raises(TypeError, match="recipe 'compare' has no options of type SpecialistsConfig"):
        other.options(find_recipe("specialists").options)
