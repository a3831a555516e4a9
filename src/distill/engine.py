"""The one training loop: teacher training, baselines and distillation all run through :func:`fit`.

Per step: draw a batch by index from tensors already on the device, augment it on the device,
ask the teacher (if any) for targets on exactly that view, run the student, let the objective
name its loss terms, back-propagate their weighted sum, clip, step. The loop does not sync
with the host inside an epoch except every ``log_every`` steps, where it checks that the loss
is finite. After each epoch it evaluates on the validation split, writes ``last.pt`` (full
training state, for resume) and, when validation improves, ``best.pt`` (weights to deploy).

Under ``torchrun`` (a process group from :mod:`distill.distributed`) the same loop is data
parallel: every rank draws the same global batches and takes its ``batch_size / world_size``
slice; student and objective are one module wrapped in ``DistributedDataParallel``, so their
gradients (connectors included) are averaged over the global batch before clipping and the
step; the teacher runs on each rank for its slice. Loss terms, the finite-loss flag and
validation (each rank evaluates a slice) are reduced over ranks, and only rank 0 logs, prints
and writes checkpoints. See :mod:`distill.distributed`.
"""

from __future__ import annotations

import copy
import inspect
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import distributed
from distill.checkpoint import load_checkpoint, load_model_weights, remove_orphan_temps, save_checkpoint
from distill.config import RESULT_NEUTRAL_TRAIN, OptimizerConfig, ScheduleConfig, TrainConfig, diff_settings
from distill.data.augment import random_shift
from distill.data.tensors import DataSplits, TensorData, batch_indices, steps_per_epoch
from distill.diagnostics import (
    PredictionCollapseWarning,
    advice_for,
    collapse_warnings,
    training_collapse_warnings,
)
from distill.objectives.base import Objective, StepOutputs
from distill.seeding import seeded_generator, stream_seed
from distill.taps import Taps
from distill.teachers import FrozenTeacher, Targets, Teacher


class NonFiniteLossError(RuntimeError):
    """The loss, the weights or a metric became NaN or inf; training stopped and the last good
    checkpoint (written from finite weights and metrics only) was kept."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a device name ({e}); use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA device is available; use device=auto or cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``, or None for full fp32.

    Mixed precision is used on CUDA only: on CPUs bf16 autocast is usually several times
    slower than fp32, so ``auto`` means fp32 there and an explicit request is refused.
    """
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        raise ValueError(f"train.amp={amp} needs a CUDA device (running on {device.type}); use train.amp=off or auto")
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW from ``train.optimizer``.

    Weight decay is not applied to biases and normalization weights (1-d parameters), the
    usual practice for conv nets and transformers alike.
    """
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"train.optimizer.name: unknown optimizer {cfg.name!r}; choose sgd, adam or adamw")


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based), applied before the step.

    Linear warmup over ``warmup_epochs``, then: ``constant``; ``step`` (times gamma every
    ``step_size`` epochs); ``multistep`` (times gamma at each epoch in ``milestones``); ``cosine``
    (half a cosine from 1 to ``min_lr / base_lr`` over the steps after warmup, no restarts).
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / max(steps_per_epoch, 1)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.name == "cosine":
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        floor = cfg.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule.name: unknown schedule {cfg.name!r}")


@dataclass
class Evaluation:
    """Accuracy, errors and mean NLL of a model on one split, with its top-1 predictions."""

    accuracy: float
    errors: int
    nll: float
    n: int
    predictions: Tensor


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits for all of ``x`` in eval mode, without a graph; restores the model's mode.

    ``x`` may live elsewhere than the model (e.g. in host memory): each chunk is moved to the
    model's device; the logits are on the model's device.
    """
    device = _device_of(model, x.device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.cat([model(x[i : i + batch_size].to(device)).float()
                              for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1024) -> Evaluation:
    logits = predict_logits(model, data.x, batch_size)
    preds = logits.argmax(dim=-1)
    y = data.y.to(preds.device)
    correct = int((preds == y).sum())
    nll = float(F.cross_entropy(logits, y, reduction="mean")) if len(data) else float("nan")
    n = len(data)
    return Evaluation(accuracy=correct / max(n, 1), errors=n - correct, nll=nll, n=n, predictions=preds)


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


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class _Tracker:
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


class _StudentStep(nn.Module):
    """The student's forward and the objective as one module: the unit that DDP wraps, so that the
    gradients of the objective's own parameters (connectors, projection heads) are averaged across
    ranks with the student's, in the same backward. Without DDP it is just the two calls."""

    def __init__(self, student: nn.Module, objective: Objective, taps: Taps | None, amp_dtype: torch.dtype | None):
        super().__init__()
        self.student, self.objective, self.taps, self.amp_dtype = student, objective, taps, amp_dtype

    def forward(self, x: Tensor, labels: Tensor, index: Tensor, targets: Targets | None,
                epoch: float) -> dict[str, Tensor]:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.student(x)
        features = self.taps.features if self.taps is not None else {}
        return self.objective(StepOutputs(logits=logits, labels=labels, index=index, teacher=targets,
                                          features=features, epoch=epoch))


class _Batches:
    """Training batches by index. By default the split lives on the device and a batch is one
    indexing operation there. With ``data_on_device=False`` it stays in host memory (pinned when
    the device is CUDA): a batch is gathered on the host into pinned memory and copied with
    ``non_blocking=True`` (the caching host allocator keeps that memory until the copy is done)."""

    def __init__(self, data: TensorData, device: torch.device, on_device: bool) -> None:
        self.device, self.on_device = device, on_device
        self.pinned = not on_device and device.type == "cuda"
        if on_device:
            self.x, self.y = data.x.to(device), data.y.to(device)
        else:
            self.x, self.y = data.x.cpu(), data.y.cpu()
            if self.pinned:
                self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.index_device = device if on_device else torch.device("cpu")

    def __call__(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, index)`` of the batch, all on the device (``index`` is on ``index_device``)."""
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


def _compile(module: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(module)``: a wrapper sharing the module's parameters; the module itself
    (whose ``state_dict`` the checkpoints hold, without ``_orig_mod.`` prefixes) is untouched."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ValueError("train.compile on the CPU needs a C++ compiler for TorchInductor (none of g++, c++, "
                         "clang++ is on PATH); install one (e.g. apt-get install g++) or set train.compile=false")
    return torch.compile(module)


def _compiled_teacher(teacher: Teacher, device: torch.device) -> Teacher:
    """A live teacher (:class:`FrozenTeacher`) whose model's forward is compiled; any other teacher
    (a cache, a function), or one whose features are tapped, as it is (hooks that capture tensors
    under ``inference_mode`` do not survive tracing)."""
    if not isinstance(teacher, FrozenTeacher) or teacher.taps is not None:
        return teacher
    compiled = copy.copy(teacher)
    compiled.model = _compile(teacher.model, device)
    return compiled


class _Validation(NamedTuple):
    accuracy: float
    nll: float


def _validate(model: nn.Module, val: TensorData, batch_size: int, device: torch.device) -> _Validation:
    """Validation accuracy and mean NLL. Under DDP each rank evaluates a contiguous slice and the
    sums (correct, NLL, count) are reduced, so every rank gets the same numbers."""
    start, stop = distributed.shard(len(val))
    ev = evaluate(model, TensorData(val.x[start:stop], val.y[start:stop]), batch_size)
    if not distributed.is_distributed():
        return _Validation(ev.accuracy, ev.nll)
    sums = torch.tensor([ev.n - ev.errors, ev.nll * ev.n if ev.n else 0.0, ev.n], dtype=torch.float64, device=device)
    correct, nll_sum, n = distributed.all_reduce_sum(sums).tolist()
    return _Validation(correct / n, nll_sum / n)


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
    progress: Callable[[str], None] | None = _progress,
    views: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
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
    Returns the model with its best validation weights loaded.

    In a process group (``torchrun``, :func:`distill.distributed.init`) every rank calls ``fit``
    alike and trains data parallel with global batch ``cfg.batch_size``; ``log`` and ``progress``
    are called and checkpoints written on rank 0 only; every rank reads ``last.pt`` to resume and
    ``best.pt`` at the end, so ``out_dir`` must be on a filesystem all ranks share.
    """
    device = torch.device(device)
    distributed.require_process_group()
    world, main = distributed.world_size(), distributed.is_main()
    if not main:
        log = progress = None
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"{type(objective).__name__} distils from a teacher, but no teacher was given")
    n_train = len(data.train)
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} is the global batch, split evenly over the {world} "
                         f"processes; make it a multiple of {world}")
    if world > 1 and n_train < cfg.batch_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} exceeds the {n_train} training examples; under DDP "
                         "every step takes one full global batch, so use a smaller train.batch_size")
    out_dir = Path(out_dir) if out_dir is not None else None
    model.to(device)
    if cfg.sync_batchnorm and world > 1:
        if device.type != "cuda":
            raise ValueError("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm does not run on the CPU); "
                             "set it to false: each process then normalizes with its own slice's statistics")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _check_class_counts(model, teacher, data, views, device)
    teacher_model = getattr(teacher, "model", None)
    probe = data.train.x[:2].to(device)
    if views is not None:
        probe = views(probe, torch.arange(probe.shape[0], device=device))[0]
    objective.setup(model, teacher_model, probe)  # connectors sized from both models
    objective.to(device)
    student_taps = Taps(model, objective.student_features) if objective.student_features else None
    if objective.teacher_features:
        if not hasattr(teacher, "with_features"):
            raise ValueError(f"{type(objective).__name__} needs the teacher's intermediate features, but "
                             f"{type(teacher).__name__} gives only outputs; use a live model (FrozenTeacher)")
        teacher = teacher.with_features(objective.teacher_features)  # type: ignore[union-attr]
    if cfg.channels_last:  # both models: a channels_last batch through NCHW teacher weights is slow
        model.to(memory_format=torch.channels_last)
        if isinstance(teacher_model, nn.Module):
            teacher_model.to(memory_format=torch.channels_last)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optimizer)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    spe = steps_per_epoch(n_train, cfg.batch_size)
    total_steps = spe * cfg.epochs
    step, start_epoch = 0, 0
    best = {"epoch": -1, "val_acc": -1.0, "val_nll": math.inf}
    history: list[dict[str, Any]] = []
    last_path = out_dir / "last.pt" if out_dir else None
    best_path = out_dir / "best.pt" if out_dir else None
    extra = dict(checkpoint_extra or {})
    # what must not change between a run and its resumption, or the result would differ silently
    # (every train setting but those that leave the result unchanged, config.RESULT_NEUTRAL_TRAIN)
    settings = {k: v for k, v in cfg.model_dump(mode="json").items()
                if k not in ("batch_size", "epochs", *RESULT_NEUTRAL_TRAIN)}
    run_shape = {"train_examples": n_train, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": seed,
                 "train": settings}
    resuming = resume and last_path is not None and last_path.exists()
    distributed.check_same((run_shape, resuming), f"[{tag}] the run's shape or whether {last_path} exists",
                           "every rank must run the same config and see the same files (a shared filesystem)")
    if main and out_dir is not None:  # what a process killed while writing a checkpoint left behind
        remove_orphan_temps(out_dir, recursive=False)

    if resuming:
        assert last_path is not None
        state = load_checkpoint(last_path, map_location=device)
        saved_shape = state.get("run_shape") or {}
        # a checkpoint from before a key was recorded: that key cannot be compared
        changed = diff_settings({k: saved_shape.get(k, v) for k, v in run_shape.items()}, run_shape)
        if changed and not allow_changes:
            raise ValueError(
                f"cannot resume {last_path}: it was trained with different settings ({'; '.join(changed)}). "
                "Resume with the original settings, start a new run under another name, or pass "
                "allow_changes=True (distill run: --allow-changes) to continue with the new ones."
            )
        if changed and progress:
            progress(f"[{tag}] resuming {last_path} with changed settings: {'; '.join(changed)}")
        load_model_weights(model, state, last_path, extra.get("model_spec"))
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, best, history = state["epoch"], state["step"], dict(state["best"]), list(state["history"])
        if progress:
            progress(f"[{tag}] resuming from {last_path} after epoch {start_epoch}")

    def save(path: Path, epoch: int, full: bool) -> None:
        if not main:
            return
        payload: dict[str, Any] = {**extra, "model": model.state_dict(), "epoch": epoch, "step": step, "best": best}
        if full:  # last.pt: everything needed to resume; best.pt stays lean (the file to deploy)
            payload.update(history=history, run_shape=run_shape, objective=objective.state_dict(),
                           optimizer=optimizer.state_dict(),
                           scaler=scaler.state_dict() if scaler is not None else None)
        save_checkpoint(path, payload)

    student_step = _StudentStep(_compile(model, device) if cfg.compile else model, objective, student_taps, amp_dtype)
    train_step = distributed.wrap(student_step, device)  # DDP under torchrun, else student_step itself
    if cfg.compile and teacher is not None:
        teacher = _compiled_teacher(teacher, device)
    batches = _Batches(data.train, device, cfg.data_on_device)
    views_take_generator = views is not None and _takes_generator(views)
    try:
        shift = cfg.augment.shift
        epochs_run = 0
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
            t0 = time.perf_counter()
            # independent streams (the data order's is drawn in batch_indices), per epoch and rank
            torch.manual_seed(stream_seed(seed, "global", epoch, distributed.rank()))  # dropout and the like
            augment = seeded_generator(stream_seed(seed, "augment", epoch, distributed.rank()), device)
            student_step.train()
            tracker = _Tracker()
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            for index in batch_indices(n_train, cfg.batch_size, seed=seed, epoch=epoch, device=batches.index_device):
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_factor(step, total_steps, spe, cfg.schedule, base)
                x, y, index = batches(distributed.local_batch(index))
                if views_take_generator:
                    x, x_teacher = views(x, index, generator=augment)  # type: ignore[misc]
                elif views is not None:
                    x, x_teacher = views(x, index)
                else:
                    x = x_teacher = random_shift(x, shift, generator=augment) if shift else x
                if cfg.channels_last and x.dim() == 4:
                    same = x_teacher is x
                    x = x.contiguous(memory_format=torch.channels_last)
                    x_teacher = x if same else x_teacher.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    targets = teacher(x_teacher, index) if teacher is not None else None
                terms = train_step(x, y, index, targets, step / spe)
                loss = objective.total(terms)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
                tracker.add(terms, loss)
                step += 1
                if step % cfg.log_every == 0 or step % spe == 0:
                    _check_finite(first_bad, tag, epoch, last_path if start_epoch + epochs_run > 0 else None)
                    if progress and spe > cfg.log_every and step % spe != 0:
                        m = tracker.means()  # this rank's running mean: a progress line, not a metric
                        progress(f"[{tag}] epoch {epoch + 1}/{cfg.epochs} step {step - epoch * spe}/{spe} "
                                 f"loss {m['loss']:.4f}")
            _check_finite(first_bad, tag, epoch, last_path if start_epoch + epochs_run > 0 else None)
            train_time = time.perf_counter() - t0  # the finite check above synchronized the device
            distributed.broadcast_buffers(model)  # rank 0's batch-norm statistics: what is evaluated and saved
            val = _validate(model, data.val, cfg.eval_batch_size, device) if len(data.val) else None
            record: dict[str, Any] = {"model": tag, "epoch": epoch + 1, "step": step,
                                      "lr": optimizer.param_groups[0]["lr"]}
            record.update({f"train/{k}": v for k, v in tracker.means(across_ranks=True).items()})
            if val is not None:
                record.update({"val/acc": val.accuracy, "val/nll": val.nll})
            record["train_time_s"] = round(train_time, 4)
            record["time_s"] = round(time.perf_counter() - t0, 4)
            history.append(record)
            # a checkpoint holds finite weights and metrics only: one device sync per epoch, before both saves
            _check_saveable(model, objective, record, device, tag, epoch,
                            last_path if start_epoch + epochs_run > 0 else None, log)
            if val is None or cfg.selection == "last":
                improved = True
            elif cfg.selection == "nll":
                improved = val.nll < best["val_nll"]
            else:
                improved = (val.accuracy, -val.nll) > (best["val_acc"], -best["val_nll"])
            if improved:
                best = {"epoch": epoch + 1, "val_acc": val.accuracy if val else float("nan"),
                        "val_nll": val.nll if val else float("nan")}
                if best_path is not None:
                    save(best_path, epoch + 1, full=False)
            if last_path is not None:
                save(last_path, epoch + 1, full=True)
            if log is not None:
                log(record)
            every = max(1, cfg.epochs // 10)  # about ten progress lines per model
            if progress and (epoch + 1 == cfg.epochs or epoch == start_epoch or (epoch + 1) % every == 0):
                terms = [(k[6:], v) for k, v in record.items() if k.startswith("train/") and k != "train/loss"]
                terms_txt = " ".join(f"{k} {v:.4f}" for k, v in terms)
                val_txt = f"val acc {100 * val.accuracy:.2f}% nll {val.nll:.4f}" if val else ""
                progress(f"[{tag}] epoch {epoch + 1}/{cfg.epochs} loss {record.get('train/loss', float('nan')):.4f} "
                         f"({terms_txt}) {val_txt} lr {record['lr']:.3g} {record['time_s']:.1f}s")
            epochs_run += 1

    finally:  # the user's models leave with no hooks attached, whatever happened
        if student_taps is not None:
            student_taps.remove()
        if getattr(teacher, "taps", None) is not None and objective.teacher_features:
            teacher.taps.remove()  # type: ignore[union-attr]
    finished = start_epoch + epochs_run >= cfg.epochs
    if best_path is not None:  # written by rank 0, read by every rank
        distributed.barrier()  # rank 0 has written it
        distributed.check_same(best_path.exists(), f"[{tag}] whether {best_path} exists",
                               "every rank loads it: put output_dir on a filesystem all nodes share")
        if best_path.exists():
            load_model_weights(model, load_checkpoint(best_path, map_location=device), best_path,
                               extra.get("model_spec"))
    model.eval()
    found = (_collapse_check(model, objective, data, cfg, history, best["epoch"], tag, progress, main)
             if finished else [])
    return FitResult(model=model, best_epoch=best["epoch"], best_val={"acc": best["val_acc"], "nll": best["val_nll"]},
                     history=history, steps=step, best_path=best_path, last_path=last_path, finished=finished,
                     warnings=found)


def _collapse_check(model: nn.Module, objective: Objective, data: DataSplits, cfg: TrainConfig,
                    history: list[dict[str, Any]], best_epoch: int, tag: str,
                    progress: Callable[[str], None] | None, main: bool) -> list[str]:
    """Collapse warnings (:mod:`distill.diagnostics`): the selected model's predictions on the validation
    split, and a fall of validation accuracy to chance during training (which selection hides). Shown
    on rank 0: as progress lines, or as a :class:`PredictionCollapseWarning` when ``progress`` is None
    (a warning is not progress: it is not silenced with it)."""
    if not len(data.val) or not objective.trains_predictions():  # e.g. FitNets' hint stage: not judged
        return []
    advice = advice_for(objective)
    ev = evaluate(model, data.val, cfg.eval_batch_size)
    found = collapse_warnings(ev.predictions, data.val.y, data.num_classes, split="validation",
                              advice=advice, class_names=data.class_names)
    found += training_collapse_warnings([r["val/acc"] for r in history if "val/acc" in r], data.val.y,
                                        best_epoch, advice=advice)
    for line in found if main else []:
        if progress is not None:
            progress(f"[{tag}] WARNING: {line}")
        else:
            warnings.warn(f"[{tag}] {line}", PredictionCollapseWarning, stacklevel=3)
    return found


def _takes_generator(views: Callable[..., tuple[Tensor, Tensor]]) -> bool:
    """Whether ``views`` takes a ``generator`` keyword (as :class:`distill.views.Views` does)."""
    try:
        return "generator" in inspect.signature(views).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False


def _check_class_counts(model: nn.Module, teacher: Teacher | None, data: DataSplits,
                        views: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
                        device: torch.device | None = None) -> None:
    """Run two training examples through student and teacher (eval mode, no graph) and check
    that both predict ``data.num_classes`` classes, before any time is spent training."""
    probe = data.train.x[:2].to(device or data.train.x.device)
    probe_index = torch.arange(min(2, len(data.train)), device=probe.device)
    probe, teacher_probe = views(probe, probe_index) if views is not None else (probe, probe)
    student_classes = int(predict_logits(model, probe).shape[-1])
    if student_classes != data.num_classes:
        raise ValueError(
            f"the student outputs {student_classes} classes but the data ({data.name}) has "
            f"{data.num_classes}; build it with num_classes={data.num_classes}"
        )
    if teacher is not None:
        teacher_classes = teacher(teacher_probe, probe_index).num_classes
        if teacher_classes != data.num_classes:
            raise ValueError(
                f"the teacher predicts {teacher_classes} classes but the data ({data.name}) has "
                f"{data.num_classes}; use a teacher trained on this label set"
            )


def _kept(last_good: Path | None, epoch: int) -> str:
    """What is left on disk when training stops in ``epoch`` (0-based): the previous epoch's checkpoint."""
    if last_good is not None and last_good.exists():
        return f"the last good checkpoint is {last_good} (epoch {epoch})"
    return "no checkpoint had been written yet"


def _finite_states(modules: Iterable[nn.Module], device: torch.device) -> Tensor:
    """One flag on ``device``, without a sync: every floating-point parameter and buffer of
    ``modules`` is finite."""
    flags = [torch.isfinite(t).all().to(device) for m in modules for t in m.state_dict().values()
             if t.is_floating_point() or t.is_complex()]
    return torch.stack(flags).all() if flags else torch.tensor(True, device=device)


def _check_saveable(model: nn.Module, objective: Objective, record: dict[str, Any], device: torch.device, tag: str,
                    epoch: int, last_good: Path | None, log: Callable[[dict[str, Any]], None] | None) -> None:
    """Raise unless the weights (the model's and the objective's parameters and buffers) and the
    epoch's metrics are all finite: a step can turn the weights NaN with a finite loss (an inf
    gradient), which the loss check cannot see. One device sync (a reduction over ranks under DDP,
    so that every rank stops alike). The epoch's record is logged first (NaN as null)."""
    bad_metrics = [k for k, v in record.items()
                   if k.startswith(("train/", "val/")) and isinstance(v, float) and not math.isfinite(v)]
    ok = _finite_states((model, objective), device).to(torch.long)
    weights_ok = bool(distributed.min_over_ranks(ok))
    if weights_ok and not bad_metrics:
        return
    if log is not None:
        log(record)
    parts = []
    if not weights_ok:
        names = [f"{k}" for k, t in model.state_dict().items()
                 if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        parts.append(f"weights ({len(names)} tensors: {shown})" if names else "weights (the objective's)")
    if bad_metrics:
        parts.append("metrics (" + ", ".join(f"{k}={record[k]}" for k in bad_metrics) + ")")
    raise NonFiniteLossError(
        f"[{tag}] epoch {epoch + 1} ended with non-finite {' and '.join(parts)}, though the loss was finite at "
        f"every step (e.g. an inf or NaN gradient); training stopped and {_kept(last_good, epoch)}: no "
        "checkpoint is written from non-finite weights. Lower train.optimizer.lr, set train.clip_grad_norm, "
        "or check the inputs for NaN."
    )


def _check_finite(first_bad: Tensor, tag: str, epoch: int, last_good: Path | None) -> None:
    """Raise if the loss was not finite at some step (``first_bad`` >= 0 on any rank: under DDP one
    rank's NaN spreads to every rank through the averaged gradients, and every rank stops)."""
    never = torch.iinfo(torch.long).max
    bad = int(distributed.min_over_ranks(torch.where(first_bad < 0, never, first_bad)))
    if bad != never:
        raise NonFiniteLossError(
            f"[{tag}] the loss became NaN or inf at step {bad} (epoch {epoch + 1}); training stopped and "
            f"{_kept(last_good, epoch)}. Lower train.optimizer.lr, set train.clip_grad_norm, or check the inputs "
            "for NaN."
        )
