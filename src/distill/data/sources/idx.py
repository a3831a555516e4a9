"""``mnist``, ``fashion-mnist``, ``kmnist``: the four IDX files of each (gzipped or not)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data.sources.base import (
    DIGIT_CLASSES,
    CorruptDataError,
    RawDataset,
    _check_labels,
    _images_to_tensor,
    _labels_to_tensor,
    _read_maybe_gzip,
)
from distill.data.sources.registry import DatasetSpec, DownloadSource, Located, register

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "KMNIST_CLASSES",
    "IdxSpec",
    "read_idx",
]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Kuzushiji-MNIST: the romanized hiragana of classes 0..9 (as in torchvision.datasets.KMNIST)
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _idx_candidates(base: str) -> list[str]:
    # Some copies (e.g. from Kaggle) spell the names with a dot: train-images.idx3-ubyte
    dotted = base.replace("-idx", ".idx")
    return [base + ".gz", base, dotted + ".gz", dotted]


def _find_idx_files(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The four files in ``directory`` (or None) and, if not all there, why not."""
    if not directory.exists():
        return None, "does not exist"
    if not directory.is_dir():
        return None, "is not a directory"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for base in IDX_FILES:
        for candidate in _idx_candidates(base):
            if (directory / candidate).is_file():
                found[base] = directory / candidate
                break
        else:
            missing.append(base + "[.gz]")
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, ""


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) as a uint8 array of its dimensions.

    ``magic`` is 2051 for images (N, H, W) or 2049 for labels (N,). Raises CorruptDataError
    naming the file on a bad magic number or a length that disagrees with the header.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    kind = {IDX_IMAGES_MAGIC: "image", IDX_LABELS_MAGIC: "label"}.get(magic, "IDX")
    if len(data) < 4:
        raise CorruptDataError(
            f"{path}: only {len(data)} bytes, too short for an IDX header (truncated?)"
        )
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        other = {IDX_IMAGES_MAGIC: "an image file", IDX_LABELS_MAGIC: "a label file"}.get(got)
        hint = (
            f" ({other} in place of {kind}s?)" if other else " (not an IDX file of unsigned bytes)"
        )
        raise CorruptDataError(
            f"{path}: bad magic number {got} (0x{got:08x}), expected {magic} (0x{magic:08x}) for "
            f"an IDX {kind} file{hint}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise CorruptDataError(
            f"{path}: wrong length: the header says {'x'.join(map(str, dims))} so the data should "
            f"be {expected} bytes, but it is {len(data)} bytes ({what})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(spec: IdxSpec, files: dict[str, Path], source: Path) -> RawDataset:
    splits = []
    for images_base, labels_base in (IDX_FILES[:2], IDX_FILES[2:]):
        images_path, labels_path = files[images_base], files[labels_base]
        x = read_idx(images_path, IDX_IMAGES_MAGIC)
        y = read_idx(labels_path, IDX_LABELS_MAGIC)
        if x.shape[0] != y.shape[0]:
            raise CorruptDataError(
                f"{images_path} holds {x.shape[0]} images but {labels_path} holds {y.shape[0]} "
                f"labels; the counts must agree (mixed-up or damaged files?)"
            )
        y = _check_labels(y, len(spec.class_names), str(labels_path))
        splits.append((x, y, images_path))
    (train_x, train_y, train_path), (test_x, test_y, test_path) = splits
    if train_x.shape[1:] != test_x.shape[1:]:
        raise CorruptDataError(
            f"{train_path} holds {train_x.shape[1]}x{train_x.shape[2]} images but {test_path} "
            f"holds {test_x.shape[1]}x{test_x.shape[2]}; they must be the same size"
        )
    return RawDataset(
        name=spec.name,
        train_x=_images_to_tensor(train_x[:, None], 255.0),
        train_y=_labels_to_tensor(train_y),
        test_x=_images_to_tensor(test_x[:, None], 255.0),
        test_y=_labels_to_tensor(test_y),
        num_classes=len(spec.class_names),
        class_names=spec.class_names,
        source=str(source),
    )


@dataclass(frozen=True)
class IdxSpec(DatasetSpec):
    """An MNIST-like dataset: the four IDX files in one directory."""

    def wanted(self) -> str:
        return ", ".join(f"{b}[.gz]" for b in IDX_FILES)

    def locate(self, location: Path) -> tuple[Located | None, str]:
        files, why = _find_idx_files(location)
        if files is None:
            return None, why
        return Located(location, functools.partial(_load_idx, self, files, location)), ""


# Published checksums: the md5s of the .gz files as listed in torchvision/datasets/mnist.py (and,
# for Fashion-MNIST, in the table of the official README). md5 is what is published for these
# files; it guards against damaged or substituted downloads.
DOWNLOAD_MNIST = DownloadSource(
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    files={
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    size="11 MB",
    checksum_source="torchvision.datasets.MNIST.resources",
)
DOWNLOAD_FMNIST = DownloadSource(
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files={
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    size="30 MB",
    checksum_source="Fashion-MNIST README; torchvision.datasets.FashionMNIST.resources",
)
DOWNLOAD_KMNIST = DownloadSource(
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    files={
        "train-images-idx3-ubyte.gz": "md5:bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "md5:e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "md5:7320c461ea6c1c855c0b718fb2a4b134",
    },
    size="20 MB",
    checksum_source="torchvision.datasets.KMNIST.resources",
)

register(
    IdxSpec("mnist", "MNIST", "https://yann.lecun.com/exdb/mnist/", class_names=DIGIT_CLASSES),
    download=DOWNLOAD_MNIST,
)
register(
    IdxSpec(
        "fashion-mnist",
        "Fashion-MNIST",
        "https://github.com/zalandoresearch/fashion-mnist",
        class_names=FASHION_MNIST_CLASSES,
        apt_package="dataset-fashion-mnist",
    ),
    aliases=("fashionmnist", "fmnist", "fashion"),
    download=DOWNLOAD_FMNIST,
)
register(
    IdxSpec("kmnist", "Kuzushiji-MNIST", "https://github.com/rois-codh/kmnist", class_names=KMNIST_CLASSES),
    aliases=("kuzushijimnist",),
    download=DOWNLOAD_KMNIST,
)
