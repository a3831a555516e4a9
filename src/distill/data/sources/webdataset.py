"""``webdataset``: WebDataset tar shards on local disk: ``data.path`` is one ``.tar`` file or a directory of
them (``train/`` with ``val/`` and ``test/`` beside it are those splits). A sample is the members that share
a key (``<key>.jpg`` or another image suffix, and ``<key>.cls``: its integer label as text).

Scanning reads the tar headers (and the small ``.cls`` members) once and keeps each image's byte offset and
size; a worker then reads one image by seeking in its shard. So samples are read in any order (the seeded
order of the in-memory path, resumable mid-epoch), not only shard by shard, and memory stays bounded. Shards
must be uncompressed tar (WebDataset's own format); nothing beyond the standard library and Pillow is needed.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import torch

from distill.data.sources.base import CorruptDataError
from distill.data.sources.files import (
    DETECTORS,
    IMAGE_SUFFIXES,
    OPENERS,
    SCANNERS,
    SHOWN,
    FilesSpec,
    FileSplits,
    ImageFiles,
    _pil,
)
from distill.data.sources.registry import register

__all__ = ["open_tar_image"]

PREFIX = "tar:"


def _shards(p: Path) -> list[Path]:
    return [p] if p.is_file() else sorted(f for f in p.iterdir() if f.suffix == ".tar")


def _detect(p: Path) -> str | None:
    if p.is_file() and p.suffix == ".tar":
        return "webdataset"
    if p.is_dir() and (_shards(p) or ((p / "train").is_dir() and _shards(p / "train"))):
        return "webdataset"
    return None


def open_tar_image(name: str) -> Any:
    """The PIL image of ``tar:<shard>#<offset>+<size>``: its bytes read by seeking in the shard."""
    shard, where = name[len(PREFIX):].rsplit("#", 1)
    offset, size = (int(v) for v in where.split("+"))
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    return _pil().open(io.BytesIO(data))


def _scan_split(p: Path, skipped: list[str]) -> ImageFiles:
    names, labels = [], []
    for shard in _shards(p):
        images: dict[str, str] = {}
        classes: dict[str, int] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, suffix = member.name.partition(".")
                    if "." + suffix.lower() in IMAGE_SUFFIXES:
                        images[key] = f"{PREFIX}{shard}#{member.offset_data}+{member.size}"
                    elif suffix in ("cls", "label"):
                        stream = tar.extractfile(member)
                        assert stream is not None
                        classes[key] = int(stream.read().decode().strip())
        except (tarfile.TarError, OSError, ValueError) as err:
            raise CorruptDataError(f"webdataset shard {shard}: cannot be read as an uncompressed tar with integer "
                                   f"<key>.cls labels: {err}") from err
        for key, name in images.items():
            if key in classes:
                names.append(name)
                labels.append(classes[key])
            else:
                skipped.append(f"{shard}:{key} (no .cls label)")
    if not names:
        raise CorruptDataError(f"webdataset: no labelled images (<key>.jpg/.png with <key>.cls) in the .tar shards "
                               f"at {p}")
    return ImageFiles(tuple(names), torch.tensor(labels, dtype=torch.long))


def _scan(p: Path) -> FileSplits:
    if not p.exists():
        raise CorruptDataError(f"webdataset: data.path={p} does not exist; give a .tar shard or a directory of them")
    skipped: list[str] = []
    if p.is_dir() and (p / "train").is_dir():
        splits = {s: _scan_split(p / s, skipped) for s in ("train", "val", "test") if (p / s).is_dir()}
    else:
        splits = {"train": _scan_split(p, skipped)}
    if min(int(s.labels.min()) for s in splits.values()) < 0:
        raise CorruptDataError(f"webdataset {p}: negative labels; .cls labels are 0..K-1")
    classes = tuple(str(i) for i in range(max(int(s.labels.max()) for s in splits.values()) + 1))
    return FileSplits("webdataset", str(p), classes, splits["train"], splits.get("val"), splits.get("test"),
                      len(skipped), tuple(skipped[:SHOWN]))


OPENERS[PREFIX] = open_tar_image
SCANNERS["webdataset"] = _scan
DETECTORS.append(_detect)
register(FilesSpec("webdataset", "WebDataset .tar shards (<key>.jpg + <key>.cls)"), aliases=("wds",))
