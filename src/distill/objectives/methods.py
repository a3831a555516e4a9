"""The method registry: every distillation objective by name, as a config's ``distill.method`` names it.

    >>> from distill.objectives.methods import build_method, method_options
    >>> objective = build_method("at", weight=500.0)
    >>> method_options("dkd")["nckd_weight"]
    8.0

An unknown name, or an option a method does not take, is an error that lists what exists.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from distill.objectives.base import Objective
from distill.objectives.crd import CRD
from distill.objectives.features import (
    FSP,
    NST,
    PKT,
    RKD,
    VID,
    ActivationBoundaries,
    AttentionTransfer,
    CorrelationCongruence,
    FactorTransfer,
    FactorTransferParaphraser,
    FitNets,
    ReviewKD,
    SimilarityPreserving,
    SimKD,
)
from distill.objectives.logits import (
    DIST,
    CrossEntropy,
    DecoupledKD,
    KnowledgeDistillation,
    LogitMatching,
    StandardizedKD,
)

__all__ = ["METHODS", "build_method", "method_options", "describe_methods"]

METHODS: dict[str, type[Objective]] = {
    "ce": CrossEntropy,
    "kd": KnowledgeDistillation,
    "logit_matching": LogitMatching,
    "dkd": DecoupledKD,
    "dist": DIST,
    "standardized_kd": StandardizedKD,
    "fitnets": FitNets,
    "at": AttentionTransfer,
    "sp": SimilarityPreserving,
    "cc": CorrelationCongruence,
    "vid": VID,
    "rkd": RKD,
    "pkt": PKT,
    "ab": ActivationBoundaries,
    "ft_paraphraser": FactorTransferParaphraser,
    "ft": FactorTransfer,
    "fsp": FSP,
    "nst": NST,
    "crd": CRD,
    "reviewkd": ReviewKD,
    "simkd": SimKD,
}
"""Name -> objective class. Options are the class's constructor arguments."""

_REQUIRED = inspect.Parameter.empty


def method_options(name: str) -> dict[str, Any]:
    """``{option: default}`` of method ``name`` (``inspect.Parameter.empty`` for a required option)."""
    signature = inspect.signature(_method_class(name).__init__)
    return {p.name: p.default for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def describe_methods() -> str:
    """One line per method: its name, class and options with their defaults."""
    lines = []
    for name, cls in METHODS.items():
        options = ", ".join(f"{k}" if v is _REQUIRED else f"{k}={v!r}" for k, v in method_options(name).items())
        lines.append(f"{name} ({cls.__name__}): {options}")
    return "\n".join(lines)


def _method_class(name: str) -> type[Objective]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown distillation method {name!r}.{hint} The methods are: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, **options: Any) -> Objective:
    """The objective ``METHODS[name](**options)``; an unknown name or option is a ``ValueError`` listing
    the choices (and a missing required option, e.g. CRD's ``num_data``, one naming it)."""
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        lines = [f"method {name!r} ({METHODS[name].__name__}) has no option {', '.join(map(repr, unknown))}."]
        for key in unknown:
            close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
            if close:
                lines.append(f"Did you mean {close[0]!r} for {key!r}?")
        listed = ", ".join(k if v is _REQUIRED else f"{k}={v!r}" for k, v in accepted.items())
        lines.append(f"Its options: {listed}")
        raise ValueError(" ".join(lines))
    missing = [k for k, v in accepted.items() if v is _REQUIRED and k not in options]
    if missing:
        raise ValueError(f"method {name!r} ({METHODS[name].__name__}) needs {', '.join(map(repr, missing))}"
                         + (" (the number of training examples, len(data.train))" if "num_data" in missing else ""))
    return METHODS[name](**options)
