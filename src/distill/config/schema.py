"""The core config schema: the sections every run has (data, train, teacher, student, distill, report,
name, recipe, seed, device, output_dir). Every section is a pydantic model that forbids unknown keys,
so a typo such as ``train.epoch`` is an error naming the key path rather than a silent default.

Training settings live in a top-level ``train`` section shared by every model of a run;
``teacher.train`` and ``student.train`` hold only what differs and are merged on top of it
before validation (:func:`distill.config.resolve`). The resolved config (``runs/<name>/config.yaml``)
shows the result.

The core knows no recipe: a recipe registers itself (:func:`distill.config.register_recipe`) with the
model of its own section, the roles it needs and its own checks; :class:`Config` looks the recipe up by
name when it validates.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from distill.config.registry import find_recipe, recipe_names
from distill.methods.registry import StagePlan, check_method, plan_problem, predicts


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


class Section(BaseModel):
    """A config section: unknown keys are errors, floats must be finite, integers within :data:`MAX_INT`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _finite_and_in_range(cls, v: Any) -> Any:
        problem = _bad_number(v)
        if problem:
            raise ValueError(problem)
        return v


SectionT = TypeVar("SectionT", bound=BaseModel)


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


class DataConfig(Section):
    name: str = "digits"
    path: str | None = None
    download: bool = False
    val_size: float = Field(0.1, ge=0, description="fraction (< 1) or count (a whole number >= 1) of training "
                            "examples held out")
    train_size: int | None = Field(None, gt=0, description="keep only this many training examples (a stratified, "
                                   "seeded subset; after the validation split)")
    split_seed: int = Field(0, ge=0, le=MAX_INT, description="seed of the validation split, in [0, 2**32)")
    normalize: bool = True
    image_size: int | tuple[int, int] | None = Field(
        None, description="image files (imagefolder, manifest): every image resized to this side, or (height, width); "
        "default: the first training image's size")
    channels: Literal[1, 3] | None = Field(None, description="image files: 1 (grayscale) or 3 (RGB); default: the "
                                           "first training image's (grayscale gives 1)")
    stream: Literal["auto"] | bool = Field(
        "auto", description="image files: read the training split from disk batch by batch (true) or hold it in "
        "memory (false, the faster path); auto streams above 2 GiB of float32 training images")
    num_workers: int | None = Field(None, ge=0, description="image files: DataLoader worker processes that decode "
                                    "(0: in the main process); default: the CPUs, up to 8")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="image files: unreadable files are skipped "
                                    "(counted and named); more than this fraction of a split's files (train, val "
                                    "or test, each counted alone) is an error")

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as (height, width)."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return self.image_size[0], self.image_size[1]

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        if v is not None and min((v,) if isinstance(v, int) else v) < 1:
            raise ValueError(f"image_size must be a positive side or (height, width), got {v}")
        return v

    @field_validator("val_size")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and not float(v).is_integer():
            raise ValueError(f"a val_size of 1 or more is a count of examples and must be a whole number; give "
                             f"a fraction below 1 (e.g. 0.1) or a count (e.g. {math.floor(v)}), got {v}")
        return v


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)


class ScheduleConfig(Section):
    name: Literal["constant", "step", "multistep", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(30, gt=0, description="epochs between decays for name=step")
    milestones: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="epochs at which name=multistep decays")
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")


class AugmentConfig(Section):
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


class TrainConfig(Section):
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
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="memory format of convolutional models (4-d inputs and a Conv2d in student or teacher): "
        "true converts student, a live teacher and each batch to channels_last, false keeps them contiguous, auto "
        "times a few steps of each layout at start-up on the run's device and takes the faster (logged, and recorded "
        "as memory_format in the history); models without convolutions stay contiguous")
    fold_teacher_batchnorm: Literal["auto"] | bool = Field(
        "auto", description="a frozen live teacher's forward runs a copy of it with each batch norm folded into the "
        "convolution before it (the same function to float rounding, faster; the teacher itself is not changed): "
        "auto folds where that is exact (not when its features are tapped, its parameters trained, or under "
        "torchrun), true also under torchrun and refuses a teacher that cannot be folded, false never folds; logged, "
        "and recorded as teacher_batchnorm in the history")
    log_every: int = Field(50, gt=0, description="steps between progress lines and finite-loss checks")
    selection: Literal["acc", "nll", "last"] = Field(
        "acc", description="best.pt is the epoch with the highest val accuracy (ties: lower NLL), the lowest "
        "val NLL, or simply the last epoch")
    compile: bool = Field(False, description="torch.compile the student's (and a live teacher's) forward: seconds "
                          "to minutes of start-up, and on CPUs no faster for small models")
    teacher_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="precision of a live teacher's forward (its outputs are cast to float32 for the loss): "
        "auto keeps fp32 on the CPU and on CUDA probes the teacher on a few training batches in fp32 and in bf16 "
        "(fp16 without bf16), taking the low precision only when the targets softmax(z/T) stay within 0.01 of fp32 "
        "and KL within 1e-3 (logged, and recorded as teacher_forward in the history); bf16/fp16 need CUDA")
    teacher_compile: Literal["auto", "off", "default", "reduce-overhead"] = Field(
        "auto", description="torch.compile a live teacher's forward for the run's batch shape (other shapes run "
        "eager); reduce-overhead adds CUDA graphs (CUDA only); auto: compiled (reduce-overhead on CUDA, default "
        "on the CPU, which needs a C++ compiler) when a timed probe shows its outputs equal, its forward at 0.95x "
        "of eager or faster and saving more over the run than the compile took, tried only when the teacher's "
        "forwards over the run take 2 minutes or more; with train.compile true, default")
    data_on_device: bool = Field(True, description="keep the training split on the device (false: in host memory, "
                                 "pinned on CUDA, each batch gathered there and copied asynchronously)")
    sync_batchnorm: bool = Field(False, description="under DDP (torchrun), batch-norm statistics over the global "
                                 "batch rather than each process's slice (CUDA only)")


class RoleConfig(Section):
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


class CacheConfig(Section):
    """A teacher's outputs computed once over the training (transfer) set and stored on disk.

    The ``cache`` recipe writes ``path``; ``distill``/``compare`` read it when it is set and the
    file exists, and then never load the teacher (Beyer et al.'s "fixed teacher").
    """

    path: str | None = Field(None, description="the cache file (.npz); relative paths are taken from the "
                             "working directory")
    topk: int | None = Field(None, gt=0, description="store only the k largest probabilities and a tail bucket "
                             "(None: full logits, usable at any temperature)")
    dtype: Literal["float16", "float32"] = "float32"


ViewMode = Literal["none", "fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch",
                   "mixup"]


class ViewsConfig(Section):
    """What student and teacher see of each training image (Beyer et al. 2022's teaching modes).

    ``none``: both see the image (with ``train.augment.shift``). ``fix/*``: the teacher's outputs
    are computed once per image (resized, central crop, or the mean over inception crops) and the
    student sees resized images, mild random crops or inception crops. ``ind/*``: independent
    crops; ``same/*``: one crop for both; ``funmatch``: one inception crop plus mixup for both;
    ``mixup``: the same mixup of the examples for both, no crop (any input shape, vectors included).
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
    mixup_alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) of the mixup of funmatch "
                               "and mixup")
    ensemble_crops: int = Field(16, ge=1, description="inception crops averaged per image by fix/ic_ens")


class TransferConfig(Section):
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


class StageConfig(Section):
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


class DistillConfig(Section):
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


class ReportConfig(Section):
    """``report``: what the results table measures after training (test metrics are always measured)."""

    latency: bool = Field(True, description="time each model's inference on 1,000 test inputs (a second or "
                          "more per model, longer on big models); false: latency is null in results.json, "
                          "'-' in the table")
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers fed during training (scalars per log step and "
        "epoch, the config, the final table, the views of a teaching mode as images): tensorboard (event files in "
        "<run dir>/tensorboard/, the tensorboard extra), mlflow (a run in mlflow_uri, the mlflow extra)")
    mlflow_uri: str | None = Field(None, description="the MLflow tracking store (any MLflow tracking URI); default: "
                                   "sqlite:///<run dir>/mlflow/mlflow.db with artifacts in <run dir>/mlflow/artifacts")
    mlflow_experiment: str | None = Field(None, description="the MLflow experiment (default: the run's name)")

    @field_validator("loggers")
    @classmethod
    def _no_repeat(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"report.loggers lists a logger twice: {v}")
        return v


SAFE_NAME = re.compile(r"[A-Za-z0-9_+@=,][A-Za-z0-9._+@=,-]{0,99}")
"""A run name: the name of a directory on every file system and in every shell without quoting trouble."""

class Config(Section):
    name: str = "run"
    recipe: str = Field("compare", validate_default=True,
                        description="what the run does: a registered recipe (`distill recipes` lists them)")
    seed: int = Field(0, ge=0, le=MAX_INT, description="seed of initializations and training order, in [0, 2**32)")
    device: str = "auto"
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: RoleConfig | None = None
    student: RoleConfig | None = None
    distill: DistillConfig = Field(default_factory=DistillConfig)
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

    @field_validator("recipe")
    @classmethod
    def _registered(cls, v: str) -> str:
        if find_recipe(v) is None:
            names = recipe_names()
            if not names:
                raise ValueError(f"recipe {v!r}: no recipe is registered yet; import distill.recipes first (it "
                                 "registers the built-in recipes; the command line and distill.load_config do)")
            raise ValueError(f"unknown recipe {v!r}; choose one of {', '.join(names)} (`distill recipes` "
                             "describes them)")
        return v

    @model_validator(mode="after")
    def _recipe_accepts(self) -> Config:
        """The roles the recipe needs are given, and its own checks pass."""
        spec = find_recipe(self.recipe)
        assert spec is not None  # _registered
        missing = [r for r in spec.roles(self) if getattr(self, r) is None]
        if missing:
            raise ValueError(f"recipe {self.recipe!r} needs a {' and a '.join(missing)} section")
        if spec.check is not None:
            spec.check(self)
        return self

    def options(self, model: type[SectionT]) -> SectionT:
        """The options of this config's recipe, as the recipe's own ``model`` (the section it registered)."""
        spec = find_recipe(self.recipe)
        value = getattr(self, spec.section, None) if spec is not None and spec.section else None
        if not isinstance(value, model):
            raise TypeError(f"recipe {self.recipe!r} has no options of type {model.__name__} (its section: "
                            f"{spec.section if spec else None}); a config resolved by distill.config.resolve has them")
        return value
