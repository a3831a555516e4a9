"""What is exported: a checkpoint (given, or found in a run directory), its student, its data.

A run directory resolves to its student checkpoint: ``distilled/best.pt``, else the only model's
``best.pt``. The data is rebuilt as ``distill eval`` rebuilds it, from the checkpoint's data record
(dataset name, normalization statistics): the test split for parity and metrics, the training split
(train + validation, as the official training set) for static quantization's calibration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from distill.checkpoint import build_model_from_checkpoint
from distill.data.sources import load_dataset
from distill.data.tensors import DataSplits, make_splits
from distill.export._deps import ExportError

PREFERRED_TAG = "distilled"
"""The model directory a run's export picks first (the distilled student of ``compare``/``distill``)."""


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """The checkpoint to export for ``path`` and the run directory it belongs to (None if unknown).

    ``path`` is a checkpoint file, a model directory holding ``best.pt`` (``runs/demo/distilled``),
    or a run directory (``runs/demo``): its ``distilled/best.pt``, else its only ``*/best.pt``.
    A run directory whose run has not finished (no ``results.json``) or that holds no ``best.pt``
    is refused; with several models and none named ``distilled`` the message lists them.
    """
    path = Path(path)
    if path.is_file():
        return path, _run_dir_of(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist; give a run directory (runs/demo) or a checkpoint (runs/demo/distilled/best.pt)")
    if (path / "best.pt").is_file():
        return path / "best.pt", _run_dir_of(path / "best.pt")
    found = sorted(p.parent.name for p in path.glob("*/best.pt"))
    if not found:
        raise ExportError(
            f"{path} holds no finished checkpoint (no */best.pt): train it first (distill run CONFIG), "
            "or give a checkpoint file"
        )
    if not (path / "results.json").is_file():
        raise ExportError(
            f"the run in {path} has not finished (no results.json; it has {', '.join(found)}): finish it with "
            f"distill run CONFIG --name {path.name} --resume, or export a checkpoint by its path, e.g. "
            f"distill export {path / found[0] / 'best.pt'}"
        )
    if PREFERRED_TAG in found:
        return path / PREFERRED_TAG / "best.pt", path
    if len(found) == 1:
        return path / found[0] / "best.pt", path
    raise ExportError(
        f"the run in {path} holds several models ({', '.join(found)}) and none is {PREFERRED_TAG!r}; export one "
        f"by its checkpoint, e.g. distill export {path / found[0] / 'best.pt'}"
    )


def _run_dir_of(checkpoint: Path) -> Path | None:
    """``runs/x`` for ``runs/x/<model>/best.pt`` when ``runs/x`` is a run directory (has config.yaml)."""
    run = checkpoint.resolve().parent.parent
    return run if (run / "config.yaml").is_file() else None


@dataclass
class Source:
    """The student to export, its checkpoint's records and the run it came from."""

    checkpoint: Path
    run_dir: Path | None
    model: nn.Module
    spec: dict[str, Any]
    data_record: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml, as plain YAML
    results: dict[str, Any] = field(default_factory=dict)  # the run's results.json
    tag: str = ""

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["in_shape"])


def load_source(path: str | Path, *, allow_import: bool = False) -> Source:
    """The student of ``path`` (see :func:`resolve_checkpoint`) on the CPU in eval mode, with its records."""
    checkpoint, run_dir = resolve_checkpoint(path)
    model, ckpt = build_model_from_checkpoint(checkpoint, map_location="cpu", allow_import=allow_import)
    config: dict[str, Any] = {}
    results: dict[str, Any] = {}
    if run_dir is not None:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if (run_dir / "results.json").is_file():
            results = json.loads((run_dir / "results.json").read_text())
    return Source(checkpoint=checkpoint, run_dir=run_dir, model=model.eval(), spec=dict(ckpt["model_spec"]),
                  data_record=dict(ckpt.get("data") or {}), config=config, results=results,
                  tag=checkpoint.parent.name)


def load_data(source: Source, *, name: str | None = None, data_path: str | None = None,
              download: bool = False) -> DataSplits:
    """The checkpoint's dataset, normalized with its recorded statistics, as ``distill eval`` loads it
    (``val_size=0``: the test split is the official one, the training split the whole training set)."""
    rec = source.data_record
    name = name or rec.get("name")
    if not name:
        raise ExportError(f"{source.checkpoint} does not record its dataset; pass --data NAME")
    if data_path is None:
        data_path = (source.config.get("data") or {}).get("path")
    if name == "npz" and data_path is None:
        raise ExportError(f"{source.checkpoint} was trained on an .npz file, which a checkpoint does not record; "
                          f"pass the file: distill export {source.checkpoint} --data-path my.npz")
    raw = load_dataset(name, data_path, download=download)
    stats = (torch.tensor(rec["mean"]), torch.tensor(rec["std"])) if "mean" in rec else None
    data = make_splits(raw, val_size=0, stats=stats, device="cpu")
    if tuple(data.test.x.shape[1:]) != source.in_shape:
        raise ExportError(f"{source.checkpoint} takes inputs of shape {source.in_shape} but {name} has "
                          f"{tuple(data.test.x.shape[1:])}")
    if source.spec.get("num_classes") != data.num_classes:
        raise ExportError(f"{source.checkpoint} predicts {source.spec.get('num_classes')} classes but {name} "
                          f"has {data.num_classes}")
    return data


def fingerprint(data: DataSplits) -> str:
    """sha256 of the test split as exported against (inputs as float32 bytes, then labels as int64)."""
    h = hashlib.sha256()
    h.update(data.test.x.float().contiguous().numpy().tobytes())
    h.update(data.test.y.long().contiguous().numpy().tobytes())
    return h.hexdigest()
