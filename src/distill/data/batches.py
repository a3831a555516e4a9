"""Batch sources: where the training loop's batches come from.

A batch source is an iterable of batches over one epoch, each ``(x, y, index)`` on the device with
``index`` the examples' positions in the training set (what a cache of teacher outputs looks up); it
has a length (optimizer steps per epoch) and a resumable position: ``epoch(e, start)`` yields epoch
``e`` from its ``start``-th batch on, exactly as an uninterrupted epoch would have. The engine knows
nothing else about the data, so in-memory tensors (:class:`TensorBatches`) are one implementation and
a stream from disk can be another.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from distill import distributed
from distill.data.tensors import TensorData, batch_indices, steps_per_epoch

Batch = tuple[Tensor, Tensor, Tensor]
"""``(x, y, index)``: inputs, labels and the examples' positions in the training set."""


@runtime_checkable
class BatchSource(Protocol):
    """Batches with their sample indices, a length and a resumable position (see the module's doc)."""

    num_examples: int  # training examples one epoch covers (what a resumed run must keep)

    def __len__(self) -> int:
        """Optimizer steps (batches) per epoch."""
        ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` (0-based) from the ``start``-th on; a function of (seed, epoch)."""
        ...


class TensorBatches:
    """Training batches by index from tensors in memory, in the order of
    :func:`distill.data.tensors.batch_indices` (seed, epoch); under DDP each rank takes its slice of
    every global batch (:func:`distill.distributed.local_batch`).

    By default the split lives on the device and a batch is one indexing operation there. With
    ``on_device=False`` it stays in host memory (pinned when the device is CUDA): a batch is gathered
    on the host into pinned memory and copied with ``non_blocking=True`` (the caching host allocator
    keeps that memory until the copy is done)."""

    def __init__(self, data: TensorData, batch_size: int, device: torch.device, *, seed: int = 0,
                 on_device: bool = True) -> None:
        self.batch_size, self.seed, self.num_examples = batch_size, seed, len(data)
        self.device, self.on_device = device, on_device
        self.pinned = not on_device and device.type == "cuda"
        if on_device:
            self.x, self.y = data.x.to(device), data.y.to(device)
        else:
            self.x, self.y = data.x.cpu(), data.y.cpu()
            if self.pinned:
                self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.index_device = device if on_device else torch.device("cpu")

    def __len__(self) -> int:
        return steps_per_epoch(self.num_examples, self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        indices = batch_indices(self.num_examples, self.batch_size, seed=self.seed, epoch=epoch,
                                device=self.index_device)
        for index in islice(indices, start, None) if start else indices:
            yield self(distributed.local_batch(index))

    def __call__(self, index: Tensor) -> Batch:
        """``(x, y, index)`` of the examples at ``index``, all on the device."""
        if self.on_device:
            return self.x.index_select(0, index), self.y.index_select(0, index), index
        x, y = self._gather(self.x, index), self._gather(self.y, index)
        index = torch.empty_like(index, pin_memory=self.pinned).copy_(index)
        return self._to_device(x), self._to_device(y), self._to_device(index)

    def _gather(self, t: Tensor, index: Tensor) -> Tensor:
        out = torch.empty((index.shape[0], *t.shape[1:]), dtype=t.dtype, pin_memory=self.pinned)
        return torch.index_select(t, 0, index, out=out)

    def _to_device(self, t: Tensor) -> Tensor:
        return t.to(self.device, non_blocking=self.pinned)
