"""Moved to :mod:`distill.methods.base`; this name keeps old imports working."""

from distill.methods.base import Objective, StepOutputs

__all__ = ["Objective", "StepOutputs"]
