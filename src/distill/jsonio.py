"""JSON that every JSON reader accepts: no bare ``NaN`` or ``Infinity`` tokens.

Python's ``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats, which
are not JSON (RFC 8259) and which strict readers (``jq``, JavaScript's ``JSON.parse``, Go, ...)
refuse. Everything distill writes as JSON goes through :func:`dumps`: a non-finite number becomes
``null`` and its key path is listed under ``"nonfinite"``, so the information is kept.
"""

from __future__ import annotations

import json
import math
from typing import Any

NONFINITE_KEY = "nonfinite"


def replace_nonfinite(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN or infinite float replaced by ``None``, and the dotted key paths of
    those (list items as ``key.0``). ``obj`` itself is not modified."""
    if isinstance(obj, float):
        return (obj, []) if math.isfinite(obj) else (None, [path])
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], b = replace_nonfinite(v, f"{path}.{k}" if path else str(k))
            bad += b
        return out, bad
    if isinstance(obj, (list, tuple)):
        items = [replace_nonfinite(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, b in items for p in b]
    return obj, []


def dumps(obj: dict[str, Any], indent: int | None = None) -> str:
    """``obj`` as strict JSON: non-finite numbers written as ``null`` and their key paths listed
    under ``"nonfinite"`` (added only when there are any)."""
    clean, bad = replace_nonfinite(obj)
    if bad:
        clean[NONFINITE_KEY] = bad
    return json.dumps(clean, indent=indent, allow_nan=False)
