"""Typed configuration: YAML in, validated objects out, command-line overrides in between.

A config file is plain data, read by :class:`ConfigLoader` (PyYAML's ``SafeLoader``: no code runs)
which also refuses a key given twice in one mapping and aliases that expand beyond
:data:`MAX_ALIAS_EXPANSION` values (the "billion laughs" shape). Every section is a pydantic
model that forbids unknown keys, so a typo such as ``train.epoch`` is an error naming the key
path rather than a silent default.

Training settings live in a top-level ``train`` section shared by every model of a run;
``teacher.train`` and ``student.train`` hold only what differs and are merged on top of it
before validation. The resolved config (``runs/<name>/config.yaml``) shows the result.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from distill.methods.registry import StagePlan, check_method, logit_methods, plan_problem, predicts, taps_teacher


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key path and what to do."""


MAX_ALIAS_EXPANSION = 10_000
"""The most values (scalars, lists and mappings, counted as if every alias were written out) that the
aliases of one YAML document may add. A config has a few hundred; nested aliases multiply (nine
levels of nine aliases make 9**9), and every consumer of the config would walk them all."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for config files, built-in configs and ``--set`` values: a mapping that gives
    a key twice is an error (naming both lines) rather than the last one silently winning, as is an alias
    that refers to a node containing it, or aliases expanding the document beyond
    :data:`MAX_ALIAS_EXPANSION` values. Errors are :class:`ConfigError` without the source's name; use
    :func:`load_yaml`, which adds it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._done: set[int] = set()  # ids of the nodes composed completely
        self._sizes: dict[int, int] = {}  # id -> values in the node, aliases written out
        self._expanded = 0  # values the aliases have added so far

    def _size(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            self._sizes[id(node)] = 1 + sum(self._size(c) for c in children)
        return self._sizes[id(node)]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            where = f"line {event.start_mark.line + 1}"
            if id(node) not in self._done:
                raise ConfigError(f"{where}: alias *{event.anchor} refers to a node that contains it (a recursive "
                                  f"structure); write the values out")
            self._expanded += self._size(node)
            if self._expanded > MAX_ALIAS_EXPANSION:
                raise ConfigError(f"{where}: alias *{event.anchor} makes the aliases expand to more than "
                                  f"{MAX_ALIAS_EXPANSION:,} values (nested aliases multiply, as in the 'billion "
                                  f"laughs' attack); write the values out or use fewer nested aliases")
            return node
        node = super().compose_node(parent, index)
        self._done.add(id(node))
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding keys: the usual merge, not a duplicate
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor says so
                if first is not None:
                    raise ConfigError(f"line {line}: key {key!r} is given twice in one mapping, on line {first} "
                                      f"and on line {line} (the last would silently win); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``text`` read with :class:`ConfigLoader`; a mistake is a :class:`ConfigError` naming ``source`` and
    the line."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as e:
        raise ConfigError(f"{source}, {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


MAX_INT = 2**32 - 1
"""The largest integer setting (and seeds lie in [0, 2**32), numpy's range): anything beyond is a
mistake, which would otherwise overflow deep inside a run."""


def _bad_number(value: Any, path: str = "") -> str | None:
    """What is wrong with the first non-finite float or out-of-range integer in ``value`` (walking lists,
    tuples and mappings), with its path inside ``value``; None if nothing is."""
    where = f"{path}: " if path else ""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}{value} is not a finite number"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return f"{where}{value} is beyond the range of a setting (at most 2**32 - 1 = {MAX_INT:,} in size)"
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, (list, tuple)) else ()
    for key, item in items:
        problem = _bad_number(item, f"{path}.{key}" if path else str(key))
        if problem:
            return problem
    return None


class _Section(BaseModel):
    """A config section: unknown keys are errors, floats must be finite, integers within :data:`MAX_INT`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _finite_and_in_range(cls, v: Any) -> Any:
        problem = _bad_number(v)
        if problem:
            raise ValueError(problem)
        return v


class ModelConfig(BaseModel):
    """``name`` from ``distill models`` or an import path ``package.module:factory``.

    Every other key is passed to the model's factory (``hidden``, ``dropout``, ...); the factory
    rejects a keyword it does not accept, naming the ones it does.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _finite_keywords(self) -> ModelConfig:
        problem = _bad_number(self.model_extra or {})
        if problem:
            raise ValueError(f"factory keyword {problem}")
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(_Section):
    name: str = "digits"
    path: str | None = None
    download: bool = False
    val_size: float = Field(0.1, ge=0, description="fraction (< 1) or count (a whole number >= 1) of training "
                            "examples held out")
    train_size: int | None = Field(None, gt=0, description="keep only this many training examples (a stratified, "
                                   "seeded subset; after the validation split)")
    split_seed: int = Field(0, ge=0, le=MAX_INT, description="seed of the validation split, in [0, 2**32)")
    normalize: bool = True

    @field_validator("val_size")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and not float(v).is_integer():
            raise ValueError(f"a val_size of 1 or more is a count of examples and must be a whole number; give "
                             f"a fraction below 1 (e.g. 0.1) or a count (e.g. {math.floor(v)}), got {v}")
        return v


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "multistep", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(30, gt=0, description="epochs between decays for name=step")
    milestones: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="epochs at which name=multistep decays")
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")


class AugmentConfig(_Section):
    """Random changes to each training batch; student and teacher see the same view of each image."""

    shift: int = Field(0, ge=0, description="random translation of up to this many pixels (Hinton's jitter)")
    crop_padding: int = Field(0, ge=0, description="random crop of the image padded by this many pixels (zeros "
                              "after normalization), back to its size: CIFAR's standard 4")
    flip: bool = Field(False, description="mirror left-right at random (not for digits or letters)")

    @model_validator(mode="after")
    def _one_translation(self) -> AugmentConfig:
        if self.shift and self.crop_padding:
            raise ValueError("shift and crop_padding are two forms of the same random translation; set one of them")
        return self


class TrainConfig(_Section):
    epochs: int = Field(10, ge=0)
    max_steps: int | None = Field(None, gt=0, description="training length in optimizer steps instead of epochs "
                                  "(as Hugging Face's Trainer: it overrides epochs; the last epoch may be partial)")
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="also write last.pt every this many optimizer steps within an epoch, so that a run "
        "killed mid-epoch resumes from there, exactly (single process only)")
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    clip_grad_norm: float | None = Field(None, gt=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    log_every: int = Field(50, gt=0, description="steps between progress lines and finite-loss checks")
    selection: Literal["acc", "nll", "last"] = Field(
        "acc", description="best.pt is the epoch with the highest val accuracy (ties: lower NLL), the lowest "
        "val NLL, or simply the last epoch")
    compile: bool = Field(False, description="torch.compile the student's (and a live teacher's) forward: seconds "
                          "to minutes of start-up, and on CPUs no faster for small models")
    data_on_device: bool = Field(True, description="keep the training split on the device (false: in host memory, "
                                 "pinned on CUDA, each batch gathered there and copied asynchronously)")
    sync_batchnorm: bool = Field(False, description="under DDP (torchrun), batch-norm statistics over the global "
                                 "batch rather than each process's slice (CUDA only)")


class RoleConfig(_Section):
    """One model of the run: its architecture, optional weights and training settings.

    A teacher with a ``checkpoint`` is used as it is (its architecture is read from the file when
    ``model`` is omitted); a student with a ``checkpoint`` starts from those weights.
    """

    model: ModelConfig | None = None
    checkpoint: str | None = Field(None, description="start from (teacher: use) these weights")
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _model_or_checkpoint(self) -> RoleConfig:
        if self.model is None and self.checkpoint is None:
            raise ValueError("give a model (e.g. model: {name: mlp}) or a checkpoint to load")
        return self


class CacheConfig(_Section):
    """A teacher's outputs computed once over the training (transfer) set and stored on disk.

    The ``cache`` recipe writes ``path``; ``distill``/``compare`` read it when it is set and the
    file exists, and then never load the teacher (Beyer et al.'s "fixed teacher").
    """

    path: str | None = Field(None, description="the cache file (.npz); relative paths are taken from the "
                             "working directory")
    topk: int | None = Field(None, gt=0, description="store only the k largest probabilities and a tail bucket "
                             "(None: full logits, usable at any temperature)")
    dtype: Literal["float16", "float32"] = "float32"


ViewMode = Literal["none", "fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch"]


class ViewsConfig(_Section):
    """What student and teacher see of each training image (Beyer et al. 2022's teaching modes).

    ``none``: both see the image (with ``train.augment.shift``). ``fix/*``: the teacher's outputs
    are computed once per image (resized, central crop, or the mean over inception crops) and the
    student sees resized images, mild random crops or inception crops. ``ind/*``: independent
    crops; ``same/*``: one crop for both; ``funmatch``: one inception crop plus mixup for both.
    """

    mode: ViewMode = "none"
    student_size: int | None = Field(None, gt=0, description="the student's input resolution (default: the "
                                     "data's); one crop is resized separately for each model")
    padding: int = Field(4, ge=0, description="pixels of the mild random crop (rc, fix/cc)")
    scale: tuple[float, float] = Field((0.08, 1.0), description="area fraction range of inception crops")
    ratio: tuple[float, float] = Field((0.75, 4 / 3), description="aspect ratio range of inception crops")

    @field_validator("scale", "ratio")
    @classmethod
    def _range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        lo, hi = v
        top = 1.0 if info.field_name == "scale" else math.inf
        if not 0 < lo <= hi <= top:
            raise ValueError(f"{info.field_name} is a range (low, high) with 0 < low <= high"
                             f"{' <= 1' if top == 1 else ''}, got {list(v)}")
        return v
    flip: bool = Field(False, description="mirror views at random (not for digits or letters)")
    mixup_alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) of funmatch's mixup")
    ensemble_crops: int = Field(16, ge=1, description="inception crops averaged per image by fix/ic_ens")


class TransferConfig(_Section):
    """Out-of-domain distillation: the student learns the teacher's function on other images.

    The images are normalized with the main dataset's statistics (what the teacher expects) and
    resized to its resolution; their labels are never used, so ``distill.alpha`` must be 1.
    Validation and test stay on the main dataset.
    """

    name: str
    path: str | None = None
    download: bool = False


def _stage_epochs(stage: dict[str, Any]) -> dict[str, Any]:
    """A raw stage with its ``epochs`` shorthand written into its ``train`` section."""
    epochs = stage.get("epochs")
    train = stage.get("train") or {}
    if epochs is None or not isinstance(train, dict):
        return stage
    if train.get("epochs", epochs) != epochs:
        raise ValueError(f"epochs ({epochs}) and train.epochs ({train['epochs']}) differ; give the stage's epochs once")
    return {**stage, "train": {**train, "epochs": epochs}}


class StageConfig(_Section):
    """One of ``distill.stages``: a method trained for its own epochs, with ``student.train`` and this
    stage's ``train`` merged over it, on the student's parameters that ``trainable`` selects."""

    method: str = Field(description="a name in distill.objectives.METHODS")
    options: dict[str, Any] = Field(default_factory=dict, description="the method's options")
    epochs: int | None = Field(None, ge=0, description="shorthand for train.epochs")
    trainable: Literal["all", "objective"] | list[str] = Field(
        "all", description="the student's parameters this stage trains: all, objective (none: only the objective's "
        "own modules, e.g. FT's paraphraser), or a list of module-path prefixes (e.g. [stages.0])")
    train: TrainConfig = Field(default_factory=TrainConfig, description="student.train with these overrides; "
                               "selection is last unless set, when the method has no term on the predictions")

    @model_validator(mode="before")
    @classmethod
    def _epochs_in_train(cls, data: Any) -> Any:
        return _stage_epochs(data) if isinstance(data, dict) else data

    @field_validator("trainable")
    @classmethod
    def _prefixes(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or not all(v)):
            raise ValueError("trainable must be all, objective, or a non-empty list of module paths of the student")
        return v


class DistillConfig(_Section):
    """The distillation objective and how the student sees the data.

    The objective is ``loss`` (Hinton's KD or matching logits, with ``temperature`` and ``alpha``)
    unless ``method`` names one of :data:`distill.objectives.METHODS` (``options``: its options;
    ``temperature`` and ``alpha`` are the defaults of the ``kd`` and ``logit_matching`` methods only),
    or ``stages`` trains the student in stages, each with its own method (see
    :mod:`distill.recipes.stages`). Methods and options are checked when the config is loaded.
    """

    loss: Literal["kd", "logit_matching"] = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha weighs the hard labels")
    method: str | None = Field(None, description="a method of distill.objectives.METHODS instead of loss "
                               "(distill.objectives.describe_methods() lists them with their options)")
    options: dict[str, Any] = Field(default_factory=dict, description="options of method, e.g. {weight: 50}")
    stages: list[StageConfig] | None = Field(None, description="train the student in stages, each with its own "
                                             "method, options, epochs, train settings and trainable parameters")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    transfer: TransferConfig | None = Field(None, description="distil on these images instead of the training set")

    @model_validator(mode="after")
    def _transfer_without_labels(self) -> DistillConfig:
        if self.transfer is not None and (self.method is not None or self.stages is not None):
            raise ValueError("distill.transfer distils with distill.loss on images without usable labels; unset "
                             "distill.method and distill.stages (their objectives may use the labels)")
        if self.transfer is not None and self.alpha != 1.0:
            raise ValueError(f"distill.transfer uses images whose labels are not the teacher's classes, so the "
                             f"hard-label term cannot be used: set distill.alpha=1 (got {self.alpha})")
        return self

    @model_validator(mode="after")
    def _methods_and_stages(self) -> DistillConfig:
        if self.options and self.method is None:
            raise ValueError("distill.options are the options of distill.method, which is not set; set "
                             "distill.method (distill.loss takes distill.temperature and distill.alpha)")
        if self.method is not None and self.stages is not None:
            raise ValueError("distill.method and distill.stages both name the objective; give one method, or "
                             "stages each with its own method")
        if self.stages is not None and not self.stages:
            raise ValueError("distill.stages is empty; give at least one stage, or remove it")
        if self.method is None and self.stages is None:
            return self  # distill.loss
        if self.method is not None:
            entries = [("distill", self.method, self.options)]
        else:
            entries = [(f"distill.stages.{i}", s.method, s.options) for i, s in enumerate(self.stages or [])]
        methods = [method for _, method, _ in entries]
        for i, (key, method, options) in enumerate(entries):
            objective = check_method(method, options, key)
            problem = plan_problem(method, StagePlan(methods, i, resized_student=self.views.student_size is not None))
            if problem is not None:
                raise ValueError(f"{key}.method: {problem}")
            if i == len(entries) - 1 and not predicts(objective):
                raise ValueError(f"{key}: {method} with these options has no ce or kd term, so the student's "
                                 f"classifier would not learn; train it as a stage of distill.stages followed by "
                                 f"one that does (e.g. method: kd)")
        return self


class EnsembleConfig(_Section):
    """``recipe: ensemble``: train ``members`` teachers from different seeds, distil one student."""

    members: int = Field(3, ge=1)
    combine: Literal["arithmetic", "geometric"] = Field(
        "arithmetic", description="mean of probabilities, or normalized geometric mean (mean of log-probabilities)")
    weights: list[float] | None = Field(None, description="one non-negative weight per member (default: equal)")
    models: list[ModelConfig] | None = Field(None, description="one architecture per member (default: teacher.model "
                                             "for all)")

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        if self.models is not None and len(self.models) != self.members:
            raise ValueError(f"ensemble.models lists {len(self.models)} models but ensemble.members is "
                             f"{self.members}; make them agree")
        if self.weights is not None:
            if len(self.weights) != self.members:
                raise ValueError(f"ensemble.weights has {len(self.weights)} entries for {self.members} members")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("ensemble.weights must be non-negative and not all zero")
        return self


class SpecialistsConfig(_Section):
    """``recipe: specialists`` (Hinton et al. 2015, section 5): a generalist (the teacher role) plus
    specialists on confusable classes, each with a dustbin class for everything else."""

    subsets: list[list[int | str]] | None = Field(
        None, description="class subsets (indices or names), one per specialist; default: found by clustering "
        "the covariance of the generalist's predictions")
    num_specialists: int = Field(2, ge=1, description="how many subsets clustering finds when subsets is unset")
    top_classes: int = Field(2, ge=1, description="at inference, specialists whose subset meets the generalist's "
                             "top classes are consulted")
    soft_targets: bool = Field(True, description="also distil from the generalist's soft targets (a regularizer)")
    temperature: float = Field(2.0, gt=0, description="temperature of the generalist's soft targets")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft term when soft_targets is on")
    combine_steps: int = Field(100, gt=0, description="gradient steps of the inference-time KL combination")
    combine_lr: float = Field(0.5, gt=0)
    train: TrainConfig = Field(default_factory=TrainConfig)


class OnlineConfig(_Section):
    """``recipe: online``: deep mutual learning (Zhang et al. 2018), students teaching each other."""

    members: int = Field(2, ge=2)
    models: list[ModelConfig] | None = Field(None, description="one architecture per member (default: "
                                             "student.model for all)")
    temperature: float = Field(1.0, gt=0)
    kl_weight: float = Field(1.0, ge=0, description="weight of the mean KL to the other members (CE has weight 1)")

    @model_validator(mode="after")
    def _consistent(self) -> OnlineConfig:
        if self.models is not None and len(self.models) != self.members:
            raise ValueError(f"online.models lists {len(self.models)} models but online.members is {self.members}")
        return self


class BornAgainConfig(_Section):
    """``recipe: born_again`` (Furlanello et al. 2018): generation k+1 is distilled from generation k."""

    generations: int = Field(3, ge=1, description="distilled generations after the first (label-trained) one")


class SmallDataConfig(_Section):
    """``recipe: small_data``: soft targets as a regularizer (Hinton et al. 2015, section 6)."""

    fraction: float = Field(0.03, gt=0, le=1, description="fraction of the training set the students see")
    epochs: int | None = Field(None, gt=0, description="epochs of the small-data students (default: as many "
                               "optimizer steps as the full-data student takes)")


class LeftOutConfig(_Section):
    """``recipe: left_out_class``: distil with one class missing from the transfer set (Hinton et al. 2015,
    section 3), then correct the missing class's bias."""

    label: int | str = Field(3, description="the class left out (index or name)")
    max_bias: float = Field(10.0, gt=0, description="the bias correction is searched in [0, max_bias] on "
                            "the validation split")


class ReportConfig(_Section):
    """``report``: what the results table measures after training (test metrics are always measured)."""

    latency: bool = Field(True, description="time each model's inference on 1,000 test inputs (a second or "
                          "more per model, longer on big models); false: latency is null in results.json, "
                          "'-' in the table")


SAFE_NAME = re.compile(r"[A-Za-z0-9_+@=,][A-Za-z0-9._+@=,-]{0,99}")
"""A run name: the name of a directory on every file system and in every shell without quoting trouble."""

RecipeName = Literal["teacher", "baseline", "distill", "compare", "cache", "ensemble", "specialists", "online",
                     "born_again", "small_data", "left_out_class"]


class Config(_Section):
    name: str = "run"
    recipe: RecipeName = "compare"
    seed: int = Field(0, ge=0, le=MAX_INT, description="seed of initializations and training order, in [0, 2**32)")
    device: str = "auto"
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: RoleConfig | None = None
    student: RoleConfig | None = None
    distill: DistillConfig = Field(default_factory=DistillConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    specialists: SpecialistsConfig = Field(default_factory=SpecialistsConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    born_again: BornAgainConfig = Field(default_factory=BornAgainConfig)
    small_data: SmallDataConfig = Field(default_factory=SmallDataConfig)
    left_out: LeftOutConfig = Field(default_factory=LeftOutConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not SAFE_NAME.fullmatch(v):
            suggestion = re.sub(r"[^A-Za-z0-9._+@=,-]+", "_", v).lstrip(".-")[:100]
            suggestion = suggestion if re.search("[A-Za-z0-9]", suggestion) else "run"
            raise ValueError(f"{v!r} is not a safe directory name: use letters, digits and ._-+@=, (not "
                             f"starting with . or -, at most 100 characters), e.g. {suggestion!r}")
        return v

    @field_validator("output_dir")
    @classmethod
    def _some_dir(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("output_dir is empty; give a directory (default: runs)")
        return v

    @model_validator(mode="after")
    def _roles_present(self) -> Config:
        cached = self.distill.cache.path is not None  # a cache stands in for the teacher
        needs = {"teacher": ["teacher"], "baseline": ["student"],
                 "distill": ["student"] if cached else ["teacher", "student"],
                 "compare": ["student"] if cached else ["teacher", "student"], "cache": ["teacher"],
                 "ensemble": ["student"] if self.ensemble.models else ["teacher", "student"],
                 "specialists": ["teacher"], "online": [] if self.online.models else ["student"],
                 "born_again": ["student"], "small_data": ["teacher", "student"],
                 "left_out_class": ["teacher", "student"]}[self.recipe]
        missing = [r for r in needs if getattr(self, r) is None]
        if missing:
            raise ValueError(f"recipe {self.recipe!r} needs a {' and a '.join(missing)} section")
        return self

    @model_validator(mode="after")
    def _methods_fit_the_recipe(self) -> Config:
        d = self.distill
        methods = [d.method] if d.method is not None else [s.method for s in d.stages or []]
        if not methods or self.recipe in ("teacher", "baseline", "cache"):
            return self
        if self.recipe not in ("distill", "compare"):
            return self  # the other recipes check their methods themselves (check_config in the recipe's module)
        if d.cache.path is not None:
            why = "distill.cache.path is set (a cache holds the teacher's outputs only)"
        elif d.views.mode.startswith("fix/"):
            why = f"distill.views.mode={d.views.mode} distils from the teacher's outputs computed once"
        else:
            return self
        tapping = sorted({m for m in methods if taps_teacher(m)})
        if tapping:
            raise ValueError(f"method {', '.join(tapping)} reads the teacher's intermediate features, so it needs the "
                             f"live teacher model, but {why}; unset it, or use a method on logits only "
                             f"({', '.join(logit_methods())})")
        return self


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5). The value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. train.epochs=5")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key in its path {key!r}")
    value = load_yaml(raw, f"override {text!r}") if raw.strip() else None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is {child!r}, not a section with keys")
            node = child
        node[path[-1]] = value
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check the spelling; `distill run --help` lists sections)")
        else:
            msg = e["msg"].removeprefix("Value error, ")  # our own validators' messages, as written
            got = e.get("input")
            said = isinstance(got, dict) or (e["type"] == "value_error" and (repr(got) in msg or str(got) in msg))
            lines.append(f"  {loc}: {msg}{'' if said else f' (got {got!r})'}")
    return "\n".join(lines)


def resolve(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config dict into a :class:`Config`, merging the shared ``train`` section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    shared = raw.get("train") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{source}: train must be a section with keys, got {shared!r}")
    if raw.get("recipe") == "specialists" and raw.get("specialists") is None:
        raw["specialists"] = {}  # so the specialists inherit the shared train section too
    for role in ("teacher", "student", "specialists"):
        section = raw.get(role)
        if isinstance(section, dict):
            own = section.get("train") or {}
            if not isinstance(own, dict):
                raise ConfigError(f"{source}: {role}.train must be a section with keys, got {own!r}")
            section["train"] = deep_merge(shared, own)
    _resolve_stages(raw, source)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def _resolve_stages(raw: dict[str, Any], source: str) -> None:
    """Give each of ``distill.stages`` its training settings: ``student.train`` with the stage's ``train``
    (and ``epochs``) merged over it, and ``selection: last`` unless the stage sets it when its method has
    no term on the student's predictions (its validation accuracy would not move)."""
    distill = raw.get("distill")
    stages = distill.get("stages") if isinstance(distill, dict) else None
    if not isinstance(stages, list):
        return  # absent, or not a list: validation says so
    student = raw.get("student")
    base = (student.get("train") or {}) if isinstance(student, dict) else (raw.get("train") or {})
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        try:
            stage = stages[i] = _stage_epochs(stage)
        except ValueError as e:
            raise ConfigError(f"{source}: distill.stages.{i}: {e}") from None
        own = stage.get("train") or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{source}: distill.stages.{i}.train must be a section with keys, got {own!r}")
        if "selection" not in own:
            try:
                method_only = not predicts(check_method(stage.get("method"), stage.get("options") or {}, ""))
            except (ValueError, TypeError):
                method_only = False  # validation reports it
            if method_only:
                own = {**own, "selection": "last"}
        stage["train"] = deep_merge(base, own)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or start from ``base``), apply ``key.path=value`` overrides, then the top-level
    ``settings`` as given (not read as YAML: the command line's ``--name``, ``--output-dir``, ``--device``),
    and validate."""
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    source = "built-in config"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = load_yaml(p.read_text(), f"config file {p}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: the top level must be a mapping of sections")
        raw = deep_merge(raw, loaded)
    raw = apply_overrides(raw, overrides or [])
    raw.update(settings or {})
    return resolve(raw, source)


COMMON_SECTIONS = ("name", "recipe", "seed", "device", "output_dir", "data", "train", "report")
"""The top-level keys every recipe reads."""

RECIPE_SECTIONS: dict[str, tuple[str, ...]] = {
    "teacher": ("teacher",),
    "baseline": ("student",),
    "distill": ("teacher", "student", "distill"),
    "compare": ("teacher", "student", "distill"),
    "cache": ("teacher", "distill"),
    "ensemble": ("teacher", "student", "distill", "ensemble"),
    "specialists": ("teacher", "specialists"),
    "online": ("student", "online"),
    "born_again": ("student", "distill", "born_again"),
    "small_data": ("teacher", "student", "distill", "small_data"),
    "left_out_class": ("teacher", "student", "distill", "left_out"),
}
"""The sections each recipe reads besides :data:`COMMON_SECTIONS`; it ignores the others."""


def ignored_sections(cfg: Config) -> list[str]:
    """The top-level sections of ``cfg`` that its recipe never reads."""
    used = set(COMMON_SECTIONS) | set(RECIPE_SECTIONS[cfg.recipe])
    return [k for k in Config.model_fields if k not in used]


def to_yaml(cfg: Config, *, used_only: bool = False) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to an equal config.

    ``used_only``: only the sections the recipe reads (:data:`RECIPE_SECTIONS`; absent roles left out too),
    after a comment naming the ignored ones; it reads back to a config equal in every section the recipe
    reads (``distill run --dry-run`` prints this)."""
    dump = cfg.model_dump(mode="json")
    if not used_only:
        return yaml.safe_dump(dump, sort_keys=False)
    ignored = ignored_sections(cfg)
    kept = {k: v for k, v in dump.items() if k not in ignored and not (v is None and k in ("teacher", "student"))}
    student_train = (dump.get("student") or {}).get("train") or dump["train"]
    for section in ("teacher", "student", "specialists"):  # their train: what differs from the shared one
        if isinstance(kept.get(section), dict):
            _only_differences(kept[section], dump["train"])
    for stage in (kept.get("distill") or {}).get("stages") or []:  # each stage's: what differs from the student's
        _only_differences(stage, student_train)
    comment = (f"# recipe {cfg.recipe} ignores (not shown): {', '.join(ignored)}; each train under a model shows "
               f"what differs from the train it is merged over\n")
    return comment + yaml.safe_dump(kept, sort_keys=False)


def _differences(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The part of ``own`` that :func:`deep_merge` over ``base`` needs to give ``own`` back."""
    out: dict[str, Any] = {}
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            nested = _differences(base[key], value)
            if nested:
                out[key] = nested
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def _only_differences(section: dict[str, Any], base: dict[str, Any]) -> None:
    """``section["train"]`` cut down to what differs from ``base`` (removed when nothing does)."""
    own = _differences(base, section.get("train") or {})
    if own:
        section["train"] = own
    else:
        section.pop("train", None)


def builtin_config(name: str) -> dict[str, Any]:
    """A config shipped with the package (``distill/configs/<name>.yaml``) as a raw dict."""
    from importlib import resources

    text = resources.files("distill").joinpath("configs").joinpath(f"{name}.yaml").read_text()
    return load_yaml(text, f"built-in config {name}")


RESULT_NEUTRAL = ("name", "output_dir", "device", "data.download", "report")
"""Dotted key paths (and the sections) of settings that do not change a run's result: a resumed run
may change them. ``report``: what is measured after training, from the trained models."""

RESULT_NEUTRAL_TRAIN = ("log_every", "eval_batch_size", "data_on_device", "checkpoint_every_steps")
"""Keys of every ``train`` section that do not change the result (how often to print or checkpoint, the evaluation
batch, where the training split is held): a resumed run may change them."""


def result_neutral(path: str) -> bool:
    """Whether the setting at dotted ``path`` (of a full config) leaves the result unchanged."""
    return (path.rsplit(".", 1)[-1] in RESULT_NEUTRAL_TRAIN
            or any(path == k or path.startswith(k + ".") for k in RESULT_NEUTRAL))


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def diff_settings(old: Any, new: Any, ignore: Callable[[str], bool] | None = None,
                  path: str = "") -> list[str]:
    """``"key.path: old -> new"`` for every setting that differs between two plain config dumps
    (mappings key by key, lists of mappings item by item when of equal length, ``key.0``), except the
    paths for which ``ignore(path)`` is true. A key missing on one side shows as ``(absent)``."""
    if ignore is not None and path and ignore(path):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                if ignore is None or not ignore(sub):
                    out.append(f"{sub}: {_show(old[key]) if key in old else '(absent)'} -> "
                               f"{_show(new[key]) if key in new else '(absent)'}")
            else:
                out += diff_settings(old[key], new[key], ignore, sub)
        return out
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, dict) for v in old + new)):  # e.g. distill.stages.1.epochs
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in diff_settings(a, b, ignore, f"{path}.{i}")]
    return [] if old == new else [f"{path}: {_show(old)} -> {_show(new)}"]
