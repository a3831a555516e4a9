"""Listeners of the training loop's events: the loop emits them, logging and progress listen, so
adding a tracker or another kind of output does not make the loop grow (as Lightning's callbacks).

Events: ``on_fit_start`` before the first step of a ``fit`` call, ``on_step`` after every step (the step
count only: nothing that makes the host wait for the device), ``on_log_step`` every ``train.log_every``
steps (after the loss was checked finite, with the running sums of the loss terms), ``on_epoch_end`` with the
epoch's record (after the checkpoints were written) and ``on_fit_end`` when the call ends (also after an
error). Only rank 0 has the logging and progress listeners.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from distill import distributed
from distill.engine.progress import Bar, rate_and_eta, write_line


def print_progress(line: str) -> None:
    """The default progress writer: one line to stderr (above an open progress bar)."""
    write_line(line)


_FOLD = 64  # steps whose loss terms LossTracker keeps before it adds them to its sums


class LossTracker:
    """Running sums of loss terms on the device; read (one sync) only when logging.

    The sums are kept as one vector (the terms in the order first seen, then ``loss``). A step stacks its terms
    and total into one vector (one op, outside autograd) and keeps it; every ``_FOLD`` steps, and whenever the sums
    are read, the kept vectors are added to the sums one step after another: the same float32 additions as adding
    each step's at once, with the step's own work down to the stack (each small op after the model's large ones
    runs cold: ``benchmarks/results/throughput.md``)."""

    def __init__(self, sums: dict[str, Tensor] | None = None, count: int = 0) -> None:
        self.keys: tuple[str, ...] = tuple(sums or ())
        self._vector: Tensor | None = torch.stack([v.float() for v in sums.values()]) if sums else None
        self.count = count
        self._kept: list[Tensor] = []  # the stacked terms of the steps not yet added, all with the keys below
        self._kept_keys: tuple[str, ...] = ()
        # this rank's means at ``count`` steps: read once per log step however many listeners ask
        self._read: tuple[int, dict[str, float]] | None = None

    @property
    def vector(self) -> Tensor | None:
        """The sums of every term so far, in the order of :attr:`keys` (float32, on the device)."""
        self._fold()
        return self._vector

    @property
    def sums(self) -> dict[str, Tensor]:
        """Each term's running sum (float32 device scalars, views of :attr:`vector`)."""
        vector = self.vector
        return dict(zip(self.keys, vector.unbind())) if vector is not None else {}

    def add(self, terms: dict[str, Tensor], total: Tensor) -> None:
        keys = (*terms, "loss")
        if keys != self._kept_keys:
            self._fold()
            self._kept_keys = keys
        with torch.no_grad():
            self._kept.append(torch.stack([*terms.values(), total]))
        self.count += 1
        if len(self._kept) >= _FOLD:
            self._fold()

    def _fold(self) -> None:
        """Add the kept steps' terms to the sums, step by step; terms that came or went are added by name, new
        ones after the others."""
        kept, self._kept = self._kept, []
        with torch.no_grad():
            for values in kept:
                if values.dtype != torch.float32:
                    values = values.float()
                if self._vector is None:
                    self._vector, self.keys = values, self._kept_keys
                elif self._kept_keys == self.keys:
                    self._vector = self._vector + values
                else:
                    sums = dict(zip(self.keys, self._vector.unbind()))
                    for k, v in zip(self._kept_keys, values.unbind()):
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    self.keys, self._vector = tuple(sums), torch.stack(list(sums.values()))

    def means(self, across_ranks: bool = False) -> dict[str, float]:
        """Mean of each term over the steps so far; ``across_ranks``: also over the ranks of a
        DDP run (a collective: every rank must call it)."""
        vector = self.vector
        if vector is None:
            return {}
        if not across_ranks and self._read is not None and self._read[0] == self.count:
            return dict(self._read[1])
        stacked = vector / max(self.count, 1)
        if across_ranks:
            stacked = distributed.all_reduce_sum(stacked) / distributed.world_size()
        means = {k: float(v) for k, v in zip(self.keys, stacked.cpu())}
        if not across_ranks:
            self._read = (self.count, means)
        return dict(means)


class Callback:
    """A listener of the loop's events; each method does nothing unless overridden."""

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        """Before the first step of a ``fit`` call training model ``tag``, at ``step`` (0, or where a resumed run
        stands) of ``total_steps``."""

    def on_step(self, step: int) -> None:
        """After every optimizer step; ``step`` counts steps since the run began. Called on every step: keep it
        cheap and never read a tensor here (that would make the host wait for the device)."""

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        """Every ``log_every`` steps of ``epoch`` (0-based); ``step`` counts steps since the run began."""

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """After ``epoch`` (0-based) with its record (loss terms, validation, learning rate, times)."""

    def on_fit_end(self, tag: str) -> None:
        """When the ``fit`` call training ``tag`` ends: finished, stopped early, or by an error."""


class Callbacks(Callback):
    """Several listeners, called in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)
        # the per-step event goes only to the listeners that override it (a step costs no call otherwise)
        self._steppers = [c for c in self.callbacks if type(c).on_step is not Callback.on_step]

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        for c in self.callbacks:
            c.on_fit_start(tag, step, total_steps)

    def on_step(self, step: int) -> None:
        for c in self._steppers:
            c.on_step(step)

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        for c in self.callbacks:
            c.on_log_step(epoch, step, tracker)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(epoch, record)

    def on_fit_end(self, tag: str) -> None:
        for c in self.callbacks:
            c.on_fit_end(tag)


class LogRecords(Callback):
    """Passes each epoch's record to ``log`` (e.g. a line of metrics.jsonl)."""

    def __init__(self, log: Callable[[dict[str, Any]], None]) -> None:
        self.log = log

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.log(record)


class ProgressLines(Callback):
    """Human progress lines: within an epoch every ``log_every`` steps (when an epoch is longer; not with
    ``within_epochs=False``, e.g. when a bar shows the steps), and about ten epoch lines per model (the first of
    this call, every tenth of the run, the last). Each line ends with the steps/s and ETA of this call."""

    def __init__(self, write: Callable[[str], None], tag: str, epochs: int, steps_per_epoch: int, log_every: int,
                 start_epoch: int, within_epochs: bool = True) -> None:
        self.write, self.tag, self.epochs, self.spe = write, tag, epochs, steps_per_epoch
        self.log_every, self.start_epoch, self.within_epochs = log_every, start_epoch, within_epochs
        self.t0, self.start_step = time.perf_counter(), start_epoch * steps_per_epoch
        self.total: int | None = None  # the run's steps (known from on_fit_start)

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        self.t0, self.start_step, self.total = time.perf_counter(), step, total_steps

    def _speed(self, step: int) -> str:
        total = None if self.total is None else self.total - self.start_step
        return rate_and_eta(step - self.start_step, total, time.perf_counter() - self.t0)

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        if self.within_epochs and self.spe > self.log_every and step % self.spe != 0:
            m = tracker.means()  # this rank's running mean: a progress line, not a metric
            self.write(f"[{self.tag}] epoch {epoch + 1}/{self.epochs} step {step - epoch * self.spe}/{self.spe} "
                       f"loss {m['loss']:.4f} ({self._speed(step)})")

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        every = max(1, self.epochs // 10)  # about ten progress lines per model
        if not (epoch + 1 == self.epochs or epoch == self.start_epoch or (epoch + 1) % every == 0):
            return
        terms = [(k[6:], v) for k, v in record.items() if k.startswith("train/") and k != "train/loss"]
        terms_txt = " ".join(f"{k} {v:.4f}" for k, v in terms)
        val_txt = f"val acc {100 * record['val/acc']:.2f}% nll {record['val/nll']:.4f}" if "val/acc" in record else ""
        self.write(f"[{self.tag}] epoch {epoch + 1}/{self.epochs} loss {record.get('train/loss', float('nan')):.4f} "
                   f"({terms_txt}) {val_txt} lr {record['lr']:.3g} {record['time_s']:.1f}s "
                   f"({self._speed(int(record['step']))})")


class StepBar(Callback):
    """A progress bar over the steps of a ``fit`` call (:class:`distill.engine.progress.Bar`): steps/s and ETA,
    with the epoch, the running loss (every ``log_every`` steps) and the last validation accuracy."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar = Bar(None, "", enabled=False)
        self.epoch_txt, self.loss_txt, self.val_txt = "", "", ""

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        self.bar = Bar(total_steps, f"[{tag}] train", initial=step)

    def on_step(self, step: int) -> None:
        self.bar.update()

    def _show(self) -> None:
        self.bar.set_postfix(" ".join(t for t in (self.epoch_txt, self.loss_txt, self.val_txt) if t))

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        self.epoch_txt = f"epoch {epoch + 1}/{self.epochs}"
        self.loss_txt = f"loss {tracker.means()['loss']:.4f}"
        self._show()

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if "val/acc" in record:
            self.val_txt = f"val acc {100 * record['val/acc']:.2f}%"
            self._show()

    def on_fit_end(self, tag: str) -> None:
        self.bar.close()
