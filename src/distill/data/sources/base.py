"""What every format shares: the loaded dataset (:class:`RawDataset`), the two errors, and the
checks and conversions on the way in (labels, finite floats, uint8 -> float32 tensors)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DIGIT_CLASSES", "CorruptDataError", "DataNotFoundError", "RawDataset", "finite_float32"]

#: The class names of the digit datasets (scikit-learn digits, MNIST).
DIGIT_CLASSES = tuple(str(i) for i in range(10))


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched locations (or could not be downloaded).

    The message lists every location searched and how to get the data.
    """


class CorruptDataError(ValueError):
    """A data file exists but is not what it should be.

    The message names the file and what is wrong (bad magic number, wrong length, checksum
    mismatch, label out of range, truncated gzip, ...).
    """


@dataclass(frozen=True, eq=False)
class RawDataset:
    """A dataset in memory, as loaded: the official train and test splits, not normalized.

    ``train_x``/``test_x`` are float32 of shape (N, C, H, W) for images (values in [0, 1]; for
    ``digits`` pixel / 16) or (N, D) for vectors from an npz file; ``train_y``/``test_y`` are
    int64 of shape (N,) with values in ``[0, num_classes)``. ``source`` says where the data
    came from (a path, or ``"sklearn"``). Instances compare by identity.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ValueError(
                    f"{self.name}: {split}_x must be float32 and {split}_y int64, "
                    f"got {x.dtype} and {y.dtype}"
                )
            if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split}_x {tuple(x.shape)} and {split}_y {tuple(y.shape)} must "
                    f"be (N, ...) and (N,) with the same N"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
                raise ValueError(
                    f"{self.name}: {split} label {bad} is outside the class range "
                    f"[0, {self.num_classes}); labels must be class indices 0..num_classes-1"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"{self.name}: train examples have shape {tuple(self.train_x.shape[1:])} but test "
                f"examples {tuple(self.test_x.shape[1:])}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) for images, (D,) for vectors."""
        return tuple(self.train_x.shape[1:])

    def __repr__(self) -> str:
        return (
            f"RawDataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------
# Parsing helpers


def _read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped if it is a gzip file (detected by content, not name)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptDataError(f"{path}: cannot be read: {err}") from err
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise CorruptDataError(
                f"{path}: truncated or corrupt gzip data ({err}); delete the file and get it again"
            ) from err
    return data


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """``y`` as int64 after checking it holds integers in ``[0, num_classes)``."""
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise CorruptDataError(f"{where}: labels must be integers, found dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise CorruptDataError(
            f"{where}: label {int(y[i])} at index {i} is out of range: labels must be in "
            f"[0, {num_classes - 1}] for {num_classes} classes ({bad.size} labels out of range)"
        )
    return y


def finite_float32(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` as float32, refused (:class:`CorruptDataError`) if any value is NaN or infinite after the
    conversion: NaN or inf in the file, or a float64 value beyond float32's range (about 3.4e38),
    which the cast would turn into inf. The message names ``where`` (the file and array) and the
    first bad value's index, as a tuple into the array as stored."""
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x32)
    if finite.all():
        return x32
    bad = np.flatnonzero(~finite.ravel())
    index = tuple(int(i) for i in np.unravel_index(int(bad[0]), x.shape))
    value = x[index]
    why = ("is beyond the float32 range (about ±3.4e38) and would become inf"
           if np.isfinite(value) else "is not a finite number")
    raise CorruptDataError(
        f"{where}[{index}] = {float(value)!r} {why} ({bad.size} such value{'s' if bad.size > 1 else ''} in "
        f"this array); inputs must be finite float32 values: clean or rescale the data"
    )


def _images_to_tensor(x: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 or float array (N, C, H, W) -> contiguous float32 tensor divided by ``scale``."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if scale != 1.0:
        t.div_(scale)
    return t


def _labels_to_tensor(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
