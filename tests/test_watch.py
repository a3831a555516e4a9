"""A run you can watch (issue 14 item 6): progress bars or plain lines with steps/s and ETA, and the TensorBoard
and MLflow loggers fed by the engine's callbacks."""

import io

import numpy as np
import pytest
import torch

from distill.config import OptimizerConfig, TrainConfig, builtin_config, load_config
from distill.engine import Callback, LossTracker, fit
from distill.engine.loggers import MissingLoggerError, RunLogger, epoch_scalars, flatten, make_loggers, view_grid
from distill.engine.progress import Phase, bars_enabled, format_eta, rate_and_eta
from distill.models import create_model
from distill.objectives import CrossEntropy


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "optimizer": OptimizerConfig(name="sgd", lr=0.05),
                          "log_every": 10, **kw})


def mlp(splits, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", splits.num_classes, splits.in_shape, hidden=(16,))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- progress -------------------------------------------------------------------------------------------------


def test_bars_on_a_terminal_only_and_not_under_ci(monkeypatch):
    monkeypatch.delenv("DISTILL_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert bars_enabled(_Tty()) and not bars_enabled(io.StringIO())
    for value, bar in (("true", False), ("1", False), ("false", True), ("0", True), ("", True)):
        monkeypatch.setenv("CI", value)
        assert bars_enabled(_Tty()) is bar, value
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DISTILL_PROGRESS", "bar")
    assert bars_enabled(io.StringIO())
    monkeypatch.setenv("DISTILL_PROGRESS", "lines")
    monkeypatch.delenv("CI")
    assert not bars_enabled(_Tty())


def test_rate_and_eta_text():
    assert format_eta(65) == "1:05" and format_eta(3725) == "1:02:05" and format_eta(float("inf")) == "?"
    assert rate_and_eta(50, 150, 2.0) == "25 steps/s, ETA 0:04"
    assert rate_and_eta(3, None, 1.5, unit="trials") == "2 trials/s"
    assert rate_and_eta(0, 10, 0.0) == "? steps/s"


def test_a_phase_prints_a_line_every_tenth_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("DISTILL_PROGRESS", "lines")
    lines = []
    with Phase(25, "[cache] teacher", unit="example", say=lines.append) as phase:
        for _ in range(25):
            phase.update()
    assert [line.split(" (")[0] for line in lines] == [f"[cache] teacher: {k}/25 examples" for k in
                                                        (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert all("examples/s, ETA " in line for line in lines)
    quiet = Phase(25, "x", say=None)
    quiet.update(25)
    assert not quiet.bar.active


def test_fit_prints_plain_lines_with_rate_and_eta_when_not_a_terminal(digits_splits, monkeypatch, capsys):
    monkeypatch.delenv("DISTILL_PROGRESS", raising=False)  # pytest's stderr is not a terminal
    lines = []
    fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), progress=lines.append)
    assert capsys.readouterr().err == ""  # no bar
    assert [line.split(" loss ")[0] for line in lines] == [
        "[model] epoch 1/2 step 10/18", "[model] epoch 1/2", "[model] epoch 2/2 step 2/18",
        "[model] epoch 2/2 step 12/18", "[model] epoch 2/2"]
    assert all(" steps/s, ETA " in line for line in lines)


def test_fit_draws_a_bar_and_only_epoch_lines_on_a_terminal(digits_splits, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_PROGRESS", "bar")
    lines = []
    fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), progress=lines.append)
    err = capsys.readouterr().err
    assert "[model] train: 100%" in err and "36/36" in err and "step/s" in err and "val acc" in err
    assert [line.split(" loss ")[0] for line in lines] == ["[model] epoch 1/2", "[model] epoch 2/2"]


def test_quiet_shows_no_bar_and_no_lines(monkeypatch, capsys, tmp_path):
    from distill.cli import main

    monkeypatch.setenv("DISTILL_PROGRESS", "bar")
    assert main(["demo", "--quiet", "--output-dir", str(tmp_path), "--set", "recipe=baseline", "--set",
                 "student.train.epochs=1", "--set", "report.latency=false"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "baseline" in out.out  # the table only


def test_a_long_evaluation_and_a_cache_build_show_progress(digits_splits, monkeypatch):
    from distill.cache import build_cache
    from distill.engine import evaluate

    monkeypatch.setenv("DISTILL_PROGRESS", "lines")
    model, lines = mlp(digits_splits), []
    evaluate(model, digits_splits.train, batch_size=100, say=lines.append, desc="[m] test")  # 13 batches
    assert lines[-1].startswith("[m] test: 1212/1212 examples (") and len(lines) == 10
    lines.clear()
    evaluate(model, digits_splits.test, batch_size=100, say=lines.append)  # 5 batches: over at once
    assert lines == []
    build_cache(model, digits_splits.train, batch_size=200, say=lines.append)
    assert lines[-1].startswith("[cache] teacher: 1212/1212 examples (")


# -- the callbacks and the loggers ----------------------------------------------------------------------------


class _Memory(RunLogger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, int, dict]] = []
        self.events: list[tuple] = []

    def on_fit_start(self, tag, step, total_steps):
        super().on_fit_start(tag, step, total_steps)
        self.events.append(("start", tag, step, total_steps))

    def on_step(self, step):
        self.events.append(("step", step))

    def on_fit_end(self, tag):
        self.events.append(("end", tag))

    def scalars(self, model, values, step):
        self.rows.append((model, step, dict(values)))


def test_loggers_hear_each_log_step_and_epoch_with_exact_steps_and_values(digits_splits):
    memory, means = _Memory(), []

    class Means(Callback):
        def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
            means.append(tracker.means())

    res = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), tag="student", progress=None,
              callbacks=[memory, Means()])
    assert memory.events[0] == ("start", "student", 0, 36) and memory.events[-1] == ("end", "student")
    assert [e[1] for e in memory.events[1:-1]] == list(range(1, 37))
    step_rows = [r for r in memory.rows if "train_step/loss" in r[2]]
    epoch_rows = [r for r in memory.rows if "val/acc" in r[2]]
    assert [(m, s) for m, s, _ in step_rows] == [("student", s) for s in (10, 18, 20, 30, 36)]
    assert [v for _, _, v in step_rows] == [{"train_step/ce": m["ce"], "train_step/loss": m["loss"]} for m in means]
    assert [(m, s) for m, s, _ in epoch_rows] == [("student", 18), ("student", 36)]
    for (_, _, values), record in zip(epoch_rows, res.history):
        assert values == {"train/ce": record["train/ce"], "train/loss": record["train/loss"],
                          "val/acc": record["val/acc"], "val/nll": record["val/nll"], "lr": record["lr"],
                          "epoch_time_s": record["time_s"]}
    # the last log step of an epoch is the epoch's own mean
    assert step_rows[1][2]["train_step/loss"] == pytest.approx(res.history[0]["train/loss"], rel=1e-6)


def test_flatten_and_epoch_scalars():
    assert flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}}, "f": {}}) == {
        "a": "1", "b.c": "[1, 2]", "b.d.e": "None", "f": "{}"}
    assert epoch_scalars({"model": "m", "epoch": 1, "step": 5, "train/kd": 0.5, "val/acc": 1, "lr": 0.1,
                          "time_s": 2.0, "memory_format": "contiguous"}) == {
        "train/kd": 0.5, "val/acc": 1.0, "lr": 0.1, "epoch_time_s": 2.0}


def test_view_grid_puts_student_and_teacher_views_side_by_side():
    student = torch.zeros(2, 1, 4, 4)  # normalized 0 = the mean 0.5
    teacher = torch.ones(2, 1, 6, 6)  # 0.5 + 1 * 0.5 = 1.0
    image = view_grid(student, teacher, torch.tensor([0.5]), torch.tensor([0.5]))
    assert image.shape == (2 * 6 + 2, 2 * 6 + 2, 3) and image.dtype == np.uint8
    assert (image[:4, :4] == 128).all() and (image[:6, 8:] == 255).all() and (image[4:6, :4] == 255).all()


def test_a_missing_logger_package_names_the_extra(monkeypatch, tmp_path):
    import importlib

    real = importlib.import_module

    def no_mlflow(name, *a, **k):
        if name.startswith("mlflow"):
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_mlflow)
    with pytest.raises(MissingLoggerError, match=r"'mlflow' needs the package 'mlflow'.*\.\[mlflow\]"):
        make_loggers(["mlflow"], tmp_path, run_name="r", experiment="e")


def test_report_loggers_are_checked():
    with pytest.raises(ValueError, match="report.loggers"):
        load_config(None, ["report.loggers=[wandb]"], base=builtin_config("demo"))
    with pytest.raises(ValueError, match="lists a logger twice"):
        load_config(None, ["report.loggers=[mlflow, mlflow]"], base=builtin_config("demo"))
    assert load_config(None, ["report.loggers=[tensorboard]"], base=builtin_config("demo")).report.loggers == [
        "tensorboard"]


def test_tensorboard_event_files_hold_the_expected_tags_and_values(digits_splits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.engine.loggers import TensorBoardLogger

    tb = TensorBoardLogger(tmp_path / "tb")
    res = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), tag="student", progress=None, callbacks=[tb])
    tb.log_config({"a": 1}, "a: 1\n")
    tb.log_table({"student": {"test_acc": 0.5, "n_test": 10, "latency_on": None}}, "| model |")
    tb.log_image("student", "views", np.zeros((4, 6, 3), np.uint8))
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(tmp_path / "history.png")
    tb.log_file(tmp_path / "history.png")
    tb.log_file(tmp_path / "results.json")  # not an image: nothing
    tb.close()
    ea = EventAccumulator(str(tmp_path / "tb" / "student"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == sorted(["train_step/ce", "train_step/loss", "train/ce", "train/loss",
                                                   "val/acc", "val/nll", "lr", "epoch_time_s", "test/acc"])
    assert ea.Tags()["images"] == ["views"]
    assert [e.step for e in ea.Scalars("train_step/loss")] == [10, 18, 20, 30, 36]
    assert [(e.step, e.value) for e in ea.Scalars("val/acc")] == [
        (r["step"], pytest.approx(r["val/acc"], rel=1e-6)) for r in res.history]
    run = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "images": 0})
    run.Reload()
    assert sorted(run.Tags()["tensors"]) == ["config/text_summary", "results/text_summary"]
    [plot] = run.Images("history")
    assert (plot.width, plot.height) == (7, 5)


@pytest.mark.slow
def test_a_run_logs_to_tensorboard_and_mlflow_in_its_directory(tmp_path, monkeypatch):
    """A distill run with a teaching mode and both loggers: an MLflow run (SQLite store in the run directory)
    with the config as params, the metrics per model, the table and the views image; TensorBoard per model."""
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.recipes import run_recipe

    monkeypatch.setenv("DISTILL_PROGRESS", "lines")
    c = load_config(None, ["recipe=distill", "train.epochs=1", "student.train.epochs=2", "student.model.hidden=[8]",
                           "teacher.model.channels=[4, 4]", "teacher.model.hidden=8", "report.latency=false",
                           "distill.views.mode=ind/rc", "report.loggers=[tensorboard, mlflow]"],
                    base=builtin_config("demo"))
    results = run_recipe(c, run_dir=tmp_path / "r", progress=False)
    run_dir = tmp_path / "r"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "demo"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_id == (run_dir / "mlflow" / "run_id").read_text().strip()
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["distill.views.mode"] == "ind/rc" and run.data.params["student.train.epochs"] == "2"
    spe = 1212 // 64
    history = client.get_metric_history(run.info.run_id, "distilled/val/acc")
    assert sorted(m.step for m in history) == [spe, 2 * spe]
    assert run.data.metrics["test/distilled/acc"] == pytest.approx(results["models"]["distilled"]["test_acc"])
    assert "distilled/train/kd" in run.data.metrics and "distilled/train_step/loss" not in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results.json", "report.md", "results.md", "metrics.jsonl", "images"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "images/distilled")] == [
        "images/distilled/views.png"]
    ea = EventAccumulator(str(run_dir / "tensorboard" / "distilled"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    assert ea.Tags()["images"] == ["views"] and "train/kd" in ea.Tags()["scalars"]
    assert [e.step for e in ea.Scalars("val/acc")] == [spe, 2 * spe]
    assert (run_dir / "tensorboard" / "teacher").is_dir()
