"""``imagefolder`` and ``manifest``: your own images as files on disk, decoded with Pillow.

Two layouts:

``imagefolder``
    A directory with one sub-directory per class (the ImageNet layout), class names sorted:
    ``DIR/<class>/<image>``. Or the split layout ``DIR/train/<class>/...`` with ``DIR/val/`` (and
    ``DIR/test/``) beside it (:func:`scan_splits` says which folder becomes which split).
``manifest``
    A CSV file with a header ``path,label`` or a JSON Lines file with one ``{"path": ..., "label": ...}``
    per line; relative paths are relative to the manifest's directory. Labels are class names (sorted)
    or integers ``0..K-1``.

Scanning lists the files (by extension, without opening them) and says what it found: classes,
counts per split, and examples of what it skipped (:meth:`FileSplits.report`). Decoding
(:func:`decode_image`) happens later, per sample: in DataLoader workers for a streamed training
split (:mod:`distill.data.streaming`), or once for data small enough to hold in memory.

Pillow is an optional dependency (the ``data`` extra): it is imported when the first image is decoded.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from distill.data.sources.base import CorruptDataError, DataNotFoundError, RawDataset
from distill.data.sources.registry import _SPECS, DatasetSpec, canonical_name, register, spec_for_file

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "FileSplits",
    "ImageFiles",
    "decode_image",
    "file_kind",
    "looks_like_files",
    "scan_splits",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
SPLIT_FOLDERS = ("train", "val", "test")
DATA_EXTRA = 'pip install -c constraints.txt -e ".[data]"'
SHOWN = 5  # examples of skipped files kept for the report


@dataclass(frozen=True)
class ImageFiles:
    """One split as files: ``paths[i]`` has label ``labels[i]`` (int64, in ``[0, num_classes)``)."""

    paths: tuple[str, ...]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> ImageFiles:
        rows = index.tolist()
        return ImageFiles(tuple(self.paths[i] for i in rows), self.labels[index])


@dataclass(frozen=True)
class FileSplits:
    """A scanned dataset: the train split and, where the layout has them, val and test; the class
    names; where it came from; and what was skipped while scanning (count and the first few paths)."""

    name: str
    source: str
    class_names: tuple[str, ...]
    train: ImageFiles
    val: ImageFiles | None = None
    test: ImageFiles | None = None
    skipped: int = 0
    skipped_examples: tuple[str, ...] = field(default_factory=tuple)

    def report(self) -> str:
        """What the scan found, in one paragraph for the log."""
        counts = ", ".join(f"{n} {len(s)}" for n, s in (("train", self.train), ("val", self.val), ("test", self.test))
                           if s is not None)
        per_class = torch.bincount(self.train.labels, minlength=len(self.class_names)).tolist()
        shown = ", ".join(f"{c}: {k}" for c, k in list(zip(self.class_names, per_class))[:10])
        more = f", ... ({len(self.class_names)} classes)" if len(self.class_names) > 10 else ""
        line = f"{self.name} at {self.source}: {counts} images; train per class {shown}{more}"
        if self.skipped:
            line += f"; skipped {self.skipped} entries that are not labelled images, e.g. " \
                    f"{', '.join(self.skipped_examples)}"
        return line


#: Openers of images that are not plain files, by the prefix of their names (``"tar:"``, ``"hf:"``): each takes
#: the name and returns a PIL image. Registered by :mod:`~distill.data.sources.webdataset` and
#: :mod:`~distill.data.sources.hfdatasets`.
OPENERS: dict[str, Callable[[str], Any]] = {}
#: Scanners by dataset kind (``imagefolder``, ``manifest``, ...): a path to the :class:`FileSplits` found there.
SCANNERS: dict[str, Callable[[Path], FileSplits]] = {}
#: Detectors, in order: a path to the kind of dataset it holds, or None.
DETECTORS: list[Callable[[Path], str | None]] = []


def looks_like_files(path: str | os.PathLike[str] | None) -> str | None:
    """The kind of image dataset at ``path`` (``manifest``, ``imagefolder``, and the kinds other modules add to
    :data:`DETECTORS`), else None: how a dataset is detected from ``data.path`` alone."""
    if path is None:
        return None
    p = Path(path).expanduser()
    for detect in DETECTORS:
        kind = detect(p)
        if kind is not None:
            return kind
    return None


def _detect_folder_or_manifest(p: Path) -> str | None:
    if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
        return "manifest"
    if not p.is_dir():
        return None
    if (p / "train").is_dir() and any(d.is_dir() for d in (p / "train").iterdir()):
        return "imagefolder"
    for sub in sorted(p.iterdir()):
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
            return "imagefolder"
    return None


def file_kind(name: str, path: str | os.PathLike[str] | None) -> str | None:
    """``"imagefolder"`` or ``"manifest"`` when a config's ``data.name`` and ``data.path`` mean image files:
    the name says so, or the name is of a dataset that reads no files (``digits``, the default) and the path
    is a manifest or a class-folder tree (:func:`looks_like_files`). Else None (a named dataset)."""
    spec = _SPECS.get(canonical_name(name)) if spec_for_file(name) is None else None
    if spec is not None and isinstance(spec, FilesSpec):
        return spec.name
    if spec is not None and not spec.searched and not spec.takes_file:
        return looks_like_files(path)
    return None


def scan_splits(kind: str, path: str | os.PathLike[str]) -> FileSplits:
    """Scan a dataset of images (``kind``: a key of :data:`SCANNERS`: ``imagefolder``, ``manifest``, ...).

    An image folder with ``train/`` uses it for training, ``val/`` and ``test/`` beside it as those
    splits (each with the same class sub-directories); without ``train/`` every image is a training
    image and the validation and test splits are carved from it later (seeded, stratified).
    """
    return SCANNERS[kind](Path(path).expanduser())


def _scan_folder(p: Path) -> FileSplits:
    if not p.is_dir():
        raise DataNotFoundError(f"imagefolder: data.path={p} is not a directory; give a directory with one "
                                f"sub-directory per class (DIR/<class>/<image>), or DIR/train/<class>/...")
    roots = {s: p / s for s in SPLIT_FOLDERS if (p / s).is_dir()} if (p / "train").is_dir() else {"train": p}
    classes = _class_folders(roots["train"])
    skipped: list[str] = []
    found: dict[str, ImageFiles] = {}
    for split, root in roots.items():
        extra = sorted(set(_class_folders(root, require=False)) - set(classes))
        if extra:
            raise CorruptDataError(f"imagefolder: {root} has class folders that {roots['train']} lacks: "
                                   f"{', '.join(extra[:5])}; every split needs the training split's classes")
        paths, labels = [], []
        for label, name in enumerate(classes):
            folder = root / name
            for f in sorted(folder.iterdir()) if folder.is_dir() else []:
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(f))
                    labels.append(label)
                else:
                    skipped.append(str(f))
        if not paths:
            raise CorruptDataError(f"imagefolder: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders "
                                   f"of {root}")
        found[split] = ImageFiles(tuple(paths), torch.tensor(labels, dtype=torch.long))
    return FileSplits("imagefolder", str(p), tuple(classes), found["train"], found.get("val"), found.get("test"),
                      len(skipped), tuple(skipped[:SHOWN]))


def _class_folders(root: Path, require: bool = True) -> list[str]:
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if require and not names:
        raise CorruptDataError(f"imagefolder: {root} has no class sub-directories; put each class's images in "
                               f"{root}/<class>/ (the ImageNet layout)")
    return names


def _scan_manifest(path: Path) -> FileSplits:
    if not path.is_file():
        raise DataNotFoundError(f"manifest: data.path={path} is not a file; give a CSV (header path,label) or "
                                f"JSON Lines file ({{\"path\": ..., \"label\": ...}} per line)")
    rows = _manifest_rows(path)
    if not rows:
        raise CorruptDataError(f"manifest {path}: no rows")
    raw_labels = [label for _, label in rows]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in raw_labels):
        ints = [int(v) for v in raw_labels]
        if min(ints) < 0:
            raise CorruptDataError(f"manifest {path}: label {min(ints)} is negative; integer labels are 0..K-1")
        classes = tuple(str(i) for i in range(max(ints) + 1))
        labels = ints
    else:
        classes = tuple(sorted({str(v) for v in raw_labels}))
        lookup = {c: i for i, c in enumerate(classes)}
        labels = [lookup[str(v)] for v in raw_labels]
    base = path.parent
    paths = tuple(str(base / f) if not os.path.isabs(f) else f for f, _ in rows)
    return FileSplits("manifest", str(path), classes, ImageFiles(paths, torch.tensor(labels, dtype=torch.long)))


def _manifest_rows(path: Path) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    rows.append((str(row["path"]), row["label"]))
                except (ValueError, KeyError, TypeError) as err:
                    raise CorruptDataError(f"manifest {path}, line {n}: expected {{\"path\": ..., \"label\": ...}}, "
                                           f"got {line.strip()[:80]!r} ({err})") from None
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise CorruptDataError(f"manifest {path}: the CSV header must name the columns path and label, found "
                                   f"{reader.fieldnames}")
        for row in reader:
            rows.append((row["path"], row["label"]))
    return rows


def _pil() -> Any:
    """Pillow, or an error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:  # an optional dependency
        raise ImportError(f"decoding image files needs Pillow: {DATA_EXTRA}") from None
    return Image


def open_image(name: str) -> Any:
    """The PIL image called ``name``: a file path, or a name with a prefix of :data:`OPENERS`."""
    scheme = name.split(":", 1)[0] + ":" if ":" in name else ""
    opener = OPENERS.get(scheme)
    return opener(name) if opener is not None else _pil().open(name)


def decode_image(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """The image at ``path`` as uint8 (channels, height, width), converted to grayscale (1) or RGB (3) and
    resized to ``size`` = (height, width) with bilinear filtering (antialiased, Pillow's) when it differs.
    Raises ``OSError``/``ValueError`` (Pillow's) for an unreadable or corrupt file."""
    image_mod = _pil()
    with open_image(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), image_mod.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def native_shape(paths: tuple[str, ...]) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) of the first readable image of the first few ``paths``: 1 channel for
    grayscale, else 3."""
    errors = []
    for path in paths[:SHOWN]:
        try:
            with open_image(path) as image:
                return (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3), (image.size[1], image.size[0])
        except (OSError, ValueError, SyntaxError) as err:  # Pillow's errors for a file it cannot read
            errors.append(f"{path} ({err})")
    raise CorruptDataError(f"none of the first training images could be read: {'; '.join(errors)}")


@dataclass(frozen=True)
class FilesSpec(DatasetSpec):
    """Image files you name as ``path``: read whole into memory by :func:`load_dataset` at the size of the
    first image (a run reads them through :mod:`distill.data.streaming`, with ``data.image_size``)."""

    searched: ClassVar[bool] = False
    takes_file: ClassVar[bool] = True

    def load_direct(self, path: str | os.PathLike[str] | None) -> RawDataset:
        if path is None:
            raise ValueError(f"dataset {self.name!r} needs data.path (a directory of class folders, or a CSV/JSONL "
                             f"manifest)")
        found = scan_splits(self.name, path)
        channels, size = native_shape(found.train.paths)
        test = found.test or found.val
        if test is None:
            raise ValueError(f"{self.name} at {path} has no test/ or val/ split; load_dataset returns the official "
                             f"train and test splits, so give a folder with train/ and val/ (or test/), or use a "
                             f"run (distill run), which carves the splits")

        def read(files: ImageFiles) -> torch.Tensor:
            return torch.from_numpy(np.stack([decode_image(f, size, channels) for f in files.paths])).float() / 255

        return RawDataset(self.name, read(found.train), found.train.labels, read(test), test.labels,
                          len(found.class_names), found.class_names, str(path))


SCANNERS.update(imagefolder=_scan_folder, manifest=_scan_manifest)
DETECTORS.append(_detect_folder_or_manifest)
register(FilesSpec("imagefolder", "a folder of images, one sub-folder per class"), aliases=("folder",))
register(FilesSpec("manifest", "image files listed in a CSV or JSON Lines file (path, label)"))
