"""The table of named datasets. Each format module (``digits``, ``idx``, ``cifar``, ``npz``)
describes its datasets with a :class:`DatasetSpec` subclass and :func:`register` s them: a new
format is one new module, imported by the package's ``__init__``."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from distill.data.sources.base import RawDataset

__all__ = [
    "DOWNLOADS",
    "DatasetSpec",
    "DownloadSource",
    "Located",
    "available_datasets",
    "canonical_name",
    "register",
    "spec_for_file",
]


@dataclass(frozen=True)
class DownloadSource:
    """Where a dataset is downloaded from: base URLs tried in order, and each file's checksum.

    ``files`` maps a file name to ``"md5:<hex>"`` or ``"sha256:<hex>"``, as published; the
    URL of a file is a mirror (ending in ``/``) followed by its name.
    """

    mirrors: tuple[str, ...]
    files: Mapping[str, str]
    size: str = ""
    checksum_source: str = ""


#: Where each downloadable dataset comes from (filled by :func:`register`; the format modules
#: cite where each published checksum comes from).
DOWNLOADS: dict[str, DownloadSource] = {}


@dataclass(frozen=True)
class Located:
    """A complete copy of a dataset found at one location: where it is (what
    :func:`~distill.data.sources.find_dataset` returns) and how to read it."""

    path: Path
    read: Callable[[], RawDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: what the messages say about it, and how its files are found and read.

    One subclass per format module implements either :meth:`wanted` and :meth:`locate` (datasets
    looked for in the data directories, ``searched = True``) or :meth:`load_direct` (datasets
    that are not: embedded data, or a file you name).
    """

    name: str
    title: str
    homepage: str = ""
    class_names: tuple[str, ...] = ()
    apt_package: str | None = None

    #: Looked for in the data directories (:func:`~distill.data.sources.dataset_search_paths`).
    searched: ClassVar[bool] = True
    #: For a dataset not searched: whether it is read from the file given as ``path``.
    takes_file: ClassVar[bool] = False
    #: Whether each ``$DISTILL_DATA`` root itself is searched too, not only ``<root>/<name>``.
    in_data_root: ClassVar[bool] = False
    #: What ``path`` should point at, as the not-found message says it.
    path_means: ClassVar[str] = "their directory"
    #: File name endings that, given as the dataset name, mean "this file, in this format".
    file_suffixes: ClassVar[tuple[str, ...]] = ()

    def wanted(self) -> str:
        """The files looked for, as the not-found message lists them."""
        raise NotImplementedError(f"{self.name!r} is not looked for in data directories")

    def locate(self, location: Path) -> tuple[Located | None, str]:
        """The complete copy at ``location``, or None and why not (for the not-found message)."""
        raise NotImplementedError(f"{self.name!r} is not looked for in data directories")

    def load_direct(self, path: str | os.PathLike[str] | None) -> RawDataset:
        """Load a dataset that is not looked for in the data directories (``searched`` False)."""
        raise NotImplementedError(f"{self.name!r} is looked for in data directories")


_SPECS: dict[str, DatasetSpec] = {}

# Extra spellings, compared after lower-casing and dropping "-", "_", " " and ".".
_ALIASES: dict[str, str] = {}


def register(
    spec: DatasetSpec, *, aliases: tuple[str, ...] = (), download: DownloadSource | None = None
) -> DatasetSpec:
    """Add ``spec`` to the table under ``spec.name`` (and ``aliases``); ``download``: where
    ``download=True`` fetches it from."""
    if spec.name in _SPECS:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name
    if download is not None:
        DOWNLOADS[spec.name] = download
    return spec


def available_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts (besides a path to a ``.npz`` file)."""
    return list(_SPECS)


def _key(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in "-_ .")


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (``"FashionMNIST"`` -> ``"fashion-mnist"``).

    Raises ``ValueError`` listing the available datasets, with close matches, for an unknown name.
    """
    lookup = {_key(n): n for n in _SPECS}
    lookup.update(_ALIASES)
    key = _key(str(name))
    if key in lookup:
        return lookup[key]
    close = []
    for match in difflib.get_close_matches(key, list(lookup), n=5, cutoff=0.6):
        if lookup[match] not in close:
            close.append(lookup[match])
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown dataset {name!r}.{hint} Available: {', '.join(available_datasets())}, "
        f"or a path to a .npz file (x_train, y_train, x_test, y_test)."
    )


def spec_for_file(name: str) -> DatasetSpec | None:
    """The dataset whose format a file name given as the dataset name is in (``my.npz``), if any."""
    lowered = name.strip().lower()
    for spec in _SPECS.values():
        if spec.file_suffixes and lowered.endswith(spec.file_suffixes):
            return spec
    return None
