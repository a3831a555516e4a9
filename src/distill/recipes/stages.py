"""The distilled student's training: one method of the zoo, or several stages, from the config.

A config names the objective in one of three ways:

- ``distill.loss`` (``kd`` or ``logit_matching``) with ``distill.temperature`` and ``distill.alpha``:
  Hinton's KD, the default;
- ``distill.method`` and ``distill.options``: any method of the registry (:mod:`distill.methods`)
  with its options (``distill methods`` lists them);
- ``distill.stages``: a list of stages, each with its own method, options, epochs, training
  settings (``student.train`` with the stage's ``train`` merged over it) and trainable
  parameters, trained one after the other on the same student. Stage ``i`` (from 1) writes
  under ``distilled/stage<i>/``; the last one's ``best.pt`` is copied to ``distilled/best.pt``.

``trainable`` selects the student's parameters a stage trains: ``all``, ``objective`` (none of
the student's: only the objective's own modules, e.g. FT's paraphraser) or a list of module-path
prefixes (``[conv1, bn1, layer1, layer2]``: FitNets' hint stage; in a ``simkd`` stage, of the
:class:`SimKDStudent`: ``student.layer1``, ``projector``). The others stop requiring
grad for the stage (the engine optimizes only parameters that do) and are restored after it;
the objective's modules (connectors, regressors) always train. Batch-norm layers of frozen
modules still run in training mode, so their running statistics follow the data as usual.

What the recipe supplies (each method declares it, see :func:`distill.methods.method_objective`): CRD's
``num_data`` (the size of the training set), FT's ``paraphraser`` (the objective of the last
``ft_paraphraser`` stage before it), and for
``simkd`` the deployable :class:`~distill.objectives.SimKDStudent` around the student (its
checkpoint records the student's and the teacher's architectures, so ``distill eval`` rebuilds it).
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill import distributed
from distill.config import Config, DistillConfig, TrainConfig
from distill.data.tensors import DataSplits
from distill.methods.base import Objective
from distill.methods.registry import (
    build_objective,
    check_method,
    configurable_options,
    get_method,
    logit_methods,
    method_objective,
    method_options,
    predicts,
    taps_teacher,
)
from distill.methods.simkd import SIMKD_FACTORY, SIMKD_STUDENT_OPTIONS, simkd_student, wrap_simkd
from distill.teachers import Teacher

if TYPE_CHECKING:
    from distill.recipes.common import Run

__all__ = [
    "SIMKD_FACTORY",
    "STAGE_SEED",
    "Stage",
    "method_defaults",
    "method_keys",
    "plan",
    "refuse_feature_methods",
    "stage_temperature",
    "stage_objective",
    "selected_parameters",
    "trainable_only",
    "train_stages",
    "train_stages_with_spec",
    # SimKD's deployable student and the method facts, now in distill.methods; re-exported for old imports
    "SIMKD_STUDENT_OPTIONS",
    "wrap_simkd",
    "simkd_student",
    "check_method",
    "configurable_options",
    "method_objective",
    "predicts",
    "taps_teacher",
]

STAGE_SEED = 3  # stage i's objective modules are initialized from seed + STAGE_SEED + i (the same on resume)


# --------------------------------------------------------------------------- methods in a config


def method_defaults(method: str, distill: DistillConfig) -> dict[str, Any]:
    """``distill.temperature`` and ``distill.alpha`` are the defaults of the ``kd`` and ``logit_matching``
    methods (so ``--set distill.method=kd`` is ``distill.loss=kd``); other methods have their own."""
    if not get_method(method).follows_distill_loss:
        return {}
    return {k: getattr(distill, k) for k in ("temperature", "alpha") if k in method_options(method)}


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One ``fit`` of the student: where it writes (``tag``), its objective (``method`` None: ``distill.loss``),
    its settings and the parameters it trains; ``key`` is its place in the config, for errors."""

    tag: str
    method: str | None
    options: dict[str, Any]
    train: TrainConfig
    trainable: str | list[str]
    key: str


def plan(cfg: Config, tag: str = "distilled") -> list[Stage]:
    """The stages of the distilled student: ``distill.stages`` (under ``<tag>/stage<i>``), or one stage
    under ``<tag>``."""
    d, role = cfg.distill, cfg.student
    assert role is not None
    if not d.stages:
        return [Stage(tag, d.method, dict(d.options), role.train, "all", "distill")]
    return [Stage(f"{tag}/stage{i}", s.method, dict(s.options), s.train, s.trainable, f"distill.stages.{i - 1}")
            for i, s in enumerate(d.stages, start=1)]


def method_keys(cfg: Config) -> list[tuple[str, str]]:
    """``(key, method)`` of each method the config names: ``("distill.method", m)``, or
    ``("distill.stages.<i>.method", m)`` for each stage; empty with ``distill.loss``."""
    d = cfg.distill
    if d.method is not None:
        return [("distill.method", d.method)]
    return [(f"distill.stages.{i}.method", s.method) for i, s in enumerate(d.stages or [])]


def stage_temperature(stage: Stage, distill: DistillConfig) -> float:
    """The temperature at which the stage's objective softens the teacher's logits: its method's
    ``temperature`` option (set, or its default; ``distill.temperature`` for ``kd``), or
    ``distill.temperature`` for ``distill.loss`` and for a method without one (``logit_matching``)."""
    if stage.method is None:
        return distill.temperature
    options = {**method_options(stage.method), **method_defaults(stage.method, distill), **stage.options}
    return float(options.get("temperature", distill.temperature))


def stage_objective(stage: Stage, distill: DistillConfig, num_data: int, earlier: Sequence[Objective]) -> Objective:
    """The stage's objective: ``distill.loss``, or its method with its options (see :func:`method_objective`)."""
    if stage.method is None:
        return build_objective(distill.loss, distill.temperature, distill.alpha)
    options = {**method_defaults(stage.method, distill), **stage.options}
    return method_objective(stage.method, options, num_data=num_data, earlier=earlier)


def refuse_feature_methods(cfg: Config, recipe: str, why: str, allowed: Sequence[str] | None = None) -> None:
    """A ``ValueError`` naming the config key of the first method of ``cfg`` that reads the teacher's
    intermediate features (:func:`taps_teacher`), which recipe ``recipe`` cannot serve because ``why``; it
    lists the methods on logits only (:func:`logit_methods`, or those of them in ``allowed``)."""
    listed = logit_methods() if allowed is None else [m for m in logit_methods() if m in allowed]
    for key, method in method_keys(cfg):
        if taps_teacher(method):
            raise ValueError(f"{key}: recipe {recipe} {why}, so {method}, which reads the teacher's intermediate "
                             f"features, cannot be used; use a method on logits only ({', '.join(listed)})")


def selected_parameters(model: nn.Module, trainable: str | Sequence[str], key: str) -> set[str]:
    """Names of the parameters of ``model`` that ``trainable`` selects (see the module docstring)."""
    names = [name for name, _ in model.named_parameters()]
    if trainable == "all":
        return set(names)
    if trainable == "objective":
        return set()
    selected: set[str] = set()
    for prefix in trainable:
        matching = {n for n in names if n == prefix or n.startswith(prefix + ".")}
        if not matching:
            owners = sorted({n.rsplit(".", k)[0] for n in names for k in range(1, n.count(".") + 1)})
            close = difflib.get_close_matches(prefix, owners, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            top = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
            raise ValueError(f"{key}.trainable: {prefix!r} is not a module of the student ({type(model).__name__}) "
                             f"with parameters.{hint} Its top-level modules with parameters: {', '.join(top)}")
        selected |= matching
    return selected


@contextmanager
def trainable_only(model: nn.Module, trainable: str | Sequence[str], key: str) -> Iterator[None]:
    """Within the block only the parameters of ``model`` that ``trainable`` selects require grad (those that
    did before); every parameter's ``requires_grad`` is restored on exit."""
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    selected = selected_parameters(model, trainable, key)
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name] and name in selected)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


def train_stages(run: Run, model: nn.Module, spec: dict[str, Any], teacher: Teacher, data: DataSplits,
                 views: Any = None, teacher_model: nn.Module | None = None,
                 teacher_spec: dict[str, Any] | None = None, *, tag: str = "distilled",
                 adjust_train: Callable[[TrainConfig], TrainConfig] | None = None,
                 stage_teacher: Callable[[Stage], Teacher] | None = None) -> nn.Module:
    """Train the student ``model`` through the config's stages (see :func:`plan`); returns it (for a method with
    a ``wrap_student``, e.g. ``simkd``: the model around it) with the last stage's best weights.
    :func:`train_stages_with_spec` also returns its ``model_spec``; the arguments are its."""
    return train_stages_with_spec(run, model, spec, teacher, data, views, teacher_model, teacher_spec, tag=tag,
                                  adjust_train=adjust_train, stage_teacher=stage_teacher)[0]


def train_stages_with_spec(run: Run, model: nn.Module, spec: dict[str, Any], teacher: Teacher, data: DataSplits,
                           views: Any = None, teacher_model: nn.Module | None = None,
                           teacher_spec: dict[str, Any] | None = None, *, tag: str = "distilled",
                           adjust_train: Callable[[TrainConfig], TrainConfig] | None = None,
                           stage_teacher: Callable[[Stage], Teacher] | None = None,
                           ) -> tuple[nn.Module, dict[str, Any]]:
    """The student trained through the config's stages and its ``model_spec`` (SimKD's: of the wrapped model).

    ``tag``: where it writes (``<tag>/``, or ``<tag>/stage<i>/`` with ``<tag>/best.pt`` the last stage's best);
    ``adjust_train``: applied to each stage's training settings (``small_data`` scales the epochs);
    ``stage_teacher``: the teacher of each stage instead of ``teacher`` (an ensemble combined at the stage's
    temperature)."""
    role = run.cfg.student
    assert role is not None
    stages = plan(run.cfg, tag)
    staged = bool(run.cfg.distill.stages)
    earlier: list[Objective] = []
    for i, stage in enumerate(stages, start=1):
        if staged:  # connectors are initialized alike whether or not the stages before were resumed
            torch.manual_seed(run.cfg.seed + STAGE_SEED + i)
        objective = stage_objective(stage, run.cfg.distill, len(data.train), earlier)
        wrap_student = get_method(stage.method).wrap_student if stage.method is not None else None
        if wrap_student is not None:  # e.g. simkd: the SimKDStudent around the student, with the teacher's classifier
            if teacher_model is None or teacher_spec is None:
                raise ValueError(f"{stage.key}.method: {stage.method} builds its model from the teacher model itself "
                                 "and cannot work from cached outputs")
            model, spec = wrap_student(model, spec, teacher_model, teacher_spec, data.train.x[:2], stage.options)
        if staged:
            run.say(f"[{stage.tag}] stage {i} of {len(stages)}: {stage.method}, trainable: "
                    f"{stage.trainable if isinstance(stage.trainable, str) else ', '.join(stage.trainable)}")
        train = adjust_train(stage.train) if adjust_train is not None else stage.train
        targets = stage_teacher(stage) if stage_teacher is not None else teacher
        with trainable_only(model, stage.trainable, stage.key):
            model = run.train(stage.tag, model, spec, objective, role, teacher=targets, data=data, train=train,
                              views=views).model
        earlier.append(objective)
    if staged:
        _copy_atomic(run.dir / stages[-1].tag / "best.pt", run.dir / tag / "best.pt")
    return model, spec


def _copy_atomic(source: Path, target: Path) -> None:
    if not distributed.is_main():
        return  # under torchrun, rank 0 writes the files
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
