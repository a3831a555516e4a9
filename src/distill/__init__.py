"""distill: knowledge distillation for PyTorch.

The public face, in the order a user meets it::

    from distill import kd_loss                      # a loss for your own training loop
    from distill import load_dataset, make_splits    # data as tensors on the device
    from distill import create_model                 # the model zoo, or your own nn.Module
    from distill import load_student                 # a student written by `distill export --format safetensors`
    from distill import FrozenTeacher, KnowledgeDistillation, TrainConfig, fit, evaluate
    from distill import load_config, run_recipe      # what `distill run` does

Importing distill has no side effect on the process: each name above is imported from its module
on first use (PEP 562), and the environment is left as it is. The ``distill`` command (and
``python -m distill``) sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless it is set
already; in your own program on a shared CPU, do the same before the first ``import torch``::

    import os; os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

(README, "Running on a shared CPU": with spinning OpenMP waits a small model ran 25x slower.)
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from distill.config import Config, TrainConfig
    from distill.data import load_dataset, make_splits
    from distill.engine import evaluate, fit
    from distill.export import load_student
    from distill.functional import kd_loss, logit_matching_loss, softmax_with_temperature
    from distill.models import create_model, list_models, register_model
    from distill.objectives import CrossEntropy, KnowledgeDistillation, LogitMatching, Objective, StepOutputs
    from distill.recipes import load_config, run_recipe
    from distill.teachers import FrozenTeacher, Targets, Teacher

from distill._version import __version__

# Each public name and the module it comes from.
_EXPORTS = {
    "Config": "distill.config",
    "TrainConfig": "distill.config",
    "load_config": "distill.recipes",  # the recipes register before a config names one
    "load_dataset": "distill.data",
    "load_student": "distill.export",
    "make_splits": "distill.data",
    "evaluate": "distill.engine",
    "fit": "distill.engine",
    "kd_loss": "distill.functional",
    "logit_matching_loss": "distill.functional",
    "softmax_with_temperature": "distill.functional",
    "create_model": "distill.models",
    "list_models": "distill.models",
    "register_model": "distill.models",
    "CrossEntropy": "distill.objectives",
    "KnowledgeDistillation": "distill.objectives",
    "LogitMatching": "distill.objectives",
    "Objective": "distill.objectives",
    "StepOutputs": "distill.objectives",
    "run_recipe": "distill.recipes",
    "FrozenTeacher": "distill.teachers",
    "Targets": "distill.teachers",
    "Teacher": "distill.teachers",
}

__all__ = [
    "Config",
    "CrossEntropy",
    "FrozenTeacher",
    "KnowledgeDistillation",
    "LogitMatching",
    "Objective",
    "StepOutputs",
    "Targets",
    "Teacher",
    "TrainConfig",
    "create_model",
    "evaluate",
    "fit",
    "kd_loss",
    "list_models",
    "load_config",
    "load_dataset",
    "load_student",
    "logit_matching_loss",
    "make_splits",
    "register_model",
    "run_recipe",
    "softmax_with_temperature",
]


def __getattr__(name: str) -> Any:
    """A public name (or a submodule, ``distill.report``) imported on first use, then kept."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
