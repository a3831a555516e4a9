"""The run's memory format (distill.engine.layout): the probe's rule with a fake clock (no timed tests), what a
run records, and that channels_last trains to the same numbers as the contiguous layout."""

import pytest
import torch
from torch import nn

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import TrainConfig
from distill.engine import fit, layout, setup
from distill.engine.layout import CHANNELS_LAST, CONTIGUOUS, decide, probe
from distill.engine.setup import make_views
from distill.models import create_model
from distill.objectives import CrossEntropy, KnowledgeDistillation
from distill.teachers import FrozenTeacher

from _engine_helpers import cfg, cnn

CL = torch.channels_last


def in_channels_last(model: nn.Module) -> bool:
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]  # one of several input channels
    return conv.weight.is_contiguous(memory_format=CL) and not conv.weight.is_contiguous()


class FakeClock:
    """Each reading advances by ``ms[layout]`` of ``model``'s current layout: a probed step of a layout 'takes'
    exactly that long. ``readings`` counts the calls."""

    def __init__(self, model: nn.Module, contiguous_ms: float, channels_last_ms: float) -> None:
        self.model, self.now, self.readings = model, 0.0, 0
        self.ms = {CONTIGUOUS: contiguous_ms, CHANNELS_LAST: channels_last_ms}

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.ms[CHANNELS_LAST if in_channels_last(self.model) else CONTIGUOUS] / 1e3
        return self.now


def no_clock() -> float:
    raise AssertionError("the probe ran")


@pytest.fixture
def fresh(monkeypatch):
    """No probe of an earlier test in this process is reused."""
    monkeypatch.setattr(layout, "_probed", {})
    return monkeypatch


def test_the_rule_takes_channels_last_only_when_clearly_faster():
    assert decide({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.5}) == CHANNELS_LAST  # 0.95 of a contiguous step
    assert decide({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.6}) == CONTIGUOUS  # within noise: the plain layout
    assert decide({CONTIGUOUS: 10.0, CHANNELS_LAST: 12.0}) == CONTIGUOUS
    assert decide({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.9}, margin=1.0) == CHANNELS_LAST


def test_the_probe_times_each_layout_and_leaves_no_trace(digits_splits, monkeypatch):
    student, teacher = cnn(digits_splits, 0), cnn(digits_splits, 1, channels=(16, 32)).eval()
    x = digits_splits.train.x[:64]
    clock = FakeClock(student, 10.0, 6.0)
    monkeypatch.setattr(layout, "cpu_clock", clock)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rng = torch.get_rng_state()
    student.eval()
    assert probe(student, teacher, x, x, torch.device("cpu")) == {CONTIGUOUS: 10.0, CHANNELS_LAST: 6.0}
    assert clock.readings == 2 * 2 * 12  # 16 ms a round: all 12 rounds fit in the 1 s budget, two readings a step
    assert not student.training and not in_channels_last(student) and not in_channels_last(teacher)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # batch-norm statistics too
    assert all(p.grad is None for p in student.parameters()) and torch.equal(torch.get_rng_state(), rng)
    slow = FakeClock(student, 600.0, 300.0)  # past the budget after the minimum of two rounds
    monkeypatch.setattr(layout, "cpu_clock", slow)
    assert probe(student, None, x, x, torch.device("cpu")) == {CONTIGUOUS: 600.0, CHANNELS_LAST: 300.0}
    assert slow.readings == 2 * 2 * 2


@pytest.mark.parametrize("cl_ms,expected", [(6.0, CHANNELS_LAST), (9.8, CONTIGUOUS)])
def test_auto_probes_a_conv_run_logs_and_records_the_choice(digits_splits, fresh, cl_ms, expected):
    student, teacher = cnn(digits_splits, 0), cnn(digits_splits, 1, channels=(16, 32))
    fresh.setattr(layout, "cpu_clock", FakeClock(student, 10.0, cl_ms))
    lines = []
    result = fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(epochs=2), teacher=FrozenTeacher(teacher),
                 progress=lines.append)
    recorded = {"format": expected, "decided_by": "probe", "ms_per_step": {CONTIGUOUS: 10.0, CHANNELS_LAST: cl_ms}}
    assert [r["memory_format"] for r in result.history] == [recorded, recorded]
    assert lines[0] == (f"[model] memory format: {expected} (train.channels_last: auto; probe, ms per step: "
                        f"contiguous 10.00, channels_last {cl_ms:.2f})")
    assert not in_channels_last(student) and not in_channels_last(teacher)  # handed back as they came


def test_no_probe_without_convolutions_or_with_an_explicit_setting(digits_splits, fresh):
    fresh.setattr(layout, "cpu_clock", no_clock)
    torch.manual_seed(0)
    mlp = create_model("mlp", 10, digits_splits.in_shape, hidden=[16])
    lines = []
    result = fit(mlp, CrossEntropy(), digits_splits, cfg(), progress=lines.append)
    assert result.history[0]["memory_format"] == {"format": CONTIGUOUS, "decided_by": "not convolutional",
                                                  "ms_per_step": {}}
    assert not any("memory format" in line for line in lines)
    for setting, name in ((True, CHANNELS_LAST), (False, CONTIGUOUS)):
        result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(channels_last=setting), progress=None)
        assert result.history[0]["memory_format"] == {"format": name, "decided_by": "train.channels_last",
                                                      "ms_per_step": {}}


def test_a_process_probes_the_same_models_once(digits_splits, fresh):
    student = cnn(digits_splits, 0)
    clock = FakeClock(student, 10.0, 6.0)
    fresh.setattr(layout, "cpu_clock", clock)
    first = fit(student, CrossEntropy(), digits_splits, cfg(), progress=None)
    readings = clock.readings
    assert readings > 0
    second = fit(cnn(digits_splits, 5), CrossEntropy(), digits_splits, cfg(), progress=None)
    assert clock.readings == readings and second.history[0]["memory_format"] == first.history[0]["memory_format"]


def test_channels_last_trains_to_the_same_numbers(digits_splits):
    """Paired seeds: the same KD run (shifted inputs: the views path) in each layout, to float tolerance."""
    teacher = cnn(digits_splits, 1, channels=(16, 32))
    runs = {}
    for setting in (False, True):
        student = cnn(digits_splits, 0)
        result = fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits,
                     cfg(epochs=2, channels_last=setting, augment={"shift": 1}), teacher=FrozenTeacher(teacher),
                     seed=3, progress=None)
        runs[setting] = result.history, student.state_dict()
        assert all(t.is_contiguous() for t in student.state_dict().values())
    (plain, plain_w), (cl, cl_w) = runs[False], runs[True]
    for a, b in zip(plain, cl):
        for k in ("train/loss", "train/kd", "train/ce", "val/nll", "val/acc"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    for k, v in plain_w.items():
        torch.testing.assert_close(cl_w[k], v, rtol=1e-4, atol=1e-5)


def test_one_conversion_when_both_models_see_the_same_batch():
    x = torch.rand(4, 3, 6, 6)
    s, t = make_views(None, 0, True)(x, torch.arange(4), torch.Generator())
    assert s is t and s.is_contiguous(memory_format=CL) and torch.equal(s, x)
    s, t = make_views(lambda x, i: (x, x.flip(-1)), 0, True)(x, torch.arange(4), torch.Generator())
    assert s is not t and s.is_contiguous(memory_format=CL) and t.is_contiguous(memory_format=CL)


def test_old_boolean_settings_still_read_and_auto_is_the_default():
    assert TrainConfig().channels_last == "auto"
    assert TrainConfig.model_validate({"channels_last": True}).channels_last is True
    assert TrainConfig.model_validate({"channels_last": False}).channels_last is False
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.model_validate({"channels_last": "sometimes"})


def test_resume_keeps_the_layout_of_last_pt_and_an_older_boolean_setting_resumes_under_auto(digits_splits, tmp_path,
                                                                                            fresh):
    student = cnn(digits_splits, 0)
    fresh.setattr(layout, "cpu_clock", FakeClock(student, 10.0, 6.0))
    c = cfg(epochs=2)
    fit(student, CrossEntropy(), digits_splits, c, out_dir=tmp_path / "a", stop_after_epochs=1,
        progress=None)
    saved = load_checkpoint(tmp_path / "a" / "last.pt")["memory_format"]
    assert saved["format"] == CHANNELS_LAST and saved["decided_by"] == "probe"
    fresh.setattr(layout, "_probed", {})
    fresh.setattr(layout, "cpu_clock", no_clock)  # resumed: no new probe
    resumed = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, c, out_dir=tmp_path / "a", resume=True,
                  progress=None)
    assert [r["memory_format"] for r in resumed.history] == [saved, saved]
    # a last.pt written with channels_last: false (as before auto existed) resumes under auto, contiguous
    fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, c.model_copy(update={"channels_last": False}),
        out_dir=tmp_path / "b", stop_after_epochs=1, progress=None)
    old = load_checkpoint(tmp_path / "b" / "last.pt")
    del old["memory_format"]
    save_checkpoint(tmp_path / "b" / "last.pt", old)
    resumed = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, c, out_dir=tmp_path / "b", resume=True,
                  progress=None)
    assert resumed.history[-1]["memory_format"]["format"] == CONTIGUOUS


def test_a_frozen_student_is_probed_forward_only(digits_splits, monkeypatch):
    student = cnn(digits_splits, 0).requires_grad_(False)  # a stage that trains the objective's connectors only
    monkeypatch.setattr(layout, "cpu_clock", FakeClock(student, 10.0, 6.0))
    x = digits_splits.train.x[:8]
    assert probe(student, None, x, x, torch.device("cpu")) == {CONTIGUOUS: 10.0, CHANNELS_LAST: 6.0}


def test_a_failed_probe_trains_contiguous_and_says_why(digits_splits, fresh):
    def fails(*args, **kwargs):
        raise RuntimeError("out of memory\nmore detail")

    fresh.setattr(setup, "measured", fails)
    lines = []
    result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(), progress=lines.append)
    assert result.history[0]["memory_format"] == {"format": CONTIGUOUS, "ms_per_step": {},
                                                  "decided_by": "probe failed (RuntimeError: out of memory)"}
    assert lines[0] == ("[model] memory format: contiguous (train.channels_last: auto; the probe failed "
                        "(RuntimeError: out of memory))")


# ------------------------------------------------------------------ train.amp: auto on CUDA, decided by the same probe

BF16 = torch.bfloat16
CUDA = torch.device("cuda")


@pytest.mark.parametrize("grid, expected", [
    ({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.0, "contiguous+bf16": 8.3, "channels_last+bf16": 8.1}, "bf16"),  # 0.9 x 9
    ({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.0, "contiguous+bf16": 8.3, "channels_last+bf16": 8.2}, "off"),
    ({CONTIGUOUS: 3.0, "contiguous+bf16": 3.4}, "off"),  # a launch-bound model: bf16 slower
])
def test_the_amp_rule_keeps_bf16_only_when_clearly_faster_than_fp32(grid, expected):
    assert layout.decide_amp(grid, BF16) == expected


def test_amp_is_probed_only_for_auto_on_a_cuda_device_with_bf16():
    assert setup.amp_to_probe("auto", CUDA, BF16) is BF16
    assert setup.amp_to_probe("bf16", CUDA, BF16) is None  # an explicit setting is not probed
    assert setup.amp_to_probe("auto", CUDA, torch.float16) is None  # fp16 needs its scaler, built before the probe
    assert setup.amp_to_probe("auto", torch.device("cpu"), None) is None


def test_the_probe_times_a_grid_of_layouts_and_precisions(digits_splits, monkeypatch):
    student = cnn(digits_splits, 0)
    monkeypatch.setattr(layout, "cpu_clock", FakeClock(student, 10.0, 6.0))
    x = digits_splits.train.x[:8]
    assert probe(student, None, x, x, torch.device("cpu"), amps=(None, BF16)) == {
        CONTIGUOUS: 10.0, CHANNELS_LAST: 6.0, "contiguous+bf16": 10.0, "channels_last+bf16": 6.0}
    assert probe(student, None, x, x, torch.device("cpu"), layouts=(CONTIGUOUS,), amps=(None, BF16)) == {
        CONTIGUOUS: 10.0, "contiguous+bf16": 10.0}
    assert not in_channels_last(student)


@pytest.mark.parametrize("grid, amp, name", [
    ({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.0, "contiguous+bf16": 5.0, "channels_last+bf16": 4.0}, "bf16", CHANNELS_LAST),
    ({CONTIGUOUS: 3.0, CHANNELS_LAST: 3.1, "contiguous+bf16": 3.4, "channels_last+bf16": 2.9}, "off", CONTIGUOUS),
])
def test_auto_amp_is_decided_by_the_layout_probe_logged_and_recorded(digits_splits, fresh, grid, amp, name):
    calls = []

    def measured(*args):
        calls.append(args[6:])
        return dict(grid)

    fresh.setattr(setup, "measured", measured)
    fresh.setattr(setup, "amp_to_probe", lambda setting, device, dtype: BF16 if setting == "auto" else None)
    lines: list[str] = []
    result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(max_steps=2), progress=lines.append)
    assert calls == [((CONTIGUOUS, CHANNELS_LAST), (None, BF16))]
    assert result.history[0]["memory_format"] == {"format": name, "decided_by": "probe", "ms_per_step": grid,
                                                  "amp": amp}
    ms = ", ".join(f"{k} {v:.2f}" for k, v in grid.items())
    assert lines[0] == f"[model] memory format: {name}, amp {amp} (train.channels_last: auto; train.amp: auto; " \
                       f"probe, ms per step: {ms})"


def test_auto_amp_without_convolutions_or_with_a_pinned_layout_probes_one_layout(digits_splits, fresh):
    grid = {CONTIGUOUS: 3.0, "contiguous+bf16": 2.0}
    plain = {CONTIGUOUS: 3.0, CHANNELS_LAST: 3.1}  # the probe of layouts alone (no amps argument)
    fresh.setattr(setup, "measured", lambda *args: dict(grid if len(args) > 6 else plain))
    fresh.setattr(setup, "amp_to_probe", lambda setting, device, dtype: BF16 if setting == "auto" else None)
    torch.manual_seed(0)
    mlp = create_model("mlp", 10, digits_splits.in_shape, hidden=[16])
    result = fit(mlp, CrossEntropy(), digits_splits, cfg(max_steps=1), progress=None)
    assert result.history[0]["memory_format"] == {"format": CONTIGUOUS, "decided_by": "not convolutional",
                                                  "ms_per_step": grid, "amp": "bf16"}
    result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(max_steps=1, channels_last=False),
                 progress=None)
    assert result.history[0]["memory_format"] == {"format": CONTIGUOUS, "decided_by": "train.channels_last",
                                                  "ms_per_step": grid, "amp": "bf16"}
    result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(max_steps=1, amp="off"), progress=None)
    assert "amp" not in result.history[0]["memory_format"]  # an explicit train.amp: no amp probe


def test_a_resumed_run_keeps_its_probed_amp(digits_splits, fresh, tmp_path):
    grid = {CONTIGUOUS: 3.0, CHANNELS_LAST: 3.1, "contiguous+bf16": 3.4, "channels_last+bf16": 3.5}
    fresh.setattr(setup, "measured", lambda *args: dict(grid))
    fresh.setattr(setup, "amp_to_probe", lambda setting, device, dtype: BF16 if setting == "auto" else None)
    first = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(epochs=2), out_dir=tmp_path, progress=None,
                stop_after_epochs=1)
    fresh.setattr(setup, "measured", lambda *args: {k: 1.0 / v for k, v in grid.items()})  # a probe now: bf16
    resumed = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(epochs=2), out_dir=tmp_path, resume=True,
                  progress=None)
    assert [r["memory_format"]["amp"] for r in resumed.history] == ["off", "off"] == [
        first.history[0]["memory_format"]["amp"]] * 2
