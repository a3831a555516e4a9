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
- ``qat``: quantization-aware distillation: the student distilled with int8 fake quantization.

Importing this package imports every module in it whose name does not start with ``_`` (each
registers its recipes); a recipe defined elsewhere registers itself the same way when its module is
imported.
"""

from __future__ import annotations

import importlib
import pkgutil

from distill.config import list_recipes, load_config, resolve
from distill.recipes.common import Run, get_recipe, run_recipe
from distill.recipes.seeds import run_seeds


def _import_recipes() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_recipes()


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


__all__ = ["Run", "describe_recipes", "get_recipe", "load_config", "resolve", "run_recipe", "run_seeds"]
