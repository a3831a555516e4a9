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

The code, one module per concern: :mod:`~distill.data.sources.base` (:class:`RawDataset`, the
errors, shared checks), :mod:`~distill.data.sources.registry` (the dataset table), one module per
format (:mod:`~distill.data.sources.digits`, :mod:`~distill.data.sources.idx`,
:mod:`~distill.data.sources.cifar`, :mod:`~distill.data.sources.npz`; a new format is one new
module that registers its datasets, imported below), :mod:`~distill.data.sources.lookup` (where
files are looked for, downloads) and :mod:`~distill.data.sources.loading` (the entry points).
"""

from __future__ import annotations

# The format modules register their datasets when imported, in this order: the order of
# available_datasets(). A new format is one more module here.
# isort: off
from distill.data.sources import digits  # noqa: F401
from distill.data.sources import idx  # noqa: F401
from distill.data.sources import cifar  # noqa: F401
from distill.data.sources import npz  # noqa: F401
from distill.data.sources import files  # noqa: F401
from distill.data.sources import hfdatasets  # noqa: F401
from distill.data.sources import webdataset  # noqa: F401

# isort: on
from distill.data.sources.base import (
    DIGIT_CLASSES,
    CorruptDataError,
    DataNotFoundError,
    RawDataset,
    finite_float32,
)
from distill.data.sources.idx import (
    FASHION_MNIST_CLASSES,
    IDX_FILES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    KMNIST_CLASSES,
    read_idx,
)
from distill.data.sources.loading import find_dataset, load_dataset
from distill.data.sources.lookup import (
    DATA_ENV,
    DEBIAN_ROOT,
    DOWNLOAD_TIMEOUT,
    SYSTEM_DATA_ENV,
    cache_dir,
    dataset_search_paths,
    sha256sum,
    system_data_roots,
)
from distill.data.sources.npz import NPZ_KEYS, load_npz
from distill.data.sources.registry import (
    _ALIASES,
    _SPECS,
    DOWNLOADS,
    DatasetSpec,
    DownloadSource,
    Located,
    available_datasets,
    canonical_name,
    register,
)

__all__ = [
    "DEBIAN_ROOT",
    "DOWNLOADS",
    "CorruptDataError",
    "DataNotFoundError",
    "DatasetSpec",
    "DownloadSource",
    "Located",
    "RawDataset",
    "available_datasets",
    "cache_dir",
    "canonical_name",
    "dataset_search_paths",
    "find_dataset",
    "load_dataset",
    "load_npz",
    "read_idx",
    "register",
    "sha256sum",
    "system_data_roots",
]
