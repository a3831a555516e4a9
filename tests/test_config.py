import pytest
import yaml

from distill.config import Config, ConfigError, builtin_config, load_config, resolve, to_yaml

BASE = {
    "name": "t",
    "recipe": "compare",
    "train": {"epochs": 3, "batch_size": 32},
    "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 7}},
    "student": {"model": {"name": "mlp", "hidden": [8]}},
}


def test_shared_train_section_is_merged_under_role_overrides():
    cfg = resolve(BASE)
    assert cfg.teacher.train.epochs == 7  # the role's own value wins
    assert cfg.teacher.train.batch_size == 32  # inherited from the shared section
    assert cfg.student.train.epochs == 3
    assert cfg.student.model.kwargs == {"hidden": [8]}


def test_unknown_key_is_an_error_naming_its_path():
    raw = {**BASE, "train": {"epoch": 3}}
    with pytest.raises(ConfigError) as e:
        resolve(raw)
    assert "train.epoch: unknown key" in str(e.value)


def test_nested_unknown_key_inside_a_role():
    raw = {**BASE, "student": {"model": {"name": "mlp"}, "train": {"optimizer": {"lrate": 0.1}}}}
    with pytest.raises(ConfigError, match=r"student\.train\.optimizer\.lrate: unknown key"):
        resolve(raw)


def test_mistyped_value_names_the_key_and_the_value():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=many"], base=BASE)
    assert "train.epochs" in str(e.value) and "'many'" in str(e.value)


def test_unknown_optimizer_name_lists_choices():
    with pytest.raises(ConfigError, match=r"optimizer\.name.*'sgd', 'adam' or 'adamw'"):
        load_config(None, ["train.optimizer.name=rmsprop"], base=BASE)


def test_overrides_apply_yaml_values_and_reach_both_roles():
    cfg = load_config(None, ["train.epochs=5", "student.model.hidden=[16, 16]", "distill.temperature=8"], base=BASE)
    assert cfg.student.train.epochs == 5 and cfg.teacher.train.epochs == 7
    assert cfg.student.model.kwargs["hidden"] == [16, 16]
    assert cfg.distill.temperature == 8.0


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["train.epochs"], base=BASE)
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["name.x=1"], base=BASE)


def test_recipe_needs_its_roles():
    with pytest.raises(ConfigError, match="needs a teacher"):
        resolve({"recipe": "distill", "student": {"model": {"name": "mlp"}}})
    with pytest.raises(ConfigError, match="model .* or a checkpoint"):
        resolve({"recipe": "teacher", "teacher": {"train": {}}})


def test_resolved_yaml_round_trips(tmp_path):
    cfg = resolve(BASE)
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["student"]["model"] == {"name": "mlp", "hidden": [8]}


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    python_tag = tmp_path / "tag.yaml"
    python_tag.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):  # safe_load refuses to build Python objects
        load_config(python_tag)


def test_builtin_demo_config_is_valid():
    cfg = resolve(builtin_config("demo"))
    assert isinstance(cfg, Config) and cfg.recipe == "compare" and cfg.data.name == "digits"
