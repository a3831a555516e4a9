"""The one training loop: teacher training, baselines and distillation all run through :func:`fit`.

Per step: draw a batch (with its sample indices) from the batch source, make the views, ask the
teacher (if any) for targets on exactly the teacher's view, run the student, let the objective name
its loss terms, back-propagate their weighted sum, clip, step, and set the next learning rate. The
loop does not sync with the host inside an epoch except every ``log_every`` steps, where it checks
that the loss is finite. After each epoch it evaluates on the validation split, writes ``last.pt``
(full training state, for resume) and, when validation improves, ``best.pt`` (weights to deploy).

Around the loop, small units: :mod:`~distill.engine.setup` (device, precision, compile, DDP, the
teacher port, views, optimizer), :mod:`~distill.engine.state` (run state, checkpoints, resume),
:mod:`~distill.engine.evaluation` (validation and selection), :mod:`~distill.engine.divergence`
(NaN/inf policy), :mod:`~distill.engine.callbacks` (logging and progress) and
:mod:`distill.data.batches` (the batch-source protocol).

Under ``torchrun`` (a process group from :mod:`distill.distributed`) the same loop is data
parallel: every rank draws the same global batches and takes its ``batch_size / world_size``
slice; student and objective are one module wrapped in ``DistributedDataParallel``, so their
gradients (connectors included) are averaged over the global batch before clipping and the
step; the teacher runs on each rank for its slice. Loss terms, the finite-loss flag and
validation (each rank evaluates a slice) are reduced over ranks, and only rank 0 logs, prints
and writes checkpoints. See :mod:`distill.distributed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill import distributed
from distill.config import TrainConfig
from distill.data.batches import Batch, BatchSource
from distill.data.tensors import DataSplits
from distill.engine.callbacks import (
    Callback,
    Callbacks,
    LogRecords,
    LossTracker,
    ProgressLines,
    StepBar,
    print_progress,
)
from distill.engine.divergence import LossWatch, check_saveable
from distill.engine.evaluation import collapse_check, select, validate
from distill.engine.progress import bars_enabled
from distill.engine.setup import Run, prepare
from distill.methods.base import Objective
from distill.seeding import seeded_generator, stream_seed
from distill.teachers import Teacher


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]]
    steps: int
    best_path: Path | None = None
    last_path: Path | None = None
    finished: bool = True
    warnings: list[str] = field(default_factory=list)  # e.g. collapsed predictions on validation


def fit(
    model: nn.Module,
    objective: Objective,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    teacher: Teacher | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    out_dir: str | Path | None = None,
    tag: str = "model",
    log: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
    allow_changes: bool = False,
    stop_after_epochs: int | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = print_progress,
    views: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    batches: BatchSource | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` with ``objective`` on ``data.train``; select on ``data.val``.

    ``teacher`` gives targets for each batch's views (required if the objective needs one).
    ``out_dir``: where ``last.pt`` / ``best.pt`` go (None: keep nothing on disk). ``log``
    receives one dict per epoch with every loss term and metric. ``resume`` continues from
    ``out_dir/last.pt`` if it exists, with results identical to an uninterrupted run on the
    CPU; it refuses a ``last.pt`` trained with other settings that change the result (any of
    ``cfg`` but ``log_every``, ``eval_batch_size`` and ``data_on_device``; the seed; the number of
    training examples) unless ``allow_changes``. ``stop_after_epochs`` ends this call early (e.g.
    to fit a time budget); resume later.
    ``views(x, index) -> (student_x, teacher_x)`` makes what each model sees of a batch (e.g. a
    :class:`distill.views.Views` teaching mode); by default both see ``x`` with ``cfg.augment``.
    Random streams (:mod:`distill.seeding`), each a function of (seed, epoch, rank), so resume is
    exact: the order of the examples; the augmentation, passed to ``views`` as ``generator=`` when it
    takes that keyword (else ``views`` draws from the global RNG); the global RNG (dropout, ...).
    ``batches``: where the training batches come from (:class:`distill.data.batches.BatchSource`);
    default: ``data.train``'s tensors (:class:`~distill.data.batches.TensorBatches`, on the device
    unless ``cfg.data_on_device`` is false). ``data.train`` still gives the two probe examples that
    size the connectors and check the class counts. ``callbacks``: listeners of the loop's events
    (:class:`distill.engine.callbacks.Callback`), after ``log`` and ``progress``, on every rank.
    Returns the model with its best validation weights loaded.

    In a process group (``torchrun``, :func:`distill.distributed.init`) every rank calls ``fit``
    alike and trains data parallel with global batch ``cfg.batch_size``; ``log`` and ``progress``
    are called and checkpoints written on rank 0 only; every rank reads ``last.pt`` to resume and
    ``best.pt`` at the end, so ``out_dir`` must be on a filesystem all ranks share.
    """
    device = torch.device(device)
    main = distributed.is_main()
    if not main:
        log = progress = None
    run = prepare(model, objective, data, cfg, teacher=teacher, device=device, seed=seed,
                  out_dir=Path(out_dir) if out_dir is not None else None, tag=tag, resume=resume,
                  allow_changes=allow_changes, checkpoint_extra=checkpoint_extra, progress=progress, views=views,
                  batches=batches)
    state, targets, amp_dtype = run.state, run.teacher.targets, run.amp_dtype
    spe, start_epoch = len(run.batches), state.epoch
    every = cfg.checkpoint_every_steps if run.checkpoints.last_path is not None else None
    events = _listeners(log, progress, tag, run.epochs, cfg.log_every, spe, start_epoch, callbacks)
    events.on_fit_start(tag, state.step, run.total_steps)
    try:
        for epoch in range(start_epoch, run.epochs):
            if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
                break
            t0 = time.perf_counter()
            augment, tracker = _epoch_streams(run, seed, epoch)  # or where a mid-epoch checkpoint left them
            run.student_step.train()
            watch = LossWatch(device)
            for x, y, index in _epoch_batches(run, epoch):
                run.schedule.apply(state.step)
                x, x_teacher = run.views(x, index, augment)
                # in its own precision (engine.teacher_forward), its outputs float32
                teacher_out = targets(x_teacher, index) if targets is not None else None
                terms = run.train_step(x, y, index, teacher_out, state.step / spe)
                loss = objective.total(terms)
                run.step(loss)  # zero_grad, backward, clip, optimizer step
                watch.observe(loss, state.step)
                tracker.add(terms, loss)
                state.step += 1
                events.on_step(state.step)
                if state.step % cfg.log_every == 0 or state.step % spe == 0:
                    watch.check(tag, epoch, run.checkpoints.kept)  # one sync
                    events.on_log_step(epoch, state.step, tracker)
                if every and state.step % every == 0:
                    _save_mid_epoch(run, watch, tracker, augment, tag, epoch)
            watch.check(tag, epoch, run.checkpoints.kept)
            record = _end_epoch(run, data, cfg, tag, epoch, tracker, t0, log)
            events.on_epoch_end(epoch, record)
            state.epoch, state.batch = epoch + 1, 0
    finally:
        events.on_fit_end(tag)
        run.close()
    return _result(run, data, cfg, tag, progress, main)


def _result(run: Run, data: DataSplits, cfg: TrainConfig, tag: str, progress: Callable[[str], None] | None,
            main: bool) -> FitResult:
    """The run's result: the model with its best validation weights loaded (in eval mode) and, when the run
    finished, warnings about predictions collapsed to one class."""
    state = run.state
    run.checkpoints.load_best(run.device)
    run.model.eval()
    finished = state.epoch >= run.epochs
    found = (collapse_check(run.model, run.objective, data, cfg.eval_batch_size, state.history,
                            int(state.best["epoch"]), tag, progress, main) if finished else [])
    return FitResult(model=run.model, best_epoch=int(state.best["epoch"]),
                     best_val={"acc": state.best["val_acc"], "nll": state.best["val_nll"]}, history=state.history,
                     steps=state.step, best_path=run.checkpoints.best_path, last_path=run.checkpoints.last_path,
                     finished=finished, warnings=found)


def _listeners(log: Callable[[dict[str, Any]], None] | None, progress: Callable[[str], None] | None, tag: str,
               epochs: int, log_every: int, spe: int, start_epoch: int, extra: Sequence[Callback]) -> Callback:
    listeners: list[Callback] = []
    if log is not None:
        listeners.append(LogRecords(log))
    if progress is not None:  # on a terminal a bar shows the steps, lines only the epochs (engine.progress)
        bar = bars_enabled()
        listeners.append(ProgressLines(progress, tag, epochs, spe, log_every, start_epoch, within_epochs=not bar))
        if bar:
            listeners.append(StepBar(epochs))
    return Callbacks([*listeners, *extra])


def _epoch_streams(run: Run, seed: int, epoch: int) -> tuple[torch.Generator, LossTracker]:
    """Seed the epoch's random streams (independent, per epoch and rank; the data order's is drawn by the
    batch source) and start its loss sums; when resuming from a mid-epoch checkpoint, restore both."""
    rank = distributed.rank()
    global_seed = stream_seed(seed, "global", epoch, rank)  # dropout and the like
    if run.device.type == "cpu" and not torch.cuda.is_initialized():
        # the CPU's generator is the only one a CPU run draws from; torch.manual_seed would also queue the seed for
        # every accelerator, formatting a stack trace each time (0.1-0.2 ms per epoch; the same CPU generator state,
        # bit for bit): kept apart for fit's per-step overhead in benchmarks/throughput.py, not for the numbers
        torch.default_generator.manual_seed(global_seed)
    else:
        torch.manual_seed(global_seed)
    augment = seeded_generator(stream_seed(seed, "augment", epoch, rank), run.device)
    saved, run.state.streams = run.state.streams, None
    if saved is None:
        return augment, LossTracker()
    torch.set_rng_state(saved["rng"].cpu())
    if saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), run.device)
    augment.set_state(saved["augment"].cpu())
    sums = {k: v.to(run.device) for k, v in saved["tracker_sums"].items()}
    return augment, LossTracker(sums, saved["tracker_count"])


def _epoch_batches(run: Run, epoch: int) -> Iterator[Batch]:
    """The epoch's batches from where the run stands in it (a resumed mid-epoch checkpoint's position) to
    its end, or to ``train.max_steps``."""
    spe = len(run.batches)
    start, stop = run.state.batch, min(spe, run.total_steps - epoch * spe)
    batches = run.batches.epoch(epoch, start)
    return batches if stop == spe else islice(batches, max(stop - start, 0))


def _save_mid_epoch(run: Run, watch: LossWatch, tracker: LossTracker, augment: torch.Generator, tag: str,
                    epoch: int) -> None:
    """``last.pt`` within an epoch (``train.checkpoint_every_steps``), from finite state only, with what an
    exact resumption needs beyond the epoch's: the position, the random streams and the running loss sums.
    At an epoch's (or the run's) end the epoch's own checkpoint follows instead."""
    state, spe = run.state, len(run.batches)
    if state.step % spe == 0 or state.step >= run.total_steps:
        return
    watch.check(tag, epoch, run.checkpoints.kept)
    check_saveable(run.model, run.objective, {}, run.device, tag, epoch, run.checkpoints.kept, None,
                   at=f"step {state.step} (epoch {epoch + 1}, a mid-epoch checkpoint)")
    state.batch = state.step - epoch * spe
    streams = {"rng": torch.get_rng_state(), "augment": augment.get_state(),
               "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
               "tracker_sums": {k: v.clone() for k, v in tracker.sums.items()}, "tracker_count": tracker.count}
    run.checkpoints.save(run.checkpoints.last_path, state, epoch, full=True,
                         position={"batch": state.batch, "streams": streams})


def _end_epoch(run: Run, data: DataSplits, cfg: TrainConfig, tag: str, epoch: int, tracker: LossTracker, t0: float,
               log: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Validate, record the epoch, check that the state is finite, select, and write the checkpoints."""
    train_time = time.perf_counter() - t0  # the finite-loss check synchronized the device
    state, checkpoints = run.state, run.checkpoints
    distributed.broadcast_buffers(run.model)  # rank 0's batch-norm statistics: what is evaluated and saved
    val = validate(run.model, data.val, cfg.eval_batch_size, run.device) if len(data.val) else None
    record: dict[str, Any] = {"model": tag, "epoch": epoch + 1, "step": state.step,
                              "lr": run.optimizer.param_groups[0]["lr"]}
    record.update({f"train/{k}": v for k, v in tracker.means(across_ranks=True).items()})
    if val is not None:
        record.update({"val/acc": val.accuracy, "val/nll": val.nll})
    record["train_time_s"] = round(train_time, 4)
    record["time_s"] = round(time.perf_counter() - t0, 4)
    record["memory_format"] = state.memory_format  # the layout trained in, and why (engine.layout)
    if state.teacher_forward is not None:
        record["teacher_forward"] = state.teacher_forward  # a teacher's precision and compile, and why
    if run.teacher_fold is not None:  # the teacher's batch norms folded or not, and why (engine.fold)
        record["teacher_batchnorm"] = run.teacher_fold.record()
    state.history.append(record)
    # a checkpoint holds finite weights and metrics only: one device sync per epoch, before both saves
    check_saveable(run.model, run.objective, record, run.device, tag, epoch, checkpoints.kept, log)
    best = select(val, state.best, cfg.selection, epoch + 1)
    if best is not None:
        state.best = best
        checkpoints.save(checkpoints.best_path, state, epoch + 1, full=False)
    checkpoints.save(checkpoints.last_path, state, epoch + 1, full=True)
    return record
