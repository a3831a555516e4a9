"""Objectives: ``nn.Module`` s that turn one training step's outputs into named loss terms.

Each method now lives in one module of :mod:`distill.methods` (its pure loss, objective and registration);
this package re-exports the objective classes under their old import paths, and holds deep mutual
learning's objective (:mod:`distill.objectives.online`), which the ``online`` recipe uses.

An objective declares whether it needs a teacher, owns any extra trainable modules (the engine
optimizes ``objective.parameters()`` with the student) and returns ``{name: scalar tensor}``.
The engine multiplies each term by ``objective.weights[name]`` (1.0 when absent), sums them
and logs every term, so a run's metrics show what each part of the loss did.

The published methods (logits: KD, DKD, DIST, logit standardization; features: FitNets, AT, SP,
CC, VID, RKD, PKT, AB, FT, FSP, NST, CRD, ReviewKD, SimKD) are in :data:`METHODS`, built by name
with :func:`build_method`.
"""

from distill.methods._features import FeatureObjective
from distill.methods.ab import ActivationBoundaries
from distill.methods.at import AttentionTransfer
from distill.methods.base import Objective, StepOutputs
from distill.methods.cc import CorrelationCongruence
from distill.methods.ce import CrossEntropy
from distill.methods.crd import CRD
from distill.methods.dist import DIST
from distill.methods.dkd import DecoupledKD
from distill.methods.fitnets import FitNets
from distill.methods.fsp import FSP
from distill.methods.ft import FactorTransfer, FactorTransferParaphraser
from distill.methods.kd import KnowledgeDistillation
from distill.methods.logit_matching import LogitMatching
from distill.methods.nst import NST
from distill.methods.pkt import PKT
from distill.methods.registry import METHODS, build_method, build_objective, describe_methods, method_options
from distill.methods.reviewkd import ReviewKD
from distill.methods.rkd import RKD
from distill.methods.simkd import SimKD, SimKDStudent
from distill.methods.sp import SimilarityPreserving
from distill.methods.standardized_kd import StandardizedKD
from distill.methods.vid import VID
from distill.objectives.online import Cohort, MutualLearning, PeerMethod

__all__ = [
    "Objective",
    "StepOutputs",
    "CrossEntropy",
    "KnowledgeDistillation",
    "LogitMatching",
    "build_objective",
    "Cohort",
    "MutualLearning",
    "PeerMethod",
    # the method zoo (distill.methods)
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
