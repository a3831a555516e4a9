"""The recipe registry: every experiment a config's ``recipe`` can name, with its own options.

A recipe module registers its run function, the model of its own config section and what it needs::

    class EnsembleOptions(Section):
        members: int = Field(3, ge=1)

    @register_recipe("ensemble", options=EnsembleOptions, reads=("teacher", "student", "distill"),
                     roles=("teacher", "student"))
    def ensemble(run: Run) -> dict[str, Any]: ...

The core schema (:class:`distill.config.Config`) knows no recipe: :func:`distill.config.resolve`
validates a config against the core plus the sections of the registered recipes
(:func:`distill.config.config_model`), each by its recipe's model, with the same key-path errors
(``ensemble.members: ...``). The built-in recipes register when :mod:`distill.recipes` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:  # annotations only: the schema imports this module to look recipes up
    from distill.config.schema import Config

__all__ = ["CORE_SECTIONS", "RecipeSpec", "find_recipe", "list_recipes", "recipe_names", "register_recipe",
           "unregister_recipe"]

CORE_SECTIONS = ("name", "recipe", "seed", "device", "output_dir", "data", "train", "teacher", "student",
                 "distill", "report")
"""The top-level keys of the core schema; a recipe's section takes another name."""

COMMON_SECTIONS = ("name", "recipe", "seed", "device", "output_dir", "data", "train", "report")
"""The top-level keys every recipe reads."""

RecipeFunction = TypeVar("RecipeFunction", bound=Callable[..., dict[str, Any]])


@dataclass(frozen=True)
class RecipeSpec:
    """A registered recipe.

    ``run``: the function that runs it (takes a :class:`distill.recipes.Run`, returns its results);
    ``section`` and ``options``: the top-level key of its own settings and the pydantic model that
    validates them (None: it has none); ``reads``: the core sections it reads besides
    :data:`COMMON_SECTIONS` (``distill run --dry-run`` shows only these); ``roles``: the model roles
    (``teacher``, ``student``) a config must give, as a function of the config; ``check``: further
    checks of a whole config (raise ``ValueError`` whose message starts with the key path); ``pairs``: which of
    its models are compared with which, given the model tags of its results (``distill run --seeds`` gives each
    pair's gain an interval): by default the ``distilled`` student against the ``baseline``; ``seeds``: whether
    ``--seeds N`` applies (a study such as ``tune`` is not one experiment to repeat)."""

    name: str
    run: Callable[..., dict[str, Any]]
    summary: str
    section: str | None
    options: type[BaseModel] | None
    reads: tuple[str, ...]
    roles: Callable[[Config], Sequence[str]]
    check: Callable[[Config], None] | None
    pairs: Callable[[Sequence[str]], list[tuple[str, str]]]
    seeds: bool = True

    @property
    def sections(self) -> tuple[str, ...]:
        """Every top-level key the recipe reads."""
        return COMMON_SECTIONS + self.reads + ((self.section,) if self.section else ())


_RECIPES: dict[str, RecipeSpec] = {}


def distilled_vs_baseline(tags: Sequence[str]) -> list[tuple[str, str]]:
    """The default comparison of a recipe's models: ``distilled`` against ``baseline``, when it has both."""
    return [("distilled", "baseline")] if "distilled" in tags and "baseline" in tags else []


def register_recipe(name: str, *, options: type[BaseModel] | None = None, section: str | None = None,
                    reads: Sequence[str] = (), roles: Sequence[str] | Callable[[Config], Sequence[str]] = (),
                    check: Callable[[Config], None] | None = None,
                    pairs: Callable[[Sequence[str]], list[tuple[str, str]]] | None = None,
                    seeds: bool = True) -> Callable[[RecipeFunction], RecipeFunction]:
    """Register the decorated function as recipe ``name`` (see the module docstring).

    ``section`` defaults to ``name`` when the recipe has ``options``. A section's model should forbid
    unknown keys (subclass :class:`distill.config.Section`); one with a ``train`` field gets the shared
    ``train`` section merged under it, as ``teacher.train`` does."""
    if options is not None and section is None:
        section = name
    if section is not None and options is None:
        raise ValueError(f"recipe {name!r}: section {section!r} needs an options model")
    unknown = [s for s in reads if s not in CORE_SECTIONS]
    if unknown:
        raise ValueError(f"recipe {name!r}: reads names {', '.join(unknown)}, not sections of the core config "
                         f"({', '.join(CORE_SECTIONS)})")
    if section in CORE_SECTIONS:
        raise ValueError(f"recipe {name!r}: section {section!r} is a section of the core config; name it otherwise")
    for other in _RECIPES.values():
        if other.name != name and other.section is not None and other.section == section:
            raise ValueError(f"recipe {name!r}: section {section!r} is taken by recipe {other.name!r}")
    if callable(roles):
        needed = roles
    else:
        fixed = tuple(roles)

        def needed(cfg: Config) -> Sequence[str]:
            return fixed

    def register(run: RecipeFunction) -> RecipeFunction:
        if name in _RECIPES and _RECIPES[name].run is not run:
            raise ValueError(f"recipe {name!r} is already registered (by {_RECIPES[name].run.__module__}); choose "
                             "another name or unregister_recipe it first")
        summary = (run.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _RECIPES[name] = RecipeSpec(name, run, " ".join(summary.split()), section, options, tuple(reads), needed,
                                    check, pairs or distilled_vs_baseline, seeds)
        return run

    return register


def unregister_recipe(name: str) -> None:
    """Remove recipe ``name`` (for tests and plugins that replace one)."""
    _RECIPES.pop(name, None)


def find_recipe(name: str) -> RecipeSpec | None:
    """The recipe registered as ``name``, or None."""
    return _RECIPES.get(name)


def recipe_names() -> list[str]:
    """The registered recipes' names, in registration order."""
    return list(_RECIPES)


def list_recipes() -> list[RecipeSpec]:
    """The registered recipes, in registration order."""
    return list(_RECIPES.values())
