"""A live teacher's precision and compile mode (distill.engine.teacher_forward): the probes' rules with injected
measurements and timings (no timed tests), the settings, what a run records, and, on a CUDA machine only, that a
bf16 teacher stays within tolerance, that a compiled teacher equals the eager one and that fit runs with the
defaults."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import TrainConfig
from distill.engine import fit
from distill.engine import teacher_forward as tf
from distill.objectives import KnowledgeDistillation
from distill.teachers import FrozenTeacher, Targets

from _engine_helpers import cfg, cnn
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


class Bumped(nn.Module):
    """Logits ``z`` in fp32; under CPU autocast ``z + bump``: a 'low precision' whose error is known exactly."""

    def __init__(self, z: Tensor, bump: Tensor) -> None:
        super().__init__()
        self.z, self.bump = z, bump

    def forward(self, x: Tensor) -> Tensor:
        return self.z + self.bump if torch.is_autocast_enabled("cpu") else self.z


def test_settings_are_validated():
    assert TrainConfig().teacher_precision == "auto" and TrainConfig().teacher_compile == "auto"
    assert TrainConfig(teacher_precision="bf16", teacher_compile="reduce-overhead").teacher_compile == "reduce-overhead"
    with pytest.raises(ValidationError, match="teacher_precision"):
        TrainConfig(teacher_precision="int8")
    with pytest.raises(ValidationError, match="teacher_compile"):
        TrainConfig(teacher_compile="max-autotune")


def test_low_precision_or_cuda_graphs_are_refused_on_the_cpu(digits_splits):
    with pytest.raises(ValueError, match="train.teacher_precision=bf16 needs a CUDA device"):
        fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(teacher_precision="bf16"),
            teacher=FrozenTeacher(cnn(digits_splits, 1)), progress=None)
    with pytest.raises(ValueError, match="train.teacher_compile=reduce-overhead uses CUDA graphs"):
        tf.check_setting("auto", "reduce-overhead", torch.device("cpu"))


def test_on_the_cpu_auto_is_fp32_eager_and_recorded(digits_splits, tmp_path):
    lines: list[str] = []
    result = fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(max_steps=2),
                 teacher=FrozenTeacher(cnn(digits_splits, 1)), out_dir=tmp_path, progress=lines.append)
    recorded = result.history[0]["teacher_forward"]
    assert load_checkpoint(tmp_path / "last.pt")["teacher_forward"] == recorded
    assert {k: recorded[k] for k in ("precision", "precision_by", "measured", "compile")} == {
        "precision": "fp32", "precision_by": "auto on cpu", "measured": {}, "compile": "off"}
    if tf.cxx_compiler():  # 2 steps: the eager forward was timed, a compile would not pay
        assert recorded["compile_by"] == "run too short to repay a compile (< 120 s of teacher forwards)"
        assert list(recorded["compile_ms"]) == ["eager_ms"] and recorded["compile_ms"]["eager_ms"] > 0
    else:
        assert recorded["compile_by"].startswith("auto on cpu: no C++ compiler") and recorded["compile_ms"] == {}
    assert not any("teacher forward" in line for line in lines)  # nothing compiled or probed: nothing to log


def test_a_resumed_run_keeps_the_recorded_choice(digits_splits, tmp_path):
    def run(**kw):
        return fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(epochs=2),
                   teacher=FrozenTeacher(cnn(digits_splits, 1)), out_dir=tmp_path, progress=None, **kw)

    run(stop_after_epochs=1)
    last = load_checkpoint(tmp_path / "last.pt")
    recorded = {"precision": "fp32", "precision_by": "probe", "measured": {"max_dprob": 0.5, "kl": 0.1},
                "compile": "off", "compile_by": "probe", "compile_ms": {"eager_ms": 1.0}}
    last["teacher_forward"] = recorded  # as if probed on a GPU
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in last.items() if k != "format"})
    assert run(resume=True).history[-1]["teacher_forward"] == recorded


def test_no_record_without_a_teacher_and_other_teachers_run_as_they_are(digits_splits):
    from distill.objectives import CrossEntropy

    result = fit(cnn(digits_splits, 0), CrossEntropy(), digits_splits, cfg(max_steps=1), progress=None)
    assert "teacher_forward" not in result.history[0]

    def teacher(x: Tensor, index: Tensor | None = None) -> Targets:
        return Targets(logits=torch.zeros(x.shape[0], 10))

    forward = tf.choose(teacher, "auto", "auto", False, torch.device("cpu"), None, None)
    assert (forward.precision_by, forward.compile_by) == ("no live teacher", "no live teacher")
    assert tf.apply(teacher, forward, None, torch.device("cpu"), lambda: (1,), lambda t: t) is teacher


def test_the_precision_measurement_is_exact():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    bump = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    teacher = FrozenTeacher(Bumped(z, bump))
    m = tf.measure_precision(teacher, [torch.zeros(2, 1)], torch.bfloat16, temperature=2.0)
    p, q = torch.softmax(z.double() / 2, -1), torch.softmax((z + bump).double() / 2, -1)  # the exact values
    # Computed in float32, each log-probability (|log p| < 2.1 here) is off by at most a few float32 roundings,
    # 2.1 * 2**-24 ~ 1.3e-7 each: the KL (1.45e-4, a difference of nearby logs) by at most 6 terms * 2 logs *
    # 1.3e-7 ~ 1.6e-6 summed over the two examples, 8e-7 in their mean; a probability by ~1e-7.
    assert math.isclose(m["max_dprob"], float((p - q).abs().max()), abs_tol=2e-7)
    assert math.isclose(m["kl"], float((p * (p.log() - q.log())).sum(-1).sum()) / 2, abs_tol=8e-7)
    assert (m["top1_agree"], m["finite"], m["temperature"], m["examples"]) == (1.0, 1.0, 2.0, 2.0)


@pytest.mark.parametrize("measured, allowed", [
    ({"max_dprob": 0.01, "kl": 1e-3, "finite": 1.0}, True),
    ({"max_dprob": 0.0101, "kl": 1e-4, "finite": 1.0}, False),
    ({"max_dprob": 0.001, "kl": 0.0011, "finite": 1.0}, False),
    ({"max_dprob": 0.0, "kl": 0.0, "finite": 0.0}, False),
])
def test_low_precision_only_within_the_stated_tolerance(measured, allowed):
    assert tf.within_tolerance(measured) is allowed


FP32_ROUNDS = [1.2, 1.0, 0.4, 1.1, 1.0, 3.0, 0.9]  # median 1.0; one fast and one slow outlier


@pytest.mark.parametrize("dprob, bf16_times, expected", [
    (0.002, [0.6, 0.5, 0.55, 0.7, 0.5, 0.6, 0.5], "bf16"),  # median 0.55
    (0.05, [0.6, 0.5, 0.55, 0.7, 0.5, 0.6, 0.5], "fp32"),  # outside the tolerance
    (0.002, [0.95, 0.91, 0.92, 0.5, 0.93, 0.94, 0.96], "fp32"),  # median 0.93, not at 0.9 of fp32's 1.0 ms
    (0.002, [0.95, 0.91, 0.92, 0.1, 0.2, 0.94, 0.96], "fp32"),  # two fast rounds, the median (0.92) is not
    (0.002, [0.95, 0.9, 0.85, 0.1, 0.2, 0.3, 0.96], "bf16"),  # median at 0.85
    (0.002, [0.95, 0.9, 0.9, 0.1, 0.2, 0.9, 0.96], "bf16"),  # median at 0.9 exactly
])
def test_the_precision_probe_on_cuda_keeps_bf16_within_tolerance_and_faster(monkeypatch, dprob, bf16_times, expected):
    measured = {"max_dprob": dprob, "kl": 1e-5, "top1_agree": 1.0, "finite": 1.0, "temperature": 4.0}
    monkeypatch.setattr(tf, "low_precision", lambda device: "bf16")
    monkeypatch.setattr(tf, "measure_precision", lambda teacher, batches, dtype, T: dict(measured))
    times = {None: iter(FP32_ROUNDS), torch.bfloat16: iter(bf16_times)}  # rounds alternate fp32, bf16
    seen = []

    def time_forward(teacher, x, dtype, calls, warmup):
        seen.append((dtype, calls, warmup))
        return next(times[dtype])
    monkeypatch.setattr(tf, "time_forward", time_forward)
    probe = tf.Probe([torch.zeros(2, 1)], 4.0, 10)
    teacher = FrozenTeacher(nn.Linear(1, 3))
    chosen = tf.choose_precision(teacher, "auto", CUDA, probe, None)
    bf16_ms = sorted(bf16_times)[3]
    assert chosen == (expected, "probe", {"tried_bf16": 1.0, **measured, "fp32_ms": 1.0, "bf16_ms": bf16_ms})
    # 7 alternating rounds of 20 calls; 10 warm-up calls of each precision before its first round, 2 before the others
    assert seen == [(None, 20, 10), (torch.bfloat16, 20, 10)] + [(None, 20, 2), (torch.bfloat16, 20, 2)] * 6
    line = tf.TeacherForward(chosen[0], "probe", chosen[2]).line()
    assert (f"teacher forward: {expected} (probe: max |dp| {dprob:.2e}, KL 1.00e-05 at T=4 (limits 0.01, 0.001); "
            f"ms per forward: fp32 1.000, bf16 {bf16_ms:.3f} (low precision kept at <= 0.9x fp32)); compile "
            "off (train.teacher_compile)") == line
    assert tf.choose_precision(teacher, "fp32", CUDA, probe, None) == ("fp32", "train.teacher_precision", {})
    assert tf.choose_precision(teacher, "auto", CUDA, probe, {"precision": "bf16"})[:2] == ("bf16", "resumed")


@pytest.mark.parametrize("device, mode", [(CUDA, "reduce-overhead"), (torch.device("cpu"), "default")])
@pytest.mark.parametrize("estimate_ms, compiled_ms, eager_ms, gap, steps, expected", [
    (10.0, 5.0, 10.0, 0.0, 100_000, ("compiled", "probe")),
    (10.0, 9.6, 10.0, 0.0, 100_000, ("off", "probe")),  # not at 0.95 of eager
    (10.0, 8.7, 9.0, 0.0, 100_000, ("off", "probe")),  # 0.87 of the estimate, 0.97 of eager timed alike
    (10.0, 9.4, 10.0, 0.0, 100_000, ("compiled", "probe")),  # 0.94 of eager: faster beyond timing noise
    (10.0, 5.0, 10.0, 0.5, 100_000, ("off", "probe: compiled outputs differ from eager (max |dp| 5.00e-01)")),
    (10.0, 5.0, 10.0, 0.0, 100, ("off", "run too short to repay a compile (< 120 s of teacher forwards)")),
])
def test_the_compile_probe_keeps_a_faster_equal_compiled_teacher(monkeypatch, device, mode, estimate_ms, compiled_ms,
                                                                 eager_ms, gap, steps, expected):
    """A quick estimate of the eager forward decides whether a compile can pay; then the compiled forward and the
    eager one are timed alike (the same calls, one right after the other) and compared."""
    times = iter([estimate_ms, compiled_ms, eager_ms])
    seen: list[tuple[str, int]] = []

    def timed(teacher, x, dtype, calls=tf.TIMED_CALLS, warmup=2):
        seen.append(("compiled" if teacher == "compiled" else "eager", calls))
        return next(times)

    monkeypatch.setattr(tf, "time_forward", timed)
    compiled_as: list[str] = []
    monkeypatch.setattr(tf, "compiled_teacher", lambda teacher, m, shape: compiled_as.append(m) or "compiled")
    monkeypatch.setattr(tf, "InPrecision", lambda inner, dtype, device_type, cast: lambda x: inner)
    monkeypatch.setattr(tf, "same_outputs", lambda a, b, T: gap)
    monkeypatch.setattr(tf, "cxx_compiler", lambda: True)
    teacher = FrozenTeacher(nn.Linear(1, 3))
    got, by, ms = tf.choose_compile(teacher, "auto", False, device, None, tf.Probe([torch.zeros(2, 1)], 4.0, steps),
                                    None)
    assert (got, by) == ((mode if expected[0] == "compiled" else "off"), expected[1])
    if steps == 100:
        assert ms == {"eager_ms": estimate_ms} and seen == [("eager", tf.ESTIMATE_CALLS)] and not compiled_as
    else:
        assert ms["eager_ms"] == eager_ms and ms["compiled_ms"] == compiled_ms and compiled_as == [mode]
        assert seen == [("eager", tf.ESTIMATE_CALLS), ("compiled", tf.TIMED_CALLS), ("eager", tf.TIMED_CALLS)]


def test_a_compiled_teacher_is_kept_where_it_saves_more_than_its_compile_took():
    ms = {"eager_ms": 10.0, "compiled_ms": 9.0, "compile_s": 12.0}
    assert tf.keeps_compiled(ms, 13_000)  # saves 1 ms x 13,000 forwards = 13 s > 12 s
    assert not tf.keeps_compiled(ms, 12_000)  # 12 s: no more than the compile took
    assert not tf.keeps_compiled({**ms, "compiled_ms": 9.6}, 10**9)  # within timing noise (> 0.95x) however long
    assert tf.keeps_compiled({**ms, "compiled_ms": 9.5}, 10**9)  # 0.95x


def test_compile_settings_without_a_probe(monkeypatch):
    teacher = FrozenTeacher(nn.Linear(1, 3))
    cpu = torch.device("cpu")
    assert tf.choose_compile(teacher, "auto", False, torch.device("meta"), None, None, None) == ("off", "auto on meta",
                                                                                                 {})
    monkeypatch.setattr(tf, "cxx_compiler", lambda: False)
    assert tf.choose_compile(teacher, "auto", False, cpu, None, None, None) == (
        "off", "auto on cpu: no C++ compiler for TorchInductor (g++, c++ or clang++)", {})
    assert tf.choose_compile(teacher, "auto", True, cpu, None, None, None) == ("default", "train.compile", {})
    assert tf.choose_compile(teacher, "default", False, cpu, None, None, None) == ("default", "train.teacher_compile",
                                                                                   {})
    tapped = FrozenTeacher(nn.Sequential(nn.Linear(1, 3)), {"f": "0"})
    assert tf.choose_compile(tapped, "reduce-overhead", False, CUDA, None, None, None)[:2] == ("off",
                                                                                                "features tapped")


def test_a_static_compile_runs_other_shapes_eager():
    calls: list[tuple[int, ...]] = []

    def compiled(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        return torch.ones(x.shape[0], 3)

    model = FrozenTeacher(tf.FixedShape(nn.Linear(2, 3), compiled, (4, 2), cudagraphs=False))
    assert torch.equal(model(torch.zeros(4, 2)).logits, torch.ones(4, 3))
    assert model(torch.zeros(3, 2)).logits.shape == (3, 3) and calls == [(4, 2)]
    assert len(list(model.model.parameters())) == 2  # the eager module's, once


def test_outputs_are_cast_to_float32():
    out = tf.InPrecision(lambda x, index=None: Targets(logits=x.bfloat16(), features={"f": x.half()}),
                         torch.bfloat16, "cpu", cast=True)(torch.ones(2, 3))
    assert out.logits.dtype == torch.float32 and out.features["f"].dtype == torch.float32


def test_default_compile_on_the_cpu_equals_eager(digits_splits):
    pytest.importorskip("torch._inductor")
    if not tf.cxx_compiler():
        pytest.skip("no C++ compiler for TorchInductor")
    teacher = FrozenTeacher(cnn(digits_splits, 1))
    x = digits_splits.train.x[:8]
    compiled = tf.compiled_teacher(teacher, "default", tuple(x.shape))
    assert tf.same_outputs(compiled(x), teacher(x), 1.0) <= 1e-6
    assert torch.equal(compiled(x[:3]).logits, teacher(x[:3]).logits)  # another shape: eager


@pytest.mark.slow
def test_on_the_cpu_auto_compiles_a_long_runs_teacher_and_training_is_unchanged(digits_splits, monkeypatch):
    """A run long enough to repay a compile (here: any, the threshold set to 0) has its teacher compiled by the
    probe, which logs and records what it measured; and a compiled teacher trains the student as
    the eager one does, to float tolerance."""
    if not tf.cxx_compiler():
        pytest.skip("no C++ compiler for TorchInductor")
    monkeypatch.setattr(tf, "COMPILE_PAYBACK_S", 0.0)

    def run(setting: str, lines: list[str] | None = None, **long):
        return fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits,
                   cfg(teacher_compile=setting, **long or {"max_steps": 4}), teacher=FrozenTeacher(cnn(digits_splits, 1)),
                   progress=lines.append if lines is not None else None, stop_after_epochs=1)

    lines: list[str] = []
    long = run("auto", lines, epochs=10_000)  # a long run, stopped after its first epoch
    recorded = long.history[0]["teacher_forward"]
    assert recorded["compile_by"] == "probe" and recorded["compile"] in ("default", "off")  # kept if it pays
    ms = recorded["compile_ms"]
    assert set(ms) == {"eager_ms", "compile_s", "compiled_ms", "max_dprob"} and ms["max_dprob"] <= 1e-6
    assert (recorded["compile"] == "default") == tf.keeps_compiled(ms, 10_000 * long.steps)
    assert [line for line in lines if "teacher forward" in line] == [
        f"[model] teacher forward: fp32 (auto on cpu); compile {recorded['compile']} (probe: eager "
        f"{ms['eager_ms']:.3f} ms, compiled {ms['compiled_ms']:.3f} ms)"]
    compiled, eager = run("default"), run("off")
    assert compiled.history[0]["teacher_forward"]["compile"] == "default"
    assert compiled.history[-1]["train/loss"] == pytest.approx(eager.history[-1]["train/loss"], rel=1e-5)
    for (name, a), b in zip(compiled.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


# ------------------------------------------------------------------------------------------- on a CUDA device


@needs_cuda
def test_cuda_bf16_teacher_outputs_are_within_tolerance(digits_splits):
    teacher = FrozenTeacher(cnn(digits_splits, 1, channels=(32, 64)).to(CUDA))
    batches = list(digits_splits.train.x[:512].to(CUDA).split(128))
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    measured = tf.measure_precision(teacher, batches, dtype, temperature=4.0)
    print("bf16 teacher vs fp32:", measured)
    assert tf.within_tolerance(measured), measured
    out = tf.InPrecision(teacher, dtype, "cuda", cast=True)(batches[0])
    assert out.logits.dtype == torch.float32


@needs_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_teacher_equals_eager(digits_splits, mode):
    teacher = FrozenTeacher(cnn(digits_splits, 1).to(CUDA))
    x = digits_splits.train.x[:64].to(CUDA)
    compiled = tf.compiled_teacher(teacher, mode, tuple(x.shape))
    first = compiled(x).logits
    second = compiled(x + 0.5).logits  # a CUDA-graph replay does not overwrite the first call's outputs
    assert tf.same_outputs(Targets(logits=first), teacher(x), 1.0) <= 1e-3
    assert tf.same_outputs(Targets(logits=second), teacher(x + 0.5), 1.0) <= 1e-3
    assert compiled(x[:5]).logits.shape == (5, 10)  # the last, partial batch: eager


@needs_cuda
def test_cuda_fit_runs_with_the_defaults(digits_splits, tmp_path):
    lines: list[str] = []
    config = cfg(epochs=2)
    result = fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits, config,
                 teacher=FrozenTeacher(cnn(digits_splits, 1).to(CUDA)), device="cuda", out_dir=tmp_path,
                 progress=lines.append, stop_after_epochs=1)
    record = result.history[-1]["teacher_forward"]
    print(record, *lines, sep="\n")
    assert record["precision_by"] == "probe" and record["precision"] in ("bf16", "fp16", "fp32")
    assert record["measured"]["temperature"] == 4.0 and record["measured"]["examples"] == 512
    assert record["compile"] == "off" and record["compile_by"].startswith("run too short")
    assert sum("teacher forward: " in line for line in lines) == 1
    assert math.isfinite(result.history[-1]["train/loss"])
    resumed = fit(cnn(digits_splits, 0), KnowledgeDistillation(4.0, 0.9), digits_splits, config,
                  teacher=FrozenTeacher(cnn(digits_splits, 1).to(CUDA)), device="cuda", out_dir=tmp_path, resume=True,
                  progress=None)
    assert [r["teacher_forward"] for r in resumed.history] == [record, record]  # kept as decided, not re-probed


@needs_cuda
def test_cuda_fit_with_a_cuda_graph_teacher(digits_splits):
    data = digits_splits
    result = fit(cnn(data, 0), KnowledgeDistillation(4.0, 0.9), data, cfg(max_steps=3, teacher_compile="reduce-overhead",
                 teacher_precision="bf16"), teacher=FrozenTeacher(cnn(data, 1).to(CUDA)), device="cuda", progress=None)
    record = result.history[-1]["teacher_forward"]
    assert (record["compile"], record["precision"]) == ("reduce-overhead", "bf16")
    assert math.isfinite(result.history[-1]["train/loss"])
