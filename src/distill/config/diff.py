"""Comparing two configs: which settings differ, and which of them leave a run's result unchanged
(a resumed run may change those)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml


RESULT_NEUTRAL = ("name", "output_dir", "device", "data.download", "data.num_workers", "data.stream", "report")
"""Dotted key paths (and the sections) of settings that do not change a run's result: a resumed run
may change them. ``report``: what is measured after training, from the trained models. ``data.num_workers`` and
``data.stream``: how image files are read, not which batches they make."""

RESULT_NEUTRAL_TRAIN = ("log_every", "eval_batch_size", "data_on_device", "checkpoint_every_steps")
"""Keys of every ``train`` section that do not change the result (how often to print or checkpoint, the evaluation
batch, where the training split is held): a resumed run may change them."""


def result_neutral(path: str) -> bool:
    """Whether the setting at dotted ``path`` (of a full config) leaves the result unchanged."""
    return (path.rsplit(".", 1)[-1] in RESULT_NEUTRAL_TRAIN
            or any(path == k or path.startswith(k + ".") for k in RESULT_NEUTRAL))


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def diff_settings(old: Any, new: Any, ignore: Callable[[str], bool] | None = None,
                  path: str = "") -> list[str]:
    """``"key.path: old -> new"`` for every setting that differs between two plain config dumps
    (mappings key by key, lists of mappings item by item when of equal length, ``key.0``), except the
    paths for which ``ignore(path)`` is true. A key missing on one side shows as ``(absent)``."""
    if ignore is not None and path and ignore(path):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                if ignore is None or not ignore(sub):
                    out.append(f"{sub}: {_show(old[key]) if key in old else '(absent)'} -> "
                               f"{_show(new[key]) if key in new else '(absent)'}")
            else:
                out += diff_settings(old[key], new[key], ignore, sub)
        return out
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, dict) for v in old + new)):  # e.g. distill.stages.1.epochs
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in diff_settings(a, b, ignore, f"{path}.{i}")]
    return [] if old == new else [f"{path}: {_show(old)} -> {_show(new)}"]

