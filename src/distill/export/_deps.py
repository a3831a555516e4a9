"""The optional packages of the ``export`` extra, imported when a format needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL = 'pip install -c constraints.txt -e ".[export]"'


class ExportError(ValueError):
    """An export cannot be made or does not match its PyTorch student; the message says what to do."""


class MissingDependencyError(ExportError):
    """A package of the ``export`` extra is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` naming the package and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs the package {package!r}, which is not installed ({e}); install the export "
            f"extra: {INSTALL}"
        ) from None
