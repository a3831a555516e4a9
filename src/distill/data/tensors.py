"""Datasets as tensors in memory on the training device, and batches drawn by index.

The data this library targets (digits, MNIST-likes, CIFAR) fits in memory, often in GPU
memory. Keeping it there as one tensor and drawing each batch with a single indexing
operation removes the per-sample Python loop, collation and host-to-device copy of a
``torch.utils.data.DataLoader`` from the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from distill.data.sources import RawDataset
from distill.seeding import stream_seed


class SplitStream(Protocol):
    """A validation or test split read from disk batch by batch (:mod:`distill.data.streaming`) instead of
    held in memory: its examples in index order, so that evaluating it gives what evaluating the split in
    memory gives."""

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(x, y, index)`` of every example in index order, ``batch_size`` files at a time, on ``device``
        (inputs normalized as the in-memory split's; files that cannot be decoded dropped and recorded)."""
        ...

    def rows(self, start: int, stop: int) -> SplitStream:
        """The examples ``start..stop-1`` (a rank's slice under DDP)."""
        ...

    def map(self, fn: Callable[[Tensor], Tensor]) -> SplitStream:
        """The split with ``fn`` applied to each batch of inputs (e.g. resized to a student's resolution)."""
        ...

    def examples(self, n: int) -> Tensor:
        """The first ``n`` inputs (fewer when the split has fewer), normalized, in host memory."""
        ...

    def checksum(self) -> str:
        """sha256 (hex) of what the split is made of, without decoding it (a teacher cache's record)."""
        ...


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` of shape (N, *in_shape) and integer labels ``y`` of shape (N,), same device.

    ``stream``: the split is read from disk (a validation or test split of image files streamed with
    ``data.stream``): then ``x`` is a tensor on the ``meta`` device (its shape only) and the inputs come
    from ``stream.batches`` (:func:`split_batches`)."""

    x: Tensor
    y: Tensor
    stream: SplitStream | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]}; they must match"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> TensorData:
        if self.stream is not None:  # its batches are put on the device they are asked for
            return self
        return TensorData(self.x.to(device), self.y.to(device))

    def subset(self, index: Tensor) -> TensorData:
        if self.stream is not None:
            raise ValueError("a subset of a split streamed from disk is not supported; set data.stream=false")
        index = index.to(self.x.device)
        return TensorData(self.x[index], self.y[index])

    def rows(self, start: int, stop: int) -> TensorData:
        """Examples ``start..stop-1``."""
        stream = self.stream.rows(start, stop) if self.stream is not None else None
        return TensorData(self.x[start:stop], self.y[start:stop], stream)


def split_batches(data: TensorData, batch_size: int,
                  device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(x, y, index)`` of every example of ``data`` in index order, ``batch_size`` at a time: slices of
    the tensors in memory (left where they are), or a stream's batches decoded onto ``device`` (default CPU)."""
    if data.stream is not None:
        yield from data.stream.batches(batch_size, device or torch.device("cpu"))
        return
    for i in range(0, len(data), batch_size):
        j = min(i + batch_size, len(data))
        yield data.x[i:j], data.y[i:j], torch.arange(i, j, device=data.y.device)


class TrainStream(Protocol):
    """A training split read from disk batch by batch (:mod:`distill.data.streaming`) instead of held in
    memory: the engine's batch source for a batch size, device and seed, and a few decoded examples."""

    @property
    def num_examples(self) -> int:
        """Training examples streamed."""
        ...

    def batches(self, batch_size: int, device: torch.device, seed: int) -> Any:
        """The split's :class:`~distill.data.batches.BatchSource`."""
        ...

    def examples(self, n: int) -> Tensor:
        """The first ``n`` (at most the few it holds) training inputs, normalized, in host memory."""
        ...


@dataclass(frozen=True)
class DataSplits:
    """Fixed train / validation / test splits of one dataset, normalized with train statistics.

    The validation split is carved out of the official training set with a seed that belongs to
    the data (``split_seed``), not to the run, so every model of a comparison is selected on the
    same examples and model selection never looks at the test set.
    """

    name: str
    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    class_names: tuple[str, ...]
    mean: Tensor
    std: Tensor
    #: The training split streamed from disk: then ``train.x`` is a tensor on the ``meta`` device (its shape
    #: only: any use of its values fails) and ``train.y`` the labels; batches come from ``stream.batches``.
    stream: TrainStream | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def examples(self, n: int) -> Tensor:
        """The first ``n`` training inputs (fewer when the split, or a stream's probe, has fewer): what the
        engine runs through the models before training (class counts, connector sizes, layout probe)."""
        return self.stream.examples(n) if self.stream is not None else self.train.x[:n]

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
            f"{self.num_classes} classes, input {tuple(self.in_shape)}"
        )


def require_in_memory(data: DataSplits | TensorData, needs: str) -> None:
    """Refuse a training split that is streamed from disk (its ``x`` only a shape) where ``needs`` reads all of
    its inputs at once."""
    train = data.train if isinstance(data, DataSplits) else data
    if train.x.device.type == "meta":
        raise ValueError(f"{needs} needs the training split in memory, but it is streamed from disk (image files "
                         f"larger than memory, or data.stream=true); set data.stream=false if it fits")


def stratified_split(y: Tensor, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices ``0..len(y)-1`` into (train, val) with ``val_size`` examples in val.

    Each class contributes to val in proportion to its frequency (largest remainders get the
    rounding), the choice within a class is a seeded permutation: the same seed gives the same
    split on every machine.
    """
    n = int(y.shape[0])
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training examples, got {val_size}")
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    classes, counts = torch.unique(y, return_counts=True)
    exact = counts.double() * val_size / n
    per_class = exact.floor().long()
    short = val_size - int(per_class.sum())
    if short > 0:
        order = torch.argsort(exact - per_class.double(), descending=True, stable=True)
        per_class[order[:short]] += 1
    val_parts = []
    for c, k in zip(classes.tolist(), per_class.tolist()):
        members = torch.nonzero(y == c).flatten()
        val_parts.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    val_idx = torch.sort(torch.cat(val_parts)).values if val_parts else torch.empty(0, dtype=torch.long)
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val_idx] = True
    return torch.nonzero(~is_val).flatten(), val_idx


def make_splits(
    raw: RawDataset,
    *,
    val_size: float | int = 0.1,
    split_seed: int = 0,
    normalize: bool = True,
    stats: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> DataSplits:
    """Turn a loaded dataset into normalized train / val / test tensors on ``device``.

    ``val_size`` below 1 is a fraction of the official training set, otherwise a count.
    Normalization uses per-channel mean and std of the train split only, or ``stats`` =
    (mean, std) when given (to evaluate a checkpoint with the statistics it was trained with).
    """
    n_train = int(raw.train_y.shape[0])
    k = int(round(val_size * n_train)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    train_idx, val_idx = stratified_split(raw.train_y, k, split_seed)
    train_x, val_x, test_x = raw.train_x[train_idx], raw.train_x[val_idx], raw.test_x
    channel_dims = [0] + list(range(2, train_x.dim()))
    if stats is not None:
        mean, std = (torch.as_tensor(t, dtype=torch.float32) for t in stats)
    elif normalize:
        mean = train_x.mean(dim=channel_dims)
        std = train_x.std(dim=channel_dims).clamp_min(1e-6)
    else:
        mean = torch.zeros(train_x.shape[1])
        std = torch.ones(train_x.shape[1])

    def prepare(x: Tensor, y: Tensor, split: str) -> TensorData:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x.float() - mean.view(shape)) / std.view(shape)
        finite = torch.isfinite(x)
        if not bool(finite.all()):  # values so large that float32 arithmetic overflowed while normalizing
            index = tuple(int(i) for i in (~finite).nonzero()[0])
            raise ValueError(f"{raw.name}: normalizing the {split} split gave a non-finite value at index {index} "
                             f"(per-channel mean {mean.tolist()}, std {std.tolist()}): its values are too large "
                             f"for float32 arithmetic; rescale the data")
        return TensorData(x.contiguous().to(device), y.long().to(device))

    return DataSplits(
        name=raw.name,
        train=prepare(train_x, raw.train_y[train_idx], "train"),
        val=prepare(val_x, raw.train_y[val_idx], "validation"),
        test=prepare(test_x, raw.test_y, "test"),
        num_classes=raw.num_classes,
        class_names=tuple(raw.class_names),
        mean=mean,
        std=std,
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of examples in ``epoch``: a pure function of (seed, epoch), so resume is exact.
    Drawn from the run's ``order`` stream (:func:`distill.seeding.stream_seed`), independent of the
    augmentation's and the global RNG's."""
    g = torch.Generator().manual_seed(stream_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    device: torch.device | str = "cpu",
) -> Iterator[Tensor]:
    """Yield index tensors (on ``device``) that cover one epoch of ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    order = order.to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return -(-n // batch_size)
