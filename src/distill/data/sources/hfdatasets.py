"""``hf``: a Hugging Face ``datasets`` image dataset on local disk: a directory written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or Parquet files (one file, or a directory of them).

The image column is the first of feature type ``datasets.Image`` (else a column named ``image`` or ``img``),
the label column the first ``ClassLabel`` (its names are the class names), else an integer column named
``label`` or ``labels``. A ``DatasetDict``'s ``train`` split is trained on; its ``validation`` (or ``val``)
and ``test`` splits are those splits, as for an image folder's sub-folders. The data stays memory-mapped
(Arrow): each sample is read by its row, in the worker that decodes it, so memory stays bounded.

Parquet files are converted once into the ``datasets`` cache (``HF_DATASETS_CACHE``), as
``Dataset.from_parquet`` does. Needs the ``datasets`` package (the ``datasets`` extra: ``pip install -c constraints.txt -e ".[datasets]"``). Nothing is
downloaded: only local paths are read.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from distill.data.sources.base import CorruptDataError
from distill.data.sources.files import DETECTORS, OPENERS, SCANNERS, FilesSpec, FileSplits, ImageFiles, _pil
from distill.data.sources.registry import register

__all__ = ["HF_EXTRA", "open_hf_image"]

HF_EXTRA = 'pip install -c constraints.txt -e ".[datasets]"'
PREFIX = "hf:"
VALIDATION_NAMES = ("validation", "val", "valid")

_OPENED: dict[str, Any] = {}  # per process (each DataLoader worker opens its own memory map): root -> splits


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:  # an optional dependency
        raise ImportError(f"reading a Hugging Face dataset needs the datasets package: {HF_EXTRA}") from None
    return datasets


def _detect(p: Path) -> str | None:
    if p.is_file() and p.suffix.lower() == ".parquet":
        return "hf"
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()
                       or any(f.suffix == ".parquet" for f in p.iterdir())):
        return "hf"
    return None


def _open(root: str) -> dict[str, Any]:
    """The dataset at ``root`` as {split: Dataset}, opened once per process."""
    if root not in _OPENED:
        datasets = _datasets()
        p = Path(root)
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            loaded = datasets.load_from_disk(root)
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        else:
            files = [root] if p.is_file() else sorted(str(f) for f in p.iterdir() if f.suffix == ".parquet")
            splits = {"train": datasets.Dataset.from_parquet(files)}
        _OPENED[root] = splits
    return _OPENED[root]


def _columns(features: Any, where: str) -> tuple[str, str, tuple[str, ...] | None]:
    """(image column, label column, class names or None) of a split's features."""
    datasets = _datasets()
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    images += [k for k in ("image", "img") if k in features and k not in images]
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    labels += [k for k in ("label", "labels") if k in features and k not in labels]
    if not images or not labels:
        raise CorruptDataError(f"hf dataset {where}: needs an image column (feature Image, or named image/img) and a "
                               f"label column (ClassLabel, or named label/labels); its columns: {', '.join(features)}")
    names = features[labels[0]].names if isinstance(features[labels[0]], datasets.ClassLabel) else None
    return images[0], labels[0], tuple(names) if names is not None else None


def open_hf_image(name: str) -> Any:
    """The PIL image of ``hf:<root>#<split>/<row>``."""
    root, where = name[len(PREFIX):].rsplit("#", 1)
    split, row = where.rsplit("/", 1)
    ds = _open(root)[split]
    column = _columns(ds.features, root)[0]
    value = ds[int(row)][column]
    if isinstance(value, dict):  # an Image feature not decoded: {"bytes": ..., "path": ...}
        return _pil().open(io.BytesIO(value["bytes"])) if value.get("bytes") else _pil().open(value["path"])
    return value


def _scan(p: Path) -> FileSplits:
    if not p.exists():
        raise CorruptDataError(f"hf: data.path={p} does not exist; give a directory written by save_to_disk, or "
                               f"Parquet files")
    splits = _open(str(p))
    train_key = "train" if "train" in splits else next(iter(splits))
    _, _, names = _columns(splits[train_key].features, str(p))
    found: dict[str, ImageFiles] = {}
    roles = {"train": train_key, "val": next((k for k in VALIDATION_NAMES if k in splits), None),
             "test": "test" if "test" in splits else None}
    for role, key in roles.items():
        if key is None:
            continue
        ds = splits[key]
        _, label_column, _ = _columns(ds.features, f"{p} split {key}")
        labels = torch.tensor(ds[label_column], dtype=torch.long)
        found[role] = ImageFiles(tuple(f"{PREFIX}{p}#{key}/{i}" for i in range(len(ds))), labels)
    if names is None:
        names = tuple(str(i) for i in range(int(found["train"].labels.max()) + 1))
    return FileSplits("hf", str(p), names, found["train"], found.get("val"), found.get("test"))


OPENERS[PREFIX] = open_hf_image
SCANNERS["hf"] = _scan
DETECTORS.insert(0, _detect)
register(FilesSpec("hf", "a Hugging Face datasets image dataset on disk (save_to_disk, or Parquet)"),
         aliases=("huggingface", "hfdatasets"))
