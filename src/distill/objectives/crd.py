"""Moved to :mod:`distill.methods.crd`; this module keeps the old imports working."""

from distill.methods.crd import CRD

__all__ = ["CRD"]
