"""Experiment trackers fed by the training loop's events: TensorBoard and MLflow (``report.loggers``).

A :class:`RunLogger` is a :class:`~distill.engine.callbacks.Callback`: every ``train.log_every`` steps it
records the running mean of each loss term since the epoch began (``train_step/<term>``, at the global step;
this process's mean under DDP), and after every epoch the epoch's record (``train/<term>`` averaged over the
epoch and the ranks, ``val/acc``, ``val/nll``, ``lr``, ``epoch_time_s``, at the step the epoch ended). The run
adds the config (:meth:`RunLogger.log_config`), the final table (:meth:`RunLogger.log_table`), images such as
the views a teaching mode shows each model (:meth:`RunLogger.log_image`) and files (:meth:`RunLogger.log_file`).

- :class:`TensorBoardLogger`: event files under ``<run dir>/tensorboard/``, one sub-directory per model
  (``teacher``, ``baseline``, ``distilled``, ...) so that TensorBoard overlays the models' curves; the config
  and the table as text in the directory itself. ``tensorboard --logdir runs/NAME/tensorboard``.
- :class:`MLflowLogger`: one MLflow run per distill run, metrics keyed ``<model>/<name>`` (the epochs' records
  only, not the log steps': MLflow's SQLite store takes a fraction of a millisecond of CPU per value), the config
  flattened into params (``train.optimizer.lr``), each model's test row as ``test/<model>/<column>`` metrics,
  and config.yaml, results.json, report.md and the images as artifacts. By default the tracking store is a
  SQLite file inside the run directory (``sqlite:///<run dir>/mlflow/mlflow.db``, artifacts in
  ``<run dir>/mlflow/artifacts``): no server, no network. ``mlflow ui --backend-store-uri`` that URI shows it.

Neither slows the step: a logger does nothing on ``on_step`` and keeps the scalars in memory; it writes them
after an epoch at most every :data:`FLUSH_SECONDS` (MLflow: one batch), when a model's training ends and when
the run ends. MLflow's usage telemetry is turned off
(``MLFLOW_DISABLE_TELEMETRY``, unless set): nothing goes over the network.
The packages are optional (the ``tensorboard`` and ``mlflow`` extras) and imported when a logger is made.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.engine.callbacks import Callback, LossTracker

FLUSH_SECONDS = 10
"""How often the loggers write what they buffered during training (after an epoch that ends at least this long
after their last write): a live view lags by at most this much, or one epoch."""

LOGGERS = ("tensorboard", "mlflow")
"""The names ``report.loggers`` accepts."""

EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


class MissingLoggerError(ValueError):
    """The package of a configured logger is not installed; the message names the extra to install."""


def _require(module: str, logger: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingLoggerError(
            f"report.loggers: {logger!r} needs the package {module.split('.')[0]!r}, which is not installed ({e}); "
            f"install the {EXTRA[logger]} extra: pip install -c constraints.txt -e \".[{EXTRA[logger]}]\", or "
            f"remove {logger!r} from report.loggers") from None


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's record (``fit``'s history) that a tracker plots."""
    out = {k: float(v) for k, v in record.items() if k.startswith(("train/", "val/")) and isinstance(v, (int, float))}
    if "lr" in record:
        out["lr"] = float(record["lr"])
    if "time_s" in record:
        out["epoch_time_s"] = float(record["time_s"])
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"train.optimizer.lr": "0.1", ...}`` (lists as their YAML-like text)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


class RunLogger(Callback):
    """A tracker of one distill run, fed by the loop's events (scalars per log step and per epoch) and by the
    run (config, table, images, files). Subclasses write :meth:`scalars` and the rest."""

    def __init__(self) -> None:
        self.model = "model"  # the model being trained (from on_fit_start)
        self.written = time.perf_counter()  # when the buffered scalars were last written

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        self.model = tag

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        self.scalars(self.model, {f"train_step/{k}": v for k, v in tracker.means().items()}, step)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.scalars(str(record.get("model", self.model)), epoch_scalars(record), int(record["step"]))
        if time.perf_counter() - self.written >= FLUSH_SECONDS:
            self.flush()

    def on_fit_end(self, tag: str) -> None:
        self.flush()

    def scalars(self, model: str, values: Mapping[str, float], step: int) -> None:
        """``values`` of ``model`` at global ``step`` (kept until :meth:`flush` writes them)."""
        raise NotImplementedError

    def log_config(self, config: Mapping[str, Any], yaml_text: str) -> None:
        """The run's resolved config (a plain dump and its YAML)."""

    def log_table(self, rows: Mapping[str, Mapping[str, Any]], markdown: str) -> None:
        """The final results table: one row of test metrics per model, and the table as Markdown."""

    def log_image(self, model: str, name: str, image: np.ndarray) -> None:
        """An RGB image (H, W, 3) uint8 about ``model`` (e.g. the views it was taught on)."""

    def log_file(self, path: Path) -> None:
        """A file the run wrote (results.json, report.md, a plot)."""

    def flush(self) -> None:
        """Write what is buffered: after an epoch at least :data:`FLUSH_SECONDS` after the last write, at the end
        of each model's training and of the run."""

    def close(self, failed: bool = False) -> None:
        """Flush and end; ``failed``: the run ended with an error."""


class _EventFile:
    """One TensorBoard event file (``events.out.tfevents.*``), written in the calling thread: TensorBoard's own
    writer hands every event to a thread, which on a busy CPU takes the interpreter from the training loop for
    milliseconds at a time."""

    def __init__(self, directory: Path, event_pb2: ModuleType, record_writer: ModuleType) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_IDS)}"
        self.event_pb2 = event_pb2
        self.file = open(directory / name, "wb")  # noqa: SIM115 - closed by close()
        self.records = record_writer.RecordWriter(self.file)
        self.records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def write(self, summary: Any, step: int, wall_time: float) -> None:
        self.records.write(self.event_pb2.Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


_FILE_IDS = itertools.count()


class TensorBoardLogger(RunLogger):
    """TensorBoard event files in ``log_dir`` (one sub-directory per model; the config and the table in
    ``log_dir`` itself), the summaries made by ``torch.utils.tensorboard.summary`` (the ``tensorboard`` extra)."""

    def __init__(self, log_dir: str | Path) -> None:
        super().__init__()
        self.summary = _require("torch.utils.tensorboard.summary", "tensorboard")
        self.event_pb2 = _require("tensorboard.compat.proto.event_pb2", "tensorboard")
        self.summary_pb2 = _require("tensorboard.compat.proto.summary_pb2", "tensorboard")
        self.record_writer = _require("tensorboard.summary.writer.record_writer", "tensorboard")
        self.log_dir = Path(log_dir)
        self.files: dict[str, _EventFile] = {}
        self.pending: list[tuple[str, dict[str, float], int, float]] = []  # model, values, step, wall time

    def _file(self, model: str) -> _EventFile:
        """The event file of ``model`` ('' for the run itself: config and table)."""
        if model not in self.files:
            self.files[model] = _EventFile(self.log_dir / model if model else self.log_dir, self.event_pb2,
                                           self.record_writer)
        return self.files[model]

    def scalars(self, model: str, values: Mapping[str, float], step: int) -> None:
        self.pending.append((model, dict(values), step, time.time()))

    def log_config(self, config: Mapping[str, Any], yaml_text: str) -> None:
        text = "\n".join("    " + line for line in yaml_text.splitlines())  # Markdown code block
        self._file("").write(self.summary.text("config", text), 0, time.time())
        self._file("").flush()

    def log_table(self, rows: Mapping[str, Mapping[str, Any]], markdown: str) -> None:
        self._file("").write(self.summary.text("results", markdown), 0, time.time())
        for model, row in rows.items():
            self.scalars(model, {f"test/{k}": v for k, v in _numbers(row).items()}, 0)
        self.flush()

    def log_image(self, model: str, name: str, image: np.ndarray) -> None:
        self._file(model).write(self.summary.image(name, image, dataformats="HWC"), 0, time.time())
        self._file(model).flush()

    def log_file(self, path: Path) -> None:
        """A plot (``.png``, e.g. a study's history.png) as an image of the run, when Pillow can read it; other
        files are not TensorBoard's."""
        if path.suffix != ".png":
            return
        try:
            pil = importlib.import_module("PIL.Image")
        except ImportError:
            return
        with pil.open(path) as im:
            self.log_image("", path.stem, np.asarray(im.convert("RGB")))

    def flush(self) -> None:
        self.written = time.perf_counter()
        pending, self.pending = self.pending, []
        Value = self.summary_pb2.Summary.Value
        for model, values, step, wall in pending:  # one event per call: its values share step and time
            summary = self.summary_pb2.Summary(value=[Value(tag=k, simple_value=v) for k, v in values.items()])
            self._file(model).write(summary, step, wall)
        for f in self.files.values():
            f.flush()

    def close(self, failed: bool = False) -> None:
        self.flush()
        for f in self.files.values():
            f.close()
        self.files.clear()


class MLflowLogger(RunLogger):
    """One MLflow run (the ``mlflow`` extra; ``mlflow-skinny`` suffices) in the tracking store at ``tracking_uri``,
    experiment ``experiment``, named ``run_name``. Metrics are buffered and written once per epoch.

    ``artifact_dir``: where a new experiment keeps its artifacts (default: MLflow's choice for the store).
    ``run_id_file``: where the MLflow run's id is kept, so that a resumed distill run (``--resume``) continues
    the same MLflow run."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, *, artifact_dir: Path | None = None,
                 run_id_file: Path | None = None) -> None:
        super().__init__()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network: MLflow's usage telemetry off
        mlflow = _require("mlflow", "mlflow")
        for name in ("mlflow", "alembic"):  # not their INFO lines (creating the SQLite store's tables) on stderr
            logging.getLogger(name).setLevel(max(logging.getLogger(name).getEffectiveLevel(), logging.WARNING))
        self.entities = _require("mlflow.entities", "mlflow")
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run_id = run_id_file.read_text().strip() if run_id_file is not None and run_id_file.is_file() else ""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            if run_id_file is not None:
                run_id_file.parent.mkdir(parents=True, exist_ok=True)
                run_id_file.write_text(run_id + "\n")
        self.run_id: str = run_id
        self.pending: list[Any] = []
        self.closed = False

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        """Nothing: MLflow's store spends a fraction of a millisecond of CPU per value written, so it gets the
        epochs' records only (TensorBoard has the log steps too)."""

    def scalars(self, model: str, values: Mapping[str, float], step: int) -> None:
        now = _now_ms()
        for k, v in values.items():
            if math.isfinite(v):  # MLflow refuses NaN in some stores; a diverged run says so in metrics.jsonl
                self.pending.append(self.entities.Metric(f"{model}/{k}", v, now, step))

    def flush(self) -> None:  # a write costs tens of ms (SQLite commits): once per FLUSH_SECONDS at most
        self.written = time.perf_counter()
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_config(self, config: Mapping[str, Any], yaml_text: str) -> None:
        params = [self.entities.Param(k, v[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit of params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, yaml_text, "config.yaml")

    def log_table(self, rows: Mapping[str, Mapping[str, Any]], markdown: str) -> None:
        for model, row in rows.items():
            self.scalars(f"test/{model}", _numbers(row), 0)
        self.flush()
        self.client.log_text(self.run_id, markdown + "\n", "results.md")

    def log_image(self, model: str, name: str, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, f"images/{model}/{name}.png")

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def view_grid(student_x: Tensor, teacher_x: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """An RGB image (H, W, 3) uint8 of what student and teacher see: one row per example, the student's view on
    the left, the teacher's on the right (each un-normalized with the data's per-channel ``mean`` and ``std``,
    clipped to [0, 1], grey channels repeated, padded to the larger view's size)."""
    def pixels(x: Tensor) -> Tensor:
        x = x.detach().float().cpu()
        c = x.shape[1]
        x = (x * std.float().cpu().view(1, c, 1, 1) + mean.float().cpu().view(1, c, 1, 1)).clamp(0, 1)
        return x.expand(-1, 3, -1, -1) if c == 1 else x[:, :3]

    s, t = pixels(student_x), pixels(teacher_x)
    h, w = max(s.shape[2], t.shape[2]), max(s.shape[3], t.shape[3])
    gap = 2
    grid = torch.ones(s.shape[0] * (h + gap) - gap, 2 * w + gap, 3)
    for i in range(s.shape[0]):
        top = i * (h + gap)
        grid[top:top + s.shape[2], :s.shape[3]] = s[i].permute(1, 2, 0)
        grid[top:top + t.shape[2], w + gap:w + gap + t.shape[3]] = t[i].permute(1, 2, 0)
    return (grid * 255).round().to(torch.uint8).numpy()


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a results row (booleans, strings, None and lists left out), ``test_acc`` as ``acc``."""
    return {k.removeprefix("test_"): float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            and k not in ("ece_bins", "n_test")}


def _now_ms() -> int:
    return int(time.time() * 1000)


def make_loggers(names: Sequence[str], run_dir: Path, *, run_name: str, experiment: str,
                 mlflow_uri: str | None = None, resume: bool = False) -> list[RunLogger]:
    """The loggers ``names`` (``report.loggers``) of the run in ``run_dir``: TensorBoard under
    ``run_dir/tensorboard``; MLflow in ``mlflow_uri`` (default ``sqlite:///<run_dir>/mlflow/mlflow.db``, artifacts
    in ``run_dir/mlflow/artifacts``), experiment ``experiment``, run ``run_name``, the same MLflow run again when
    ``resume``."""
    out: list[RunLogger] = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir / "tensorboard"))
        elif name == "mlflow":
            where = run_dir / "mlflow"
            where.mkdir(parents=True, exist_ok=True)
            uri = mlflow_uri or f"sqlite:///{(where / 'mlflow.db').resolve()}"
            id_file = where / "run_id"
            if not resume and id_file.exists():
                id_file.unlink()
            out.append(MLflowLogger(uri, experiment, run_name, artifact_dir=where / "artifacts" if not mlflow_uri
                                    else None, run_id_file=id_file))
        else:
            raise ValueError(f"report.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    return out
