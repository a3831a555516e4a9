"""The entry points: :func:`load_dataset` and :func:`find_dataset`, over the registered formats."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from distill.data.sources import lookup
from distill.data.sources.base import DataNotFoundError, RawDataset
from distill.data.sources.registry import _SPECS, DOWNLOADS, canonical_name, spec_for_file

__all__ = ["find_dataset", "load_dataset"]


def _not_found_message(canonical: str, tried: Iterable[tuple[Path, str]]) -> str:
    spec = _SPECS[canonical]
    source = DOWNLOADS.get(canonical)
    lines = [f"Dataset {canonical!r} ({spec.title}) not found. Looked for {spec.wanted()} in:"]
    for i, (location, why) in enumerate(tried, 1):
        lines.append(f"  {i}. {location}: {why}")
    if not os.environ.get(lookup.DATA_ENV):
        lines.append(f"  (${lookup.DATA_ENV} is not set)")
    cache = lookup.cache_dir() / canonical
    lines.append("To get it, any one of:")
    if spec.apt_package:
        lines.append(
            f"  - on Debian/Ubuntu: sudo apt-get install {spec.apt_package} "
            f"(installs it in {lookup.DEBIAN_ROOT / canonical})"
        )
    if source is not None:
        lines.append(
            f"  - let distill download it ({source.size}, checksum-verified) into {cache}: "
            f"load_dataset({canonical!r}, download=True), or on the command line "
            f"--set data.download=true"
        )
        lines.append(
            f"  - download {', '.join(source.files)} yourself from {source.mirrors[0]} "
            f"(see {spec.homepage}) and pass {spec.path_means} as path= (--set data.path=...), or put "
            f"{'it' if len(source.files) == 1 else 'them'} in $DISTILL_DATA/{canonical}/ and set "
            f"{lookup.DATA_ENV}"
        )
    return "\n".join(lines)


def find_dataset(name: str, path: str | os.PathLike[str] | None = None) -> Path | None:
    """Where :func:`load_dataset` would read dataset ``name`` from, without reading it.

    The first searched location (:func:`dataset_search_paths`) that holds a complete copy: a
    directory, or for CIFAR possibly the ``.tar.gz`` archive; None when there is none (nothing is
    downloaded). Files are only looked at, not checked: a damaged copy is found here and refused
    by :func:`load_dataset`. ``digits`` (embedded, no files) and ``npz`` (a file you name) raise
    ``ValueError``.
    """
    canonical = canonical_name(name)
    spec = _SPECS[canonical]
    if not spec.searched:
        raise ValueError(f"find_dataset: {canonical!r} is not looked for in data directories")
    for location in lookup.dataset_search_paths(canonical, path):
        found = spec.locate(location)[0]
        if found is not None:
            return found.path
    return None


def load_dataset(
    name: str, path: str | os.PathLike[str] | None = None, *, download: bool = False
) -> RawDataset:
    """Load dataset ``name`` (see :func:`available_datasets`) into memory.

    An explicit ``path`` (a directory with the files; for CIFAR also the ``.tar.gz``; for
    ``npz`` the file itself) is the only place looked at; without it: ``$DISTILL_DATA``, the
    Debian location and the user cache (package docstring). With ``download=True`` a dataset found nowhere is downloaded
    into the user cache, checksum-verified, then loaded. ``name`` may also be a path to a
    ``.npz`` file.

    Raises ``ValueError`` for an unknown name, :class:`DataNotFoundError` when the files are
    nowhere (the message says where it looked and how to get them) and
    :class:`CorruptDataError` when a file is damaged.
    """
    name = os.fspath(name)
    file_spec = spec_for_file(name)
    if file_spec is not None:
        if path is not None:
            raise ValueError(
                f"load_dataset got both a file name ({name!r}) and path={os.fspath(path)!r}; "
                f"use load_dataset({file_spec.name!r}, path=...)"
            )
        return file_spec.load_direct(name)
    canonical = canonical_name(name)
    spec = _SPECS[canonical]
    if not spec.searched:
        return spec.load_direct(path)

    def search() -> tuple[RawDataset | None, list[tuple[Path, str]]]:
        tried: list[tuple[Path, str]] = []
        for location in lookup.dataset_search_paths(canonical, path):
            found, why = spec.locate(location)
            if found is not None:
                return found.read(), tried
            tried.append((location, why))
        return None, tried

    dataset, tried = search()
    if dataset is not None:
        return dataset
    if path is not None:
        where, why = tried[0]
        raise DataNotFoundError(
            f"{canonical} was not found at the given path {where}: {why}. Point data.path at the "
            f"directory that holds the files, or leave it unset to search "
            f"{', '.join(str(p) for p in lookup.dataset_search_paths(canonical)[:-1])} and the cache"
        )
    if download:
        lookup._download(canonical)
        dataset, tried = search()
        if dataset is not None:
            return dataset
    raise DataNotFoundError(_not_found_message(canonical, tried))
