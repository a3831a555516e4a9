"""Moved: each feature method is one module of :mod:`distill.methods` (``fitnets``, ``at``, ``sp``, ``cc``, ``vid``,
``rkd``, ``pkt``, ``ab``, ``ft``, ``fsp``, ``nst``, ``reviewkd``, ``simkd``; what they share is in
``distill.methods._features``); this module keeps the old imports working."""

from distill.methods._features import (
    PENULTIMATE,
    FeatureObjective,
    LayerChoice,
    Layers,
    Shape,
    compared_shapes,
    feature_stages,
    pair_last,
    preactivation_taps,
    resample,
)
from distill.methods.ab import ActivationBoundaries
from distill.methods.at import AttentionTransfer
from distill.methods.cc import CorrelationCongruence
from distill.methods.fitnets import FitNets
from distill.methods.fsp import FSP
from distill.methods.ft import FactorTransfer, FactorTransferParaphraser, Paraphraser
from distill.methods.nst import NST
from distill.methods.pkt import PKT
from distill.methods.reviewkd import ReviewKD
from distill.methods.rkd import RKD
from distill.methods.simkd import SIMKD_STUDENT_OPTIONS, SimKD, SimKDStudent
from distill.methods.sp import SimilarityPreserving
from distill.methods.vid import VID

__all__ = [
    "PENULTIMATE",
    "FeatureObjective",
    "FitNets",
    "AttentionTransfer",
    "NST",
    "SimilarityPreserving",
    "CorrelationCongruence",
    "RKD",
    "PKT",
    "VID",
    "ActivationBoundaries",
    "FSP",
    "FactorTransferParaphraser",
    "FactorTransfer",
    "Paraphraser",
    "ReviewKD",
    "SimKD",
    "SimKDStudent",
    "SIMKD_STUDENT_OPTIONS",
    "feature_stages",
    "pair_last",
    "preactivation_taps",
    "compared_shapes",
    "resample",
    "LayerChoice",
    "Layers",
    "Shape",
]
