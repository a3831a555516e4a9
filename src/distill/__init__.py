"""distill: knowledge distillation for PyTorch.

The public face, in the order a user meets it::

    from distill import kd_loss                      # a loss for your own training loop
    from distill import load_dataset, make_splits    # data as tensors on the device
    from distill import create_model                 # the model zoo, or your own nn.Module
    from distill import FrozenTeacher, KnowledgeDistillation, TrainConfig, fit, evaluate
    from distill import load_config, run_recipe      # what `distill run` does

Importing distill sets one thing in the process, on purpose: ``OMP_WAIT_POLICY=PASSIVE`` in
``os.environ`` unless it is set already (so an explicit ``OMP_WAIT_POLICY=ACTIVE`` wins), for the
reason below; it takes effect only if torch is not imported yet (README, "Running on a shared CPU").
It stays here, not in the ``distill`` command, because the command lives in this package: importing
``distill.cli`` runs this file first, and this file imports torch.
"""

import os

# OpenMP worker threads that spin while they wait make small models many times slower as soon
# as another process shares the cores (2 CPU cores, one busy: the demo took 502 s spinning,
# 20 s sleeping); on the idle machine sleeping waits cost about as much as the noise (two CNN
# epochs: 1.4-1.5 s vs 1.2-1.4 s). This takes effect only if torch is not imported yet, and an
# explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from distill.config import Config, TrainConfig, load_config
from distill.data import load_dataset, make_splits
from distill.engine import evaluate, fit
from distill.functional import kd_loss, logit_matching_loss, softmax_with_temperature
from distill.models import create_model, list_models, register_model
from distill.objectives import CrossEntropy, KnowledgeDistillation, LogitMatching, Objective, StepOutputs
from distill.recipes import run_recipe
from distill.teachers import FrozenTeacher, Targets, Teacher

__version__ = "0.1.0"

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
    "logit_matching_loss",
    "make_splits",
    "register_model",
    "run_recipe",
    "softmax_with_temperature",
]
