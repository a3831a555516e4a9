"""Capture intermediate tensors of any ``nn.Module`` by module path, with forward hooks.

Feature distillation (FitNets, attention transfer, FSP, ...) compares what a student and a
teacher compute *inside*. The reference code bases rewrite every model's ``forward`` to return
its features; here a model stays as it is and :class:`Taps` listens to the modules you name::

    taps = Taps(model, ["layer2", "layer3:input"])
    logits, features = taps(x)          # features == {"layer2": ..., "layer3:input": ...}
    taps.remove()

Conventions:

* A path is a module's name as ``model.named_modules()`` lists it (``"layer3.0.conv1"``);
  :func:`module_names` lists them. A spec ``"path"`` (or ``"path:output"``) captures the
  module's output, ``"path:input"`` its first positional input; ``Tap(path, "input")`` says the
  same explicitly (and allows a path that contains ``:``).
* Names: a list of specs is keyed by the specs as written; a dict ``{key: spec}`` by your keys.
* A module that returns a tuple or list (``nn.LSTM``, ``nn.MultiheadAttention``) is captured as
  its first element, which must be a tensor; a Hugging Face ``ModelOutput`` (e.g. of
  ``net.resnet.encoder``) as its first field (``last_hidden_state``); any other output is an error.
* Captured tensors are the forward's own tensors: for a student they carry gradients, so a loss
  on them back-propagates into the model. Tensors captured under ``torch.inference_mode`` (a
  frozen teacher) are copied at capture into normal tensors, as :class:`~distill.teachers.FrozenTeacher`
  does for logits, so that a loss may save them for backward.
* Every call of the model clears the captured tensors (a forward pre-hook on the model), so
  ``features`` always belong to the latest forward. A tapped module that runs more than once in
  one forward (a shared block, a reused activation) is an error by default, since it is
  ambiguous which call was meant; ``repeated="last"`` keeps the latest call instead.
* A tensor changed in place after its capture (e.g. by a following ``nn.ReLU(inplace=True)``)
  no longer holds what was tapped; reading it is an error rather than a silently wrong feature.
* Hooks fire only when a module is called (``module(x)``), not for ``module.forward(x)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeGuard

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "Tap",
    "TapNames",
    "TapSpec",
    "Taps",
    "UnknownModuleError",
    "find_module",
    "module_names",
    "run_with_taps",
]

TapKind = Literal["output", "input"]
_KINDS: tuple[str, ...] = ("output", "input")


def _is_kind(kind: str) -> TypeGuard[TapKind]:
    return kind in _KINDS


class UnknownModuleError(ValueError, KeyError):
    """A module path that the model does not have (a :class:`ValueError`, and a :class:`KeyError`
    for dict-like lookups); ``str()`` gives the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Tap:
    """What to capture: the ``"output"`` (default) or the first positional ``"input"`` of the
    module at ``path`` (a name from ``model.named_modules()``)."""

    path: str
    kind: TapKind = "output"

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise TypeError(f"Tap: path must be a string, got {type(self.path).__name__}: {self.path!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"Tap({self.path!r}): kind must be 'output' or 'input', got {self.kind!r}")

    @classmethod
    def parse(cls, spec: TapSpec) -> Tap:
        """``"path"`` or ``"path:output"`` -> the module's output; ``"path:input"`` -> its input."""
        if isinstance(spec, Tap):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"a tap is a string like 'layer3' or 'layer3:input', or a Tap; got "
                            f"{type(spec).__name__}: {spec!r}")
        path, sep, kind = spec.rpartition(":")
        if not sep:
            return cls(spec)
        if not _is_kind(kind):
            raise ValueError(f"tap {spec!r}: unknown kind {kind!r} after ':'; write 'path' (or 'path:output') "
                             f"for a module's output, 'path:input' for its first positional input")
        return cls(path, kind)

    def __str__(self) -> str:
        return self.path if self.kind == "output" else f"{self.path}:input"

    def describe(self) -> str:
        """``"output of module 'layer3'"``, for messages."""
        where = f"module {self.path!r}" if self.path else "the model"
        return f"{self.kind} of {where}"


TapSpec = str | Tap
TapNames = TapSpec | Sequence[TapSpec] | Mapping[str, TapSpec]


def module_names(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that a tap can name, in ``named_modules()`` order (the
    model itself, ``""``, left out)."""
    return [name for name, _ in model.named_modules() if name]


def _unknown_module_message(model: nn.Module, path: str) -> str:
    names = module_names(model)
    lines = [f"{type(model).__name__} has no module {path!r}."]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    if close:
        lines.append(f"Did you mean: {', '.join(close)}?")
    else:
        top = [name for name, _ in model.named_children()]
        lines.append(f"Its top-level modules are: {', '.join(top) if top else '(none)'}.")
    lines.append(f"It has {len(names)} modules; list them with distill.taps.module_names(model).")
    return "\n".join(lines)


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (``""`` is ``model`` itself), or an :class:`UnknownModuleError`
    naming the closest existing paths."""
    modules = dict(model.named_modules(remove_duplicate=False))  # shared modules under every alias
    if path not in modules:
        raise UnknownModuleError(_unknown_module_message(model, path))
    return modules[path]


def _tap_dict(names: TapNames) -> dict[str, Tap]:
    """``names`` as ``{key: Tap}``: a list is keyed by its specs as written, a dict by its keys."""
    if isinstance(names, (str, Tap)):
        names = [names]
    if isinstance(names, Mapping):
        taps = {}
        for key, spec in names.items():
            if not isinstance(key, str):
                raise TypeError(f"tap names must be strings, got {type(key).__name__}: {key!r}")
            taps[key] = Tap.parse(spec)
    elif isinstance(names, Sequence):
        taps = {}
        for spec in names:
            tap = Tap.parse(spec)
            key = spec if isinstance(spec, str) else str(tap)
            if key in taps:
                raise ValueError(f"tap {key!r} is listed twice; to capture one module under two names, "
                                 f"pass a dict {{name: spec}}")
            taps[key] = tap
    else:
        raise TypeError(f"taps must be a spec, a list of specs or a dict {{name: spec}}, got {type(names).__name__}")
    if not taps:
        raise ValueError("no taps given: name at least one module (see distill.taps.module_names(model))")
    return taps


def _first_tensor(value: Any, tap: Tap) -> Tensor:
    """The tensor a tap keeps: ``value`` itself, the first element of a tuple/list, or the first field of a
    Hugging Face ``ModelOutput`` (its ``last_hidden_state``; recognized by its ``to_tuple``, not any dict)."""
    if isinstance(value, Tensor):
        return value
    to_tuple = getattr(value, "to_tuple", None)
    if isinstance(value, Mapping) and callable(to_tuple):  # a ModelOutput, not any dict
        value = to_tuple()
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(f"cannot tap the {tap.describe()}: it is a {type(value).__name__}, not a tensor, a "
                    f"tuple/list or a Hugging Face ModelOutput starting with one; tap a submodule that gives a tensor")


class Taps:
    """Forward hooks that keep the latest output (or input) of the named modules of ``model``.

    ``names`` is a spec (``"layer3"``, ``"layer3:input"``, ``Tap("layer3", "input")``), a list
    of specs (keyed by the specs as written) or a dict ``{key: spec}``. Every path is checked
    before any hook is registered. Use it as a context manager, or keep it for a whole training
    run and :meth:`remove` it at the end; removing keeps the last captured tensors readable.

    ``repeated``: what happens when a tapped module runs again before the model's next call:
    ``"error"`` (default) raises, ``"last"`` keeps the latest call. Note that activation
    checkpointing re-runs modules during backward, which counts as a repeat.
    """

    def __init__(self, model: nn.Module, names: TapNames, *,
                 repeated: Literal["error", "last"] = "error") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Taps needs an nn.Module, got {type(model).__name__}")
        if repeated not in ("error", "last"):
            raise ValueError(f"repeated must be 'error' or 'last', got {repeated!r}")
        self.model = model
        self.specs: dict[str, Tap] = _tap_dict(names)
        self.repeated = repeated
        self._captured: dict[str, tuple[Tensor, int]] = {}  # key -> (tensor, its version at capture)
        modules = {key: find_module(model, tap.path) for key, tap in self.specs.items()}

        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._on_model_call)]
        for key, tap in self.specs.items():
            if tap.kind == "output":
                self._handles.append(modules[key].register_forward_hook(self._output_hook(key)))
            else:
                # Before the module runs, so that an in-place change inside it is detected.
                self._handles.append(modules[key].register_forward_pre_hook(self._input_hook(key)))

    # -- hooks ---------------------------------------------------------------------------------

    def _on_model_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured.clear()

    def _output_hook(self, key: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._capture(key, output)
        return hook

    def _input_hook(self, key: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args:
                raise TypeError(f"cannot tap the {self.specs[key].describe()}: it was called without a positional "
                                f"argument; tap its output, or the module that computes its input")
            self._capture(key, args[0])
        return hook

    def _capture(self, key: str, value: Any) -> None:
        tap = self.specs[key]
        if key in self._captured and self.repeated == "error":
            raise RuntimeError(
                f"tap {key!r}: the {tap.describe()} was computed twice in one forward (a module called more "
                f"than once, e.g. a shared block or a reused activation), so it is ambiguous which call to "
                f"keep. Tap a module that runs once, or pass repeated='last' to keep the latest call.")
        tensor = _first_tensor(value, tap)
        if tensor.is_inference():
            # Inference tensors cannot be saved for backward by a loss: keep a normal copy.
            with torch.inference_mode(False):
                tensor = tensor.clone()
        self._captured[key] = (tensor, tensor._version)

    # -- reading -------------------------------------------------------------------------------

    def _read(self, key: str) -> Tensor:
        if key not in self._captured:
            raise RuntimeError(
                f"tap {key!r}: the {self.specs[key].describe()} was not computed in the latest forward of "
                f"{type(self.model).__name__} (not run yet, skipped by a branch, not used by forward, or called "
                f"as .forward(), which skips hooks)")
        tensor, version = self._captured[key]
        if tensor._version != version:
            raise RuntimeError(
                f"tap {key!r}: the {self.specs[key].describe()} was modified in place after it was captured "
                f"(e.g. by nn.ReLU(inplace=True) or an in-place op in forward), so it no longer holds what was "
                f"tapped; tap a module after the in-place op, or make that op out-of-place")
        return tensor

    def __getitem__(self, key: str) -> Tensor:
        """The latest tensor captured by tap ``key``."""
        if key not in self.specs:
            raise KeyError(f"no tap named {key!r}; the taps are: {', '.join(map(repr, self.specs))}")
        return self._read(key)

    @property
    def features(self) -> dict[str, Tensor]:
        """``{key: tensor}`` from the latest forward; an error if any tap did not fire in it."""
        return {key: self._read(key) for key in self.specs}

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Tensor]]:
        """Run ``model(*args, **kwargs)``; return its output and :attr:`features`."""
        if not self.attached:
            raise RuntimeError("these taps were removed; create new Taps to capture again")
        output = self.model(*args, **kwargs)
        return output, self.features

    def clear(self) -> None:
        """Drop the captured tensors (and with them any autograd graph they keep alive)."""
        self._captured.clear()

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook from the model (idempotent). The last captured tensors stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        specs = ", ".join(f"{key}={tap}" if key != str(tap) else key for key, tap in self.specs.items())
        state = "" if self.attached else ", removed"
        return f"Taps({type(self.model).__name__}: {specs}{state})"


def run_with_taps(model: nn.Module, x: Any, names: TapNames, *,
                  repeated: Literal["error", "last"] = "error") -> tuple[Any, dict[str, Tensor]]:
    """``model(x)`` and the tensors at ``names`` (see :class:`Taps`), leaving no hook behind."""
    with Taps(model, names, repeated=repeated) as taps:
        return taps(x)
