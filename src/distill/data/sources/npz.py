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
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise CorruptDataError(
                f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
                f"Expected keys: {', '.join(NPZ_KEYS)} (optional: class_names, num_classes); "
                f"found: {', '.join(archive.files) or 'none'}"
            )

        def get(key: str) -> np.ndarray:
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

        arrays = {k: get(k) for k in NPZ_KEYS}
        class_names_arr = get("class_names") if "class_names" in archive.files else None
        num_classes_arr = get("num_classes") if "num_classes" in archive.files else None

    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{path}: x_{split}"
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
        if x.ndim == 3:
            x = x[:, None]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise CorruptDataError(
                f"{path}: y_{split} has shape {y.shape} but x_{split} has {x.shape[0]} examples; "
                f"expected shape ({x.shape[0]},)"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise CorruptDataError(
                f"{path}: y_{split} has dtype {y.dtype}; labels must be integers"
            )
        xs[split], ys[split] = x, y
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise CorruptDataError(
            f"{path}: x_train examples have shape {xs['train'].shape[1:]} but x_test examples "
            f"{xs['test'].shape[1:]}; they must match"
        )

    class_names: tuple[str, ...] | None = None
    if class_names_arr is not None:
        if class_names_arr.ndim != 1 or class_names_arr.dtype.kind not in "US":
            raise CorruptDataError(
                f"{path}: class_names must be a 1-D array of strings, found "
                f"{class_names_arr.dtype} of shape {class_names_arr.shape}"
            )
        class_names = tuple(
            n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in class_names_arr.tolist()
        )
    if num_classes_arr is not None:
        if (
            num_classes_arr.ndim != 0
            or not np.issubdtype(num_classes_arr.dtype, np.integer)
            or int(num_classes_arr) < 1
        ):
            raise CorruptDataError(
                f"{path}: num_classes must be a positive integer, found {num_classes_arr!r}"
            )
        num_classes = int(num_classes_arr)
        if class_names is not None and len(class_names) != num_classes:
            raise CorruptDataError(
                f"{path}: num_classes is {num_classes} but class_names has {len(class_names)} names"
            )
    elif class_names is not None:
        num_classes = len(class_names)
    else:
        num_classes = int(max(ys["train"].max(), ys["test"].max())) + 1
        num_classes = max(num_classes, 1)
    for split in ("train", "test"):
        ys[split] = _check_labels(ys[split], num_classes, f"{path}: y_{split}")
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))

    def to_x(x: np.ndarray) -> torch.Tensor:
        return _images_to_tensor(x, 255.0 if x.dtype == np.uint8 else 1.0)

    return RawDataset(
        name="npz",
        train_x=to_x(xs["train"]),
        train_y=_labels_to_tensor(ys["train"]),
        test_x=to_x(xs["test"]),
        test_y=_labels_to_tensor(ys["test"]),
        num_classes=num_classes,
        class_names=class_names,
        source=str(path),
    )


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
