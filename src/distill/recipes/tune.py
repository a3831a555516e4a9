"""``distill tune``: search the distillation's settings on the validation split with Optuna.

A study distils the config's student from its teacher many times (trials), each with settings drawn from the
search space declared in the config's ``tune`` section, and keeps the one whose distilled student has the
highest **validation** accuracy (the selected checkpoint's, ``distilled/best.pt``; the test split is never
read for the choice). The space (each dimension ``null``: not searched, the config's value kept):

- ``methods``: the distillation method (``distill.method``), one of a list of registered methods
  (default ``kd``, ``dkd``, ``dist``, ``mlkd``, ``ctkd``, ``wttm``: logit methods);
- ``temperature`` and ``alpha``: the method's options of those names, for the methods that have them
  (``kd``: both; ``dkd``, ``dist``, ``wttm``: the temperature; ``mlkd`` and ``ctkd`` have neither: MLKD uses
  several fixed temperatures, CTKD learns its own); ``method_options``: ranges of any other option of a
  listed method (``{dkd: {nckd_weight: {low: 1, high: 8}}}``), named ``<method>.<option>``;
- ``standardize``: with ``true``, each trial also draws the logit standardization switch (Sun et al. 2024) of
  its method, where the method has one (not searched by default);
- ``lr``: the student's learning rate (``student.train.optimizer.lr``, log scale);
- ``shift``: the augmentation strength (``student.train.augment.shift``, pixels of random translation), or
  ``crop_padding`` (``student.train.augment.crop_padding``: the random crop's padding, for CIFAR-like images;
  not searched by default; one of the two);
- ``epochs``: the schedule length (``student.train.epochs``);
- ``views``: the teaching mode (``distill.views.mode``), one of a list, e.g. ``[none, mixup]``, and
  ``mixup_alpha``: the mixup strength (``distill.views.mixup_alpha``, drawn for the trials whose views mix:
  ``mixup``, ``funmatch``); neither searched by default.

How (Akiba et al. 2019, Optuna): a TPE sampler (Bergstra et al. 2011; seeded by trial number,
:func:`trial_seeded_tpe`; ``startup_trials`` random trials first) proposes each trial's settings; a median pruner
stops a trial whose validation accuracy after an epoch is below the median of the earlier trials' at that epoch
(reported through the training loop's callbacks, :class:`ReportValidation`). The teacher is trained once
(``<study dir>/teacher/``, or ``teacher.checkpoint`` as given) and every trial distils from that file. The study is
stored in a database: SQLite by default (``<study dir>/study.db``), any SQLAlchemy URL with ``storage``; running the
same command again continues the study (its trials are kept, new ones added); ``workers`` processes run trials at
once, sharing the storage, and so do ``distill tune`` commands on several machines given the same server URL and study
name. A password in the URL is shown as ``***`` in every line and file the study writes (:func:`shown_storage`).

A study directory (``<output_dir>/<study>/``; ``distill run`` with ``recipe: tune``: the run's directory) holds
``study.yaml`` (the config it was started with), ``study.db``, ``teacher/``, ``trials/<number>/`` (each trial
a complete ``distill`` run), and after each invocation ``best.yaml`` (the best trial's config, ready for
``distill run``), ``trials.csv`` and ``trials.md`` (every trial's parameters, value, state, epochs and duration;
the parameters' importances) and, with matplotlib, ``history.png`` and ``importance.png``.

Optuna is an optional dependency (the ``tune`` extra); it is imported when a study runs.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import math
import multiprocessing
import re
import sys
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.config import Config, Section, diff_settings, load_yaml, register_recipe, resolve, result_neutral, to_yaml
from distill.checkpoint import load_checkpoint
from distill.config.schema import SAFE_NAME, ViewMode
from distill.diagnostics import PredictionCollapseWarning
from distill.engine import Callback, NonFiniteLossError
from distill.engine.progress import Phase, bars_enabled, write_line
from distill.methods.registry import METHODS, check_method, configurable_options, get_method
from distill.recipes.common import Run, run_recipe
from distill.recipes.views import check_cacheable

if TYPE_CHECKING:  # annotations only: optuna is imported when a study runs
    import optuna

INSTALL = 'pip install -c constraints.txt -e ".[tune]"'
DEFAULT_METHODS = ["kd", "dkd", "dist", "mlkd", "ctkd", "wttm"]
MIXING_VIEWS = ("mixup", "funmatch")
"""The teaching modes whose views are a mixup of the batch (``distill.views.mixup_alpha`` is their strength)."""
BUDGET_KEYS = ("trials", "minutes", "workers", "storage", "study")
"""Keys of the ``tune`` section that say how much to run and where, not what: a study may continue with others."""


class MissingOptunaError(ValueError):
    """Optuna (the ``tune`` extra) is not installed."""


def require_optuna() -> ModuleType:
    """``import optuna``, or a :class:`MissingOptunaError` naming the extra to install."""
    try:
        return importlib.import_module("optuna")
    except ImportError as e:
        raise MissingOptunaError(f"distill tune needs the package 'optuna', which is not installed ({e}); install "
                                 f"the tune extra: {INSTALL}") from None


# -- the search space ----------------------------------------------------------------------


class _Range(Section):
    """What every range shares: ``[low, high]`` as shorthand for ``{low: .., high: ..}``, and low < high."""

    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, data: Any) -> Any:
        return {"low": data[0], "high": data[1]} if isinstance(data, (list, tuple)) and len(data) == 2 else data

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high, got low={self.low}, high={self.high} (to fix the value, "
                             "set it in the config and this range to null)")
        return self


class FloatRange(_Range):
    """A real interval ``[low, high]``, sampled uniformly, or on a log scale (``log: true``); ``[low, high]`` is
    shorthand."""

    log: bool = False

    @model_validator(mode="after")
    def _positive_if_log(self) -> FloatRange:
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")
        return self


class LogRange(FloatRange):
    """A :class:`FloatRange` on a log scale unless ``log: false`` (a learning rate's)."""

    log: bool = True


class IntRange(_Range):
    """Whole numbers ``low, low + 1, ..., high`` (``[low, high]`` is shorthand)."""

    low: int = Field(ge=0)
    high: int = Field(ge=0)


class TuneOptions(Section):
    """The ``tune`` section: the budget, the sampler and pruner, and the search space (see the module docstring;
    a dimension set to null is not searched: the config's value is kept)."""

    trials: int | None = Field(20, gt=0, description="trials to run per invocation, over all workers (--trials; "
                               "null: until minutes runs out)")
    minutes: float | None = Field(None, gt=0, description="start no trial after this many minutes (--minutes)")
    workers: int = Field(1, ge=1, description="processes running trials at once, sharing the storage (--workers)")
    storage: str | None = Field(None, description="the study's database, an SQLAlchemy URL (--storage); default: "
                                "sqlite:///<study dir>/study.db")
    study: str | None = Field(None, description="the study's name and directory under output_dir (--study; "
                              "default: name)")
    seed: int = Field(0, ge=0, description="seed of the TPE sampler: trial number k draws with seed + k")
    startup_trials: int = Field(5, ge=0, description="random trials before TPE models the results")
    pruner: Literal["median", "none"] = Field("median", description="stop a trial whose validation accuracy "
                                              "after an epoch is below the median of earlier trials' (none: never)")
    prune_startup_trials: int = Field(2, ge=0, description="finished trials before the pruner stops any")
    prune_warmup_epochs: int = Field(5, ge=0, description="a trial is not stopped before this many epochs (the "
                                     "first epochs of schedules of different lengths say little)")
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS),
                               description="the distill.method choices (registered methods that use a teacher)")
    temperature: FloatRange | None = Field(default_factory=lambda: FloatRange(low=1.0, high=8.0),
                                           description="the methods' temperature option (default: 1 to 8)")
    alpha: FloatRange | None = Field(default_factory=lambda: FloatRange(low=0.1, high=1.0),
                                     description="the methods' alpha option (kd: weight of the soft term; "
                                     "default: 0.1 to 1)")
    lr: LogRange | None = Field(default_factory=lambda: LogRange(low=1e-3, high=0.3),
                                description="student.train.optimizer.lr (default: 0.001 to 0.3, log scale)")
    shift: IntRange | None = Field(default_factory=lambda: IntRange(low=0, high=2),
                                   description="student.train.augment.shift (pixels of random translation; "
                                   "default: 0 to 2)")
    crop_padding: IntRange | None = Field(None, description="student.train.augment.crop_padding, the random crop's "
                                          "padding (instead of shift: set tune.shift=null), e.g. [0, 4]")
    epochs: IntRange | None = Field(default_factory=lambda: IntRange(low=10, high=100),
                                    description="student.train.epochs (the schedule length; default: 10 to 100)")
    method_options: dict[str, dict[str, FloatRange]] = Field(
        default_factory=dict, description="more ranges per method: {dkd: {nckd_weight: {low: 1, high: 8}}}")
    standardize: bool = Field(False, description="also draw the logit standardization switch (Sun et al. 2024; "
                              "the methods' option standardize) for the methods that have it")
    views: list[ViewMode] | None = Field(None, description="distill.views.mode choices, e.g. [none, mixup] "
                                         "(null: the config's mode)")
    mixup_alpha: FloatRange | None = Field(None, description="distill.views.mixup_alpha (the mixup strength), for "
                                           "the trials whose views mix (mixup, funmatch), e.g. [0.1, 1]")

    @field_validator("methods")
    @classmethod
    def _registered_teaching_methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"no method to choose from; list one or more registered methods, e.g. "
                             f"{DEFAULT_METHODS}")
        for name in v:
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; choose among the registered methods: "
                                 f"{', '.join(METHODS)} (`distill methods` describes them)")
            if not get_method(name).objective.needs_teacher:
                raise ValueError(f"method {name!r} uses no teacher, so it distils nothing; list methods that do")
        if len(set(v)) != len(v):
            raise ValueError(f"a method is listed twice: {v}")
        return v

    @field_validator("views")
    @classmethod
    def _distinct_views(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"list one or more distinct distill.views.mode values, e.g. [none, mixup]; got {v}")
        return v

    @field_validator("method_options")
    @classmethod
    def _options_of_listed_methods(cls, v: dict[str, dict[str, FloatRange]],
                                   info: ValidationInfo) -> dict[str, dict[str, FloatRange]]:
        methods = info.data.get("methods") or []
        for method, ranges in v.items():
            if method not in methods:
                raise ValueError(f"{method}: not among tune.methods ({', '.join(methods)}); add it there or remove "
                                 f"its ranges")
            accepted = configurable_options(method)
            for option in ranges:
                if option not in accepted:
                    raise ValueError(f"{method}.{option}: method {method!r} has no option {option!r} a config may "
                                     f"set; its options: {', '.join(accepted)}")
                if option in ("temperature", "alpha"):
                    raise ValueError(f"{method}.{option}: searched by tune.{option}; set the range there")
        return v

    @model_validator(mode="after")
    def _something_to_search(self) -> TuneOptions:
        if len(self.methods) < 2 and not self.method_options and not self.standardize and all(
                getattr(self, k) is None for k in (*SEARCHED, "views", "mixup_alpha")):
            raise ValueError(f"the search space is empty: tune.methods has one method and "
                             f"{', '.join(f'tune.{k}' for k in SEARCHED)} are all null; give at least one range "
                             f"(e.g. tune.lr: {{low: 0.001, high: 0.3}}) or two methods")
        return self


SEARCHED = ("temperature", "alpha", "lr", "shift", "crop_padding", "epochs")
"""The ranges of :class:`TuneOptions` besides the method (the parameters' names in the study)."""


def tune_options(cfg: Config) -> TuneOptions:
    """The config's ``tune`` section (present in every config resolved with :mod:`distill.recipes` imported)."""
    options = getattr(cfg, "tune", None)
    if not isinstance(options, TuneOptions):
        raise TypeError("the config has no tune section; resolve it with distill.recipes imported "
                        "(distill.load_config does)")
    return options


def check_study(cfg: Config) -> None:
    """What a study needs of the rest of the config: a student distilled from a teacher (or a cache) with one
    method (no ``distill.stages``, no transfer set), a validation split, and no setting that overrides a
    searched one."""
    opts = tune_options(cfg)
    if cfg.student is None:
        raise ValueError("tune: a study distils a student; the config needs a student section")
    if cfg.teacher is None and cfg.distill.cache.path is None:
        raise ValueError("tune: a study distils from a teacher; the config needs a teacher section (or "
                         "distill.cache.path)")
    if cfg.distill.stages is not None:
        raise ValueError("tune: distill.stages is set, but a study searches one method (distill.method); remove "
                         "distill.stages")
    if cfg.distill.transfer is not None:
        raise ValueError("tune: distill.transfer distils with distill.loss only, but a study searches "
                         "distill.method; remove distill.transfer")
    if cfg.data.val_size == 0:
        raise ValueError("tune: the objective is the validation accuracy, but data.val_size is 0; hold out a "
                         "validation split (e.g. data.val_size=0.1)")
    train = cfg.student.train
    if opts.shift is not None and opts.crop_padding is not None:
        raise ValueError("tune.crop_padding: tune.shift is searched too; they are two forms of the same random "
                         "translation: set one of them to null")
    if opts.crop_padding is not None and train.augment.shift:
        raise ValueError(f"tune.crop_padding: student.train.augment.shift={train.augment.shift} is set, another "
                         "form of the same translation; set tune.crop_padding=null or shift to 0")
    if opts.shift is not None and train.augment.crop_padding:
        raise ValueError(f"tune.shift: student.train.augment.crop_padding={train.augment.crop_padding} is set, "
                         "another form of the same translation; set tune.shift=null or crop_padding to 0")
    if opts.epochs is not None and train.max_steps is not None:
        raise ValueError(f"tune.epochs: student.train.max_steps={train.max_steps} overrides the epochs; set "
                         "tune.epochs=null or unset max_steps")
    modes = opts.views if opts.views is not None else [cfg.distill.views.mode]
    if opts.mixup_alpha is not None and not set(modes) & set(MIXING_VIEWS):
        raise ValueError(f"tune.mixup_alpha: no trial's views mix: distill.views.mode is {' or '.join(modes)}; add "
                         f"{' or '.join(MIXING_VIEWS)} to tune.views, or set tune.mixup_alpha=null")
    for mode in opts.views or []:  # each mode must work with the rest of the config before any trial runs
        dump = cfg.model_dump(mode="json")
        dump["distill"]["views"]["mode"], dump["recipe"] = mode, "distill"
        try:
            resolve(dump, "the study's config")
            if cfg.distill.cache.path is not None:
                check_cacheable(mode)
        except ValueError as e:
            raise ValueError(f"tune.views: distill.views.mode={mode} does not work with this config: {e}") from None


def suggest(trial: optuna.Trial, opts: TuneOptions, views: str = "none") -> dict[str, Any]:
    """The trial's settings (``trial.params``): the method, then each searched option it has and the training
    settings, then the views, in this order (the order is part of the sampler's reproducibility). ``views``: the
    config's ``distill.views.mode``, used when ``tune.views`` is null (``mixup_alpha`` is drawn for mixing views
    only)."""
    method = trial.suggest_categorical("method", opts.methods) if len(opts.methods) > 1 else opts.methods[0]
    accepted = configurable_options(method)
    for key in ("temperature", "alpha"):
        rng = getattr(opts, key)
        if rng is not None and key in accepted:
            trial.suggest_float(key, rng.low, rng.high, log=rng.log)
    for option, rng in opts.method_options.get(method, {}).items():
        trial.suggest_float(f"{method}.{option}", rng.low, rng.high, log=rng.log)
    if opts.standardize and "standardize" in accepted:
        trial.suggest_categorical("standardize", [False, True])
    if opts.lr is not None:
        trial.suggest_float("lr", opts.lr.low, opts.lr.high, log=opts.lr.log)
    if opts.shift is not None:
        trial.suggest_int("shift", opts.shift.low, opts.shift.high)
    if opts.crop_padding is not None:
        trial.suggest_int("crop_padding", opts.crop_padding.low, opts.crop_padding.high)
    if opts.epochs is not None:
        trial.suggest_int("epochs", opts.epochs.low, opts.epochs.high)
    mode = views
    if opts.views is not None:
        mode = trial.suggest_categorical("views", opts.views) if len(opts.views) > 1 else opts.views[0]
    if opts.mixup_alpha is not None and mode in MIXING_VIEWS:
        trial.suggest_float("mixup_alpha", opts.mixup_alpha.low, opts.mixup_alpha.high, log=opts.mixup_alpha.log)
    return dict(trial.params)


def apply_params(base: Config, params: dict[str, Any], *, recipe: str = "distill", name: str | None = None,
                 teacher_checkpoint: str | None = None, latency: bool | None = None) -> Config:
    """``base`` with a trial's ``params`` (:func:`suggest`) written in: ``distill.method`` and its options (the
    config's own options of that method kept where not searched; for ``kd`` after ``distill.loss: kd``, its
    ``temperature`` and ``alpha``), ``student.train``'s lr, augment.shift or crop_padding and epochs; the teacher
    read from ``teacher_checkpoint`` when given."""
    opts = tune_options(base)
    dump = base.model_dump(mode="json")
    method = params.get("method", opts.methods[0])
    d = dump["distill"]
    if base.distill.method == method:
        options = dict(base.distill.options)
    elif base.distill.method is None and base.distill.loss == method == "kd":
        options = {"temperature": base.distill.temperature, "alpha": base.distill.alpha}
    else:
        options = {}
    for key, value in params.items():
        if key in ("temperature", "alpha", "standardize"):
            options[key] = value
        elif key.startswith(f"{method}."):
            options[key.split(".", 1)[1]] = value
    d["method"], d["options"] = method, options
    train = dump["student"]["train"]
    if "lr" in params:
        train["optimizer"]["lr"] = params["lr"]
    for key in ("shift", "crop_padding"):
        if key in params:
            train["augment"][key] = params[key]
    if "epochs" in params:
        train["epochs"] = params["epochs"]
    views = dump["distill"]["views"]
    if opts.views is not None:  # one listed mode is not a parameter: it is set all the same
        views["mode"] = params.get("views", opts.views[0])
    if "mixup_alpha" in params:
        views["mixup_alpha"] = params["mixup_alpha"]
    if teacher_checkpoint is not None:
        dump["teacher"]["checkpoint"] = teacher_checkpoint
    dump["recipe"] = recipe
    if name is not None:
        dump["name"] = name
    if latency is not None:
        dump["report"]["latency"] = latency
    if opts.storage is not None:  # a trial's config.yaml shows where its study is, not the database's password
        dump["tune"]["storage"] = shown_storage(opts.storage)
    return resolve(dump, "the study's trial config")


# -- one trial -----------------------------------------------------------------------------


class ReportValidation(Callback):
    """Reports each epoch's validation accuracy to the trial (its intermediate values, step = epochs trained
    so far, counted across the fits of a run) and raises optuna's ``TrialPruned`` when the pruner says so:
    the training loop stops after that epoch's checkpoints, the recipe ends, the trial is marked pruned.
    ``epochs``: the run's length; its last epoch is never pruned (the trial is done: its value counts)."""

    def __init__(self, trial: optuna.Trial, epochs: int | None = None) -> None:
        self.trial = trial
        self.last = epochs
        self.epochs = 0

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if "val/acc" not in record:
            return
        self.epochs += 1
        self.trial.report(float(record["val/acc"]), self.epochs)
        if self.epochs != self.last and self.trial.should_prune():
            raise require_optuna().TrialPruned(
                f"validation accuracy {100 * record['val/acc']:.2f}% after epoch {self.epochs} is below the median "
                "of the earlier trials at that epoch")


def selected_val_acc(run_dir: Path) -> float:
    """The validation accuracy of the distilled student the run selected (``distilled/best.pt``'s record)."""
    best = run_dir / "distilled" / "best.pt"
    return float(load_checkpoint(best)["best"]["val_acc"])


class Objective:
    """One trial: the config with the trial's settings, distilled under ``trials/<number>/``; its value is the
    selected student's validation accuracy (:func:`selected_val_acc`)."""

    def __init__(self, base: Config, study_dir: Path, study_name: str, teacher: str | None) -> None:
        self.base, self.study_dir, self.study_name, self.teacher = base, study_dir, study_name, teacher
        self.opts = tune_options(base)

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.opts, self.base.distill.views.mode)
        run_dir = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = apply_params(self.base, params, name=f"{self.study_name}-trial{trial.number}",
                           teacher_checkpoint=self.teacher, latency=False)
        # a trial's table and collapse warnings are in its results.json and report.md; the study prints one line
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", PredictionCollapseWarning)
            assert cfg.student is not None  # check_study
            train = cfg.student.train
            listener = ReportValidation(trial, train.epochs if train.max_steps is None else None)
            try:
                run_recipe(cfg, run_dir=run_dir, progress=False, callbacks=[listener])
            except NonFiniteLossError as e:  # the trial fails (its settings diverge); the study goes on
                trial.set_user_attr("error", str(e))
                raise
        return selected_val_acc(run_dir)


# -- the study -----------------------------------------------------------------------------


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


STORAGE_ATTEMPTS = 5
"""How often :func:`open_storage` tries to open a database whose tables another process is creating."""


def shown_storage(url: str) -> str:
    """``url`` as logs and written files show it: a password (``scheme://user:password@host``) replaced by ``***``
    (everything up to the last ``@`` before a query, so that an unescaped ``@`` in a password is hidden too)."""
    return re.sub(r"^([\w+.-]+://[^:/@?]*:)[^?]*@", r"\1***@", url)


def _hide_password(text: str, url: str) -> str:
    """``text`` (an error message) with ``url`` shown as :func:`shown_storage` does and the URL's password, as
    written or %-decoded, replaced by ``***``."""
    text = text.replace(url, shown_storage(url))
    found = re.match(r"^[\w+.-]+://[^:/@?]*:([^?]*)@", url)
    for password in {found.group(1), urllib.parse.unquote(found.group(1))} if found else ():
        if password:
            text = text.replace(password, "***")
    return text


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at SQLAlchemy ``url`` (SQLite: waiting up to 60 s for a lock held by another worker;
    heartbeats every 10 s, so that a trial whose process was killed is marked failed by a run 30 s later), or a
    ``ValueError`` naming ``tune.storage`` (the URL's password hidden).

    Processes started at once on an empty database (a server's, e.g. PostgreSQL: two machines joining a new study)
    race to create Optuna's tables: the loser's ``CREATE TABLE`` or first row fails (an ``IntegrityError`` or
    ``ProgrammingError``: the table or row is there now). Opening again then finds them, so such a failure is
    retried, up to :data:`STORAGE_ATTEMPTS` times."""
    optuna = require_optuna()
    races = tuple(getattr(importlib.import_module("sqlalchemy.exc"), n) for n in ("IntegrityError",
                                                                                   "ProgrammingError"))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None

    def cannot_open(e: Exception) -> ValueError:
        return ValueError(f"tune.storage (--storage) {shown_storage(url)!r}: cannot open the study database: "
                          f"{type(e).__name__}: {_hide_password(str(e), url)}. Give an SQLAlchemy URL, e.g. "
                          f"sqlite:///study.db or postgresql://user@host/db (the password in PGPASSWORD or "
                          f"~/.pgpass, or postgresql://user:password@host/db)")

    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they have worked since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=10,
                                                  grace_period=30)
        except races as e:
            if attempt == STORAGE_ATTEMPTS:
                raise cannot_open(e) from None
            time.sleep(0.2 * attempt)
        except Exception as e:  # SQLAlchemy's ArgumentError, a missing driver, an unreachable server, ...
            raise cannot_open(e) from None
    raise AssertionError("unreachable")


def _study_name(cfg: Config, study: str | None) -> str:
    name = study or tune_options(cfg).study or cfg.name
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"tune.study (--study) {name!r} is not a safe directory name: use letters, digits and "
                         "._-+@=, (not starting with . or -)")
    return name


def _neutral(path: str) -> bool:
    """Settings a study may continue with changed: the result-neutral ones, the budget, and the recipe (trials
    always distil)."""
    return result_neutral(path) or path == "recipe" or any(path == f"tune.{k}" for k in BUDGET_KEYS)


def _without_password(cfg: Config) -> Config:
    """``cfg`` with the password of ``tune.storage`` hidden (:func:`shown_storage`), to be written to a file."""
    opts = tune_options(cfg)
    if opts.storage is None:
        return cfg
    return cfg.model_copy(update={"tune": opts.model_copy(update={"storage": shown_storage(opts.storage)})})


def _check_same_study(cfg: Config, study_dir: Path) -> None:
    """Write ``study.yaml`` (the config a new study starts with), or refuse to continue one started with
    settings that change its trials."""
    path = study_dir / "study.yaml"
    if not path.is_file():
        path.write_text(to_yaml(_without_password(cfg)))
        return
    saved = load_yaml(path.read_text(), str(path))
    changed = diff_settings(saved, cfg.model_dump(mode="json"), _neutral)
    if changed:
        listed = "".join(f"\n  {c}" for c in changed)
        raise ValueError(f"the study in {study_dir} was started with other settings (saved -> now):{listed}\n"
                         f"Continue it with the saved settings ({path}), or start another study (--study NAME)")


def prepare_teacher(cfg: Config, study_dir: Path, progress: bool = True) -> str | None:
    """The teacher every trial distils from, trained once: ``teacher.checkpoint`` as given; else
    ``<study dir>/teacher/teacher/best.pt``, trained now (or continued) unless already there. None: the trials
    need no file (a cache, or a pretrained teacher used as it is)."""
    if cfg.distill.cache.path is not None:
        return None
    assert cfg.teacher is not None  # check_study
    if cfg.teacher.checkpoint is not None:
        return cfg.teacher.checkpoint
    where = study_dir / "teacher"
    best = where / "teacher" / "best.pt"
    if not ((where / "results.json").is_file() and best.is_file()):
        teacher_cfg = _without_password(cfg).model_copy(update={
            "recipe": "teacher", "name": f"{cfg.name}-teacher",
            "report": cfg.report.model_copy(update={"latency": False})})
        resume = (where / "config.yaml").is_file() and bool((where / "config.yaml").read_text().strip())
        run_recipe(teacher_cfg, run_dir=where, resume=resume, progress=progress)
    elif progress:
        print(f"[tune] teacher: {best} (trained by an earlier run of this study)", file=sys.stderr, flush=True)
    return str(best.resolve()) if best.is_file() else None


def _split(total: int | None, workers: int) -> list[int | None]:
    """``total`` trials shared by ``workers`` (None: each runs until the time is up)."""
    if total is None:
        return [None] * workers
    return [total // workers + (1 if w < total % workers else 0) for w in range(workers)]


def _say_trial(progress: bool, worker: int, phase: Phase | None = None) -> Any:
    def say(study: Any, trial: Any) -> None:
        if phase is not None:
            phase.update()
        if not progress:
            return
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        if trial.state.name == "COMPLETE":
            outcome = f"val acc {100 * trial.value:.2f}%"
        elif trial.state.name == "PRUNED":
            outcome = f"pruned after epoch {max(trial.intermediate_values, default=0)}"
        elif "error" in trial.user_attrs:
            outcome = f"failed: {trial.user_attrs['error']}"
        else:
            outcome = trial.state.name.lower()
        took = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        tag = f" (worker {worker})" if worker else ""
        write_line(f"[tune] trial {trial.number}{tag}: {shown} -> {outcome} ({took:.1f}s)")  # above the bar
    return say


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trial_seeded_tpe(seed: int, startup_trials: int) -> Any:
    """A TPE sampler (``startup_trials`` random trials first) whose draws for trial number k are seeded by
    ``seed + k``. The storage numbers a study's trials, uniquely across every process that shares it, so no two
    trials draw alike (workers, a resumed study, ``distill tune`` started at the same moment on several machines),
    and the same study history gives the same proposals: a study is reproducible trial by trial, whichever
    process runs the trial. (One seed per process would repeat the random trials of processes that start
    together.)"""
    optuna = require_optuna()
    base: Any = optuna.samplers.BaseSampler

    class TrialSeededTPE(base):
        def __init__(self) -> None:
            self._number, self._tpe = -1, None  # every call names its trial: _for builds that trial's sampler

        def _for(self, trial: Any) -> Any:
            if trial.number != self._number:  # TPE's only state between trials is its random generator
                self._number = trial.number
                self._tpe = optuna.samplers.TPESampler(seed=seed + trial.number, n_startup_trials=startup_trials)
            return self._tpe

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE()


def _optimize(cfg: Config, study_dir: Path, study_name: str, storage_url: str, teacher: str | None,
              n_trials: int | None, timeout: float | None, worker: int, pruner: Any, progress: bool,
              bar: bool = False) -> None:
    """One worker: load the study and run its share of the trials; ``bar``: with a progress bar over them (one
    worker alone: the bars of several processes would overwrite each other)."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial: one line of ours, not optuna's traceback
    opts = tune_options(cfg)
    storage = open_storage(storage_url)
    sampler = trial_seeded_tpe(opts.seed, opts.startup_trials)
    if pruner is None:
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=opts.prune_startup_trials,
                                              n_warmup_steps=opts.prune_warmup_epochs)
                  if opts.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    shown = bar and progress and bars_enabled()
    with Phase(n_trials, "[tune] trials", unit="trial", say=write_line if shown else None) as phase:
        study.optimize(Objective(cfg, study_dir, study_name, teacher), n_trials=n_trials, timeout=timeout,
                       catch=(NonFiniteLossError,), callbacks=[_say_trial(progress, worker, phase if shown else None)])


def _worker(dump: dict[str, Any], study_dir: str, study_name: str, storage_url: str, teacher: str | None,
            n_trials: int | None, timeout: float | None, worker: int, threads: int, progress: bool) -> None:
    """A worker process (spawned): the config from its dump, then :func:`_optimize`; an error is printed as one
    line and ends the process with status 1."""
    torch.set_num_threads(threads)
    try:
        _optimize(resolve(dump, "the study's config"), Path(study_dir), study_name, storage_url, teacher, n_trials,
                  timeout, worker, None, progress)
    except Exception as e:
        print(f"error (tune worker {worker}): {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def run_study(cfg: Config, study_dir: str | Path | None = None, *, trials: int | None = None,
              minutes: float | None = None, storage: str | None = None, study: str | None = None,
              workers: int | None = None, progress: bool = True, pruner: Any = None) -> dict[str, Any]:
    """Run (or continue) the study of ``cfg`` (see the module docstring) and write its outputs; returns its
    summary (also in ``trials.md``).

    ``study_dir``: default ``<output_dir>/<study name>``. ``trials``, ``minutes``, ``storage``, ``study`` and
    ``workers`` override the ``tune`` section's (``trials`` and ``minutes`` given here: a budget of only what is
    given, e.g. ``minutes`` alone runs trials until the time is up). ``pruner``: an Optuna pruner instead of
    the section's (one worker only: the others are separate processes)."""
    optuna = require_optuna()
    check_study(cfg)
    opts = tune_options(cfg)
    name = _study_name(cfg, study)
    where = Path(study_dir) if study_dir is not None else Path(cfg.output_dir) / name
    if trials is None and minutes is None:
        trials, minutes = opts.trials, opts.minutes
    if trials is None and minutes is None:
        raise ValueError("tune: no budget: tune.trials and tune.minutes are both null; give --trials N or --minutes M")
    workers = workers if workers is not None else opts.workers
    if workers < 1:
        raise ValueError(f"tune.workers (--workers) must be at least 1, got {workers}")
    if pruner is not None and workers > 1:
        raise ValueError("a pruner object can be given to one worker only; use tune.pruner for several")
    where.mkdir(parents=True, exist_ok=True)
    _check_same_study(cfg, where)
    url = storage or opts.storage or default_storage(where)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize", load_if_exists=True)
    teacher = prepare_teacher(cfg, where, progress)
    started = time.perf_counter()
    timeout = minutes * 60 if minutes is not None else None
    shares = _split(trials, workers)
    if progress:
        budget = " and ".join(x for x in (f"{trials} trials" if trials is not None else "",
                                            f"{minutes:g} minutes" if minutes is not None else "") if x)
        print(f"[tune] study {name!r} in {shown_storage(url)}: {budget}, {workers} worker(s)", file=sys.stderr,
              flush=True)
    threads = max(1, torch.get_num_threads() // workers)
    spawn = multiprocessing.get_context("spawn")
    dump = cfg.model_dump(mode="json")
    others = [spawn.Process(target=_worker, args=(dump, str(where), name, url, teacher, shares[w], timeout, w,
                                                  threads, progress), name=f"distill-tune-{w}")
              for w in range(1, workers) if shares[w] != 0]
    for p in others:
        p.start()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if shares[0] != 0:
            _optimize(cfg, where, name, url, teacher, shares[0], timeout, 0, pruner, progress, bar=not others)
    finally:
        torch.set_num_threads(before)
        for p in others:
            p.join()
    failed = [p.name for p in others if p.exitcode != 0]
    summary = write_outputs(cfg, where, name, url, teacher, time.perf_counter() - started)
    if failed:
        raise RuntimeError(f"tune workers {', '.join(failed)} failed (their errors are above); the study keeps "
                           f"its trials: run the command again to continue it")
    return summary


# -- what the study found --------------------------------------------------------------------


def importances(study: Any, optuna: ModuleType) -> tuple[dict[str, float] | None, str]:
    """The parameters' importances for the validation accuracy over the completed trials: fANOVA (Hutter et al.
    2014), else mean decrease in impurity of a random forest; None and the reason when neither can say."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return None, f"not estimated: {len(complete)} completed trial(s), at least 2 needed (10 or more to trust)"
    problems = []
    for label, evaluator in (("fANOVA", optuna.importance.FanovaImportanceEvaluator(seed=0)),
                             ("mean decrease in impurity",
                              optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0))):
        try:
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
            rough = "; a rough guide below 10" if len(complete) < 10 else ""
            return {k: float(v) for k, v in found.items()}, f"{label}, over {len(complete)} completed trials{rough}"
        except Exception as e:  # too few distinct values, a parameter absent from some trials, sklearn missing
            problems.append(f"{label}: {e}")
    return None, "not estimated (" + "; ".join(problems) + ")"


def _order(name: str) -> tuple[int, str]:
    """Parameters in the space's order: method, its options, then the training settings."""
    place = {"method": 0, "temperature": 1, "alpha": 2, "lr": 4, "shift": 5, "crop_padding": 5, "epochs": 6,
             "views": 7, "mixup_alpha": 8}
    return place.get(name, 3), name


def _rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    names = sorted({k for t in study.trials for k in t.params}, key=_order)
    rows = []
    for t in study.trials:
        took = t.duration.total_seconds() if t.duration is not None else None
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.state.name == "COMPLETE" else None,
                     **{k: t.params.get(k) for k in names},
                     "epochs_trained": max(t.intermediate_values, default=0),
                     "duration_s": round(took, 2) if took is not None else None,
                     "run_dir": t.user_attrs.get("run_dir", "")})
    return names, rows


def write_outputs(cfg: Config, study_dir: Path, name: str, url: str, teacher: str | None,
                  seconds: float) -> dict[str, Any]:
    """``trials.csv``, ``trials.md``, ``best.yaml`` and the plots of the study as it stands; its summary."""
    optuna = require_optuna()
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    names, rows = _rows(study)
    columns = ["number", "state", "value", *names, "epochs_trained", "duration_s", "run_dir"]
    with open(study_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    found, how = importances(study, optuna)
    summary: dict[str, Any] = {"study": name, "storage": shown_storage(url), "dir": str(study_dir), "trials": len(rows),
                               "states": states, "importances": found, "importance_method": how,
                               "seconds": round(seconds, 1)}
    if best is not None:
        recipe = cfg.recipe if cfg.recipe in ("distill", "compare") else "distill"
        best_cfg = apply_params(cfg, best.params, recipe=recipe, name=f"{name}-best", teacher_checkpoint=teacher)
        head = (f"# distill tune: the best of {len(complete)} completed trials of study {name!r}: trial "
                f"{best.number}, validation accuracy {100 * best.value:.2f}%\n# (distilled/best.pt of "
                f"{best.user_attrs.get('run_dir')}; `distill run` of this file trains the same student)\n")
        (study_dir / "best.yaml").write_text(head + to_yaml(best_cfg, used_only=True))
        summary.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_config=str(study_dir / "best.yaml"))
    plots = _plots(study_dir, rows, found)
    (study_dir / "trials.md").write_text(_markdown(summary, names, rows, plots))
    return summary


def _markdown(summary: dict[str, Any], names: list[str], rows: list[dict[str, Any]], plots: str) -> str:
    said = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
    states = ", ".join(f"{n} {said[s]}" for s, n in summary["states"].items() if n)
    lines = [f"# Study {summary['study']}", "",
             f"{summary['trials']} trials ({states or 'none'}) in {summary['storage']}; objective: the distilled "
             "student's validation accuracy (the selected checkpoint's); the test split is not used.", ""]
    if "best_trial" in summary:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in summary["best_params"].items())
        lines += [f"Best: trial {summary['best_trial']}, validation accuracy {100 * summary['best_value']:.2f}% "
                  f"({params}); its config: {summary['best_config']}", ""]
    else:
        lines += ["No trial completed yet: no best.yaml.", ""]
    lines += ["## What mattered", "",
              f"Parameter importances for the validation accuracy ({summary['importance_method']}):", ""]
    if summary["importances"]:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in summary["importances"].items()]
    lines += ["", plots, ""]
    if rows:
        head = ["trial", "state", "val acc", *names, "epochs trained", "seconds"]
        lines += ["## Trials", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            value = f"{100 * r['value']:.2f}%" if r["value"] is not None else "-"
            cells = [str(r["number"]), r["state"].lower(), value,
                     *("-" if r[k] is None else _fmt(r[k]) for k in names), str(r["epochs_trained"]),
                     "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).rstrip() + "\n"


def _plots(study_dir: Path, rows: list[dict[str, Any]], found: dict[str, float] | None) -> str:
    """``history.png`` (each trial's validation accuracy and the best so far) and ``importance.png`` with
    matplotlib; without it, a note saying so."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return ("Plots: not drawn, matplotlib is not installed (pip install -c constraints.txt -e \".[plot]\" "
                "draws history.png and importance.png).")
    try:
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
        done = [r for r in rows if r["value"] is not None]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.scatter([r["number"] for r in done], [100 * r["value"] for r in done], s=14, label="trial")
        best, line = -math.inf, []
        for r in done:
            best = max(best, r["value"])
            line.append(100 * best)
        ax.step([r["number"] for r in done], line, where="post", color="C1", label="best so far")
        ax.set(xlabel="trial", ylabel="validation accuracy (%)", title="study history (completed trials)")
        ax.xaxis.set_major_locator(importlib.import_module("matplotlib.ticker").MaxNLocator(integer=True))
        ax.legend()
        fig.tight_layout()
        fig.savefig(study_dir / "history.png", dpi=120)
        plt.close(fig)
        drawn = ["history.png"]
        if found:
            fig, ax = plt.subplots(figsize=(6, 0.4 * len(found) + 1.2))
            keys = list(found)[::-1]
            ax.barh(keys, [found[k] for k in keys])
            ax.set(xlabel="importance", title="what mattered")
            fig.tight_layout()
            fig.savefig(study_dir / "importance.png", dpi=120)
            plt.close(fig)
            drawn.append("importance.png")
        return "Plots: " + ", ".join(f"![{p}]({p})" for p in drawn)
    except Exception as e:  # a plot is a view of trials.csv: its failure must not lose the study's outputs
        return f"Plots: not drawn ({type(e).__name__}: {e})."


# -- the recipe --------------------------------------------------------------------------------


def _roles(cfg: Config) -> Sequence[str]:
    return ("student",) if cfg.distill.cache.path is not None else ("teacher", "student")


@register_recipe("tune", options=TuneOptions, reads=("teacher", "student", "distill"), roles=_roles,
                 check=check_study, pairs=lambda tags: [], seeds=False)
def tune(run: Run) -> dict[str, Any]:
    """Search the distillation's method, temperature, alpha, learning rate, augmentation and epochs on the
    validation split with Optuna (``distill tune CONFIG`` runs the same study under ``output_dir/<study>``).

    The study lives in the run's directory; ``--resume`` continues it. Needs the ``tune`` extra (optuna)."""
    summary = run_study(run.cfg, run.dir, progress=run.show_progress)
    print(Path(summary["dir"], "trials.md").read_text(), end="", flush=True)  # the study's table
    return {"name": run.cfg.name, "recipe": "tune", "models": {}, "study": summary}


__all__ = ["FloatRange", "IntRange", "LogRange", "MissingOptunaError", "Objective", "ReportValidation",
           "TuneOptions", "apply_params", "check_study", "importances", "prepare_teacher", "require_optuna",
           "run_study", "selected_val_acc", "shown_storage", "suggest", "tune_options", "write_outputs"]
