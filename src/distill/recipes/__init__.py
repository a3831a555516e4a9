"""Experiments composed from the parts: one module each, registered by name (:func:`distill.config.register_recipe`)
with the model of its own config section; a config's ``recipe`` chooses one. ``distill recipes`` lists them.

- ``teacher``: train the teacher on hard labels.
- ``baseline``: train the student on hard labels.
- ``distill``: distil the student from the teacher (trained first unless ``teacher.checkpoint``),
  or from a cache of its outputs (``distill.cache.path``).
- ``compare``: teacher, baseline student and distilled student side by side (``distill demo``).
- ``cache``: run the teacher once over the training set and store its outputs.
- ``ensemble``: several teachers from different seeds, their ensemble, one student distilled from it.
- ``specialists``: a generalist plus specialists on confusable classes (Hinton et al. 2015, section 5).
- ``online``: deep mutual learning, students teaching each other.
- ``born_again``: generations of the same architecture, each distilled from the previous one.
- ``small_data``: soft targets as a regularizer when the student sees a few percent of the data.
- ``left_out_class``: distil with one class missing from the transfer set, then correct its bias.

Importing this package imports every module in it whose name does not start with ``_`` (each
registers its recipes); a recipe defined elsewhere registers itself the same way when its module is
imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.config import Config, find_recipe, list_recipes, load_config, recipe_names, resolve
from distill.recipes.common import Run


def _import_recipes() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_recipes()


def get_recipe(name: str) -> Callable[[Run], dict[str, Any]]:
    """The function that runs recipe ``name``."""
    spec = find_recipe(name)
    if spec is None:
        raise ValueError(f"recipe: unknown recipe {name!r}; choose one of {', '.join(recipe_names())}")
    return spec.run


def describe_recipes() -> str:
    """Every registered recipe: its name, what it does, the sections it reads and its own options with their
    defaults (``distill recipes`` prints this)."""
    cards = []
    for spec in list_recipes():
        reads = ", ".join(spec.reads) or "(the common sections only)"
        lines = [f"{spec.name}: {spec.summary.replace('``', '`')}", f"  reads: {reads}"]
        if spec.options is not None:
            lines.append(f"  options ({spec.section}):")
            for key, field in spec.options.model_fields.items():
                default = field.get_default(call_default_factory=True)
                shown = "{...}" if hasattr(default, "model_dump") else repr(default)
                about = f"  {field.description}" if field.description else ""
                lines.append(f"    {key} = {shown}{about}")
        cards.append("\n".join(lines))
    return "\n\n".join(cards)


def run_recipe(cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True, allow_import: bool = False, allow_changes: bool = False) -> dict[str, Any]:
    """Run ``cfg.recipe`` and return its results (also written to ``<run_dir>/results.json``).

    ``run_dir``: where the run's files go (default: ``output_dir/name``, or the first free
    ``name-2``, ``name-3``, ... claimed atomically). ``resume``: continue the run in ``run_dir``
    (default ``output_dir/name``), which must exist and have been made with the same settings
    that change the result, unless ``allow_changes``. A run that fails before writing any
    training output removes the directory it created.

    ``allow_import``: a checkpoint named without its ``model`` (the architecture read from the file) may
    name its builder by import path (off by default: the file would choose code to run)."""
    recipe = get_recipe(cfg.recipe)
    run = Run(cfg, run_dir=run_dir, resume=resume, progress=progress, allow_import=allow_import,
              allow_changes=allow_changes)
    try:
        return recipe(run)
    except Exception:
        run.discard_if_empty()
        raise


__all__ = ["Run", "describe_recipes", "get_recipe", "load_config", "resolve", "run_recipe"]
