"""The model registry: names -> factories, in the style of timm's ``create_model``.

A factory is any callable ``f(num_classes: int, in_shape: tuple[int, ...], **kw) -> nn.Module``.
Built-in architectures register themselves with :func:`register_model`; a user model needs
no registration and can be named by import path, ``"package.module:factory"``.

Names read from a file (a checkpoint's ``model_spec``) are built with ``allow_import=False``:
only registered models and the package's own builders (:data:`BUILTIN_BUILDERS`), never an
import path, unless the caller opts in explicitly, as Hugging Face's ``trust_remote_code``.
Importing a module runs its code, so a checkpoint must not be able to choose one.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "BUILTIN_BUILDERS",
    "LEGACY_NAMES",
    "ImportNotAllowedError",
    "ModelFactory",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "is_pretrained",
    "list_models",
    "register_model",
    "register_weights_source",
    "weights_source",
]

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, ModelFactory] = {}

# Parameters every factory receives from create_model itself; never user keywords.
_FIXED_PARAMS = ("num_classes", "in_shape")

BUILTIN_BUILDERS: dict[str, str] = {
    "simkd_student": "distill.methods.simkd:simkd_student",
}
"""Builders of composite models that the package itself defines outside the model zoo, by the name a
checkpoint records -> their place in the package (imported on first use; the path is this table's, never a
file's). Not listed by :func:`list_models`: they rebuild a model from a checkpoint's ``model_spec``."""

LEGACY_NAMES: dict[str, str] = {
    "distill.recipes.stages:simkd_student": "simkd_student",
}
"""Builder names older checkpoints recorded as import paths into the package -> today's name; they are
looked up here, never imported by the path read from the file."""

_REGISTRY_ONLY: ContextVar[bool] = ContextVar("distill_models_registry_only", default=False)
"""True while a model read from a file is built: builders nested in it (SimKD's student and teacher)
are registry-only too."""


class UnknownModelError(ValueError, KeyError):
    """Raised by :func:`create_model` for a name that is neither registered nor importable.

    It is a :class:`ValueError` (and, for dict-like lookups, also a :class:`KeyError`);
    ``str()`` gives the plain message, not the quoted repr ``KeyError`` would print.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImportNotAllowedError(UnknownModelError):
    """:func:`create_model` was asked for an import path with ``allow_import=False`` (a name read from a
    file, such as a checkpoint's ``model_spec``)."""


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory`` under ``name`` for :func:`create_model`.

    The factory is called as ``factory(num_classes=..., in_shape=..., **kw)`` and must
    return an ``nn.Module``. Registering a name twice is an error.
    """
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"model name must be a non-empty string without ':' or surrounding spaces, got {name!r}")

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register_model({name!r}) must decorate a callable, got {factory!r}")
        if name in BUILTIN_BUILDERS:
            raise ValueError(f"model {name!r} is already a builder of the package ({BUILTIN_BUILDERS[name]})")
        if name in _REGISTRY:
            previous = _REGISTRY[name]
            where = f"{getattr(previous, '__module__', '?')}.{getattr(previous, '__qualname__', repr(previous))}"
            raise ValueError(f"model {name!r} is already registered (by {where})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob ``pattern``
    (e.g. ``"resnet*"``)."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_pretrained(model: nn.Module) -> bool:
    """Whether ``model`` came with trained weights for the data's classes (``model.pretrained is True``: a
    Hugging Face, timm or torchvision classifier loaded with its weights and its own classifier). A teacher
    that is pretrained is used as it is (as one loaded from ``teacher.checkpoint``), not trained by the run."""
    return getattr(model, "pretrained", False) is True


_SOURCES: dict[str, Callable[..., str | None]] = {}


def register_weights_source(name: str) -> Callable[[Callable[..., str | None]], Callable[..., str | None]]:
    """Register, for the registered model ``name``, the function of its keywords that identifies the
    pretrained weights it loads (see :func:`weights_source`)."""
    def add(fn: Callable[..., str | None]) -> Callable[..., str | None]:
        _SOURCES[name] = fn
        return fn
    return add


def weights_source(name: str, kwargs: dict[str, Any] | None = None) -> str | None:
    """What identifies the pretrained weights model ``name`` loads with ``kwargs`` from outside the run (a
    Hugging Face directory's files, a hub id's commit), without building it; None when that is unknown (a
    model without such a record, or one built with fresh weights). A teacher cache records it, so that a
    teacher whose files changed under the same name is seen (:mod:`distill.cache`)."""
    fn = _SOURCES.get(name)
    return fn(**(kwargs or {})) if fn is not None else None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _unknown_model_message(name: str) -> str:
    names = list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    lines = [f"unknown model {name!r}."]
    if close:
        lines.append(f"Did you mean: {', '.join(close)}?")
    lines.append(f"Registered models: {', '.join(names) if names else '(none)'}.")
    lines.append('A user model can be given by import path as "package.module:factory", where '
                 "factory(num_classes=..., in_shape=..., **kw) returns an nn.Module.")
    return "\n".join(lines)


def _import(name: str) -> ModelFactory:
    """The callable named by the import path ``"package.module:factory"``."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(
            f'invalid model import path {name!r}: expected "package.module:factory"')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(
            f"cannot import module {module_name!r} for model {name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownModelError(
                f"module {module_name!r} has no attribute {attr!r} (model {name!r})") from None
    if not callable(obj):
        raise TypeError(f"model {name!r} must name a callable factory, got {type(obj).__name__}")
    return obj


def _resolve(name: str, allow_import: bool = True) -> ModelFactory:
    """The factory for a registered name, a built-in builder, or (with ``allow_import``) an import path
    ``"package.module:factory"``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}: {name!r}")
    name = LEGACY_NAMES.get(name, name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN_BUILDERS:
        return _import(BUILTIN_BUILDERS[name])
    if ":" not in name:
        raise UnknownModelError(_unknown_model_message(name))
    if not allow_import:
        raise ImportNotAllowedError(
            f"model builder {name!r} is an import path, read from a file: importing it would run its module's "
            f"code, so only registered models (`distill models`) are built from a file. If you trust the file, "
            f"allow the import: --allow-model-import on the command line, allow_import=True in Python")
    return _import(name)


@contextmanager
def _registry_only(on: bool) -> Iterator[None]:
    """While the block runs, nested :func:`create_model` calls are registry-only if ``on`` (or already were)."""
    token = _REGISTRY_ONLY.set(on or _REGISTRY_ONLY.get())
    try:
        yield
    finally:
        _REGISTRY_ONLY.reset(token)


def _check_kwargs(name: str, factory: ModelFactory, kw: dict[str, Any]) -> None:
    """Raise a readable TypeError if ``factory`` cannot take num_classes/in_shape or ``kw``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keywordable = {
        n for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [n for n in _FIXED_PARAMS if n not in keywordable]
    if missing:
        raise TypeError(
            f"model factory {name!r} must accept the keyword arguments num_classes and in_shape "
            f"(missing: {', '.join(missing)}); its signature is {name}{sig}")
    accepted = sorted(keywordable.difference(_FIXED_PARAMS))
    bad = sorted(set(kw).difference(accepted))
    if bad:
        hints = []
        for b in bad:
            close = difflib.get_close_matches(b, accepted, n=1)
            if close:
                hints.append(f"{b!r} -> did you mean {close[0]!r}?")
        raise TypeError(
            f"model {name!r} got unexpected keyword argument(s) {', '.join(map(repr, bad))}; "
            f"accepted keyword arguments: {', '.join(accepted) if accepted else '(none)'}"
            + (f" ({'; '.join(hints)})" if hints else ""))


def _normalize_in_shape(in_shape: Sequence[int]) -> tuple[int, ...]:
    message = (f"in_shape must be a non-empty sequence of positive ints (the shape of one "
               f"example, without the batch dim, e.g. (1, 28, 28)), got {in_shape!r}")
    try:
        items = list(in_shape)
    except TypeError:
        raise TypeError(message) from None
    if not items or any(isinstance(d, bool) or not hasattr(d, "__index__") for d in items):
        raise ValueError(message)
    shape = tuple(operator.index(d) for d in items)
    if any(d <= 0 for d in shape):
        raise ValueError(message)
    return shape


def create_model(name: str, num_classes: int, in_shape: Sequence[int], *, allow_import: bool = True,
                 **kw: Any) -> nn.Module:
    """Build the model ``name`` for ``num_classes`` classes and examples of shape ``in_shape``.

    Args:
        name: a registered name (see :func:`list_models`) or an import path
            ``"package.module:factory"`` to a user factory with the same signature.
        num_classes: number of output logits, >= 2.
        in_shape: shape of ONE example without the batch dim, e.g. ``(1, 28, 28)``.
        allow_import: whether an import path may be imported. Pass False for a name read from a file
            (a checkpoint's ``model_spec``): then only registered models and :data:`BUILTIN_BUILDERS`
            are built, also by the builder itself (SimKD's nested models), and an import path raises
            :class:`ImportNotAllowedError`.
        **kw: architecture options accepted by the factory (e.g. ``hidden=(800, 800)``).

    Returns:
        An ``nn.Module`` mapping a float tensor ``(N, *in_shape)`` to logits ``(N, num_classes)``.

    Raises:
        UnknownModelError: unknown name or unimportable path (lists close matches).
        ImportNotAllowedError: an import path with ``allow_import=False``.
        TypeError: unexpected keyword, or the factory did not return an ``nn.Module``.
        ValueError: ``num_classes < 2`` or a malformed ``in_shape``.
    """
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__"):
        raise TypeError(f"num_classes must be an int >= 2, got {num_classes!r}")
    num_classes = operator.index(num_classes)  # also accepts numpy integers
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    shape = _normalize_in_shape(in_shape)
    registry_only = not allow_import or _REGISTRY_ONLY.get()
    factory = _resolve(name, allow_import=not registry_only)
    _check_kwargs(name, factory, kw)
    with _registry_only(registry_only):
        model = factory(num_classes=num_classes, in_shape=shape, **kw)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {name!r} must return a torch.nn.Module, "
                        f"got {type(model).__module__}.{type(model).__qualname__}")
    return model
