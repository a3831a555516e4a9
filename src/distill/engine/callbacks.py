"""Listeners of the training loop's events: the loop emits them, logging and progress listen, so
adding a tracker or another kind of output does not make the loop grow (as Lightning's callbacks).

Events: ``on_log_step`` every ``train.log_every`` steps (after the loss was checked finite, with the
running sums of the loss terms) and ``on_epoch_end`` with the epoch's record (after the checkpoints
were written). Only rank 0 has listeners.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from distill import distributed


def print_progress(line: str) -> None:
    """The default progress writer: one line to stderr."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class LossTracker:
    """Running sums of loss terms on the device; read (one sync) only when logging."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, terms: dict[str, Tensor], total: Tensor) -> None:
        for k, v in {**terms, "loss": total}.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self, across_ranks: bool = False) -> dict[str, float]:
        """Mean of each term over the steps so far; ``across_ranks``: also over the ranks of a
        DDP run (a collective: every rank must call it)."""
        if not self.sums:
            return {}
        stacked = torch.stack(list(self.sums.values())) / max(self.count, 1)
        if across_ranks:
            stacked = distributed.all_reduce_sum(stacked) / distributed.world_size()
        return {k: float(v) for k, v in zip(self.sums, stacked.cpu())}


class Callback:
    """A listener of the loop's events; each method does nothing unless overridden."""

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        """Every ``log_every`` steps of ``epoch`` (0-based); ``step`` counts steps since the run began."""

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """After ``epoch`` (0-based) with its record (loss terms, validation, learning rate, times)."""


class Callbacks(Callback):
    """Several listeners, called in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        for c in self.callbacks:
            c.on_log_step(epoch, step, tracker)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(epoch, record)


class LogRecords(Callback):
    """Passes each epoch's record to ``log`` (e.g. a line of metrics.jsonl)."""

    def __init__(self, log: Callable[[dict[str, Any]], None]) -> None:
        self.log = log

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.log(record)


class ProgressLines(Callback):
    """Human progress lines: within an epoch every ``log_every`` steps (when an epoch is longer), and
    about ten epoch lines per model (the first of this call, every tenth of the run, the last)."""

    def __init__(self, write: Callable[[str], None], tag: str, epochs: int, steps_per_epoch: int, log_every: int,
                 start_epoch: int) -> None:
        self.write, self.tag, self.epochs, self.spe = write, tag, epochs, steps_per_epoch
        self.log_every, self.start_epoch = log_every, start_epoch

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        if self.spe > self.log_every and step % self.spe != 0:
            m = tracker.means()  # this rank's running mean: a progress line, not a metric
            self.write(f"[{self.tag}] epoch {epoch + 1}/{self.epochs} step {step - epoch * self.spe}/{self.spe} "
                       f"loss {m['loss']:.4f}")

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        every = max(1, self.epochs // 10)  # about ten progress lines per model
        if not (epoch + 1 == self.epochs or epoch == self.start_epoch or (epoch + 1) % every == 0):
            return
        terms = [(k[6:], v) for k, v in record.items() if k.startswith("train/") and k != "train/loss"]
        terms_txt = " ".join(f"{k} {v:.4f}" for k, v in terms)
        val_txt = f"val acc {100 * record['val/acc']:.2f}% nll {record['val/nll']:.4f}" if "val/acc" in record else ""
        self.write(f"[{self.tag}] epoch {epoch + 1}/{self.epochs} loss {record.get('train/loss', float('nan')):.4f} "
                   f"({terms_txt}) {val_txt} lr {record['lr']:.3g} {record['time_s']:.1f}s")
