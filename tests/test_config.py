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


# --------------------------------------------------------------------------- issue 11, items 2 and 3

LAUGHS = """name: lol
recipe: baseline
student: {model: {name: mlp}}
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_is_refused_naming_the_file_and_line(tmp_path):
    """The "billion laughs" shape (9**9 values) is refused while it is read, at the alias that passes
    10,000 values (here the fifth *d on line 8), not expanded by the config's validation or echo."""
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"config file {path}, line 8: alias *d makes the aliases expand to more "
                                   f"than 10,000 values")
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("name: r\nrecipe: baseline\nstudent: &s {model: {name: mlp}, x: *s}\n")
    with pytest.raises(ConfigError, match=r"recursive.yaml, line 3: alias \*s refers to a node that contains it"):
        load_config(recursive)
    with pytest.raises(ConfigError, match="override 'x=.*', line 1: alias \\*a makes the aliases expand"):
        load_config(None, ["x=[&a [" + ", ".join(["1"] * 5001) + "], *a, *a]"], base=BASE)


def test_modest_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("name: s\nrecipe: compare\n"
                    "teacher: {model: &arch {name: mlp, hidden: [16]}}\n"
                    "student:\n  model:\n    <<: *arch\n    hidden: [8]\n")
    cfg = load_config(path)
    assert cfg.teacher.model.kwargs == {"hidden": [16]}
    assert cfg.student.model.name == "mlp" and cfg.student.model.kwargs == {"hidden": [8]}


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: d\nrecipe: baseline\ntrain:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n"
                    "student: {model: {name: mlp}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"config file {path}, line 6: key 'epochs' is given twice in one mapping, on line 4 "
                            f"and on line 6 (the last would silently win); keep one")
    with pytest.raises(ConfigError, match="override 'student.model={name: mlp, name: cnn}', line 1: key 'name' "
                                          "is given twice in one mapping, on line 1 and on line 1"):
        load_config(None, ["student.model={name: mlp, name: cnn}"], base=BASE)


def test_every_yaml_reader_of_the_config_is_the_one_loader(monkeypatch):
    """Config files, built-in configs and --set values all go through ConfigLoader."""
    import distill.config.yamlio as config

    def refuse(*args, **kwargs):
        raise AssertionError("yaml.safe_load used")

    monkeypatch.setattr(config.yaml, "safe_load", refuse)
    monkeypatch.setattr(config.yaml, "load", refuse)
    assert resolve(builtin_config("demo")).recipe == "compare"
    assert load_config(None, ["train.epochs=5"], base=BASE).train.epochs == 5


# --------------------------------------------------------------------------- issue 11, item 13


@pytest.mark.parametrize("override, message", [
    ("data.val_size=.inf", "data.val_size: Input should be a finite number (got inf)"),
    ("data.val_size=2.5", "data.val_size: a val_size of 1 or more is a count of examples and must be a whole "
                          "number; give a fraction below 1 (e.g. 0.1) or a count (e.g. 2), got 2.5"),
    ("seed=99999999999999999999", "seed: Input should be less than or equal to 4294967295 "
                                  "(got 99999999999999999999)"),
    ("seed=-1", "seed: Input should be greater than or equal to 0 (got -1)"),
    ("data.split_seed=4294967296", "data.split_seed: Input should be less than or equal to 4294967295"),
    ("distill.temperature=.inf", "distill.temperature: Input should be a finite number (got inf)"),
    ("distill.alpha=.nan", "distill.alpha: Input should be a finite number (got nan)"),
    ("train.optimizer.lr=.inf", "train.optimizer.lr: Input should be a finite number (got inf)"),
    ("train.optimizer.betas=[0.9, 1.5]", "train.optimizer.betas.1: Input should be less than 1 (got 1.5)"),
    ("train.schedule.warmup_epochs=.inf", "train.schedule.warmup_epochs: Input should be a finite number"),
    ("train.batch_size=4294967296", "train.batch_size: 4294967296 is beyond the range of a setting (at most "
                                    "2**32 - 1 = 4,294,967,295 in size)"),
    ("student.model.hidden=[8, .nan]", "student.model: factory keyword hidden.1: nan is not a finite number"),
    ("distill.views.scale=[0.5, 0.2]", "distill.views.scale: scale is a range (low, high) with 0 < low <= "
                                       "high <= 1, got [0.5, 0.2]"),
    ("ensemble.weights=[1, .nan, 1]", "ensemble.weights.1: Input should be a finite number (got nan)"),
    ("specialists.temperature=-.inf", "specialists.temperature: Input should be a finite number (got -inf)"),
])
def test_every_number_is_checked_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override], base=BASE)
    assert message in str(e.value)


def test_options_of_a_method_must_be_finite():
    with pytest.raises(ConfigError, match="distill.options: weight: inf is not a finite number"):
        load_config(None, ["distill.method=kd", "distill.options={weight: .inf}"], base=BASE)


def test_a_whole_val_size_is_a_count_and_a_fraction_below_one():
    assert load_config(None, ["data.val_size=200"], base=BASE).data.val_size == 200
    assert load_config(None, ["data.val_size=0.25"], base=BASE).data.val_size == 0.25
    assert load_config(None, ["seed=4294967295"], base=BASE).seed == 2**32 - 1
