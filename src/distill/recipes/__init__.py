"""Experiments composed from the parts: one function each, chosen by a config's ``recipe``.

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
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.config import Config
from distill.recipes.common import Run

# name -> "module:function"; imported when a run asks for it
RECIPES: dict[str, str] = {
    "teacher": "distill.recipes.hinton:teacher",
    "baseline": "distill.recipes.hinton:baseline",
    "distill": "distill.recipes.hinton:distill",
    "compare": "distill.recipes.hinton:compare",
    "cache": "distill.recipes.cache:cache",
    "ensemble": "distill.recipes.ensemble:ensemble",
    "specialists": "distill.recipes.specialists:specialists",
    "online": "distill.recipes.online:online",
    "born_again": "distill.recipes.online:born_again",
    "small_data": "distill.recipes.hinton_experiments:small_data",
    "left_out_class": "distill.recipes.hinton_experiments:left_out_class",
}


def get_recipe(name: str) -> Callable[[Run], dict[str, Any]]:
    """The function that runs recipe ``name``."""
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    module, _, func = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), func)


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


__all__ = ["RECIPES", "Run", "get_recipe", "run_recipe"]
