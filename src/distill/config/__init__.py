"""Typed configuration: YAML in, validated objects out, command-line overrides in between.

- :mod:`~distill.config.yamlio`: reading YAML safely (no code runs, no duplicate keys, no alias bombs),
  ``key.path=value`` overrides, merging;
- :mod:`~distill.config.schema`: the core schema (data, train, teacher, student, distill, report, ...);
- :mod:`~distill.config.registry`: the recipe registry; each recipe brings its own section's model;
- :mod:`~distill.config.load`: the core and the registered recipes' sections composed and validated
  (:func:`load_config`, :func:`resolve`), and written back (:func:`to_yaml`);
- :mod:`~distill.config.diff`: which settings differ between two configs, and which change a result.

The built-in recipes register when :mod:`distill.recipes` is imported (the command line and
``distill.load_config`` do); before that, only recipes registered by hand are known.
"""

from distill.config.diff import RESULT_NEUTRAL, RESULT_NEUTRAL_TRAIN, diff_settings, result_neutral
from distill.config.load import config_model, ignored_sections, load_config, resolve, to_yaml
from distill.config.registry import (
    COMMON_SECTIONS,
    CORE_SECTIONS,
    RecipeSpec,
    find_recipe,
    list_recipes,
    recipe_names,
    register_recipe,
    unregister_recipe,
)
from distill.config.schema import (
    MAX_INT,
    SAFE_NAME,
    AugmentConfig,
    CacheConfig,
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimizerConfig,
    ReportConfig,
    RoleConfig,
    ScheduleConfig,
    Section,
    StageConfig,
    TrainConfig,
    TransferConfig,
    ViewMode,
    ViewsConfig,
)
from distill.config.yamlio import (
    MAX_ALIAS_EXPANSION,
    ConfigError,
    ConfigLoader,
    apply_overrides,
    builtin_config,
    deep_merge,
    load_yaml,
    parse_override,
)

__all__ = [
    "COMMON_SECTIONS", "CORE_SECTIONS", "MAX_ALIAS_EXPANSION", "MAX_INT", "RESULT_NEUTRAL", "RESULT_NEUTRAL_TRAIN",
    "SAFE_NAME", "AugmentConfig", "CacheConfig", "Config", "ConfigError", "ConfigLoader", "DataConfig",
    "DistillConfig", "ModelConfig", "OptimizerConfig", "RecipeSpec", "ReportConfig", "RoleConfig", "ScheduleConfig",
    "Section", "StageConfig", "TrainConfig", "TransferConfig", "ViewMode", "ViewsConfig", "apply_overrides",
    "builtin_config", "config_model", "deep_merge", "diff_settings", "find_recipe", "ignored_sections",
    "list_recipes", "load_config", "load_yaml", "parse_override", "recipe_names", "register_recipe", "resolve",
    "result_neutral", "to_yaml", "unregister_recipe",
]
