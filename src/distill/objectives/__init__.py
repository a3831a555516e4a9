"""Objectives: ``nn.Module`` s that turn one training step's outputs into named loss terms.

An objective declares whether it needs a teacher, owns any extra trainable modules (the engine
optimizes ``objective.parameters()`` with the student) and returns ``{name: scalar tensor}``.
The engine multiplies each term by ``objective.weights[name]`` (1.0 when absent), sums them
and logs every term, so a run's metrics show what each part of the loss did.

The published methods (logits: KD, DKD, DIST, logit standardization; features: FitNets, AT, SP,
CC, VID, RKD, PKT, AB, FT, FSP, NST, CRD, ReviewKD, SimKD) are in :data:`METHODS`, built by name
with :func:`build_method`.
"""

from distill.objectives.base import Objective, StepOutputs
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
    FeatureObjective,
    FitNets,
    ReviewKD,
    SimilarityPreserving,
    SimKD,
    SimKDStudent,
)
from distill.objectives.logits import (
    DIST,
    CrossEntropy,
    DecoupledKD,
    KnowledgeDistillation,
    LogitMatching,
    StandardizedKD,
    build_objective,
)
from distill.objectives.methods import METHODS, build_method, describe_methods, method_options
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
    # the method zoo (distill.objectives.methods)
    "METHODS",
    "build_method",
    "describe_methods",
    "method_options",
    "DecoupledKD",
    "DIST",
    "StandardizedKD",
    "FeatureObjective",
    "FitNets",
    "AttentionTransfer",
    "SimilarityPreserving",
    "CorrelationCongruence",
    "VID",
    "RKD",
    "PKT",
    "ActivationBoundaries",
    "FactorTransferParaphraser",
    "FactorTransfer",
    "FSP",
    "NST",
    "CRD",
    "ReviewKD",
    "SimKD",
    "SimKDStudent",
]
