"""Experiments composed from the parts: one function each, chosen by a config's ``recipe``.

- ``teacher``: train the teacher on hard labels.
- ``baseline``: train the student on hard labels.
- ``distill``: distil the student from the teacher (trained first unless ``teacher.checkpoint``).
- ``compare``: teacher, baseline student and distilled student side by side (``distill demo``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.config import Config
from distill.recipes.common import Run
from distill.recipes.hinton import baseline, compare, distill, teacher

RECIPES: dict[str, Callable[[Run], dict[str, Any]]] = {
    "teacher": teacher,
    "baseline": baseline,
    "distill": distill,
    "compare": compare,
}


def run_recipe(cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Run ``cfg.recipe`` and return its results (also written to ``<run_dir>/results.json``)."""
    return RECIPES[cfg.recipe](Run(cfg, run_dir=run_dir, resume=resume, progress=progress))


__all__ = ["RECIPES", "Run", "run_recipe"]
