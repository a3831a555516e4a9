"""Data-parallel training across processes: the plumbing, kept in one place.

``torchrun --nproc_per_node=N -m distill run cfg.yaml`` starts N copies of the same program with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init` joins them into one process group: gloo on CPUs, NCCL on CUDA (each process on
``cuda:LOCAL_RANK``). Then every rank runs the same recipe and the same calls to
:func:`distill.engine.fit`, which takes this rank's slice of every global batch and wraps the
student (with the objective) in ``DistributedDataParallel``; only rank 0 writes files and prints.

Without a process group (a plain ``python`` or ``distill`` run, or ``torchrun`` with one process)
every function here is a cheap no-op: rank 0 of a world of 1, so the single-process path is the
same code with nothing added.

How ``fit`` uses it, and why:

- ``train.batch_size`` is the global batch B. Every rank draws the same epoch order (a function
  of seed and epoch) and takes its B/W slice of each batch, so a W-rank step averages the
  gradient over exactly the B examples one process would use: same trajectory up to float
  rounding, for models without batch norm and without randomness (dropout and augmentation are
  seeded per rank, so their draws differ from a single process's).
- Student and objective are one module inside DDP, so the objective's parameters (connectors)
  are averaged in the same backward as the student's; a teacher has no gradients and simply runs
  on every rank for that rank's slice.
- Buffers are not synced at every forward: batch-norm statistics are per rank (each normalizes
  its slice; ``train.sync_batchnorm`` on CUDA normalizes over the global batch) and rank 0's are
  broadcast before each validation, so every rank evaluates, and rank 0 saves, one model.
  Objective state updated in the step (CRD's memory bank) stays per rank.
- Validation: each rank evaluates a contiguous slice, the sums are reduced (a rank whose slice is
  empty, with more ranks than examples, adds zeros). Loss terms, and the
  step of the first non-finite loss, are reduced too.
- Files: rank 0 writes; every rank reads ``last.pt`` (resume) and ``best.pt`` (end of fit), so
  the run directory must be on a filesystem all nodes share.

The collective functions (:func:`barrier`, :func:`all_reduce_sum`, :func:`min_over_ranks`,
:func:`broadcast_object`, :func:`broadcast_buffers`, :func:`gather_rows`, :func:`check_same`)
must be called by every rank, in the same order.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started as one of several (torchrun sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes, if it started several processes.

    ``device``: the resolved ``device`` setting. On CUDA the backend is NCCL and this process
    uses ``cuda:LOCAL_RANK``; on the CPU the backend is gloo. Returns the device this process
    trains on (``device`` itself without torchrun). Calling it again is harmless.
    """
    if not launched():
        return device
    if not dist.is_initialized():
        if device.type == "cuda":
            if device.index not in (None, local_rank()):
                raise ValueError(f"device: {device} names one GPU, but under torchrun each process uses its own "
                                 f"(cuda:LOCAL_RANK); set device=cuda or auto")
            torch.cuda.set_device(local_rank())
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise ValueError(f"distributed training runs on CUDA (NCCL) or on CPUs (gloo), not on {device.type}; "
                             "set device=cuda or cpu")
        dist.init_process_group(backend)
    return local_device(device)


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this process's GPU (``cuda:LOCAL_RANK``) under a multi-process launch."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def cleanup() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


GLOO_DRAIN_S = 0.2
"""Seconds a gloo process leaves the GIL free at the end of :func:`process_group`, after the barrier, so that the
worker threads free the last collectives' tensors before the interpreter shuts down (a scheduler time slice on
a loaded machine is a few to tens of milliseconds)."""


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Run the block in torchrun's process group (:func:`init`; yields this process's device), and leave it.

    After a block that succeeded, every rank waits for the others before leaving (a barrier) and, on gloo,
    then leaves the GIL free for :data:`GLOO_DRAIN_S`. Gloo's worker threads outlive
    ``destroy_process_group`` and free each collective's tensors after the collective has returned, which
    takes the GIL for a tensor Python knows; a worker still waiting for it when the interpreter shuts down
    aborts the process ("terminate called without an active exception": 1 in 6 to 12 runs of a short job
    with neither; with the barrier alone it still happened, in CI, once, on a loaded machine where the worker
    had not run during the barrier's short wait). After an error there is neither: the other ranks may never
    come, and the process is failing anyway.
    """
    local = init(device)
    succeeded = False
    try:
        yield local
        succeeded = True
    finally:
        try:
            if succeeded:
                barrier()
                if is_distributed() and dist.get_backend() == "gloo":
                    time.sleep(GLOO_DRAIN_S)  # releases the GIL: a descheduled worker gets to run
        finally:
            cleanup()


def require_process_group() -> None:
    """Refuse to train alone in a process that torchrun started as one of several: each would
    train its own copy of the model and write the same files."""
    if launched() and not is_distributed():
        raise RuntimeError(
            f"this process is one of {os.environ['WORLD_SIZE']} started by torchrun, but no process group is "
            "initialized, so fit would train an independent copy in every process. Call "
            "distill.distributed.init(device) first (`distill run` does), or run a single process."
        )


def _comm_device() -> torch.device:
    """Where tensors must be for a collective: this GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- collectives


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download into a shared cache), then the other ranks."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over ranks, in place (``t`` must be on the communication device)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def min_over_ranks(t: Tensor) -> Tensor:
    """The element-wise minimum of ``t`` over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` (anything picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, so that all ranks
    evaluate, and rank 0 saves, the same model."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def check_same(value: Any, what: str, hint: str = "") -> None:
    """Raise, on every rank alike, unless ``value`` (picklable) is equal on all ranks."""
    if not is_distributed():
        return
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise RuntimeError(f"{what} differs between the ranks ({shown}){'; ' + hint if hint else ''}")


# --------------------------------------------------------------------------- sharding


def shard(n: int, block: int = 1) -> tuple[int, int]:
    """This rank's contiguous rows ``[start, stop)`` of ``n``: the rows are dealt out in blocks of
    ``block`` (the last one possibly short), as evenly as possible, in rank order."""
    blocks = -(-n // block)
    r, w = rank(), world_size()
    return min(n, blocks * r // w * block), min(n, blocks * (r + 1) // w * block)


def local_batch(index: Tensor) -> Tensor:
    """This rank's slice of a global batch: rank r takes rows ``[r * b, (r + 1) * b)``, ``b = B / W``.

    Every rank draws the same global batches (the epoch's order is a function of seed and
    epoch), so the W slices of a step are exactly the global batch a single process would use.
    """
    w = world_size()
    if w == 1:
        return index
    b = index.shape[0] // w
    r = rank()
    return index[r * b : (r + 1) * b]


def gather_rows(part: Tensor) -> Tensor:
    """Every rank's ``part`` (rows of one tensor; any number per rank, the same trailing shape
    and dtype), concatenated in rank order, on every rank (on ``part``'s device)."""
    if not is_distributed():
        return part
    comm = _comm_device()
    sizes = torch.tensor([part.shape[0]], device=comm)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    padded = part.new_zeros((max(counts), *part.shape[1:]), device=comm)
    padded[: part.shape[0]] = part
    received = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(received, padded)
    return torch.cat([rows[:count] for rows, count in zip(received, counts)]).to(part.device)


# --------------------------------------------------------------------------- the model


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (itself without a process group).

    Buffers are not broadcast at every forward (``broadcast_buffers=False``): the objective's
    buffers can be large (CRD's memory banks) and batch-norm statistics only need to agree when
    the model is evaluated or saved, where :func:`broadcast_buffers` syncs them once. They are
    synced once here, with DDP's broadcast of rank 0's parameters.
    """
    if not is_distributed():
        return module
    broadcast_buffers(module)
    device_ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    renamed = "forward_sync_buffers" in inspect.signature(ddp).parameters  # torch >= 2.13's broadcast_buffers
    no_sync = "forward_sync_buffers" if renamed else "broadcast_buffers"
    options: dict[str, Any] = {no_sync: False}
    return ddp(module, device_ids=device_ids, **options)
