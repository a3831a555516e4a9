"""Image files from disk as a run's data: decoded in DataLoader worker processes, held in memory when
small, streamed batch by batch when not.

:func:`load_file_splits` scans a dataset (:mod:`distill.data.sources.files`: an image folder or a
manifest), makes the splits (the layout's ``val/`` and ``test/`` folders, or seeded stratified ones as
for every dataset), and then either decodes every split into memory (the in-memory path,
:class:`~distill.data.batches.TensorBatches`: the faster one) or leaves them on disk (``data.stream``:
``auto`` streams when the training split would take more than :data:`STREAM_ABOVE_BYTES` as float32):
the training split read by :class:`StreamingBatches`, validation and test by :class:`FileSplit` (the
same DataLoader path, in index order: evaluation gives what it gives on the splits in memory, with
memory bounded by a few batches).

Workers decode each file with Pillow and resize it to the data's resolution (uint8); the main process
copies the batch to the device (pinned memory on CUDA) and normalizes it there, where the per-batch
augmentation (crops, flips, mixup, the teaching modes' views) then runs as for in-memory data. The
order of the examples is :func:`distill.data.tensors.batch_indices` (seed, epoch), the same as the
in-memory path's, so the two paths give the same batches; under ``torchrun`` each rank decodes its
slice of every global batch (:func:`distill.distributed.local_batch`).

A file that cannot be decoded is dropped from its batch, counted and named (the first few) in the log
and in ``results.json``; more than ``data.max_bad_fraction`` of a split's files bad is an error (per
split: a small, largely unreadable validation split is refused however large the training split). Never a
crash inside a worker without a file name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill import distributed
from distill.data.sources.base import CorruptDataError
from distill.data.sources.files import FileSplits, ImageFiles, decode_image, native_shape, scan_splits
from distill.data.tensors import DataSplits, TensorData, batch_indices, steps_per_epoch, stratified_split

__all__ = ["STREAM_ABOVE_BYTES", "BadFiles", "FileOptions", "FileSplit", "FileStream", "StreamingBatches",
           "load_file_splits"]

#: ``data.stream: auto`` streams a training split larger than this as float32 (2 GiB: CIFAR-10's 50,000
#: 32x32 images take 0.6 GiB and stay in memory, the faster path; ImageNet's 1.28M at 224 px, 770 GiB,
#: stream). Held in device memory by default, the in-memory split must leave room for the models.
STREAM_ABOVE_BYTES = 2 * 1024**3
#: Training images decoded once to estimate the per-channel mean and std (all of them when fewer).
STATS_SAMPLE = 1024
SHOWN = 5  # bad files named in the log and results


def default_workers() -> int:
    """DataLoader worker processes when ``data.num_workers`` is not set: the CPUs there are, up to 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class BadFiles:
    """Files that could not be decoded, split by split: counted once each, the first few named; an error once
    more than ``max_fraction`` of one split's files are bad (``sizes``: each split's file count, ``folders``:
    where its files are, named in the error). Per split, so that a small validation or test split that is
    largely unreadable is refused however large the training split."""

    sizes: dict[str, int]  # "train"/"val"/"test" -> its files
    max_fraction: float
    folders: dict[str, str] = field(default_factory=dict)  # "train"/"val"/"test" -> the folder of its files
    found: dict[str, str] = field(default_factory=dict)  # path -> why
    by_split: dict[str, dict[str, str]] = field(default_factory=dict)  # "train"/"val"/"test" -> its bad files

    def add(self, path: str, why: str, split: str) -> None:
        """Record ``path`` of ``split`` as bad (once); an error past the fraction of that split's files."""
        found = self.by_split.setdefault(split, {})
        if path in found:
            return
        found[path] = why
        self.found.setdefault(path, why)
        total = self.sizes[split]
        if len(found) > self.max_fraction * total:
            folder = f" (under {self.folders[split]})" if split in self.folders else ""
            raise CorruptDataError(
                f"reading the {split} split{folder}: {len(found)} of its {total} image files could not be decoded, "
                f"more than data.max_bad_fraction={self.max_fraction} of the split; first: {self._examples(split)}. "
                f"Fix or remove them, or raise data.max_bad_fraction")

    def count(self, split: str) -> int:
        """The bad files of ``split`` found so far."""
        return len(self.by_split.get(split, {}))

    def _examples(self, split: str | None = None) -> str:
        return "; ".join(self._named(split))

    def _named(self, split: str | None = None) -> list[str]:
        found = self.found if split is None else self.by_split.get(split, {})
        return [f"{p} ({why})" for p, why in list(found.items())[:SHOWN]]

    def record(self, split: str | None = None) -> dict[str, Any]:
        """``{"count", "examples"}`` for results.json: of every split, or of ``split``."""
        return {"count": len(self.found) if split is None else self.count(split), "examples": self._named(split)}

    def line(self, split: str | None = None) -> str:
        where = "" if split is None else f" in the {split} split"
        n = len(self.found) if split is None else self.count(split)
        return f"skipped {n} unreadable image files{where}: {self._examples(split)}"


class DecodedImages(Dataset[tuple[np.ndarray, int, str]]):
    """``(uint8 image (C, H, W), i, "")`` for file ``i``, or ``(zeros, i, why)`` when it cannot be decoded.

    The paths are one NumPy bytes array (not a list of Python strings), so that forked workers do not
    copy it page by page as reference counts change."""

    def __init__(self, paths: tuple[str, ...], size: tuple[int, int], channels: int) -> None:
        self.paths = np.array([p.encode() for p in paths])
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, str]:
        path = self.paths[i].decode()
        try:
            return decode_image(path, self.size, self.channels), i, ""
        except Exception as err:  # noqa: BLE001 - any failure of any file is a named bad file, never a worker crash
            return np.zeros((self.channels, *self.size), np.uint8), i, f"{type(err).__name__}: {err}"


def collate(samples: list[tuple[np.ndarray, int, str]]) -> tuple[Tensor, np.ndarray, list[tuple[int, str]]]:
    """(uint8 images (B, C, H, W), their file indices (int64), [(index, why)] of the files that failed).

    The indices are a NumPy array, not a tensor: a tensor leaves a worker through shared memory, whose file
    descriptor the main process fetches over a socket (a round trip, about a millisecond of its time, per
    tensor per batch); a small array is pickled through the pipe. :func:`received` makes it a tensor.
    The images are stacked C-contiguous (B, C, H, W) here, in uint8: an RGB image decodes as (H, W, C) in
    memory, and ``np.stack`` would keep that layout, left to be copied in float32 in the main process."""
    first = samples[0][0]
    x = torch.from_numpy(np.stack([s[0] for s in samples], out=np.empty((len(samples), *first.shape), first.dtype)))
    index = np.array([s[1] for s in samples], dtype=np.int64)
    return x, index, [(s[1], s[2]) for s in samples if s[2]]


def received(loader: Iterable[tuple[Tensor, np.ndarray, list[tuple[int, str]]]]
             ) -> Iterator[tuple[Tensor, Tensor, list[tuple[int, str]]]]:
    """The batches of a loader of :func:`collate`, the indices as a tensor."""
    for x, index, failed in loader:
        yield x, torch.from_numpy(index), failed


class _Plan:
    """The DataLoader's batch sampler: the index lists of the epoch being read, set before each pass (the
    sampler lives in the main process, so persistent workers see each epoch's plan)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def file_loader(dataset: DecodedImages, batch_sampler: Any, num_workers: int, pin: bool,
                persistent: bool = True) -> DataLoader[Any]:
    """The DataLoader of a plan. Its own generator: each new iterator draws its workers' base seed from it, not
    from torch's global RNG, whose draws (dropout) must be those of the in-memory path. ``persistent``: the
    workers outlive a pass (the training split's, read every epoch); else they end with it."""
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin, persistent_workers=persistent and num_workers > 0, generator=torch.Generator(),
                      prefetch_factor=4 if num_workers > 0 else None)


def normalize_batch(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images to float32 ``(x / 255 - mean) / std`` per channel: the same arithmetic as
    :func:`distill.data.tensors.make_splits` on the images scaled to [0, 1].

    One float32 copy, C-contiguous (decoded images may be (H, W, C) in memory, and a convolution over that
    layout rounds differently), normalized in place: the same elementwise operations, so the same values,
    bit for bit, as ``((x.float() / 255 - mean) / std).contiguous()``, without its three temporaries of the
    batch's size. Their churn, batch after batch, left glibc's heap holding freed memory that it did not give
    back (about 90 MB after 120 batches of 256 28x28 images; benchmarks/results/streaming.md)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return out.div_(255).sub_(mean.view(shape)).div_(std.view(shape))


class StreamingBatches:
    """A :class:`~distill.data.batches.BatchSource` over image files: the global batches of
    :func:`~distill.data.tensors.batch_indices` (seed, epoch), each rank decoding its slice in
    ``num_workers`` persistent worker processes, normalized on the device. ``epoch(e, start)`` resumes at
    the exact next batch. Bad files are dropped from their batch and recorded in ``bad`` (under ``split``);
    a batch of bad files only is an error, or with ``skip_empty`` (evaluation) left out.
    ``persistent``: see :func:`file_loader`."""

    def __init__(self, files: ImageFiles, batch_size: int, device: torch.device, *, seed: int, size: tuple[int, int],
                 channels: int, mean: Tensor, std: Tensor, num_workers: int, bad: BadFiles, split: str = "train",
                 persistent: bool = True, skip_empty: bool = False) -> None:
        self.files, self.batch_size, self.device, self.seed = files, batch_size, device, seed
        self.num_examples = len(files)
        self.mean, self.std = mean.to(device), std.to(device)
        self.labels, self.bad, self.split, self.skip_empty = files.labels, bad, split, skip_empty
        self.pinned = device.type == "cuda"
        self._plan = _Plan()
        self._loader = file_loader(DecodedImages(files.paths, size, channels), self._plan, num_workers, self.pinned,
                                   persistent)

    def __len__(self) -> int:
        return steps_per_epoch(self.num_examples, self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order = batch_indices(self.num_examples, self.batch_size, seed=self.seed, epoch=epoch)
        self._plan.batches = [distributed.local_batch(b).tolist() for b in islice(order, start, None)]
        yield from self._batches()

    def _batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The batches of the current plan, decoded, bad files dropped, normalized on the device."""
        for x, index, failed in received(self._loader):
            if failed:
                x, index = self._drop(x, index, failed)
                if not len(index):
                    continue
            y = self.labels[index]
            x, y, index = (t.to(self.device, non_blocking=self.pinned) for t in (x, y, index))
            yield normalize_batch(x, self.mean, self.std), y, index

    def _drop(self, x: Tensor, index: Tensor, failed: list[tuple[int, str]]) -> tuple[Tensor, Tensor]:
        for i, why in failed:
            self.bad.add(self.files.paths[i], why, self.split)
        keep = ~torch.isin(index, torch.tensor([i for i, _ in failed]))
        if not bool(keep.any()) and not self.skip_empty:
            raise CorruptDataError(f"every image of a batch of {len(index)} could not be decoded "
                                   f"({self.bad.line()}); check the files")
        return x[keep], index[keep]


@dataclass
class FileStream:
    """The training split of a :class:`DataSplits` streamed from disk (``DataSplits.stream``)."""

    files: ImageFiles
    size: tuple[int, int]
    channels: int
    mean: Tensor
    std: Tensor
    num_workers: int
    bad: BadFiles
    probe: Tensor  # a few training inputs, decoded and normalized

    @property
    def num_examples(self) -> int:
        return len(self.files)

    _sources: dict[tuple[int, str, int], StreamingBatches] = field(default_factory=dict, repr=False)

    def batches(self, batch_size: int, device: torch.device, seed: int) -> StreamingBatches:
        """The split's batch source; one per (batch size, device, seed), so that the models of a run trained
        one after another share its worker processes."""
        key = (batch_size, str(device), seed)
        if key not in self._sources:
            self._sources[key] = StreamingBatches(self.files, batch_size, device, seed=seed, size=self.size,
                                                  channels=self.channels, mean=self.mean, std=self.std,
                                                  num_workers=self.num_workers, bad=self.bad)
        return self._sources[key]

    def examples(self, n: int) -> Tensor:
        return self.probe[:n]

    def in_order(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One pass over the split in sample-index order (``0..n-1``, batches of ``batch_size``), as
        ``(x, y, index)`` normalized on ``device``; unreadable files are dropped and recorded as in training.
        The teacher cache is written from it (:mod:`distill.cache`)."""
        order = torch.arange(self.num_examples)
        plan = [order[i:i + batch_size].tolist() for i in range(0, self.num_examples, batch_size)]
        source = StreamingBatches(self.files, batch_size, device, seed=0, size=self.size, channels=self.channels,
                                  mean=self.mean, std=self.std, num_workers=self.num_workers, bad=self.bad)
        source._plan.batches = plan
        yield from source._batches()


class FileSplit:
    """A validation or test split (``split``: its name) read from image files (a
    :class:`~distill.data.tensors.SplitStream`): its examples in index order, ``batch_size`` files at a time,
    normalized on the device as :func:`load_file_splits` normalizes a split it holds in memory, so that
    evaluation gives the same predictions; unreadable files are dropped and recorded in ``bad`` under
    ``split`` (a batch of them only is left out), and a pass that finds none readable is an error naming
    the split and its directory. Memory: a few batches.

    Workers: each pass decodes in ``num_workers`` worker processes (``data.num_workers``, by default the
    CPUs up to 8) that end with the pass (not persistent: the training split's persistent pool, idle while
    validation runs, is then the only one that outlives a pass, not one more per split and batch size). The
    loader of a batch size and device is kept (shared by :meth:`rows` and :meth:`map`)."""

    def __init__(self, files: ImageFiles, size: tuple[int, int], channels: int, mean: Tensor, std: Tensor,
                 num_workers: int, bad: BadFiles, *, split: str = "test", start: int = 0, stop: int | None = None,
                 transform: Callable[[Tensor], Tensor] | None = None,
                 pools: dict[tuple[int, str], StreamingBatches] | None = None) -> None:
        self.files, self.size, self.channels, self.mean, self.std = files, size, channels, mean, std
        self.num_workers, self.bad, self.split, self.transform = num_workers, bad, split, transform
        self.start, self.stop = start, len(files) if stop is None else stop
        self._pools = pools if pools is not None else {}

    def __len__(self) -> int:
        return self.stop - self.start

    def _like(self, **changes: Any) -> FileSplit:
        kw: dict[str, Any] = {"start": self.start, "stop": self.stop, "transform": self.transform, **changes}
        return FileSplit(self.files, self.size, self.channels, self.mean, self.std, self.num_workers, self.bad,
                         split=self.split, pools=self._pools, **kw)

    def rows(self, start: int, stop: int) -> FileSplit:
        return self._like(start=self.start + start, stop=min(self.start + stop, self.stop))

    def map(self, fn: Callable[[Tensor], Tensor]) -> FileSplit:
        before = self.transform
        return self._like(transform=fn if before is None else (lambda x: fn(before(x))))

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        key = (batch_size, str(device))
        if key not in self._pools:
            self._pools[key] = StreamingBatches(self.files, batch_size, device, seed=0, size=self.size,
                                                channels=self.channels, mean=self.mean, std=self.std,
                                                num_workers=self.num_workers, bad=self.bad, split=self.split,
                                                persistent=False, skip_empty=True)
        source = self._pools[key]
        source._plan.batches = [list(range(i, min(i + batch_size, self.stop)))
                                for i in range(self.start, self.stop, batch_size)]
        read = 0
        for x, y, index in source._batches():
            read += len(index)
            yield (self.transform(x) if self.transform is not None else x), y, index
        if not read and len(self):
            rows = "" if len(self) == len(self.files) else f"rows {self.start}..{self.stop - 1} of "
            raise none_readable(f"{rows}the {self.split} split", self.files.paths[self.start:self.stop],
                                self.bad.line(self.split))

    def examples(self, n: int) -> Tensor:
        first = self.files.subset(torch.arange(self.start, min(self.start + n, self.stop)))
        x, _ = decode_all(first, self.size, self.channels, 0, self.bad, split=self.split)
        x = normalize_batch(x, self.mean, self.std)
        return self.transform(x) if self.transform is not None else x

    def checksum(self) -> str:
        """sha256 (hex) of the split's files (path, byte size, label, in order), the resolution and channels
        they are decoded to, and the normalization; not of the pixels (a file rewritten in place with the
        same size is not seen), nor of :meth:`map`'s function."""
        h = hashlib.sha256(f"split:{list(self.size)}:{self.channels}:{self.start}:{self.stop};".encode())
        for path in self.files.paths[self.start:self.stop]:
            h.update(f"{path}:{os.path.getsize(path) if os.path.exists(path) else -1};".encode())
        for name, t in (("y", self.files.labels[self.start:self.stop]), ("mean", self.mean.float()),
                        ("std", self.std.float())):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def folder_of(paths: tuple[str, ...]) -> str:
    """The folder that holds every file of ``paths`` (not empty)."""
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # absolute and relative paths mixed
        return os.path.dirname(paths[0])


def none_readable(what: str, paths: tuple[str, ...], skipped: str) -> CorruptDataError:
    """The error for a validation or test split (``what``) none of whose files ``paths`` decode."""
    return CorruptDataError(
        f"none of the {len(paths)} image files of {what} (under {folder_of(paths)}) could be decoded ({skipped}): "
        f"there is nothing to evaluate. Fix or replace those files (each must open with Pillow), or remove them")


def decode_all(files: ImageFiles, size: tuple[int, int], channels: int, num_workers: int,
               bad: BadFiles, batch_size: int = 256, split: str = "train") -> tuple[Tensor, Tensor]:
    """Every file of ``files`` decoded, in order, as uint8 (N, C, H, W), with the labels of those that
    decoded (bad files dropped and recorded under ``split``)."""
    order = list(range(len(files)))
    plan = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    loader = DataLoader(DecodedImages(files.paths, size, channels), batch_sampler=plan, num_workers=num_workers,
                        collate_fn=collate, generator=torch.Generator())
    xs, keep = [], []
    for x, index, failed in received(loader):
        for i, why in failed:
            bad.add(files.paths[i], why, split)
        ok = ~torch.isin(index, torch.tensor([i for i, _ in failed], dtype=torch.long))
        xs.append(x[ok])
        keep.append(index[ok])
    x = torch.cat(xs) if xs else torch.empty((0, channels, *size), dtype=torch.uint8)
    kept = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
    return x, files.labels[kept]


@dataclass(frozen=True)
class FileOptions:
    """The ``data`` settings that concern image files (see :class:`distill.config.DataConfig`)."""

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    stream: str | bool = "auto"
    num_workers: int | None = None
    max_bad_fraction: float = 0.01


def load_file_splits(kind: str, path: str, options: FileOptions, *, val_size: float | int = 0.1, split_seed: int = 0,
                     normalize: bool = True, train_size: int | None = None, device: torch.device | str = "cpu",
                     say: Callable[[str], None] | None = None) -> tuple[DataSplits, BadFiles]:
    """The splits of an image dataset on disk, and the record of unreadable files (which a stream goes on
    filling) (``kind``: ``imagefolder`` or ``manifest``): all in memory on ``device``, or all streamed
    (the training split as ``DataSplits.stream``, validation and test as :class:`FileSplit` streams of
    their ``TensorData``; see the module's doc).

    Splits: a folder's ``val/`` and ``test/`` are those splits; with ``val/`` alone it is the test split
    (ImageNet's convention: its published validation set is what is reported) and validation is carved
    from ``train/``; with neither, test and then validation are carved from the training images, each of
    ``val_size`` (a fraction below 1, or a count), seeded by ``split_seed``, stratified by class.
    ``train_size`` keeps a stratified subset of the training split (seed ``split_seed + 1``, as for every
    dataset). Normalization: per-channel mean and std of up to :data:`STATS_SAMPLE` training images (all of
    them when fewer, so the two paths normalize alike).
    """
    say = say or (lambda line: None)
    found = scan_splits(kind, path)
    say(found.report())
    channels, size = native_shape(found.train.paths)
    channels = options.channels or channels
    size = options.image_size or size
    train, val, test = _splits(found, val_size, split_seed)
    if train_size is not None and train_size < len(train):
        _, keep = stratified_split(train.labels, train_size, split_seed + 1)
        train = train.subset(keep)
    workers = options.num_workers if options.num_workers is not None else default_workers()
    splits = {"train": train, "val": val, "test": test}
    bad = BadFiles({name: len(files) for name, files in splits.items()}, options.max_bad_fraction,
                   {name: folder_of(files.paths) for name, files in splits.items() if len(files)})
    float_bytes = len(train) * channels * size[0] * size[1] * 4
    stream = options.stream if isinstance(options.stream, bool) else float_bytes > STREAM_ABOVE_BYTES
    say(f"{found.name}: {len(train)} train / {len(val)} val / {len(test)} test images at {channels}x{size[0]}x"
        f"{size[1]}; training split {float_bytes / 2**20:.0f} MiB as float32: "
        f"{'streamed from disk' if stream else 'held in memory'} (data.stream={options.stream}), {workers} workers")
    sample = train if len(train) <= STATS_SAMPLE else train.subset(torch.sort(torch.randperm(
        len(train), generator=torch.Generator().manual_seed(split_seed))[:STATS_SAMPLE]).values)
    if not stream:
        train_x, train_y = decode_all(train, size, channels, workers, bad)
    stats_x = train_x if not stream and sample is train else decode_all(sample, size, channels, workers, bad)[0]
    mean, std = _stats(stats_x, channels, normalize)

    def tensors(x: Tensor, y: Tensor) -> TensorData:
        return TensorData(normalize_batch(x, mean, std).contiguous().to(device), y.to(device))

    if not stream:
        val_x, val_y = decode_all(val, size, channels, workers, bad, split="val")
        test_x, test_y = decode_all(test, size, channels, workers, bad, split="test")
        for name, files, x in (("val", val, val_x), ("test", test, test_x)):
            if len(files) and not len(x):
                raise none_readable(f"the {name} split", files.paths, bad.line(name))
        if bad.found:
            say(f"{found.name}: {bad.line()}")
        return DataSplits(found.name, tensors(train_x, train_y), tensors(val_x, val_y), tensors(test_x, test_y),
                          len(found.class_names), found.class_names, mean, std), bad
    if bad.found:
        say(f"{found.name}: {bad.line()}")

    def streamed(files: ImageFiles, split: str) -> TensorData:  # read batch by batch when evaluated
        return TensorData(torch.empty((len(files), channels, *size), device="meta"), files.labels,
                          FileSplit(files, size, channels, mean, std, workers, bad, split=split))

    probe = normalize_batch(stats_x[:8], mean, std)
    return DataSplits(found.name, streamed(train, "train"), streamed(val, "val"), streamed(test, "test"),
                      len(found.class_names),
                      found.class_names, mean, std,
                      stream=FileStream(train, size, channels, mean, std, workers, bad, probe)), bad


def _splits(found: FileSplits, val_size: float | int, split_seed: int) -> tuple[ImageFiles, ImageFiles, ImageFiles]:
    def count(n: int) -> int:
        return int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)

    train = found.train
    if found.val is not None and found.test is not None:
        return train, found.val, found.test
    test = found.test or found.val
    if test is None:  # carve the test split first, with its own seed
        rest, held = stratified_split(train.labels, count(len(train)), split_seed + 2)
        train, test = train.subset(rest), train.subset(held)
    rest, held = stratified_split(train.labels, count(len(train)), split_seed)
    return train.subset(rest), train.subset(held), test


def _stats(x: Tensor, channels: int, normalize: bool) -> tuple[Tensor, Tensor]:
    if not normalize or not len(x):
        return torch.zeros(channels), torch.ones(channels)
    x = x.float() / 255
    dims = [0, 2, 3]
    return x.mean(dim=dims), x.std(dim=dims).clamp_min(1e-6)
