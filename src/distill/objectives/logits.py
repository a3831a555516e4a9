"""Moved: each logit method is one module of :mod:`distill.methods` (``ce``, ``kd``, ``logit_matching``, ``dkd``,
``dist``, ``standardized_kd``); this module keeps the old imports working."""

from distill.methods._common import _teacher, _teacher_logits, check_weight, warmup_factor
from distill.methods.ce import CrossEntropy
from distill.methods.dist import DIST
from distill.methods.dkd import DecoupledKD
from distill.methods.kd import KnowledgeDistillation, label_and_kd_terms
from distill.methods.logit_matching import LogitMatching
from distill.methods.registry import build_objective
from distill.methods.standardized_kd import StandardizedKD

__all__ = [
    "CrossEntropy",
    "KnowledgeDistillation",
    "LogitMatching",
    "DecoupledKD",
    "DIST",
    "StandardizedKD",
    "build_objective",
    "check_weight",
    "warmup_factor",
    "label_and_kd_terms",
    "_teacher",
    "_teacher_logits",
]
