"""Moved to :mod:`distill.methods.registry` (every method registers itself there); this module keeps the old
imports working.

    >>> from distill.objectives.methods import build_method, method_options
    >>> objective = build_method("at", weight=500.0)
    >>> method_options("dkd")["nckd_weight"]
    8.0
"""

from distill.methods.registry import METHODS, build_method, describe_methods, method_options

__all__ = ["METHODS", "build_method", "method_options", "describe_methods"]
