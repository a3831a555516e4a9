"""Load the datasets distill trains on into memory, as float32 tensors with int64 labels.

Datasets (:func:`available_datasets`; names are case-insensitive and ``-``/``_`` do not
matter, so ``"FashionMNIST"``, ``"fashion_mnist"`` and ``"fmnist"`` all mean ``fashion-mnist``):

``digits``
    scikit-learn's 8x8 handwritten digits (1797 images, embedded in scikit-learn, no files).
    It has no official test split, so a fixed stratified one is made (a quarter of each class,
    ``random_state=0``): every run on every machine tests on the same 450 images.
``mnist``, ``fashion-mnist``, ``kmnist``
    The four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, gzipped (``.gz``) or not.
``cifar10``, ``cifar100``
    The official "python version" (``cifar-10-batches-py/`` with ``data_batch_1..5``,
    ``test_batch``, ``batches.meta``; ``cifar-100-python/`` with ``train``, ``test``, ``meta``,
    fine labels), as the extracted directory or as the downloaded ``.tar.gz`` itself.
``npz``
    Your own data: ``load_dataset("npz", path="my.npz")`` or ``load_dataset("my.npz")``.
    See :func:`load_npz` for the format.

Images come back as (N, C, H, W) in [0, 1] (digits: pixel / 16), labels as int64 in
``[0, num_classes)``; everything is checked on the way in and a damaged file raises
:class:`CorruptDataError` naming the file and what is wrong with it.

Where files are looked for, in this order (the first location that holds a complete copy
wins; :func:`dataset_search_paths` returns the list):

1. the ``path`` argument (``data.path`` in a config): a directory holding the files, or for
   CIFAR also the ``.tar.gz`` archive or a directory holding it. When given, it is the only
   place looked at: a wrong path is an error, never a silent fall-back to another copy;
2. ``$DISTILL_DATA/<name>`` for each directory listed in ``$DISTILL_DATA`` (separated by
   ``os.pathsep``); for CIFAR also ``$DISTILL_DATA`` itself, so one root holding
   ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` works;
3. the system location ``/usr/share/datasets/<name>``, where Debian's dataset packages install
   (``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST there; :data:`DEBIAN_ROOT`).
   ``$DISTILL_SYSTEM_DATA`` (directories separated by ``os.pathsep``), when set and not empty,
   replaces it: for a system-wide copy elsewhere (``/opt/datasets``), or to ignore the installed
   copy (point it at an empty directory, as the CI does to test a machine without the package);
4. the user cache ``$XDG_CACHE_HOME/distill/<name>`` or ``~/.cache/distill/<name>``;
5. only with ``download=True`` (``--set data.download=true``): the files are downloaded from
   the official source into the user cache, each checked against its published checksum and
   written atomically (a ``.part`` file, verified, then renamed), and loaded from there.

Nothing is written to disk except by a download. If nothing is found,
:class:`DataNotFoundError` lists every location searched and how to get the data.

A note on CIFAR and pickle: the official CIFAR files are Python pickles, and unpickling a
file can run code. distill unpickles them with a restricted unpickler that only builds
dicts, lists, strings and numpy arrays and refuses anything else, and downloads are
md5-verified against the published checksum; even so, only load CIFAR files that came from
the official archive.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import io
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEBIAN_ROOT",
    "DOWNLOADS",
    "CorruptDataError",
    "DataNotFoundError",
    "DownloadSource",
    "RawDataset",
    "available_datasets",
    "cache_dir",
    "canonical_name",
    "dataset_search_paths",
    "find_dataset",
    "load_dataset",
    "load_npz",
    "read_idx",
    "sha256sum",
    "system_data_roots",
]

logger = logging.getLogger(__name__)

#: Root of the Debian dataset packages (``dataset-fashion-mnist`` installs
#: ``/usr/share/datasets/fashion-mnist/*.gz``). A module attribute so tests can point it elsewhere.
DEBIAN_ROOT = Path("/usr/share/datasets")

#: Environment variable naming one or more data roots (``os.pathsep``-separated).
DATA_ENV = "DISTILL_DATA"

#: Environment variable naming the system data roots (``os.pathsep``-separated) searched instead
#: of :data:`DEBIAN_ROOT` when set and not empty (as ``XDG_DATA_DIRS`` replaces its default).
SYSTEM_DATA_ENV = "DISTILL_SYSTEM_DATA"

#: Seconds a download may stall before the mirror is given up.
DOWNLOAD_TIMEOUT = 60.0


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched locations (or could not be downloaded).

    The message lists every location searched and how to get the data.
    """


class CorruptDataError(ValueError):
    """A data file exists but is not what it should be.

    The message names the file and what is wrong (bad magic number, wrong length, checksum
    mismatch, label out of range, truncated gzip, ...).
    """


# --------------------------------------------------------------------------------------------
# The result


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
# The dataset table


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
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class _Spec:
    kind: str  # "sklearn" | "idx" | "cifar" | "npz"
    title: str
    homepage: str = ""
    class_names: tuple[str, ...] = ()
    apt_package: str | None = None
    # cifar only
    subdir: str = ""
    archive: str = ""
    train_files: tuple[str, ...] = ()
    test_file: str = ""
    meta_file: str = ""
    label_key: str = ""
    names_key: str = ""


_SPECS: dict[str, _Spec] = {
    "digits": _Spec("sklearn", "scikit-learn digits (8x8)", class_names=DIGIT_CLASSES),
    "mnist": _Spec("idx", "MNIST", "https://yann.lecun.com/exdb/mnist/", class_names=DIGIT_CLASSES),
    "fashion-mnist": _Spec(
        "idx",
        "Fashion-MNIST",
        "https://github.com/zalandoresearch/fashion-mnist",
        class_names=FASHION_MNIST_CLASSES,
        apt_package="dataset-fashion-mnist",
    ),
    "kmnist": _Spec(
        "idx", "Kuzushiji-MNIST", "https://github.com/rois-codh/kmnist", class_names=KMNIST_CLASSES
    ),
    "cifar10": _Spec(
        "cifar",
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
    "cifar100": _Spec(
        "cifar",
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
    "npz": _Spec("npz", "your own .npz file"),
}

# Extra spellings, compared after lower-casing and dropping "-", "_", " " and ".".
_ALIASES = {
    "sklearndigits": "digits",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "fashion": "fashion-mnist",
    "kuzushijimnist": "kmnist",
}


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


# Published checksums. MNIST, Fashion-MNIST, KMNIST: the md5s of the .gz files as listed in
# torchvision/datasets/mnist.py (and, for Fashion-MNIST, in the table of the official README).
# CIFAR: the md5s of the archives as listed in torchvision/datasets/cifar.py. md5 is what is
# published for these files; it guards against damaged or substituted downloads.
DOWNLOADS: dict[str, DownloadSource] = {
    "mnist": DownloadSource(
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
    ),
    "fashion-mnist": DownloadSource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
        size="30 MB",
        checksum_source="Fashion-MNIST README; torchvision.datasets.FashionMNIST.resources",
    ),
    "kmnist": DownloadSource(
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        files={
            "train-images-idx3-ubyte.gz": "md5:bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "md5:e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "md5:7320c461ea6c1c855c0b718fb2a4b134",
        },
        size="20 MB",
        checksum_source="torchvision.datasets.KMNIST.resources",
    ),
    "cifar10": DownloadSource(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
        size="163 MB",
        checksum_source="torchvision.datasets.CIFAR10.tgz_md5",
    ),
    "cifar100": DownloadSource(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-100-python.tar.gz": "md5:eb9058c3a382ffc7106e4002c42a8d85"},
        size="161 MB",
        checksum_source="torchvision.datasets.CIFAR100.tgz_md5",
    ),
}


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


# --------------------------------------------------------------------------------------------
# Where to look


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
    """The locations searched for dataset ``name``, in order (see the module docstring).

    The download cache (last entry) is where ``download=True`` puts the files. ``digits``
    has no files and returns ``[]``; ``npz`` returns just ``path``.
    """
    canonical = canonical_name(name)
    kind = _SPECS[canonical].kind
    if kind == "sklearn":
        return []
    if kind == "npz":
        return [Path(path).expanduser()] if path is not None else []
    if path is not None:  # an explicit path is the only place looked at
        return [Path(path).expanduser()]
    paths: list[Path] = []
    for root in _data_env_roots():
        paths.append(root / canonical)
        if kind == "cifar":
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


# --------------------------------------------------------------------------------------------
# digits


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


# --------------------------------------------------------------------------------------------
# IDX (MNIST-likes)

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


def _load_idx(canonical: str, files: dict[str, Path], source: Path) -> RawDataset:
    spec = _SPECS[canonical]
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
        name=canonical,
        train_x=_images_to_tensor(train_x[:, None], 255.0),
        train_y=_labels_to_tensor(train_y),
        test_x=_images_to_tensor(test_x[:, None], 255.0),
        test_y=_labels_to_tensor(test_y),
        num_classes=len(spec.class_names),
        class_names=spec.class_names,
        source=str(source),
    )


# --------------------------------------------------------------------------------------------
# CIFAR


def _numpy_core_module(name: str) -> object:
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
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct  # type: ignore[attr-defined]
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar  # type: ignore[attr-defined]
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
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
    canonical: str, read: Callable[[str], bytes], describe: Callable[[str], str], source: Path
) -> RawDataset:
    spec = _SPECS[canonical]
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
        name=canonical,
        train_x=_images_to_tensor(train_x, 255.0),
        train_y=_labels_to_tensor(train_y),
        test_x=_images_to_tensor(test_x, 255.0),
        test_y=_labels_to_tensor(test_y),
        num_classes=k,
        class_names=class_names,
        source=str(source),
    )


def _cifar_needed(spec: _Spec) -> tuple[str, ...]:
    return (*spec.train_files, spec.test_file, spec.meta_file)


def _is_archive_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _find_cifar(spec: _Spec, location: Path) -> tuple[tuple[str, Path] | None, str]:
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


def _load_cifar_dir(canonical: str, directory: Path) -> RawDataset:
    def read(name: str) -> bytes:
        try:
            return (directory / name).read_bytes()
        except OSError as err:
            raise CorruptDataError(f"{directory / name}: cannot be read: {err}") from err

    return _load_cifar(canonical, read, lambda n: str(directory / n), directory)


def _load_cifar_archive(canonical: str, archive: Path) -> RawDataset:
    spec = _SPECS[canonical]
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
    return _load_cifar(canonical, blobs.__getitem__, lambda n: f"{archive}:{names[n]}", archive)


# --------------------------------------------------------------------------------------------
# npz

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


# --------------------------------------------------------------------------------------------
# The entry point


def _looks_like_npz_path(name: str) -> bool:
    return name.strip().lower().endswith(".npz")


def _not_found_message(canonical: str, tried: Iterable[tuple[Path, str]]) -> str:
    spec = _SPECS[canonical]
    source = DOWNLOADS.get(canonical)
    if spec.kind == "idx":
        wanted = ", ".join(f"{b}[.gz]" for b in IDX_FILES)
    else:
        wanted = f"{spec.subdir}/ ({', '.join(_cifar_needed(spec))}) or {spec.archive}"
    lines = [f"Dataset {canonical!r} ({spec.title}) not found. Looked for {wanted} in:"]
    for i, (location, why) in enumerate(tried, 1):
        lines.append(f"  {i}. {location}: {why}")
    if not os.environ.get(DATA_ENV):
        lines.append(f"  (${DATA_ENV} is not set)")
    cache = cache_dir() / canonical
    lines.append("To get it, any one of:")
    if spec.apt_package:
        lines.append(
            f"  - on Debian/Ubuntu: sudo apt-get install {spec.apt_package} "
            f"(installs it in {DEBIAN_ROOT / canonical})"
        )
    if source is not None:
        lines.append(
            f"  - let distill download it ({source.size}, checksum-verified) into {cache}: "
            f"load_dataset({canonical!r}, download=True), or on the command line "
            f"--set data.download=true"
        )
        what = "the archive or its directory" if spec.kind == "cifar" else "their directory"
        lines.append(
            f"  - download {', '.join(source.files)} yourself from {source.mirrors[0]} "
            f"(see {spec.homepage}) and pass {what} as path= (--set data.path=...), or put "
            f"{'it' if len(source.files) == 1 else 'them'} in $DISTILL_DATA/{canonical}/ and set "
            f"{DATA_ENV}"
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
    if spec.kind in ("sklearn", "npz"):
        raise ValueError(f"find_dataset: {canonical!r} is not looked for in data directories")
    for location in dataset_search_paths(canonical, path):
        if spec.kind == "idx":
            if _find_idx_files(location)[0] is not None:
                return location
        else:
            found = _find_cifar(spec, location)[0]
            if found is not None:
                return found[1]
    return None


def load_dataset(
    name: str, path: str | os.PathLike[str] | None = None, *, download: bool = False
) -> RawDataset:
    """Load dataset ``name`` (see :func:`available_datasets`) into memory.

    An explicit ``path`` (a directory with the files; for CIFAR also the ``.tar.gz``; for
    ``npz`` the file itself) is the only place looked at; without it: ``$DISTILL_DATA``, the
    Debian location and the user cache (module docstring). With ``download=True`` a dataset found nowhere is downloaded
    into the user cache, checksum-verified, then loaded. ``name`` may also be a path to a
    ``.npz`` file.

    Raises ``ValueError`` for an unknown name, :class:`DataNotFoundError` when the files are
    nowhere (the message says where it looked and how to get them) and
    :class:`CorruptDataError` when a file is damaged.
    """
    name = os.fspath(name)
    if _looks_like_npz_path(name):
        if path is not None:
            raise ValueError(
                f"load_dataset got both a file name ({name!r}) and path={os.fspath(path)!r}; "
                f"use load_dataset('npz', path=...)"
            )
        return load_npz(name)
    canonical = canonical_name(name)
    spec = _SPECS[canonical]
    if spec.kind == "sklearn":
        if path is not None:
            raise ValueError(
                f"'digits' is embedded in scikit-learn and takes no path (got "
                f"{os.fspath(path)!r}); for your own data use load_dataset('npz', path=...)"
            )
        return _load_digits()
    if spec.kind == "npz":
        if path is None:
            raise ValueError(
                "dataset 'npz' needs a file: load_dataset('npz', path='my.npz') "
                "(--set data.path=my.npz); see distill.data.sources.load_npz for the format"
            )
        return load_npz(path)

    def search() -> tuple[RawDataset | None, list[tuple[Path, str]]]:
        tried: list[tuple[Path, str]] = []
        for location in dataset_search_paths(canonical, path):
            if spec.kind == "idx":
                files, why = _find_idx_files(location)
                if files is not None:
                    return _load_idx(canonical, files, location), tried
            else:
                found, why = _find_cifar(spec, location)
                if found is not None:
                    kind, where = found
                    loader = _load_cifar_dir if kind == "dir" else _load_cifar_archive
                    return loader(canonical, where), tried
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
            f"{', '.join(str(p) for p in dataset_search_paths(canonical)[:-1])} and the cache"
        )
    if download:
        _download(canonical)
        dataset, tried = search()
        if dataset is not None:
            return dataset
    raise DataNotFoundError(_not_found_message(canonical, tried))
