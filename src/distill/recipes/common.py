"""The pieces every recipe shares: the run directory, data, models, teachers, results."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill import distributed, jsonio
from distill.checkpoint import CheckpointError, load_checkpoint, load_model_weights, remove_orphan_temps, write_atomic
from distill.config import (
    Config,
    RoleConfig,
    TrainConfig,
    diff_settings,
    find_recipe,
    load_yaml,
    recipe_names,
    result_neutral,
    to_yaml,
)
from distill.data.sources import load_dataset
from distill.data.sources.files import file_kind
from distill.data.streaming import BadFiles, FileOptions, load_file_splits
from distill.data.tensors import DataSplits, TensorData, make_splits, stratified_split
from distill.diagnostics import GENERIC_ADVICE, PredictionCollapseWarning, advice_for, collapse_warnings
from distill.engine import Callback, FitResult, evaluate, fit, resolve_device, split_logits
from distill.engine.loggers import RunLogger, make_loggers, view_grid
from distill.engine.progress import write_line
from distill.models import count_parameters, create_model, declared_preprocessing
from distill.models.registry import ImportNotAllowedError
from distill.objectives.base import Objective
from distill.recipes.views import student_views
from distill.report import format_table, model_report
from distill.teachers import Teacher
from distill.views import Views


#: Recipes that train on a training split streamed from disk (they read it only through ``Run.train``).
STREAMING_RECIPES = ("teacher", "baseline", "distill", "compare", "cache")


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """``obj`` as strict JSON (non-finite numbers as null, listed under ``nonfinite``), atomically."""
    write_atomic(path, lambda f: f.write((jsonio.dumps(obj, indent=2) + "\n").encode()))


def claim_run_dir(output_dir: str | Path, name: str) -> Path:
    """Claim ``output_dir/name``, else the first of ``name-2``, ``name-3``, ... that is new or an
    empty directory, and return it.

    The claim is atomic: a directory is ours once we create its ``config.yaml`` with ``O_EXCL``
    (after ``os.mkdir``, or in an empty directory that already existed), which exactly one
    process can do, so two runs started with the same name at the same moment never share a
    directory: the second takes the next suffix.
    """
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        candidate = base / (name if k == 1 else f"{name}-{k}")
        if _claim(candidate):
            return candidate
        k += 1


def claim_run_dir_on_main(output_dir: str | Path, name: str) -> Path:
    """:func:`claim_run_dir` on rank 0, the directory handed to every rank (under ``torchrun``); when
    rank 0 cannot create it, every rank raises the same ``OSError``."""
    claimed: Path | str = ""
    if distributed.is_main():
        try:
            claimed = claim_run_dir(output_dir, name)
        except OSError as e:
            claimed = f"cannot create a run directory under {output_dir}: {e}"
    claimed = distributed.broadcast_object(claimed)
    if isinstance(claimed, str):  # every rank raises alike
        raise OSError(claimed)
    return claimed


def _claim(directory: Path) -> bool:
    try:
        directory.mkdir()
    except FileExistsError:
        if not directory.is_dir() or any(directory.iterdir()):
            return False
    try:
        os.close(os.open(directory / "config.yaml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:  # another run was first
        return False
    return True


def _only_setup_files(directory: Path) -> bool:
    """Whether ``directory`` holds nothing a run produced but its ``config.yaml``, an empty
    ``metrics.jsonl`` and empty sub-directories (nothing worth keeping, nothing to resume)."""
    for p in directory.rglob("*"):
        if p.is_symlink():
            return False
        if p.is_dir():
            continue
        if p.parent == directory and (p.name == "config.yaml" or (p.name == "metrics.jsonl" and not p.stat().st_size)):
            continue
        return False
    return True


def augment_views(cfg: TrainConfig, data: DataSplits) -> Views | None:
    """``train.augment``'s random crop and flip as the engine's views (student and teacher see the same
    view); None when neither is on (the engine applies ``augment.shift`` itself)."""
    a = cfg.augment
    if not a.crop_padding and not a.flip:
        return None
    shape = tuple(data.in_shape)
    if len(shape) != 3:
        raise ValueError(f"train.augment.crop_padding and flip need images (C, H, W) or 1-D signals (C, 1, L); "
                         f"{data.name}'s inputs have shape {shape}; set them to 0 and false")
    side = max(shape[1:]) if min(shape[1:]) == 1 else min(shape[1:])  # a 1-D signal is cropped along its length
    if a.crop_padding >= side:
        raise ValueError(f"train.augment.crop_padding={a.crop_padding}: the random crop shifts the inputs "
                         f"{shape[1]}x{shape[2]} by up to that many pixels, so some would be entirely blank; "
                         f"use a padding below {side}")
    return Views(mode="same/rc", image_size=shape[1:], padding=a.crop_padding, flip=a.flip)


class Run:
    """One run's directory and shared state: ``runs/<name>/`` with config, metrics and results.

    ``config.yaml``: the resolved config; ``metrics.jsonl``: one line per model per epoch with
    every loss term and validation metric; ``results.json``: final test metrics per model;
    one sub-directory per model with ``best.pt`` and ``last.pt``.

    A new run claims its directory atomically (``run_dir``, or the first free one of
    ``output_dir/name``, ``name-2``, ...: :func:`claim_run_dir`) and removes it again if setup
    fails before any training output (:meth:`discard_if_empty`). ``resume=True`` continues the run
    in ``run_dir`` (default ``output_dir/name``): it must exist, and every setting that changes the
    result must match its ``config.yaml`` unless ``allow_changes`` (:func:`distill.config.diff_settings`,
    :func:`distill.config.result_neutral`); a refused resume writes nothing.

    Under torchrun every rank builds the same ``Run`` (with the directory rank 0 chose) and runs
    the same recipe; only rank 0 writes files and prints, and :meth:`finish` measures on rank 0
    and hands its results to every rank.

    ``callbacks``: listeners of the training loop's events (:class:`distill.engine.callbacks.Callback`) given to
    every model this run trains (e.g. ``distill tune``'s pruning on validation accuracy). ``report.loggers``
    adds the experiment trackers (:mod:`distill.engine.loggers`) on rank 0: they hear the same events and get
    the config, the views of a teaching mode, the final table and the run's files; :meth:`close` ends them.
    """

    def __init__(self, cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
                 progress: bool = True, allow_import: bool = False, allow_changes: bool = False,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.callbacks = tuple(callbacks)
        self.loggers: list[RunLogger] = []  # report.loggers, made once the data and models are checked
        self.allow_import = allow_import
        self.resume = resume
        self.allow_changes = allow_changes
        self.show_progress = progress
        self.started = time.perf_counter()
        self.device = distributed.init(resolve_device(cfg.device))  # this rank's device under torchrun
        self.created = False  # this process made the directory: remove it again if setup fails
        if resume:
            self.dir = Path(run_dir) if run_dir is not None else Path(cfg.output_dir) / cfg.name
            self._check_resumable()  # before anything is written: a refused resume changes nothing
        else:
            self.dir = self._claim(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        if distributed.is_main():
            write_atomic(self.dir / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
            if not resume and self.metrics_path.exists():
                self.metrics_path.unlink()
            orphans = remove_orphan_temps(self.dir)  # left by a process killed while writing
            if orphans:
                self.say(f"removed {len(orphans)} temporary file(s) left by an interrupted write: "
                         f"{', '.join(str(p.relative_to(self.dir)) for p in orphans)}")
        self._checkpoints: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}  # recipe facts for results.json (e.g. the transfer set)
        self.fit_warnings: dict[str, list[str]] = {}  # per model tag: fit's warnings (collapse on validation)
        self.test_predictions: dict[str, torch.Tensor] = {}  # per model tag: its top-1 on the test split (CPU)
        self.test_labels: torch.Tensor | None = None  # the labels of those predictions (CPU)
        self._advice: dict[str, str] = {}  # per model tag: what to change if it collapses
        self.bad_files: BadFiles | None = None  # image files: the unreadable ones skipped
        ranks = f", {distributed.world_size()} processes" if distributed.is_distributed() else ""
        self.say(f"run directory {self.dir} (device {self.device}{ranks})")
        try:
            self.data = self._load_data()
            if self.data.stream is not None and cfg.recipe not in STREAMING_RECIPES:
                raise ValueError(f"recipe {cfg.recipe!r} needs the training split in memory, but it is streamed from "
                                 f"disk (data.stream={cfg.data.stream}); set data.stream=false if it fits, or use "
                                 f"one of the recipes {', '.join(STREAMING_RECIPES)}")
            self.say(self.data.summary())
            self._check_models()
            self._check_views()
            self.loggers = self._make_loggers()
        except Exception:
            self.discard_if_empty()
            raise
        self.callbacks = (*self.callbacks, *self.loggers)

    def _make_loggers(self) -> list[RunLogger]:
        """``report.loggers`` on rank 0 (none elsewhere), each given the config."""
        r = self.cfg.report
        if not r.loggers or not distributed.is_main():
            return []
        loggers = make_loggers(r.loggers, self.dir, run_name=self.dir.name,
                               experiment=r.mlflow_experiment or self.cfg.name, mlflow_uri=r.mlflow_uri,
                               resume=self.resume)
        for logger in loggers:
            logger.log_config(self.cfg.model_dump(mode="json"), to_yaml(self.cfg))
        self.say("logging to " + "; ".join(_where(name, self.dir, r.mlflow_uri) for name in r.loggers))
        return loggers

    def close(self, failed: bool = False) -> None:
        """End the experiment trackers (``report.loggers``), once, after giving them the files the run wrote in
        its directory (results.json, report.md, metrics.jsonl, plots, a study's trials); ``failed``: the run ended
        with an error (nothing more is given)."""
        loggers, self.loggers = self.loggers, []
        kept = (".json", ".jsonl", ".md", ".csv", ".png", ".yaml")
        files = [] if failed else sorted(p for p in self.dir.iterdir()
                                         if p.is_file() and p.suffix in kept and p.name != "config.yaml")
        for logger in loggers:
            for path in files:
                logger.log_file(path)
            logger.close(failed)

    def _claim(self, run_dir: str | Path | None) -> Path:
        """The directory of a new run: ``run_dir`` as given, or the first free one of
        ``output_dir/name``, ``name-2``, ... claimed atomically (:func:`claim_run_dir`) by rank 0
        and handed to every rank."""
        if run_dir is not None:  # the caller's choice, used as it is
            run_dir = Path(run_dir)
            if distributed.is_main():
                self.created = not run_dir.exists()
                run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir
        wanted = Path(self.cfg.output_dir) / self.cfg.name
        claimed = claim_run_dir_on_main(self.cfg.output_dir, self.cfg.name)
        self.created = distributed.is_main()
        if claimed != wanted and distributed.is_main():
            print(f"{wanted} already holds a run; writing to {claimed} instead (use --resume to continue "
                  f"{wanted}, or --name to choose)", file=sys.stderr, flush=True)
        return claimed

    def _check_resumable(self) -> None:
        """Refuse to resume a run that does not exist, or whose saved ``config.yaml`` differs from
        this config in a setting that changes the result (unless ``allow_changes``)."""
        saved_path = self.dir / "config.yaml"
        if not saved_path.is_file():
            raise ValueError(f"no run at {self.dir} (no config.yaml there) to resume; start without --resume")
        saved = load_yaml(saved_path.read_text(), str(saved_path))
        if not isinstance(saved, dict):
            raise ValueError(f"no run at {self.dir} ({saved_path} is empty: the run stopped before it started); "
                             "start without --resume")
        try:  # with today's defaults for keys an older version did not write
            saved = type(self.cfg).model_validate(saved).model_dump(mode="json")
        except ValueError:
            pass  # compared as written: the differences are listed
        changed = diff_settings(saved, self.cfg.model_dump(mode="json"), result_neutral)
        if not changed:
            return
        listed = "".join(f"\n  {c}" for c in changed)
        if not self.allow_changes:
            raise ValueError(
                f"cannot resume {self.dir}: {len(changed)} setting(s) that change the result differ from its "
                f"config.yaml (saved -> now):{listed}\nResume with the saved settings, start a new run (without "
                "--resume, or under another --name), or pass --allow-changes to continue with the new ones."
            )
        if distributed.is_main():
            print(f"resuming {self.dir} with changed settings (saved -> now):{listed}", file=sys.stderr, flush=True)

    def discard_if_empty(self) -> bool:
        """Remove the run directory if this run created it and it holds nothing but what setup
        wrote (a run that failed before any training output must not block its name). Returns
        whether it was removed."""
        if not (self.created and distributed.is_main() and self.dir.is_dir() and _only_setup_files(self.dir)):
            return False
        shutil.rmtree(self.dir)
        return True

    def _check_models(self) -> None:
        """Build every configured model once on the meta device (no memory, no compute), so a
        typo in the student's config fails now rather than after the teacher has trained."""
        cache = self.cfg.distill.cache.path
        uses_cache = self.cfg.recipe in ("distill", "compare") and cache is not None and Path(cache).exists()
        roles = {"teacher": None if uses_cache else self.cfg.teacher, "student": self.cfg.student}
        for key, role in roles.items():  # a cache stands in for the teacher
            if role is None:
                continue
            spec = self._spec_for(role)
            with torch.device("meta"):
                model = self._create(role, spec)
            self._check_preprocessing(key, spec, model)
            if key == "teacher":
                self._check_class_names(spec, model)

    def _check_class_names(self, spec: dict[str, Any], model: nn.Module) -> None:
        """A teacher that names its classes (a Hugging Face config's id2label) must name the data's, in its
        order: the same names in another order are an error (its outputs would teach the wrong classes);
        other names are a warning (they may be synonyms)."""
        names = getattr(model, "class_names", None)
        if not names or tuple(names) == tuple(self.data.class_names):
            return
        ours = tuple(self.data.class_names)
        pairs = ", ".join(f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(names, ours)) if a != b)
        if sorted(names) == sorted(ours):
            raise ValueError(f"teacher.model ({spec['name']}) predicts the data's classes in another order (its "
                             f"classes vs the data's: {pairs}); the data's order is its class folders' sorted names: "
                             f"name them so that they sort as the teacher's labels")
        self.warn("teacher", f"its class names differ from the data's ({pairs[:300]}); check that it predicts the "
                             f"data's classes in the data's order")

    def _check_preprocessing(self, key: str, spec: dict[str, Any], model: nn.Module) -> None:
        """Refuse normalized data for a model that prepares its own inputs (it takes [0, 1] pixels)."""
        prep = declared_preprocessing(model)
        if prep is not None and self.cfg.data.normalize:
            raise ValueError(
                f"{key}.model ({spec['name']}) prepares its own inputs ({prep.describe()}) and takes pixels in "
                f"[0, 1], but data.normalize is true, which would normalize them first with the data's statistics; "
                f"set data.normalize: false (--set data.normalize=false)")

    def _check_views(self) -> None:
        """Make each model's views once now (``train.augment``'s crop and flip, ``distill.views``), so a
        mode the inputs' shape cannot take is refused before anything trains."""
        for role in (self.cfg.teacher, self.cfg.student):
            if role is not None:
                augment_views(role.train, self.data)
        if self.cfg.recipe in ("distill", "compare") and self.cfg.student is not None:
            student_views(self.cfg, self.data, self.cfg.student.train.augment.shift)

    # -- output -------------------------------------------------------------------------
    def say(self, line: str) -> None:
        if self.show_progress and distributed.is_main():
            write_line(line)  # above a progress bar, if one is drawn (distill.engine.progress)

    def _progress_writer(self) -> Callable[[str], None] | None:
        """Where a long phase shows its progress (:class:`distill.engine.progress.Phase`): rank 0, not quiet."""
        return self.say if self.show_progress and distributed.is_main() else None

    def log(self, record: dict[str, Any]) -> None:
        if distributed.is_main():
            with open(self.metrics_path, "a") as f:
                f.write(jsonio.dumps(record) + "\n")  # NaN as null, named under "nonfinite"

    def write_results(self, rows: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        results = {
            **self.extra,
            "name": self.cfg.name,
            "recipe": self.cfg.recipe,
            "data": {"name": self.data.name, "train": len(self.data.train), "val": self._evaluated("val"),
                     "test": self._evaluated("test"), "num_classes": self.data.num_classes, **self._file_record()},
            "models": rows,
            **(extra or {}),
            "device": str(self.device),
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        if distributed.is_main():
            write_json_atomic(self.dir / "results.json", results)
            table = format_table([{"model": k, **v} for k, v in rows.items()], markdown=True)
            self._write_predictions()
            (self.dir / "report.md").write_text(f"# {self.cfg.name}\n\n{self.data.summary()}\n\n{table}\n")
            for logger in self.loggers:
                logger.log_table(rows, table)
        return results

    def _write_predictions(self) -> None:
        """``test_predictions.npz``: the test labels (``labels``) and each measured model's top-1 class on the
        test split (under its tag), for paired comparisons across runs (``distill run --seeds``)."""
        if not self.test_predictions:
            return
        labels = self.test_labels if self.test_labels is not None else self.data.test.y.cpu()
        arrays: dict[str, Any] = {"labels": labels.numpy()}
        arrays.update({tag: p.numpy() for tag, p in self.test_predictions.items()})
        write_atomic(self.dir / "test_predictions.npz", lambda f: np.savez(f, **arrays))

    # -- data and models ------------------------------------------------------------------
    def _load_data(self) -> DataSplits:
        """The splits on the device; with ``train.data_on_device: false`` the training split stays in
        host memory (fit copies each batch over), validation and test go to the device."""
        d = self.cfg.data
        val = d.val_size if d.val_size < 1 else int(d.val_size)
        on_device = self.cfg.train.data_on_device
        kind = file_kind(d.name, d.path)
        if kind is not None:  # image files: decoded here, or streamed from disk
            options = FileOptions(d.image_hw, d.channels, d.stream, d.num_workers, d.max_bad_fraction)
            data, self.bad_files = load_file_splits(kind, str(d.path), options, val_size=val, split_seed=d.split_seed,
                                    normalize=d.normalize, train_size=d.train_size, device=self.device,
                                    say=self.say if self.show_progress else None)
            if not on_device and data.stream is None:
                data = dataclasses.replace(data, train=data.train.to("cpu"))
            return data
        with distributed.main_first():  # one download, not one per process
            raw = load_dataset(d.name, d.path, download=d.download)
        data = make_splits(raw, val_size=val, split_seed=d.split_seed, normalize=d.normalize,
                           device=self.device if on_device else "cpu")
        if d.train_size is not None and d.train_size < len(data.train):
            _, keep = stratified_split(data.train.y, d.train_size, d.split_seed + 1)
            data = dataclasses.replace(data, train=data.train.subset(keep.to(data.train.x.device)))
        if not on_device:
            train = data.train
            if self.device.type == "cuda":  # pinned once here, so that every fit of the run copies from it
                train = TensorData(train.x.pin_memory(), train.y.pin_memory())
            data = dataclasses.replace(data, train=train, val=data.val.to(self.device), test=data.test.to(self.device))
        return data

    def _evaluated(self, split: str) -> int:
        """The examples of the validation or test split that are evaluated: a split streamed from disk less
        its files found unreadable (a split in memory holds only the readable ones)."""
        data = getattr(self.data, split)
        bad = self.bad_files.count(split) if self.bad_files is not None and data.stream is not None else 0
        return len(data) - bad

    def _file_record(self) -> dict[str, Any]:
        """For image files: whether the training split was streamed, and the unreadable files skipped (all, and
        per split under ``bad_files_by_split`` when there are any)."""
        bad = self.bad_files
        if bad is None:
            return {}
        record = {"streamed": self.data.stream is not None, "bad_files": bad.record()}
        if bad.found:
            record["bad_files_by_split"] = {s: bad.record(s) for s in ("train", "val", "test") if bad.count(s)}
        return record

    def _say_bad_files(self, tag: str, before: dict[str, int]) -> None:
        """A line per split with files found unreadable since ``before`` (counts per split)."""
        if self.bad_files is None:
            return
        for split in ("train", "val", "test"):
            if self.bad_files.count(split) > before.get(split, 0):
                self.say(f"[{tag}] {self.bad_files.line(split)}")

    def _bad_counts(self) -> dict[str, int]:
        bad = self.bad_files
        return {s: bad.count(s) for s in ("train", "val", "test")} if bad is not None else {}

    def data_record(self) -> dict[str, Any]:
        return {"name": self.data.name, "mean": self.data.mean.tolist(), "std": self.data.std.tolist(),
                "num_classes": self.data.num_classes, "class_names": list(self.data.class_names),
                "split_seed": self.cfg.data.split_seed}

    def model_spec(self, role: RoleConfig) -> dict[str, Any]:
        assert role.model is not None
        return {"name": role.model.name, "kwargs": role.model.kwargs,
                "num_classes": self.data.num_classes, "in_shape": list(self.data.in_shape)}

    def build_model(self, role: RoleConfig, seed_offset: int,
                    in_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The role's model, initialized from ``seed + seed_offset`` (or its checkpoint), for inputs of
        the data's shape or ``in_shape`` (a student at another resolution)."""
        spec = self._spec_for(role)
        if in_shape is not None:
            spec = {**spec, "in_shape": list(in_shape)}
        torch.manual_seed(self.cfg.seed + seed_offset)
        model = self._create(role, spec)
        if role.checkpoint is not None:
            load_model_weights(model, self._checkpoint(role.checkpoint), role.checkpoint, spec)
        return model, spec

    def _create(self, role: RoleConfig, spec: dict[str, Any]) -> nn.Module:
        """``create_model`` for ``spec``. A spec read from the role's checkpoint (no ``model`` in the config)
        builds registered models only, unless the run allows imports (``--allow-model-import``): the file
        must not choose code to import. A model named in the config is the user's own choice."""
        try:
            return create_model(spec["name"], spec["num_classes"], tuple(spec["in_shape"]),
                                allow_import=role.model is not None or self.allow_import, **spec["kwargs"])
        except ImportNotAllowedError as e:
            raise CheckpointError(f"checkpoint {role.checkpoint}: {e}; or name the model in the config "
                                  f"(model: {{name: {spec['name']}, ...}} beside checkpoint:)") from None

    def _checkpoint(self, path: str) -> dict[str, Any]:
        """A checkpoint named in the config, read from disk once per run."""
        if path not in self._checkpoints:
            self._checkpoints[path] = load_checkpoint(path)
        return self._checkpoints[path]

    def _spec_for(self, role: RoleConfig) -> dict[str, Any]:
        """The model to build for ``role``: from its config, or recorded in its checkpoint."""
        saved = self._checkpoint(role.checkpoint).get("model_spec") if role.checkpoint is not None else None
        if saved and saved.get("num_classes") != self.data.num_classes:
            raise ValueError(
                f"checkpoint {role.checkpoint} predicts {saved['num_classes']} classes but the data "
                f"({self.data.name}) has {self.data.num_classes}; teacher and student must share the label set"
            )
        if role.model is not None:
            return self.model_spec(role)
        if not saved or not saved.get("name"):
            raise CheckpointError(f"{role.checkpoint} does not record its architecture; add its model to the config")
        if tuple(saved["in_shape"]) != tuple(self.data.in_shape):
            raise ValueError(
                f"checkpoint {role.checkpoint} was trained on inputs of shape {tuple(saved['in_shape'])} but "
                f"{self.data.name} has {tuple(self.data.in_shape)}"
            )
        return dict(saved)

    def train(self, tag: str, model: nn.Module, spec: dict[str, Any], objective: Objective, role: RoleConfig,
              teacher: Teacher | None = None, data: DataSplits | None = None,
              train: TrainConfig | None = None, views: Any = None) -> FitResult:
        """Fit ``model`` under ``run_dir/tag`` with the role's settings (or ``train``) on the run's data
        (or ``data``: e.g. a subset of the training set), logging to metrics.jsonl."""
        cfg = train or role.train
        data = data or self.data
        views = views if views is not None else augment_views(cfg, data)
        length = f"{cfg.max_steps} steps" if cfg.max_steps is not None else f"{cfg.epochs} epochs"
        self.say(f"[{tag}] training {spec['name']} ({count_parameters(model):,} parameters) "
                 f"for {length} on {len(data.train)} examples with {type(objective).__name__}")
        if data.stream is not None and len(data.train) != data.stream.num_examples:
            raise ValueError(f"[{tag}] a subset of a training split streamed from disk is not supported; set "
                             f"data.stream=false")
        batches = data.stream.batches(cfg.batch_size, self.device, self.cfg.seed) if data.stream is not None else None
        bad_before = self._bad_counts()
        if self.loggers and isinstance(views, Views):
            self._log_views(tag, views, data)
        result = fit(model, objective, data, cfg, teacher=teacher, device=self.device,
                     seed=self.cfg.seed, out_dir=self.dir / tag, tag=tag, log=self.log, resume=self.resume,
                     allow_changes=self.allow_changes,
                     checkpoint_extra={"model_spec": spec, "data": self.data_record()},
                     progress=self.say if self.show_progress else None, views=views, batches=batches,
                     callbacks=self.callbacks)
        self.fit_warnings[tag], self._advice[tag] = result.warnings, advice_for(objective)
        self._say_bad_files(tag, bad_before)
        return result

    def _log_views(self, tag: str, views: Views, data: DataSplits) -> None:
        """What ``tag``'s teaching mode shows student and teacher of the first 8 training images, as an image for
        the loggers (one row per image: student view, teacher view), drawn from a generator of its own (the
        training's random streams are untouched)."""
        if len(data.in_shape) != 3 or data.stream is not None or len(data.train) == 0:
            return
        n = min(8, len(data.train))
        x, index = data.train.x[:n].to(self.device).float(), torch.arange(n, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        student_x, teacher_x = views(x, index, generator=generator)
        image = view_grid(student_x, teacher_x, data.mean, data.std)
        for logger in self.loggers:
            logger.log_image(tag, "views", image)

    def report(self, model: nn.Module, tag: str, teacher_predictions: torch.Tensor | None) -> dict[str, Any]:
        """The model's results row; ``warnings``: its collapse warnings from training (validation)
        and on the test set (:mod:`distill.diagnostics`), also shown on stderr."""
        path = self.dir / tag / "best.pt"
        if not path.exists() and tag == "teacher" and self.cfg.teacher is not None and self.cfg.teacher.checkpoint:
            path = Path(self.cfg.teacher.checkpoint)  # a given teacher: its own file
        ev = evaluate(model, self.data.test, say=self._progress_writer(),
                      desc=f"[{tag}] test")  # one pass over the test split for the row, warnings and predictions
        row = model_report(model, self.data.test, teacher_predictions=teacher_predictions,
                           checkpoint=path if path.exists() else None, latency=self.cfg.report.latency, evaluation=ev)
        predictions = ev.predictions
        self.test_predictions[tag], self.test_labels = predictions.cpu(), ev.labels.cpu()
        test = collapse_warnings(predictions, ev.labels,
                                 self.data.num_classes, split="test", advice=self._advice.get(tag, GENERIC_ADVICE),
                                 class_names=self.data.class_names)
        for line in test:
            self.warn(tag, line)
        row["warnings"] = [*self.fit_warnings.get(tag, []), *test]
        return row

    def warn(self, tag: str, line: str) -> None:
        """A warning about model ``tag`` on stderr (rank 0): a progress line, or with progress off a
        Python warning (``--quiet`` silences progress, not warnings), as ``fit`` shows its own."""
        if not distributed.is_main():
            return
        if self.show_progress:
            self.say(f"[{tag}] WARNING: {line}")
        else:
            warnings.warn(f"[{tag}] {line}", PredictionCollapseWarning, stacklevel=2)

    def teacher_predictions(self, teacher: nn.Module) -> torch.Tensor:
        return split_logits(teacher, self.data.test)[0].argmax(-1)

    def finish(self, models: dict[str, nn.Module], reference: nn.Module | torch.Tensor | None,
               extra: dict[str, Any] | None = None,
               summarize: Callable[[dict[str, dict[str, Any]]], dict[str, Any]] | None = None,
               recorded: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Test-set rows for ``models``, written to results.json and report.md and printed; returns
        the results. Agreement is measured against ``reference`` (a model, or its test-set
        predictions); ``summarize(rows)`` adds recipe-specific numbers under ``summary``.
        ``recorded``: rows of models that are not here to measure (a cached teacher: what its cache
        recorded, None where unknown), listed first. Under torchrun rank 0 measures (alone, so
        latency is not disturbed) and every rank returns its results."""
        if not distributed.is_main():
            return distributed.broadcast_object({})  # a placeholder: rank 0's results replace it
        self.say(f"measuring test metrics{', latency' if self.cfg.report.latency else ''} and size ...")
        bad_before = self._bad_counts()
        preds = self.teacher_predictions(reference) if isinstance(reference, nn.Module) else reference
        rows = {**(recorded or {}), **{tag: self.report(m, tag, preds) for tag, m in models.items()}}
        self._say_bad_files("test", bad_before)  # a streamed test split's, found reading it
        extra = dict(extra or {})
        if summarize is not None:
            extra["summary"] = summarize(rows)
        results = self.write_results(rows, extra)
        self.print_table(rows)
        self.say(f"wrote {self.dir}/results.json, report.md, metrics.jsonl, config.yaml and checkpoints "
                 f"({results['wall_time_s']:.1f}s)")
        return distributed.broadcast_object(results)

    def print_table(self, rows: dict[str, dict[str, Any]]) -> str:
        table = format_table([{"model": k, **v} for k, v in rows.items()])
        if distributed.is_main():
            print(table, flush=True)
        return table


# -- running a recipe ----------------------------------------------------------------------


def get_recipe(name: str) -> Callable[[Run], dict[str, Any]]:
    """The function that runs recipe ``name``."""
    spec = find_recipe(name)
    if spec is None:
        raise ValueError(f"recipe: unknown recipe {name!r}; choose one of {', '.join(recipe_names())}")
    return spec.run


def run_recipe(cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True, allow_import: bool = False, allow_changes: bool = False,
               callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run ``cfg.recipe`` and return its results (also written to ``<run_dir>/results.json``).

    ``run_dir``: where the run's files go (default: ``output_dir/name``, or the first free
    ``name-2``, ``name-3``, ... claimed atomically). ``resume``: continue the run in ``run_dir``
    (default ``output_dir/name``), which must exist and have been made with the same settings
    that change the result, unless ``allow_changes``. A run that fails before writing any
    training output removes the directory it created.

    ``allow_import``: a checkpoint named without its ``model`` (the architecture read from the file) may
    name its builder by import path (off by default: the file would choose code to run).
    ``callbacks``: listeners of the training loop's events for every model the run trains (:class:`Run`)."""
    recipe = get_recipe(cfg.recipe)
    run = Run(cfg, run_dir=run_dir, resume=resume, progress=progress, allow_import=allow_import,
              allow_changes=allow_changes, callbacks=callbacks)
    try:
        results = recipe(run)
    except BaseException:
        run.close(failed=True)
        run.discard_if_empty()
        raise
    run.close()
    return results


def _where(logger: str, run_dir: Path, mlflow_uri: str | None) -> str:
    """Where ``logger`` writes, for the run's first lines."""
    if logger == "tensorboard":
        return f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}"
    return f"MLflow store {mlflow_uri or 'sqlite:///' + str((run_dir / 'mlflow' / 'mlflow.db').resolve())}"
