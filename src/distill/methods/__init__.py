"""Distillation methods, one module each: a method's pure loss(es), its objective, its options (the objective's
constructor arguments, with the paper's defaults), the features it taps and its stages, registered by name.

Importing this package imports every module in it whose name does not start with ``_`` (each registers its
method with :func:`~distill.methods.registry.register_method`), so adding a method is adding one file here.
A method defined elsewhere registers itself the same way when its module is imported.

    >>> from distill.methods import build_method, get_method
    >>> get_method("dkd").options()["nckd_weight"]
    8.0
"""

from __future__ import annotations

import importlib
import pkgutil

from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import (
    METHODS,
    REQUIRED,
    Method,
    RunFacts,
    StagePlan,
    build_method,
    build_objective,
    check_method,
    configurable_options,
    describe_methods,
    get_method,
    list_methods,
    logit_methods,
    method_card,
    method_objective,
    method_options,
    plan_problem,
    predicts,
    register_method,
    taps_teacher,
)

__all__ = [
    "Objective",
    "StepOutputs",
    "METHODS",
    "REQUIRED",
    "Method",
    "RunFacts",
    "StagePlan",
    "build_method",
    "build_objective",
    "check_method",
    "configurable_options",
    "describe_methods",
    "get_method",
    "list_methods",
    "logit_methods",
    "method_card",
    "method_objective",
    "method_options",
    "plan_problem",
    "predicts",
    "register_method",
    "taps_teacher",
]

_INFRASTRUCTURE = {"base", "registry"}


def _import_methods() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name not in _INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{module.name}")


_import_methods()
