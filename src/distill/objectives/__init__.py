"""Objectives: ``nn.Module`` s that turn one training step's outputs into named loss terms.

An objective declares whether it needs a teacher, owns any extra trainable modules (the engine
optimizes ``objective.parameters()`` with the student) and returns ``{name: scalar tensor}``.
The engine multiplies each term by ``objective.weights[name]`` (1.0 when absent), sums them
and logs every term, so a run's metrics show what each part of the loss did.
"""

from distill.objectives.base import Objective, StepOutputs
from distill.objectives.logits import CrossEntropy, KnowledgeDistillation, LogitMatching, build_objective
from distill.objectives.online import Cohort, MutualLearning

__all__ = [
    "Objective",
    "StepOutputs",
    "CrossEntropy",
    "KnowledgeDistillation",
    "LogitMatching",
    "build_objective",
    "Cohort",
    "MutualLearning",
]
