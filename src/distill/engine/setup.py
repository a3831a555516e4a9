"""Everything the loop needs, built once before it: the device and precision, the model placed (and
converted to SyncBatchNorm under DDP), the objective's connectors, taps, the teacher as one
:class:`TeacherPort`, the views, channels_last, compile, the DDP wrapper, the optimizer and schedule,
the batch source, and the run's state (fresh or resumed from ``last.pt``)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from distill import distributed
from distill.config import TrainConfig
from distill.data.augment import random_shift
from distill.data.batches import BatchSource, TensorBatches
from distill.data.tensors import DataSplits
from distill.engine.evaluation import predict_logits
from distill.engine import teacher_forward
from distill.engine.layout import (CHANNELS_LAST, CONTIGUOUS, MemoryFormat, convert, decide, decide_amp, in_layout,
                                   is_convolutional, measured, variant)
from distill.engine.fold import TeacherFold, fold_teacher, relus_in_place, restore_relus
from distill.engine.optim import Schedule, Stepper, build_optimizer
from distill.engine.state import Checkpoints, RunState, run_shape
from distill.methods.base import Objective, StepOutputs
from distill.models.preprocessing import declared_preprocessing
from distill.seeding import seeded_generator
from distill.taps import Taps
from distill.teachers import FrozenTeacher, Targets, Teacher

Views = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
"""``(x, index, generator) -> (student_x, teacher_x)``: what each model sees of a batch."""


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


def compile_module(module: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(module)``: a wrapper sharing the module's parameters; the module itself
    (whose ``state_dict`` the checkpoints hold, without ``_orig_mod.`` prefixes) is untouched."""
    if device.type == "cpu" and not teacher_forward.cxx_compiler():
        raise ValueError("train.compile on the CPU needs a C++ compiler for TorchInductor (none of g++, c++, "
                         "clang++ is on PATH); install one (e.g. apt-get install g++) or set train.compile=false")
    return cast(nn.Module, torch.compile(module))


class StudentStep(nn.Module):
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


@dataclass(frozen=True)
class TeacherPort:
    """The teacher as the loop sees it, built once before the loop: ``targets(x, index)`` (None when
    training without a teacher), the model behind it if any (connectors are sized from it, channels_last
    applies to it) and the feature taps the engine attached (removed by :meth:`close`). What kind of
    teacher was given is asked here, once, and nowhere in the loop."""

    targets: Teacher | None
    model: Any = None
    taps: Taps | None = None

    @classmethod
    def of(cls, teacher: Teacher | None) -> TeacherPort:
        return cls(teacher, getattr(teacher, "model", None))

    def with_features(self, features: dict[str, str], objective_name: str) -> TeacherPort:
        """The teacher also returning the tapped ``features`` (a live model only)."""
        if not features:
            return self
        if not hasattr(self.targets, "with_features"):
            raise ValueError(f"{objective_name} needs the teacher's intermediate features, but "
                             f"{type(self.targets).__name__} gives only outputs; use a live model (FrozenTeacher)")
        tapped = self.targets.with_features(features)  # type: ignore[union-attr]
        return replace(self, targets=tapped, taps=getattr(tapped, "taps", None))

    def check_positions(self, num_examples: int) -> None:
        """Once, before the loop: a teacher that looks its targets up by position (a cache) covers the
        ``num_examples`` training examples, so that no step needs to check its indices."""
        check = getattr(self.targets, "check_positions", None)
        if callable(check):
            check(num_examples)

    def compiled(self, device: torch.device) -> TeacherPort:
        """A live teacher (:class:`FrozenTeacher`) whose model's forward is compiled; any other teacher
        (a cache, a function), or one whose features are tapped, as it is (hooks that capture tensors
        under ``inference_mode`` do not survive tracing)."""
        teacher = self.targets
        if not isinstance(teacher, FrozenTeacher) or teacher.taps is not None:
            return self
        compiled = copy.copy(teacher)
        compiled.model = compile_module(teacher.model, device)
        return replace(self, targets=compiled)

    def in_forward(self, forward: teacher_forward.TeacherForward | None, amp_dtype: torch.dtype | None,
                   device: torch.device, shape: Callable[[], tuple[int, ...]]) -> TeacherPort:
        """The teacher as the loop calls it (:func:`distill.engine.teacher_forward.apply`): a live one in the
        precision and compile mode of ``forward``, any other under the student's autocast ``amp_dtype``.
        ``shape()``: the batch shape a static compile is for (asked only then)."""
        if self.targets is None or forward is None:
            return self
        return replace(self, targets=teacher_forward.apply(
            self.targets, forward, amp_dtype, device, shape, lambda t: cast(FrozenTeacher, replace(
                self, targets=t).compiled(device).targets)))

    def close(self) -> None:
        if self.taps is not None:
            self.taps.remove()


def takes_generator(views: Callable[..., tuple[Tensor, Tensor]]) -> bool:
    """Whether ``views`` takes a ``generator`` keyword (as :class:`distill.views.Views` does)."""
    try:
        return "generator" in inspect.signature(views).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False


def make_views(views: Callable[..., tuple[Tensor, Tensor]] | None, shift: int, channels_last: bool) -> Views:
    """The loop's one views function: the given ``views`` (passed the augmentation generator when it
    takes one, else drawing from the global RNG), or by default both models seeing ``x`` shifted by up
    to ``shift`` pixels; in channels_last memory format when asked (4-d inputs)."""
    if views is not None and takes_generator(views):
        def base(x: Tensor, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return views(x, index, generator=generator)
    elif views is not None:
        def base(x: Tensor, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return views(x, index)
    elif shift:
        def base(x: Tensor, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            x = random_shift(x, shift, generator=generator)
            return x, x
    else:
        def base(x: Tensor, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return x, x
    if not channels_last:
        return base

    def to_channels_last(x: Tensor, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, x_teacher = base(x, index, generator)
        if x.dim() == 4:
            same = x_teacher is x
            x = x.contiguous(memory_format=torch.channels_last)
            x_teacher = x if same else x_teacher.contiguous(memory_format=torch.channels_last)
        return x, x_teacher
    return to_channels_last


def amp_to_probe(amp: str, device: torch.device, amp_dtype: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype that ``train.amp: auto`` weighs against fp32 in the start-up probe: bf16 on a CUDA device
    that runs it; None (no amp probe, :func:`resolve_amp` rules) for an explicit setting, on the CPU, or on a GPU
    without bf16 (fp16 there needs a gradient scaler, built before the probe)."""
    return amp_dtype if amp == "auto" and device.type == "cuda" and amp_dtype == torch.bfloat16 else None


def choose_layout(cfg: TrainConfig, model: nn.Module, port: TeacherPort, data: DataSplits, views: Views,
                  device: torch.device, amp_dtype: torch.dtype | None, saved: dict[str, Any] | None,
                  amp_probe: torch.dtype | None = None) -> MemoryFormat:
    """The run's memory format (:mod:`distill.engine.layout`): ``train.channels_last`` when true or false; with
    ``auto``, the layout a resumed ``last.pt`` was trained in, contiguous without a convolution on images, else
    the faster in a probe on a batch of the run's size (rank 0's, under DDP). With ``amp_probe`` (``train.amp:
    auto`` on CUDA, :func:`amp_to_probe`) the probe also times each layout under that autocast, and the record's
    ``amp`` says whether it is kept (:func:`distill.engine.layout.decide_amp`); a resumed run keeps its record's."""
    setting = cfg.channels_last
    pinned = (CHANNELS_LAST if setting else CONTIGUOUS) if isinstance(setting, bool) else None
    if saved is not None:  # as decided when the run started
        saved_format = MemoryFormat.from_record(saved)
        if pinned is not None:
            return MemoryFormat(pinned, "train.channels_last", {}, saved_format.amp if amp_probe is not None else None)
        return saved_format
    if pinned is not None and amp_probe is None:
        return MemoryFormat(pinned, "train.channels_last")
    teacher = port.model if isinstance(port.model, nn.Module) else None
    size = max(1, cfg.batch_size // distributed.world_size())  # a batch's size
    examples = data.examples(size)
    index = torch.arange(size) % examples.shape[0]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # views may draw from it
        x, x_teacher = views(examples[index].to(device), index.to(device), seeded_generator(0, device))
    convolutional = is_convolutional(x, (model, teacher))
    layouts: tuple[str, ...]
    if pinned is not None:
        layouts, decided_by = (pinned,), "train.channels_last"
    elif not convolutional:
        layouts, decided_by = (CONTIGUOUS,), "not convolutional"
    else:
        layouts, decided_by = (CONTIGUOUS, CHANNELS_LAST), "probe"
    if amp_probe is None and not convolutional:
        return MemoryFormat(CONTIGUOUS, "not convolutional")
    ms: dict[str, float] = {}
    failed = ""
    if distributed.is_main():
        try:
            ms = (measured(model, teacher, x, x_teacher, device, amp_dtype) if amp_probe is None else
                  measured(model, teacher, x, x_teacher, device, amp_dtype, layouts, (None, amp_probe)))
        except RuntimeError as e:  # the probe only saves time; a fault of the models shows in training itself
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            failed = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
    ms, failed = distributed.broadcast_object((ms, failed))  # every rank trains in rank 0's choice
    if failed:  # train.amp: auto then as without the probe (resolve_amp)
        return MemoryFormat(pinned or CONTIGUOUS, f"probe failed ({failed})")
    if amp_probe is None:
        return MemoryFormat(decide(ms), "probe", ms)
    amp = decide_amp(ms, amp_probe)
    if len(layouts) == 1:
        return MemoryFormat(layouts[0], decided_by, ms, amp)
    under = {name: ms[variant(name, None if amp == "off" else amp_probe)] for name in layouts}
    return MemoryFormat(decide(under), decided_by, ms, amp)


def objective_temperature(objective: Objective) -> float:
    """The temperature the objective softens the teacher's logits at (1 when it has none)."""
    t = getattr(objective, "temperature", None)
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 else 1.0


def batch_shape(data: DataSplits, cfg: TrainConfig, views: Views, device: torch.device) -> tuple[int, ...]:
    """The shape of a (full) batch as the teacher sees it: what a static compile of its forward is for."""
    size = max(1, cfg.batch_size // distributed.world_size())
    x = data.examples(1).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _, x_teacher = views(x, torch.zeros(1, dtype=torch.long, device=device), seeded_generator(0, device))
    return (size, *x_teacher.shape[1:])


def choose_teacher_forward(cfg: TrainConfig, port: TeacherPort, data: DataSplits, views: Views, layout: MemoryFormat,
                           device: torch.device, objective: Objective, total_steps: int,
                           saved: dict[str, Any] | None) -> teacher_forward.TeacherForward | None:
    """A teacher's precision and compile mode (:mod:`distill.engine.teacher_forward`), None without a teacher; the
    probes (CUDA, ``auto``) run on the teacher's views of the first training examples, in the run's layout."""
    if port.targets is None:
        return None
    size = max(1, cfg.batch_size // distributed.world_size())

    def probe() -> teacher_forward.Probe:
        examples = data.examples(max(size, teacher_forward.PROBE_EXAMPLES)).to(device)
        index = torch.arange(examples.shape[0], device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _, x_teacher = views(examples, index, seeded_generator(0, device))
        x_teacher = in_layout(x_teacher, layout.name)
        return teacher_forward.Probe(list(x_teacher.split(size)), objective_temperature(objective), total_steps)

    return teacher_forward.choose(port.targets, cfg.teacher_precision, cfg.teacher_compile, cfg.compile, device,
                                  probe, saved, distributed.is_main(), distributed.broadcast_object)


def check_class_counts(model: nn.Module, teacher: Teacher | None, data: DataSplits,
                       views: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
                       device: torch.device | None = None) -> None:
    """Run two training examples through student and teacher (eval mode, no graph) and check
    that both predict ``data.num_classes`` classes, before any time is spent training."""
    probe = data.examples(2)
    probe = probe.to(device or probe.device)
    probe_index = torch.arange(probe.shape[0], device=probe.device)
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


def check_preprocessing(models: dict[str, nn.Module | None], data: DataSplits) -> None:
    """Refuse normalized data for a model that prepares its own inputs (it declares a
    :class:`~distill.models.Preprocessing`: a Hugging Face, timm or torchvision model, or one wrapped by
    ``with_preprocessing``): it takes pixels in [0, 1], and would see them normalized twice."""
    if not (bool((data.mean != 0).any()) or bool((data.std != 1).any())):
        return
    for role, model in models.items():
        prep = declared_preprocessing(model) if model is not None else None
        if prep is not None:
            raise ValueError(f"the {role} prepares its own inputs ({prep.describe()}) and takes pixels in [0, 1], but "
                             f"the data ({data.name}) is normalized with its own mean and std; build the splits with "
                             f"make_splits(..., normalize=False) (data.normalize: false in a config)")


def _check_run(objective: Objective, teacher: Teacher | None, cfg: TrainConfig, n_train: int) -> None:
    world = distributed.world_size()
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"{type(objective).__name__} distils from a teacher, but no teacher was given")
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} is the global batch, split evenly over the {world} "
                         f"processes; make it a multiple of {world}")
    if world > 1 and cfg.checkpoint_every_steps is not None:
        raise ValueError("train.checkpoint_every_steps (mid-epoch checkpoints) is not supported under torchrun yet: "
                         "every rank's random streams would have to be saved; set it to null (last.pt is still "
                         "written at the end of every epoch)")
    if world > 1 and n_train < cfg.batch_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} exceeds the {n_train} training examples; under DDP "
                         "every step takes one full global batch, so use a smaller train.batch_size")


def _place(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The model on ``device``; under DDP with ``train.sync_batchnorm``, converted to SyncBatchNorm."""
    model.to(device)
    if cfg.sync_batchnorm and distributed.world_size() > 1:
        if device.type != "cuda":
            raise ValueError("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm does not run on the CPU); "
                             "set it to false: each process then normalizes with its own slice's statistics")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@dataclass
class Run:
    """One call of ``fit``, set up: what the loop reads each step, and what it closes at the end."""

    model: nn.Module
    objective: Objective
    device: torch.device
    amp_dtype: torch.dtype | None
    student_step: StudentStep
    train_step: nn.Module  # student_step, wrapped in DDP under torchrun
    teacher: TeacherPort
    views: Views
    batches: BatchSource
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    step: Stepper
    checkpoints: Checkpoints
    state: RunState
    student_taps: Taps | None
    epochs: int  # epochs to run (with train.max_steps, the last may be partial)
    total_steps: int  # optimizer steps of the whole run
    converted: list[nn.Module] = field(default_factory=list)  # put in channels_last for the run
    relus: list[nn.ReLU] = field(default_factory=list)  # the student's ReLUs run in place for the run
    teacher_fold: TeacherFold | None = None  # the teacher's batch norms folded or not (engine.fold)

    def close(self) -> None:
        """The user's models leave with no hooks attached and contiguous, whatever happened."""
        if self.student_taps is not None:
            self.student_taps.remove()
        self.teacher.close()
        convert(self.converted, CONTIGUOUS)
        restore_relus(self.relus)


def prepare(model: nn.Module, objective: Objective, data: DataSplits, cfg: TrainConfig, *, teacher: Teacher | None,
            device: torch.device, seed: int, out_dir: Path | None, tag: str, resume: bool, allow_changes: bool,
            checkpoint_extra: dict[str, Any] | None, progress: Callable[[str], None] | None,
            views: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None,
            batches: BatchSource | None = None) -> Run:
    """Check the run, place the models, build everything the loop uses, and resume from ``last.pt``
    when asked (see :func:`distill.engine.fit` for the arguments)."""
    distributed.require_process_group()
    n_train = batches.num_examples if batches is not None else len(data.train)
    _check_run(objective, teacher, cfg, n_train)
    port = TeacherPort.of(teacher)
    check_preprocessing({"student": model, "teacher": port.model}, data)
    model = _place(model, cfg, device)
    check_class_counts(model, teacher, data, views, device)
    probe = data.examples(2).to(device)
    if views is not None:
        probe = views(probe, torch.arange(probe.shape[0], device=device))[0]
    objective.setup(model, port.model, probe)  # connectors sized from both models
    objective.to(device)
    student_taps = Taps(model, objective.student_features) if objective.student_features else None
    port = port.with_features(objective.teacher_features, type(objective).__name__)
    port.check_positions(n_train)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optimizer)
    if batches is None:
        batches = TensorBatches(data.train, cfg.batch_size, device, seed=seed, on_device=cfg.data_on_device)
    spe = len(batches)
    total_steps = cfg.max_steps if cfg.max_steps is not None else spe * cfg.epochs
    epochs = -(-total_steps // max(spe, 1)) if cfg.max_steps is not None else cfg.epochs
    # the base learning rates as built: resuming loads the optimizer's last (scheduled) ones
    schedule = Schedule(optimizer, cfg.schedule, total_steps, spe)
    checkpoints = Checkpoints(out_dir, model, {"objective": objective, "optimizer": optimizer, "scaler": scaler},
                              run_shape(cfg, n_train, seed), dict(checkpoint_extra or {}), tag, resume)
    state = checkpoints.resume(device, allow_changes, progress) or RunState()
    plain_views = make_views(views, cfg.augment.shift, False)
    port, teacher_fold = _fold_teacher(port, cfg, params, data, plain_views, device, state)
    resumed = state.memory_format
    layout = choose_layout(cfg, model, port, data, plain_views, device, amp_dtype, resumed,
                           amp_to_probe(cfg.amp, device, amp_dtype))
    if layout.amp is not None:  # train.amp: auto, decided by the probe (engine.layout)
        amp_dtype = None if layout.amp == "off" else torch.bfloat16
    state.memory_format = layout.record()
    if progress is not None and (layout.decided_by.startswith("probe") or layout.amp is not None) and resumed is None:
        progress(f"[{tag}] {layout.line()}")
    if progress is not None and teacher_fold is not None and not state.history:
        progress(f"[{tag}] {teacher_fold.line()}")
    # all three (a channels_last batch through a model's NCHW weights takes the slow path), back at close
    converted = [m for m in (model, port.model, objective) if isinstance(m, nn.Module)] if layout.channels_last else []
    convert(converted, CHANNELS_LAST)
    # ReLUs whose input nothing else reads run in place while the run trains (exact; undone at close)
    relus = relus_in_place(model, in_layout(probe, layout.name)) if student_taps is None else []
    saved_forward = state.teacher_forward
    forward = choose_teacher_forward(cfg, port, data, plain_views, layout, device, objective, total_steps,
                                     saved_forward)
    if forward is not None:
        state.teacher_forward = forward.record()
        if progress is not None and saved_forward is None and "probe" in forward.precision_by + forward.compile_by:
            progress(f"[{tag}] {forward.line()}")
    student_step = StudentStep(compile_module(model, device) if cfg.compile else model, objective, student_taps,
                               amp_dtype)
    return Run(model=model, objective=objective, device=device, amp_dtype=amp_dtype, student_step=student_step,
               train_step=distributed.wrap(student_step, device),  # DDP under torchrun, else student_step itself
               teacher=port.in_forward(forward, amp_dtype, device, lambda: batch_shape(data, cfg, plain_views, device)),
               views=make_views(views, cfg.augment.shift, layout.channels_last), batches=batches,
               optimizer=optimizer, schedule=schedule,
               step=Stepper(optimizer, params, cfg.clip_grad_norm, scaler), checkpoints=checkpoints, state=state,
               student_taps=student_taps, epochs=epochs, total_steps=total_steps, converted=converted, relus=relus,
               teacher_fold=teacher_fold)


def _fold_teacher(port: TeacherPort, cfg: TrainConfig, trained: list[nn.Parameter], data: DataSplits, views: Views,
                  device: torch.device, state: RunState) -> tuple[TeacherPort, TeacherFold | None]:
    """The teacher port with the live teacher's batch norms folded into a copy where ``train.fold_teacher_batchnorm``
    says so (:func:`distill.engine.fold.fold_teacher`), found on two training examples in the teacher's view; a
    resumed run keeps the choice its history records (none recorded: it was trained unfolded)."""
    saved = None
    if state.history:
        saved = state.history[-1].get("teacher_batchnorm") or {"folded": 0}
    examples = data.examples(2).to(device)
    index = torch.arange(examples.shape[0], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # views may draw from it
        x_teacher = views(examples, index, seeded_generator(0, device))[1]
    teacher, fold = fold_teacher(port.targets, cfg.fold_teacher_batchnorm, x_teacher, tapped=port.taps is not None,
                                 trained={id(p) for p in trained}, world_size=distributed.world_size(), saved=saved)
    if teacher is port.targets:
        return port, fold
    return replace(port, targets=teacher, model=getattr(teacher, "model", None)), fold
