"""Where datasets are looked for (the ``path`` argument, ``$DISTILL_DATA``, the system location or
``$DISTILL_SYSTEM_DATA``, the user cache) and the checksum-verified download into the user cache.
The order is described in the package docstring (:mod:`distill.data.sources`)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from distill.data.sources.base import CorruptDataError, DataNotFoundError
from distill.data.sources.registry import _SPECS, DOWNLOADS, DownloadSource, canonical_name

__all__ = [
    "DATA_ENV",
    "DEBIAN_ROOT",
    "SYSTEM_DATA_ENV",
    "cache_dir",
    "dataset_search_paths",
    "sha256sum",
    "system_data_roots",
]

logger = logging.getLogger(__name__)


#: Root of the Debian dataset packages (``dataset-fashion-mnist`` installs
#: ``/usr/share/datasets/fashion-mnist/*.gz``). A module attribute of this module (the one read; the
#: package re-exports its value) so tests can point it elsewhere.
DEBIAN_ROOT = Path("/usr/share/datasets")

#: Environment variable naming one or more data roots (``os.pathsep``-separated).
DATA_ENV = "DISTILL_DATA"

#: Environment variable naming the system data roots (``os.pathsep``-separated) searched instead
#: of :data:`DEBIAN_ROOT` when set and not empty (as ``XDG_DATA_DIRS`` replaces its default).
SYSTEM_DATA_ENV = "DISTILL_SYSTEM_DATA"

#: Seconds a download may stall before the mirror is given up.
DOWNLOAD_TIMEOUT = 60.0


def cache_dir() -> Path:
    """The user cache for downloads: ``$XDG_CACHE_HOME/distill`` or ``~/.cache/distill``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else None
    return (base or Path.home() / ".cache") / "distill"


def _data_env_roots() -> list[Path]:
    raw = os.environ.get(DATA_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def system_data_roots() -> list[Path]:
    """The system-wide data roots: ``$DISTILL_SYSTEM_DATA`` if set and not empty, else :data:`DEBIAN_ROOT`."""
    raw = os.environ.get(SYSTEM_DATA_ENV, "")
    roots = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    return roots or [DEBIAN_ROOT]


def dataset_search_paths(name: str, path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The locations searched for dataset ``name``, in order (see the package docstring).

    The download cache (last entry) is where ``download=True`` puts the files. ``digits``
    has no files and returns ``[]``; ``npz`` returns just ``path``.
    """
    canonical = canonical_name(name)
    spec = _SPECS[canonical]
    if not spec.searched:  # embedded (digits: no files), or the file you name (npz: just ``path``)
        return [Path(path).expanduser()] if spec.takes_file and path is not None else []
    if path is not None:  # an explicit path is the only place looked at
        return [Path(path).expanduser()]
    paths: list[Path] = []
    for root in _data_env_roots():
        paths.append(root / canonical)
        if spec.in_data_root:
            paths.append(root)
    paths.extend(root / canonical for root in system_data_roots())
    paths.append(cache_dir() / canonical)
    unique: list[Path] = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return unique


# --------------------------------------------------------------------------------------------
# Checksums and downloads


def _file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256sum(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, as lowercase hex (read in 1 MiB chunks)."""
    return _file_digest(path, "sha256")


def _split_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, digest = checksum.partition(":")
    if not digest or algorithm not in ("md5", "sha1", "sha256"):
        raise ValueError(f"checksum {checksum!r} must look like 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, digest.lower()


def _fetch(url: str, target: Path, checksum: str) -> None:
    """Download ``url`` to ``target`` through a ``.part`` file; verify before renaming it.

    Raises CorruptDataError (nothing written) on a checksum mismatch; lets network errors out.
    """
    algorithm, expected = _split_checksum(checksum)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        h = hashlib.new(algorithm)
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp,
        ):
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if got != expected:
            raise CorruptDataError(
                f"checksum mismatch for {url}: its {algorithm} is {got} but the published "
                f"{algorithm} is {expected}; the download was discarded"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(canonical: str) -> Path:
    """Download every file of ``canonical`` that the cache lacks; return the cache directory."""
    source = DOWNLOADS[canonical]
    dest = cache_dir() / canonical
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for filename, checksum in source.files.items():
            target = dest / filename
            if target.is_file():
                algorithm, expected = _split_checksum(checksum)
                if _file_digest(target, algorithm) == expected:
                    continue
                logger.warning(
                    "%s does not match its published checksum; downloading it again", target
                )
            _download_file(canonical, source, filename, checksum, target)
    finally:
        if created and not any(dest.iterdir()):
            dest.rmdir()
    return dest


def _download_file(
    canonical: str, source: DownloadSource, filename: str, checksum: str, target: Path
) -> None:
    _split_checksum(checksum)  # a malformed table entry is a bug, not a network failure
    failures: list[str] = []
    mismatch: CorruptDataError | None = None
    for mirror in source.mirrors:
        url = mirror + filename
        logger.info("downloading %s -> %s", url, target)
        try:
            _fetch(url, target, checksum)
            return
        except CorruptDataError as err:
            mismatch = err
            failures.append(f"{url}: {err}")
        except (OSError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{url}: {err}")
    tried = "\n".join(f"  - {f}" for f in failures)
    manual = (
        f"You can download {filename} by hand (see {_SPECS[canonical].homepage}), check it against "
        f"{checksum}, and put it in {target.parent}."
    )
    if mismatch is not None:
        raise CorruptDataError(
            f"Downloading {_SPECS[canonical].title} failed: {filename} did not match its published "
            f"checksum ({checksum}), so it was not saved.\n{tried}\nThe mirror may serve a "
            f"damaged or changed file (or an error page); try again later. {manual}"
        )
    raise DataNotFoundError(
        f"Could not download {filename} for {_SPECS[canonical].title} from any mirror:\n{tried}\n"
        f"Check the network connection (urllib honours http_proxy/https_proxy). {manual}"
    )
