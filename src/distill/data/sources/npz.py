"""``npz``: your own data in a ``.npz`` file (``np.savez``), read without pickle."""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from distill.data.sources.base import (
    CorruptDataError,
    DataNotFoundError,
    RawDataset,
    _check_labels,
    _images_to_tensor,
    _labels_to_tensor,
    finite_float32,
)
from distill.data.sources.registry import DatasetSpec, register

__all__ = ["NPZ_KEYS", "NpzSpec", "load_npz"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike[str]) -> RawDataset:
    """Load your own dataset from a ``.npz`` file (``np.savez``), without pickle.

    Required keys: ``x_train``, ``y_train``, ``x_test``, ``y_test``. Optional: ``class_names``
    (an array of strings) and ``num_classes`` (an integer; otherwise ``len(class_names)``, or
    the largest label + 1).

    ``x`` may be (N, H, W) images (a channel axis is added), (N, C, H, W) images, or (N, D)
    vectors; uint8 is divided by 255, floating point is kept (as float32). Labels are integers
    of shape (N,) in ``[0, num_classes)``.
    """
    path = Path(path).expanduser()
    arrays = _read_npz(path)
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        xs[split] = _examples(arrays[f"x_{split}"], f"{path}: x_{split}")
        ys[split] = _labels(arrays[f"y_{split}"], xs[split].shape[0], path, split)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise CorruptDataError(
            f"{path}: x_train examples have shape {xs['train'].shape[1:]} but x_test examples "
            f"{xs['test'].shape[1:]}; they must match"
        )
    class_names = _class_names(arrays.get("class_names"), path)
    num_classes = _num_classes(arrays.get("num_classes"), class_names, ys, path)
    for split in ("train", "test"):
        ys[split] = _check_labels(ys[split], num_classes, f"{path}: y_{split}")
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    return RawDataset(
        name="npz",
        train_x=_to_tensor(xs["train"]),
        train_y=_labels_to_tensor(ys["train"]),
        test_x=_to_tensor(xs["test"]),
        test_y=_labels_to_tensor(ys["test"]),
        num_classes=num_classes,
        class_names=class_names,
        source=str(path),
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The archive's arrays: the required ``NPZ_KEYS`` and whichever of ``class_names`` and
    ``num_classes`` it holds, read without pickle."""
    archive = _open_npz(path)
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise CorruptDataError(
                f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
                f"Expected keys: {', '.join(NPZ_KEYS)} (optional: class_names, num_classes); "
                f"found: {', '.join(archive.files) or 'none'}"
            )
        keys = [*NPZ_KEYS, *(k for k in ("class_names", "num_classes") if k in archive.files)]
        return {k: _read_array(archive, k, path) for k in keys}


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """``path`` opened as an ``.npz`` archive, or an error saying how to save one."""
    if not path.is_file():
        raise DataNotFoundError(
            f"npz file {path} {'is a directory' if path.is_dir() else 'does not exist'}. Save your "
            f"data with np.savez({path.name!r}, x_train=..., y_train=..., x_test=..., y_test=...) "
            f"and pass its path: load_dataset('npz', path=...), or on the command line "
            f"--set data.name=npz --set data.path=..."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptDataError(f"{path}: cannot be read as an .npz archive: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CorruptDataError(
            f"{path}: holds a single array (a .npy file), not an .npz archive with the keys "
            f"{', '.join(NPZ_KEYS)}; save it with np.savez"
        )
    return archive


def _read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CorruptDataError(
            f"{path}: cannot read {key!r}: {err}"
            + (
                " (object arrays are not loaded; store plain numeric or string arrays)"
                if "allow_pickle" in str(err)
                else ""
            )
        ) from err


def _examples(x: np.ndarray, where: str) -> np.ndarray:
    """A split's inputs checked (2-, 3- or 4-d, not empty, uint8 or finite floating point), with a channel
    axis added to (N, H, W) images; floating point as float32, uint8 as it is."""
    if x.ndim not in (2, 3, 4):
        raise CorruptDataError(
            f"{where} has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, D)"
        )
    if x.shape[0] == 0:
        raise CorruptDataError(f"{where} is empty")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        x = finite_float32(x, where)
    else:
        raise CorruptDataError(
            f"{where} has dtype {x.dtype}; expected uint8 (0..255, scaled to [0, 1]) or "
            f"floating point (used as is)"
        )
    return x[:, None] if x.ndim == 3 else x


def _labels(y: np.ndarray, examples: int, path: Path, split: str) -> np.ndarray:
    """A split's labels checked: integers, one per example ((N,) or (N, 1), returned as (N,))."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != examples:
        raise CorruptDataError(
            f"{path}: y_{split} has shape {y.shape} but x_{split} has {examples} examples; "
            f"expected shape ({examples},)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise CorruptDataError(
            f"{path}: y_{split} has dtype {y.dtype}; labels must be integers"
        )
    return y


def _class_names(names: np.ndarray | None, path: Path) -> tuple[str, ...] | None:
    """The optional ``class_names``: a 1-D array of (unicode or byte) strings."""
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise CorruptDataError(
            f"{path}: class_names must be a 1-D array of strings, found "
            f"{names.dtype} of shape {names.shape}"
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist())


def _num_classes(stored: np.ndarray | None, class_names: tuple[str, ...] | None, ys: dict[str, np.ndarray],
                 path: Path) -> int:
    """The stored ``num_classes`` (a positive integer, agreeing with ``class_names``), else the number of
    class names, else the largest label + 1."""
    if stored is not None:
        if stored.ndim != 0 or not np.issubdtype(stored.dtype, np.integer) or int(stored) < 1:
            raise CorruptDataError(
                f"{path}: num_classes must be a positive integer, found {stored!r}"
            )
        num_classes = int(stored)
        if class_names is not None and len(class_names) != num_classes:
            raise CorruptDataError(
                f"{path}: num_classes is {num_classes} but class_names has {len(class_names)} names"
            )
        return num_classes
    if class_names is not None:
        return len(class_names)
    return max(int(max(ys["train"].max(), ys["test"].max())) + 1, 1)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return _images_to_tensor(x, 255.0 if x.dtype == np.uint8 else 1.0)


@dataclass(frozen=True)
class NpzSpec(DatasetSpec):
    """Your own file, given as ``path`` (or as the dataset name itself: ``my.npz``)."""

    searched: ClassVar[bool] = False
    takes_file: ClassVar[bool] = True
    file_suffixes: ClassVar[tuple[str, ...]] = (".npz",)

    def load_direct(self, path: str | os.PathLike[str] | None) -> RawDataset:
        if path is None:
            raise ValueError(
                "dataset 'npz' needs a file: load_dataset('npz', path='my.npz') "
                "(--set data.path=my.npz); see distill.data.sources.load_npz for the format"
            )
        return load_npz(path)


register(NpzSpec("npz", "your own .npz file"))
