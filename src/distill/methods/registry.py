"""The method registry: every distillation method by the name a config's ``distill.method`` gives it.

A method module registers its objective class with :func:`register_method`, which records the paper,
where the defaults come from and what a recipe supplies (CRD's ``num_data``, FT's paraphraser)::

    @register_method("kd", paper="Hinton, Vinyals & Dean (2015), arXiv:1503.02531")
    class KnowledgeDistillation(Objective): ...

The options of a method are its objective's constructor arguments (typed, with their defaults).
:func:`get_method` finds one by name, :func:`list_methods` lists them (``distill methods`` prints
them), :func:`build_method` builds one, and :func:`check_method` / :func:`method_objective` are what a
config and a recipe use. An unknown name or option is an error listing what exists.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import Tensor, nn

from distill.methods.base import Objective

__all__ = [
    "REQUIRED",
    "METHODS",
    "Method",
    "RunFacts",
    "StagePlan",
    "StudentWrapper",
    "register_method",
    "get_method",
    "list_methods",
    "method_options",
    "configurable_options",
    "build_method",
    "build_objective",
    "describe_methods",
    "method_card",
    "check_method",
    "method_objective",
    "plan_problem",
    "logit_methods",
    "predicts",
    "taps_teacher",
]

REQUIRED = inspect.Parameter.empty
"""The default of an option that has none (e.g. CRD's ``num_data``)."""

ObjectiveClass = TypeVar("ObjectiveClass", bound=type[Objective])


@dataclass(frozen=True)
class RunFacts:
    """What a recipe knows when it builds a method's objective: the size of the training set and the
    objectives of the stages trained before (FT takes its paraphraser from them)."""

    num_data: int
    earlier: Sequence[Objective] = ()


@dataclass(frozen=True)
class StagePlan:
    """Where a method stands in a config: the ``methods`` of the stages in order (one entry for
    ``distill.method``), its ``position`` among them, and whether the student sees inputs of another size than
    the teacher (``distill.views.student_size``)."""

    methods: Sequence[str]
    position: int
    resized_student: bool = False


StudentWrapper = Callable[[nn.Module, dict[str, Any], nn.Module, dict[str, Any], Tensor, dict[str, Any]],
                          tuple[nn.Module, dict[str, Any]]]
"""``(student, model_spec, teacher, teacher_model_spec, probe, options) -> (model, model_spec)``: the model a method
trains and deploys around the student, and the ``model_spec`` its checkpoint records."""


@dataclass(frozen=True)
class Method:
    """One registered method.

    ``objective``: its class (options = constructor arguments); ``paper``: the paper it implements;
    ``defaults``: where the default options come from; ``automatic``: options the recipe sets, never the
    config (``{option: what it is set to}``), filled by ``supply``; ``model_options``: options (with their
    defaults) that go to the model the method trains rather than to the objective (SimKD's
    :class:`~distill.methods.simkd.SimKDStudent`); ``check_plan``: what is wrong with the method at its place
    among the stages (an error message without the config key), or None; ``wrap_student``: the model the method
    trains around the student (:data:`StudentWrapper`), which needs the live teacher model;
    ``follows_distill_loss``: its options ``temperature`` and ``alpha`` default to the config's
    ``distill.temperature`` and ``distill.alpha`` (``kd``, ``logit_matching``: ``distill.method: kd`` is
    ``distill.loss: kd``); ``order``: its place in listings.
    """

    name: str
    objective: type[Objective]
    paper: str
    defaults: str = ""
    automatic: Mapping[str, str] = field(default_factory=dict)
    supply: Callable[[RunFacts], dict[str, Any]] | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    check_plan: Callable[[StagePlan], str | None] | None = None
    wrap_student: StudentWrapper | None = None
    follows_distill_loss: bool = False
    order: float = float("inf")

    def options(self) -> dict[str, Any]:
        """``{option: default}`` of the objective (:data:`REQUIRED` for an option without one)."""
        signature = inspect.signature(self.objective.__init__)
        return {p.name: p.default for p in signature.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def option_types(self) -> dict[str, str]:
        """``{option: its annotation as written}`` of the objective's options."""
        signature = inspect.signature(self.objective.__init__)
        return {p.name: p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
                for p in signature.parameters.values() if p.name != "self" and p.annotation is not p.empty}

    def configurable_options(self) -> dict[str, Any]:
        """``{option: default}`` that a config may set: the objective's options except the ``automatic`` ones,
        and the ``model_options``."""
        options = {k: v for k, v in self.options().items() if k not in self.automatic}
        options.update(self.model_options)
        return options

    @property
    def taps_teacher(self) -> bool:
        """Whether it reads the teacher's intermediate features (so it needs the live teacher model)."""
        return self.objective.taps_teacher


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, *, paper: str, defaults: str = "", automatic: Mapping[str, str] | None = None,
                    supply: Callable[[RunFacts], dict[str, Any]] | None = None,
                    model_options: Mapping[str, Any] | None = None,
                    check_plan: Callable[[StagePlan], str | None] | None = None,
                    wrap_student: StudentWrapper | None = None, follows_distill_loss: bool = False,
                    order: float | None = None) -> Callable[[ObjectiveClass], ObjectiveClass]:
    """A class decorator registering an :class:`Objective` subclass as method ``name`` (see :class:`Method`
    for the other arguments; ``order`` left out puts it after the methods registered before it).

    Registering a name again is an error, unless it is the same class (a module imported again)."""
    if not name.isidentifier():
        raise ValueError(f"a method name must be a Python identifier (it is a config value), got {name!r}")

    def register(cls: ObjectiveClass) -> ObjectiveClass:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"register_method({name!r}) decorates an Objective subclass, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and (old.objective.__module__, old.objective.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise ValueError(f"method {name!r} is already registered by {old.objective.__module__}."
                             f"{old.objective.__qualname__}; choose another name")
        position = order if order is not None else (old.order if old is not None else 1000.0 + len(_REGISTRY))
        _REGISTRY[name] = Method(name, cls, paper, defaults, dict(automatic or {}), supply,
                                 dict(model_options or {}), check_plan, wrap_student, follows_distill_loss,
                                 position)
        return cls

    return register


def list_methods() -> list[Method]:
    """Every registered method, in listing order."""
    return sorted(_REGISTRY.values(), key=lambda m: m.order)


def _names() -> list[str]:
    return [m.name for m in list_methods()]


def get_method(name: str) -> Method:
    """The method registered as ``name``; a ``ValueError`` listing the methods (and close names) otherwise."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown distillation method {name!r}.{hint} The methods are: {', '.join(_names())}")
    return _REGISTRY[name]


class _MethodTable(Mapping[str, type[Objective]]):
    """A read-only view of the registry as ``{name: objective class}``, in listing order."""

    def __getitem__(self, name: str) -> type[Objective]:
        return _REGISTRY[name].objective

    def __iter__(self) -> Iterator[str]:
        return iter(_names())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(_names())})"


METHODS: Mapping[str, type[Objective]] = _MethodTable()
"""Name -> objective class, for every registered method (a live view of the registry)."""


def method_options(name: str) -> dict[str, Any]:
    """``{option: default}`` of method ``name`` (:data:`REQUIRED` for a required option)."""
    return get_method(name).options()


def configurable_options(name: str) -> dict[str, Any]:
    """``{option: default}`` that a config may set for method ``name`` (see :meth:`Method.configurable_options`)."""
    return get_method(name).configurable_options()


def _listed(options: Mapping[str, Any]) -> str:
    return ", ".join(k if v is REQUIRED else f"{k}={v!r}" for k, v in options.items())


def describe_methods() -> str:
    """One line per method: its name, class and options with their defaults."""
    return "\n".join(f"{m.name} ({m.objective.__name__}): {_listed(m.options())}" for m in list_methods())


def method_card(method: Method) -> str:
    """What ``distill methods`` prints for ``method``: its name and class, the paper, where the defaults come
    from, the options a config sets (``distill.options``) with their types and defaults, and what the recipe
    supplies."""
    types = method.option_types()
    options = ", ".join(f"{k}: {types[k]}" + ("" if v is REQUIRED else f" = {v!r}") if k in types
                        else (k if v is REQUIRED else f"{k} = {v!r}")
                        for k, v in method.configurable_options().items())
    lines = [f"{method.name} ({method.objective.__name__})", f"  paper:    {method.paper}"]
    if method.defaults:
        lines.append(f"  defaults: {method.defaults}")
    lines.append(f"  options:  {options or '(none)'}")
    lines += [f"  set by the recipe: {k} ({why})" for k, why in method.automatic.items()]
    if method.taps_teacher:
        lines.append("  reads the teacher's intermediate features (needs the live teacher model)")
    return "\n".join(lines)


def build_method(name: str, **options: Any) -> Objective:
    """The objective of method ``name`` with ``options``; an unknown name or option is a ``ValueError`` listing
    the choices (and a missing required option, e.g. CRD's ``num_data``, one naming it)."""
    method = get_method(name)
    accepted = method.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        lines = [f"method {name!r} ({method.objective.__name__}) has no option {', '.join(map(repr, unknown))}."]
        for key in unknown:
            close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
            if close:
                lines.append(f"Did you mean {close[0]!r} for {key!r}?")
        lines.append(f"Its options: {_listed(accepted)}")
        raise ValueError(" ".join(lines))
    missing = [k for k, v in accepted.items() if v is REQUIRED and k not in options]
    if missing:
        raise ValueError(f"method {name!r} ({method.objective.__name__}) needs {', '.join(map(repr, missing))}"
                         + (" (the number of training examples, len(data.train))" if "num_data" in missing else ""))
    return method.objective(**options)


def build_objective(loss: str, temperature: float = 4.0, alpha: float = 0.9) -> Objective:
    """The objective named in a config's ``distill.loss``: ``kd`` (at ``temperature``, ``alpha``) or
    ``logit_matching`` (``alpha``)."""
    if loss == "kd":
        return build_method("kd", temperature=temperature, alpha=alpha)
    if loss == "logit_matching":
        return build_method("logit_matching", alpha=alpha)
    raise ValueError(f"distill.loss: unknown loss {loss!r}; choose 'kd' or 'logit_matching'")


def method_objective(method: str, options: Mapping[str, Any], *, num_data: int,
                     earlier: Sequence[Objective] = ()) -> Objective:
    """The objective of ``method`` with the config's ``options`` (less its ``model_options``) and what the
    recipe supplies (the method's ``supply``: CRD's ``num_data``, FT's paraphraser from ``earlier``)."""
    spec = get_method(method)
    kwargs = {k: v for k, v in options.items() if k not in spec.model_options}
    if spec.supply is not None:
        kwargs.update(spec.supply(RunFacts(num_data, earlier)))
    return build_method(method, **kwargs)


def check_method(method: str, options: Mapping[str, Any], key: str) -> Objective:
    """The objective ``method`` with ``options``, built once to check both (CRD with a placeholder
    ``num_data``); a ``ValueError`` naming the config key (``<key>.method``, ``<key>.options.<option>``)
    and listing the choices otherwise."""
    if method not in _REGISTRY:
        close = difflib.get_close_matches(method, _names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{key}.method: unknown method {method!r}.{hint} The methods: {', '.join(_names())}")
    spec = _REGISTRY[method]
    accepted = spec.configurable_options()
    for option in options:
        if option in spec.automatic:
            raise ValueError(f"{key}.options.{option}: the recipe sets it ({spec.automatic[option]}); "
                             f"remove it from the config")
        if option not in accepted:
            close = difflib.get_close_matches(option, list(accepted), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items())
            raise ValueError(f"{key}.options.{option}: method {method!r} ({spec.objective.__name__}) has no option "
                             f"{option!r}.{hint} Its options: {listed}")
    try:
        return method_objective(method, options, num_data=2)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{key}.options: {e}") from None


def plan_problem(method: str, plan: StagePlan) -> str | None:
    """What is wrong with ``method`` at its place in ``plan`` (its ``check_plan``), or None."""
    check = get_method(method).check_plan
    return None if check is None else check(plan)


def logit_methods() -> list[str]:
    """The methods that need a teacher's outputs only, not its intermediate features (so they work from a cache)."""
    return [m.name for m in list_methods() if m.objective.needs_teacher and not m.taps_teacher]


def predicts(objective: Objective) -> bool:
    """Whether ``objective`` trains the student's predictions (see :meth:`Objective.trains_predictions`)."""
    return objective.trains_predictions()


def taps_teacher(method: str) -> bool:
    """Whether ``method`` reads the teacher's intermediate features (so it needs the live teacher model)."""
    return get_method(method).taps_teacher
