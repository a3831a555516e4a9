"""``cifar10``, ``cifar100``: the official "python version", as the extracted directory or the
``.tar.gz`` itself, read with a restricted unpickler (see the package docstring on pickle)."""

from __future__ import annotations

import functools
import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np

from distill.data.sources.base import (
    CorruptDataError,
    RawDataset,
    _check_labels,
    _images_to_tensor,
    _labels_to_tensor,
)
from distill.data.sources.registry import DatasetSpec, DownloadSource, Located, register

__all__ = ["CifarSpec"]


@dataclass(frozen=True)
class CifarSpec(DatasetSpec):
    """A CIFAR dataset: the pickled batches in ``subdir``, or the ``archive`` holding them."""

    subdir: str = ""
    archive: str = ""
    train_files: tuple[str, ...] = ()
    test_file: str = ""
    meta_file: str = ""
    label_key: str = ""
    names_key: str = ""

    in_data_root: ClassVar[bool] = True
    path_means: ClassVar[str] = "the archive or its directory"

    def wanted(self) -> str:
        return f"{self.subdir}/ ({', '.join(_cifar_needed(self))}) or {self.archive}"

    def locate(self, location: Path) -> tuple[Located | None, str]:
        found, why = _find_cifar(self, location)
        if found is None:
            return None, why
        kind, where = found
        loader = _load_cifar_dir if kind == "dir" else _load_cifar_archive
        return Located(where, functools.partial(loader, self, where)), ""


def _numpy_core_module(name: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> dict[tuple[str, str], object]:
    import _codecs

    multiarray = _numpy_core_module("multiarray")
    numeric = _numpy_core_module("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # how Python 3 writes bytes at protocol 2
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, strings, numbers and numpy arrays: no other callables."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: the official CIFAR files hold only dicts, "
                f"lists, strings and numpy arrays"
            ) from None


def _unpickle(blob: bytes, where: str) -> dict[str, object]:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # any failure to parse is a damaged (or foreign) file
        raise CorruptDataError(f"{where}: not a readable CIFAR pickle: {err}") from err
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    # encoding="bytes" gives bytes keys for the official (Python 2) files; accept str keys too
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(
    entry: dict[str, object], label_key: str, num_classes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", label_key):
        if key not in entry:
            raise CorruptDataError(
                f"{where}: missing key {key!r} (has {sorted(entry)}); is this the python "
                f"version of the right CIFAR dataset?"
            )
    data = entry["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise CorruptDataError(
            f"{where}: 'data' must be a uint8 array of shape (N, 3072), found {desc}"
        )
    try:
        labels = np.asarray(entry[label_key])
    except Exception as err:
        raise CorruptDataError(f"{where}: {label_key!r} is not a list of integers ({err})") from err
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise CorruptDataError(
            f"{where}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}; "
            f"the counts must agree"
        )
    labels = _check_labels(labels, num_classes, where)
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_names(entry: dict[str, object], key: str, where: str) -> tuple[str, ...]:
    names = entry.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise CorruptDataError(f"{where}: missing or empty {key!r} (has {sorted(entry)})")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar(
    spec: CifarSpec, read: Callable[[str], bytes], describe: Callable[[str], str], source: Path
) -> RawDataset:
    meta_where = describe(spec.meta_file)
    class_names = _cifar_names(
        _unpickle(read(spec.meta_file), meta_where), spec.names_key, meta_where
    )
    k = len(class_names)
    train = [
        _cifar_batch(_unpickle(read(f), describe(f)), spec.label_key, k, describe(f))
        for f in spec.train_files
    ]
    test_x, test_y = _cifar_batch(
        _unpickle(read(spec.test_file), describe(spec.test_file)),
        spec.label_key,
        k,
        describe(spec.test_file),
    )
    train_x = np.concatenate([x for x, _ in train]) if len(train) > 1 else train[0][0]
    train_y = np.concatenate([y for _, y in train]) if len(train) > 1 else train[0][1]
    return RawDataset(
        name=spec.name,
        train_x=_images_to_tensor(train_x, 255.0),
        train_y=_labels_to_tensor(train_y),
        test_x=_images_to_tensor(test_x, 255.0),
        test_y=_labels_to_tensor(test_y),
        num_classes=k,
        class_names=class_names,
        source=str(source),
    )


def _cifar_needed(spec: CifarSpec) -> tuple[str, ...]:
    return (*spec.train_files, spec.test_file, spec.meta_file)


def _is_archive_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _find_cifar(spec: CifarSpec, location: Path) -> tuple[tuple[str, Path] | None, str]:
    """("dir", d) or ("archive", f) for a complete copy at ``location``, or None and why not."""
    if not location.exists():
        return None, "does not exist"
    if location.is_file():
        if _is_archive_name(location) or tarfile.is_tarfile(location):
            return ("archive", location), ""
        return None, "is a file but not a .tar.gz archive"
    needed = _cifar_needed(spec)
    notes = []
    for directory in (location, location / spec.subdir):
        if directory.is_dir():
            missing = [f for f in needed if not (directory / f).is_file()]
            if not missing:
                return ("dir", directory), ""
            if len(missing) < len(needed):
                notes.append(f"{directory} lacks {', '.join(missing)}")
    if (location / spec.archive).is_file():
        return ("archive", location / spec.archive), ""
    return None, "; ".join(notes) or f"no {spec.subdir}/ or {spec.archive} there"


def _load_cifar_dir(spec: CifarSpec, directory: Path) -> RawDataset:
    def read(name: str) -> bytes:
        try:
            return (directory / name).read_bytes()
        except OSError as err:
            raise CorruptDataError(f"{directory / name}: cannot be read: {err}") from err

    return _load_cifar(spec, read, lambda n: str(directory / n), directory)


def _load_cifar_archive(spec: CifarSpec, archive: Path) -> RawDataset:
    needed = set(_cifar_needed(spec))
    blobs: dict[str, bytes] = {}
    names: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one sequential pass: no seeking back in the gzip stream
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in needed and base not in blobs:
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    blobs[base] = f.read()
                    names[base] = member.name
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise CorruptDataError(
            f"{archive}: truncated or corrupt archive ({err}); delete it and download it again"
        ) from err
    missing = sorted(needed - set(blobs))
    if missing:
        raise CorruptDataError(
            f"{archive}: the archive lacks {', '.join(missing)}; is it the python version "
            f"({spec.archive}) of {spec.title}?"
        )
    return _load_cifar(spec, blobs.__getitem__, lambda n: f"{archive}:{names[n]}", archive)


# Published checksums: the md5s of the archives as listed in torchvision/datasets/cifar.py. md5 is
# what is published for these files; it guards against damaged or substituted downloads.
DOWNLOAD_CIFAR10 = DownloadSource(
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    files={"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
    size="163 MB",
    checksum_source="torchvision.datasets.CIFAR10.tgz_md5",
)
DOWNLOAD_CIFAR100 = DownloadSource(
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    files={"cifar-100-python.tar.gz": "md5:eb9058c3a382ffc7106e4002c42a8d85"},
    size="161 MB",
    checksum_source="torchvision.datasets.CIFAR100.tgz_md5",
)

register(
    CifarSpec(
        "cifar10",
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        subdir="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    download=DOWNLOAD_CIFAR10,
)
register(
    CifarSpec(
        "cifar100",
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        subdir="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
    download=DOWNLOAD_CIFAR100,
)
