"""Loading a config: the core schema plus the registered recipes' sections, composed into one model;
``train`` sections merged; errors as key paths; the resolved config written back as YAML."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from distill.config.registry import find_recipe, list_recipes
from distill.config.schema import Config, _stage_epochs
from distill.config.yamlio import ConfigError, apply_overrides, deep_merge, load_yaml
from distill.methods.registry import check_method, predicts

_MODELS: dict[tuple[Any, ...], type[Config]] = {}


def config_model() -> type[Config]:
    """:class:`Config` with one more section per registered recipe that has options (its own model, with its
    defaults), as one pydantic model: what :func:`resolve` validates against. Rebuilt when recipes change."""
    sections = tuple((spec.section, spec.options) for spec in list_recipes() if spec.section and spec.options)
    if sections not in _MODELS:
        fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in sections}
        _MODELS[sections] = create_model("RunConfig", __base__=Config, __module__=__name__, **fields)
    return _MODELS[sections]


def _train_sections() -> list[str]:
    """The recipe sections that carry their own ``train`` (merged over the shared one)."""
    return [s.section for s in list_recipes()
            if s.section and s.options is not None and "train" in s.options.model_fields]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check the spelling; `distill run --help` lists sections)")
        else:
            msg = e["msg"].removeprefix("Value error, ")  # our own validators' messages, as written
            got = e.get("input")
            said = isinstance(got, dict) or (e["type"] == "value_error" and (repr(got) in msg or str(got) in msg))
            lines.append(f"  {loc}: {msg}{'' if said else f' (got {got!r})'}")
    return "\n".join(lines)


def resolve(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config dict into a :class:`Config`, merging the shared ``train`` section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    shared = raw.get("train") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{source}: train must be a section with keys, got {shared!r}")
    trained = _train_sections()
    recipe = raw.get("recipe", Config.model_fields["recipe"].default)
    spec = find_recipe(recipe) if isinstance(recipe, str) else None  # anything else: validation says so
    chosen = spec.section if spec is not None and spec.section in trained else None
    if chosen is not None and raw.get(chosen) is None:
        raw[chosen] = {}  # so the recipe's models inherit the shared train section too
    for role in ("teacher", "student", *trained):
        section = raw.get(role)
        if isinstance(section, dict):
            own = section.get("train") or {}
            if not isinstance(own, dict):
                raise ConfigError(f"{source}: {role}.train must be a section with keys, got {own!r}")
            section["train"] = deep_merge(shared, own)
    _resolve_stages(raw, source)
    try:
        return config_model().model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def _resolve_stages(raw: dict[str, Any], source: str) -> None:
    """Give each of ``distill.stages`` its training settings: ``student.train`` with the stage's ``train``
    (and ``epochs``) merged over it, and ``selection: last`` unless the stage sets it when its method has
    no term on the student's predictions (its validation accuracy would not move)."""
    distill = raw.get("distill")
    stages = distill.get("stages") if isinstance(distill, dict) else None
    if not isinstance(stages, list):
        return  # absent, or not a list: validation says so
    student = raw.get("student")
    base = (student.get("train") or {}) if isinstance(student, dict) else (raw.get("train") or {})
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        try:
            stage = stages[i] = _stage_epochs(stage)
        except ValueError as e:
            raise ConfigError(f"{source}: distill.stages.{i}: {e}") from None
        own = stage.get("train") or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{source}: distill.stages.{i}.train must be a section with keys, got {own!r}")
        if "selection" not in own:
            method, options = stage.get("method"), stage.get("options") or {}
            try:
                method_only = isinstance(method, str) and not predicts(check_method(method, options, ""))
            except (ValueError, TypeError):
                method_only = False  # validation reports it
            if method_only:
                own = {**own, "selection": "last"}
        stage["train"] = deep_merge(base, own)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or start from ``base``), apply ``key.path=value`` overrides, then the top-level
    ``settings`` as given (not read as YAML: the command line's ``--name``, ``--output-dir``, ``--device``),
    and validate."""
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    source = "built-in config"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = load_yaml(p.read_text(), f"config file {p}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: the top level must be a mapping of sections")
        raw = deep_merge(raw, loaded)
    raw = apply_overrides(raw, overrides or [])
    raw.update(settings or {})
    return resolve(raw, source)


def ignored_sections(cfg: Config) -> list[str]:
    """The top-level sections of ``cfg`` that its recipe never reads."""
    spec = find_recipe(cfg.recipe)
    assert spec is not None  # a validated config names a registered recipe
    return [k for k in type(cfg).model_fields if k not in spec.sections]


def to_yaml(cfg: Config, *, used_only: bool = False) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to an equal config.

    ``used_only``: only the sections the recipe reads (its registered ``reads`` and own section; absent roles
    left out too), after a comment naming the ignored ones; it reads back to a config equal in every section the recipe
    reads (``distill run --dry-run`` prints this)."""
    dump = cfg.model_dump(mode="json")
    if not used_only:
        return yaml.safe_dump(dump, sort_keys=False)
    ignored = ignored_sections(cfg)
    kept = {k: v for k, v in dump.items() if k not in ignored and not (v is None and k in ("teacher", "student"))}
    student_train = (dump.get("student") or {}).get("train") or dump["train"]
    for section in ("teacher", "student", *_train_sections()):  # their train: what differs from the shared one
        if isinstance(kept.get(section), dict):
            _only_differences(kept[section], dump["train"])
    for stage in (kept.get("distill") or {}).get("stages") or []:  # each stage's: what differs from the student's
        _only_differences(stage, student_train)
    comment = (f"# recipe {cfg.recipe} ignores (not shown): {', '.join(ignored)}; each train under a model shows "
               f"what differs from the train it is merged over\n")
    return comment + yaml.safe_dump(kept, sort_keys=False)


def _differences(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The part of ``own`` that :func:`deep_merge` over ``base`` needs to give ``own`` back."""
    out: dict[str, Any] = {}
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            nested = _differences(base[key], value)
            if nested:
                out[key] = nested
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def _only_differences(section: dict[str, Any], base: dict[str, Any]) -> None:
    """``section["train"]`` cut down to what differs from ``base`` (removed when nothing does)."""
    own = _differences(base, section.get("train") or {})
    if own:
        section["train"] = own
    else:
        section.pop("train", None)


