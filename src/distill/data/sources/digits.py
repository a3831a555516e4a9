"""``digits``: scikit-learn's 8x8 handwritten digits, embedded in scikit-learn (no files)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from distill.data.sources.base import DIGIT_CLASSES, RawDataset, _images_to_tensor, _labels_to_tensor
from distill.data.sources.registry import DatasetSpec, register

__all__ = ["DigitsSpec"]


def _load_digits() -> RawDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.25, stratify=y, random_state=0, shuffle=True
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return RawDataset(
        name="digits",
        train_x=_images_to_tensor(images[train_idx], 16.0),
        train_y=_labels_to_tensor(y[train_idx]),
        test_x=_images_to_tensor(images[test_idx], 16.0),
        test_y=_labels_to_tensor(y[test_idx]),
        num_classes=10,
        class_names=DIGIT_CLASSES,
        source="sklearn",
    )


@dataclass(frozen=True)
class DigitsSpec(DatasetSpec):
    """Embedded in scikit-learn: nothing is looked for, and no path is taken."""

    searched: ClassVar[bool] = False

    def load_direct(self, path: str | os.PathLike[str] | None) -> RawDataset:
        if path is not None:
            raise ValueError(
                f"'digits' is embedded in scikit-learn and takes no path (got "
                f"{os.fspath(path)!r}); for your own data use load_dataset('npz', path=...)"
            )
        return _load_digits()


register(
    DigitsSpec("digits", "scikit-learn digits (8x8)", class_names=DIGIT_CLASSES),
    aliases=("sklearndigits",),
)
