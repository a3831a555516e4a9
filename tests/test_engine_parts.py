"""The engine's parts (issue 12 item 3): the batch-source protocol, callbacks, the teacher port and the
divergence policy, each on its own and as fit uses them."""

import pytest
import torch
from torch import nn

from distill.config import OptimizerConfig, TrainConfig
from distill.data.batches import BatchSource, TensorBatches
from distill.data.tensors import TensorData, batch_indices
from distill.engine import Callback, LossTracker, NonFiniteLossError, TeacherPort, fit
from distill.engine.divergence import LossWatch
from distill.models import create_model
from distill.objectives import CrossEntropy
from distill.teachers import FrozenTeacher


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "optimizer": OptimizerConfig(name="sgd", lr=0.05),
                          "log_every": 5, "augment": {"shift": 1}, **kw})


def mlp(splits, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", splits.num_classes, splits.in_shape, hidden=(16,), dropout=0.1)


def test_tensor_batches_have_a_length_indices_and_a_resumable_position():
    data = TensorData(torch.arange(50.0).unsqueeze(1), torch.arange(50) % 3)
    source = TensorBatches(data, 8, torch.device("cpu"), seed=4)
    assert isinstance(source, BatchSource) and len(source) == 6 and source.num_examples == 50
    whole = list(source.epoch(1))
    assert len(whole) == 6
    for (x, y, index), expected in zip(whole, batch_indices(50, 8, seed=4, epoch=1)):
        assert torch.equal(index, expected) and torch.equal(x[:, 0], index.float()) and torch.equal(y, index % 3)
    resumed = list(source.epoch(1, start=4))  # the position (epoch 1, step 4): the rest of that epoch
    assert len(resumed) == 2
    assert all(torch.equal(a, b) for got, want in zip(resumed, whole[4:]) for a, b in zip(got, want))
    assert not torch.equal(whole[0][2], next(iter(source.epoch(2)))[2])  # another epoch, another order


class _CountingSource:
    """A batch source of its own (wrapping the in-memory one): fit reaches the data only through the protocol."""

    def __init__(self, inner: TensorBatches) -> None:
        self.inner, self.num_examples, self.epochs = inner, inner.num_examples, []

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch, start=0):
        self.epochs.append((epoch, start))
        return self.inner.epoch(epoch, start)


def test_fit_trains_from_any_batch_source_exactly_as_from_the_tensors(digits_splits):
    default = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), seed=2, progress=None)
    source = _CountingSource(TensorBatches(digits_splits.train, 64, torch.device("cpu"), seed=2))
    custom = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), seed=2, progress=None, batches=source)
    assert source.epochs == [(0, 0), (1, 0)]
    assert custom.steps == default.steps == 2 * (len(digits_splits.train) // 64)
    for k, v in default.model.state_dict().items():
        assert torch.equal(v, custom.model.state_dict()[k]), k


class _Recorder(Callback):
    def __init__(self) -> None:
        self.steps, self.records = [], []

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        self.steps.append((epoch, step, tracker.count))

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self.records.append((epoch, record))


def test_callbacks_hear_the_log_steps_and_the_epoch_records(digits_splits):
    recorder, logged, lines = _Recorder(), [], []
    res = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(log_every=10), log=logged.append,
              progress=lines.append, callbacks=[recorder])
    assert len(digits_splits.train) // 64 == 18  # steps per epoch: log steps every 10 and at each epoch's end
    assert recorder.steps == [(0, 10, 10), (0, 18, 18), (1, 20, 2), (1, 30, 12), (1, 36, 18)]
    assert [r for _, r in recorder.records] == logged == res.history
    assert [e for e, _ in recorder.records] == [0, 1]
    steps = [line.rsplit(" loss ", 1)[0] for line in lines if " step " in line]  # not at an epoch's end
    assert steps == ["[model] epoch 1/2 step 10/18", "[model] epoch 2/2 step 2/18", "[model] epoch 2/2 step 12/18"]


def test_teacher_port_is_built_once_from_any_teacher():
    def function_teacher(x, index=None):  # a plain function: no model, no features
        raise AssertionError("not called here")

    port = TeacherPort.of(function_teacher)
    assert port.targets is function_teacher and port.model is None and port.taps is None
    assert port.with_features({}, "KD") is port
    with pytest.raises(ValueError, match="KD needs the teacher's intermediate features, but function gives only"):
        port.with_features({"h": "0"}, "KD")
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    tapped = TeacherPort.of(FrozenTeacher(model)).with_features({"h": "0"}, "FitNets")
    assert tapped.model is model and tapped.taps is not None and model[0]._forward_hooks
    out = tapped.targets(torch.randn(3, 4))
    assert out.features["h"].shape == (3, 4)
    tapped.close()
    assert not model[0]._forward_hooks


def test_loss_watch_names_the_first_bad_step_and_syncs_only_when_checked():
    watch = LossWatch(torch.device("cpu"))
    for step, loss in enumerate([1.0, 2.0, float("inf"), float("nan")]):
        watch.observe(torch.tensor(loss), step)
    assert int(watch.first_bad) == 2
    with pytest.raises(NonFiniteLossError, match=r"\[m\] the loss became NaN or inf at step 2 \(epoch 4\); "
                                                 "training stopped and nothing was kept"):
        watch.check("m", 3, lambda: "nothing was kept")
    fine = LossWatch(torch.device("cpu"))
    fine.observe(torch.tensor(0.5), 0)
    fine.check("m", 0, lambda: "not asked")


@pytest.mark.parametrize("bad", [None, 0, 63, 64, 100, 149])
def test_loss_watch_checks_its_kept_losses_in_chunks_with_the_same_answer(bad):
    # the watch checks the losses it keeps every 64 steps and when read: the first bad step of a long epoch, read
    # before, at and after a chunk boundary, first observed step 7
    watch = LossWatch(torch.device("cpu"))
    for i in range(150):
        loss = float("nan") if bad is not None and i >= bad else 1.0 + i
        if bad is not None and i == bad + 1:
            loss = float("inf")  # later bad steps do not move the first one
        watch.observe(torch.tensor(loss), 7 + i)
        if i in (10, 63, 64, 120, 149):
            want = -1 if bad is None or bad > i else 7 + bad
            assert int(watch.first_bad) == want, (i, bad)


def test_loss_tracker_sums_kept_steps_in_chunks_as_each_step_added_at_once():
    # the tracker adds its kept steps every 64 steps and when read; the sums must be the float32 additions of
    # adding each step's terms at once, in order, whenever they are read; terms that come or go are added by name
    g = torch.Generator().manual_seed(0)
    steps = [{"kd": torch.rand((), generator=g) * 3, "ce": torch.rand((), generator=g)} for _ in range(150)]
    for k in range(100, 120):  # a term appears, then "ce" goes
        steps[k]["extra"] = torch.rand((), generator=g, dtype=torch.float64)
    for k in range(120, 150):
        del steps[k]["ce"]
    tracker = LossTracker()
    want: dict[str, torch.Tensor] = {}
    for i, terms in enumerate(steps):
        total = sum(terms.values())
        tracker.add(terms, total)
        for k, v in [*terms.items(), ("loss", total)]:
            v = v.float()
            want[k] = want[k] + v if k in want else v
        if i in (10, 63, 64, 101, 125, 149):
            sums = tracker.sums
            assert list(sums) == list(want) and all(torch.equal(sums[k], want[k]) for k in want), i
            assert tracker.means() == pytest.approx({k: float(v) / (i + 1) for k, v in want.items()})
    restored = LossTracker({k: v.clone() for k, v in tracker.sums.items()}, tracker.count)
    restored.add({"kd": torch.tensor(1.0)}, torch.tensor(1.0))
    assert restored.count == 151 and float(restored.sums["kd"]) == pytest.approx(float(want["kd"]) + 1)


# -- training length in steps, mid-epoch checkpoints and resume -------------------------------------------------


def test_max_steps_sets_the_length_and_the_schedule_and_may_end_mid_epoch(digits_splits):
    from distill.engine import lr_factor

    sched = {"name": "cosine", "min_lr": 0.001}
    by_epochs = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(epochs=2, schedule=sched), progress=None)
    by_steps = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(epochs=10, max_steps=36, schedule=sched),
                   progress=None)
    assert by_steps.steps == by_epochs.steps == 36 and by_steps.finished
    for k, v in by_epochs.model.state_dict().items():
        assert torch.equal(v, by_steps.model.state_dict()[k]), k
    lines = []
    short = fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(epochs=10, max_steps=30, schedule=sched),
                progress=lines.append)
    assert short.steps == 30 and short.finished
    assert [(r["epoch"], r["step"]) for r in short.history] == [(1, 18), (2, 30)]
    assert short.history[-1]["lr"] == 0.05 * lr_factor(29, 30, 18, cfg(schedule=sched).schedule, 0.05)
    assert lines[-1].startswith("[model] epoch 2/2 loss ")


class _KillAt(Callback):
    """Stops the run at a log step, as a crash would (after the mid-epoch checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log_step(self, epoch: int, step: int, tracker: LossTracker) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_a_run_killed_mid_epoch_resumes_from_its_step_checkpoint_exactly(digits_splits, tmp_path):
    from distill.checkpoint import load_checkpoint

    c = cfg(epochs=3, log_every=5, checkpoint_every_steps=7, optimizer=OptimizerConfig(name="adamw", lr=0.01))
    straight = fit(mlp(digits_splits), CrossEntropy(), digits_splits, c, out_dir=tmp_path / "a", seed=3,
                   progress=None)
    with pytest.raises(KeyboardInterrupt):  # steps per epoch 18: killed at step 25, written at step 21
        fit(mlp(digits_splits), CrossEntropy(), digits_splits, c, out_dir=tmp_path / "b", seed=3, progress=None,
            callbacks=[_KillAt(25)])
    mid = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (mid["epoch"], mid["step"], mid["batch"], len(mid["history"])) == (1, 21, 3, 1)
    lines = []
    resumed = fit(mlp(digits_splits, seed=99), CrossEntropy(), digits_splits, c, out_dir=tmp_path / "b", seed=3,
                  resume=True, progress=lines.append)
    assert lines[0] == f"[model] resuming from {tmp_path / 'b' / 'last.pt'} after epoch 1 and 3 steps of epoch 2"
    assert resumed.finished and resumed.steps == straight.steps == 54
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in b["history"]]
    assert "batch" not in b and "streams" not in b  # the epoch's own checkpoint replaced the mid-epoch one


def test_a_last_pt_from_before_max_steps_still_resumes(digits_splits, tmp_path):
    from distill.checkpoint import load_checkpoint, save_checkpoint

    fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), out_dir=tmp_path, stop_after_epochs=1,
        progress=None)
    old = load_checkpoint(tmp_path / "last.pt")
    del old["run_shape"]["train"]["max_steps"]  # an older version did not write it
    save_checkpoint(tmp_path / "last.pt", old)
    assert fit(mlp(digits_splits), CrossEntropy(), digits_splits, cfg(), out_dir=tmp_path, resume=True,
               progress=None).finished


def test_mid_epoch_checkpoints_are_refused_under_ddp_with_the_key(monkeypatch):
    from distill import distributed
    from distill.engine.setup import _check_run

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="train.checkpoint_every_steps .* not supported under torchrun"):
        _check_run(CrossEntropy(), None, cfg(checkpoint_every_steps=10), 1000)


class _NaNGradientAt(CrossEntropy):
    """Cross-entropy whose gradient turns NaN at call ``k`` (0-based): the loss stays finite, the weights do not."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, out):
        if self.calls == self.k:
            out.logits.register_hook(lambda g: torch.full_like(g, float("nan")))
        self.calls += 1
        return super().forward(out)


def test_a_mid_epoch_checkpoint_is_never_written_from_non_finite_weights(digits_splits, tmp_path):
    from distill.checkpoint import load_checkpoint

    c = cfg(epochs=2, log_every=100, checkpoint_every_steps=7)
    with pytest.raises(NonFiniteLossError) as e:  # checkpoints every 7 steps; the step that makes step 28 is NaN
        fit(mlp(digits_splits), _NaNGradientAt(27), digits_splits, c, out_dir=tmp_path, progress=None)
    assert ("[model] step 28 (epoch 2, a mid-epoch checkpoint) with non-finite weights" in str(e.value)
            and f"the last good checkpoint is {tmp_path / 'last.pt'} (step 21, in epoch 2)" in str(e.value))
    kept = load_checkpoint(tmp_path / "last.pt")
    assert (kept["step"], kept["batch"]) == (21, 3)
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
