"""How a live teacher's forward runs: its precision and whether it is compiled, chosen once before the loop.

**Precision** (``train.teacher_precision``). The frozen teacher only gives targets, and the loss sees them
as ``softmax(z / T)``, so it may run in bf16/fp16 under autocast where that leaves those targets where fp32
puts them. With ``auto`` (the default) on CUDA a start-up probe runs the teacher on a few real training
batches in fp32 and in bf16 (fp16 where the GPU has no bf16), measures the largest change of any class
probability, ``max |softmax(z32/T) - softmax(zlow/T)|``, and the mean ``KL(p32 || plow)`` at the objective's
temperature, and keeps the low precision only within :data:`MAX_DPROB` and :data:`MAX_KL` (and finite) **and**
when its forward is measurably faster: the probe also times both forwards on a batch of the run's size (CUDA
events, after :data:`PRECISION_WARMUP` warm-up calls of each, in which cuDNN picks its bf16 algorithms; the median of
:data:`PRECISION_ROUNDS` alternating rounds of :data:`PRECISION_CALLS` calls each) and keeps the low precision at
:data:`PRECISION_MARGIN` of the fp32 time or less (a small teacher on a fast GPU is bound by kernel launches, and
autocast's casts add kernels: on an H200 the Fashion-MNIST CNN teacher took 0.68 ms in bf16, 0.48 ms in fp32). On
the CPU ``auto`` is fp32: bf16 autocast there is usually several times slower. The teacher's outputs are
cast to float32 (:class:`InPrecision`), so the loss math stays fp32 whatever the teacher ran in.

**Compile** (``train.teacher_compile``): ``default`` is ``torch.compile``; ``reduce-overhead`` adds CUDA graphs
(one replay per batch instead of a launch per kernel, which is what small teachers on a fast GPU wait on). The
compiled forward is specialised to the batch shape of the run (static shapes, what CUDA graphs need); a batch of
another shape (the last, partial one of an epoch) runs eager (:class:`FixedShape`). With ``auto`` the teacher is
compiled only where it can pay: when its eager forward over the whole run would take at least
:data:`COMPILE_PAYBACK_S` (a compile takes seconds to tens of seconds), a probe compiles it (``reduce-overhead`` on
CUDA, ``default`` on the CPU, where a C++ compiler must be on PATH), checks that its outputs equal eager's within
:data:`MAX_DPROB`, times both, and keeps it where it is faster beyond timing noise (at most :data:`COMPILE_MARGIN`
of the eager time) and saves more over the run than its compile took (:func:`keeps_compiled`). On this project's
2-core CPU the compiled forward took 0.85-0.86x of the folded channels_last eager one for the Fashion-MNIST CNN
teacher and 0.89-0.91x for a resnet20; a 3,000-step run took 0.90x and 0.94x of its time with ``off``, the probe
and a 12-13 s compile included (``benchmarks/results/teacher_compile.md``). ``train.compile: true``
(student and teacher) keeps compiling the teacher as before.

Both choices are logged, recorded in every epoch's record (``teacher_forward``) and in ``last.pt``; a run
resumed under ``auto`` keeps the choices it was trained with (as :mod:`distill.engine.layout` does).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from distill.teachers import FrozenTeacher, Targets, Teacher, TopK

MAX_DPROB = 0.01
"""Largest change of any class probability (at the objective's temperature) of any probed example that a lower
precision may make: a tenth of the label smoothing (epsilon 0.1) recipes add to targets on purpose, and an
error of at most 0.01 / T in each component of the KD gradient ``(p_s - p_t) / T`` of every example."""
MAX_KL = 1e-3
"""Largest mean ``KL(p_fp32 || p_low)`` (nats) over the probed examples: a thousandth of a nat, so the KD loss
(``T^2 KL(p_t || p_s)``, typically 0.1 to 10) moves in its third decimal at most."""
PROBE_EXAMPLES = 512  # examples in the precision probe (fewer when the training split has fewer)
COMPILE_PAYBACK_S = 120.0
"""auto compiles only a teacher whose eager forwards over the run take at least this long: compiling takes
seconds (small CNNs on the CPU: 12-13 s in a fresh process) to a minute per model, and at best it saves a part of
the teacher's time."""
COMPILE_MARGIN = 0.95
"""The compiled forward is kept only when it takes at most this fraction of the eager one (faster beyond the probe's
timing noise, a few percent on a shared machine) and saves more over the run than its compile took
(:func:`keeps_compiled`)."""
PRECISION_MARGIN = 0.9
"""The low precision is kept only when its forward takes at most this fraction of the fp32 one: within 10% the two
are the same speed as far as a few timed calls can tell, and fp32 (exact targets) stays."""
PRECISION_ROUNDS = 7  # timed rounds per precision, alternating; the median round of each counts
PRECISION_CALLS = 20  # timed forward calls per round of the precision probe
PRECISION_WARMUP = 10
"""Untimed forward calls of each precision before the precision probe's first round: sub-millisecond forwards are
timed, and cuDNN picks its (bf16) algorithms in the first calls (on an H200 a 3-round probe of fastest rounds
once chose bf16 for the Fashion-MNIST CNN teacher at 0.50 ms against fp32's 0.59 ms, where fit measured 0.81 vs
0.53 ms)."""
TIMED_CALLS = 10  # timed forward calls per variant in the compile probe, after warm-up calls
ESTIMATE_CALLS = 3  # timed eager calls that estimate the teacher's forwards over the run (is a compile worth trying)

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TeacherForward:
    """The teacher forward's precision and compile mode, why, and what the probes measured."""

    precision: str = "fp32"  # a key of PRECISIONS
    precision_by: str = "train.teacher_precision"  # or "probe", "cpu", "resumed", "no live teacher"
    measured: dict[str, float] = field(default_factory=dict)  # max_dprob, kl, top1_agree, temperature
    compile: str = "off"  # "off", "default" or "reduce-overhead"
    compile_by: str = "train.teacher_compile"  # or "probe", "cpu", "train.compile", "run too short", ...
    compile_ms: dict[str, float] = field(default_factory=dict)  # eager / compiled ms per forward, compile_s

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def record(self) -> dict[str, Any]:
        """What the history and ``last.pt`` record (JSON)."""
        return {"precision": self.precision, "precision_by": self.precision_by, "measured": dict(self.measured),
                "compile": self.compile, "compile_by": self.compile_by, "compile_ms": dict(self.compile_ms)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TeacherForward:
        return cls(record["precision"], record.get("precision_by", "resumed"), dict(record.get("measured") or {}),
                   record.get("compile", "off"), record.get("compile_by", "resumed"),
                   dict(record.get("compile_ms") or {}))

    def line(self) -> str:
        """The one log line."""
        m = self.measured
        why = f"{self.precision_by}" + (f": max |dp| {m['max_dprob']:.2e}, KL {m['kl']:.2e} at T={m['temperature']:g}"
                                        f" (limits {MAX_DPROB:g}, {MAX_KL:g})" if "max_dprob" in m else "")
        timed = [k for k in m if k.endswith("_ms")]  # fp32_ms and the low precision's
        if len(timed) == 2:
            why += (f"; ms per forward: {timed[0][:-3]} {m[timed[0]]:.3f}, {timed[1][:-3]} {m[timed[1]]:.3f} "
                    f"(low precision kept at <= {PRECISION_MARGIN:g}x fp32)")
        c = self.compile_ms
        cwhy = self.compile_by + (f": eager {c['eager_ms']:.3f} ms, compiled {c['compiled_ms']:.3f} ms"
                                  if "compiled_ms" in c else f": eager {c['eager_ms']:.3f} ms" if "eager_ms" in c
                                  else "")
        return f"teacher forward: {self.precision} ({why}); compile {self.compile} ({cwhy})"


def low_precision(device: torch.device) -> str:
    """The low precision the probe tries on ``device``: bf16 where supported, else fp16."""
    return "bf16" if device.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"


def check_setting(precision: str, compile_mode: str, device: torch.device) -> None:
    """Refuse a low precision or CUDA graphs asked for explicitly on a device where they do not run/pay."""
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise ValueError(f"train.teacher_precision={precision} needs a CUDA device (running on {device.type}; "
                         "bf16 autocast on CPUs is usually slower than fp32); use train.teacher_precision=auto or fp32")
    if compile_mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"train.teacher_compile=reduce-overhead uses CUDA graphs and needs a CUDA device (running "
                         f"on {device.type}); use train.teacher_compile=auto, off or default")


def measure_precision(teacher: Teacher, batches: Sequence[Tensor], dtype: torch.dtype,
                      temperature: float) -> dict[str, float]:
    """The teacher on ``batches`` in fp32 and under ``dtype`` autocast: the largest ``|p32 - plow|`` of any class
    and example, the mean ``KL(p32 || plow)`` (nats) at ``temperature``, the fraction of examples whose top-1
    class agrees, and whether the low-precision logits were all finite (1.0) or not (0.0)."""
    max_dprob, kl_sum, agree, n, finite = 0.0, 0.0, 0.0, 0, True
    for x in batches:
        ref = logits_of(teacher(x)).float()
        with torch.autocast(x.device.type, dtype=dtype):
            low = logits_of(teacher(x)).float()
        finite = finite and bool(torch.isfinite(low).all())
        log_p, log_q = torch.log_softmax(ref / temperature, -1), torch.log_softmax(low / temperature, -1)
        max_dprob = max(max_dprob, float((log_p.exp() - log_q.exp()).abs().max()))
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum(-1).sum())
        agree += float((ref.argmax(-1) == low.argmax(-1)).sum())
        n += ref.shape[0]
    return {"max_dprob": max_dprob, "kl": kl_sum / max(n, 1), "top1_agree": agree / max(n, 1),
            "finite": 1.0 if finite else 0.0, "temperature": float(temperature), "examples": float(n)}


def within_tolerance(measured: dict[str, float]) -> bool:
    """Whether a measurement of :func:`measure_precision` allows the low precision."""
    return (measured.get("finite", 0.0) == 1.0 and measured["max_dprob"] <= MAX_DPROB
            and measured["kl"] <= MAX_KL)


def logits_of(targets: Targets) -> Tensor:
    if targets.logits is None:
        raise ValueError("the teacher's precision probe needs a teacher that gives logits")
    return targets.logits


def _float(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def as_float(targets: Targets) -> Targets:
    """``targets`` with every floating tensor in float32 (the loss math stays fp32)."""
    features = {k: _float(v) for k, v in targets.features.items()} if targets.features is not None else None
    topk = targets.topk
    if topk is not None:
        topk = TopK(topk.indices, _float(topk.log_probs), topk.num_classes, topk.temperature)
    return Targets(logits=None if targets.logits is None else _float(targets.logits),
                   probs=None if targets.probs is None else _float(targets.probs), topk=topk, features=features)


class InPrecision:
    """A teacher called under autocast to ``dtype`` (None: as it is), its outputs cast to float32 when ``cast``."""

    def __init__(self, inner: Teacher, dtype: torch.dtype | None, device_type: str, cast: bool) -> None:
        self.inner, self.dtype, self.device_type, self.cast = inner, dtype, device_type, cast

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.inner(x, index)
        return as_float(out) if self.cast else out

    def __getattr__(self, name: str) -> Any:  # model, taps, check_positions... of the teacher inside
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"InPrecision({self.inner!r}, {self.dtype})"


class FixedShape(nn.Module):
    """A compiled forward for inputs of one ``shape`` (static: what CUDA graphs need), the eager module for any
    other (the last, partial batch of an epoch), instead of recompiling. Under CUDA graphs
    (``reduce-overhead``) each call starts a new graph step, so that a replay does not overwrite outputs the
    caller still holds (the teacher copies its logits at once)."""

    def __init__(self, eager: nn.Module, compiled: Callable[[Tensor], Any], shape: tuple[int, ...],
                 cudagraphs: bool) -> None:
        super().__init__()
        self.eager = eager
        self._compiled = (compiled,)  # a tuple: not registered as a submodule (it shares eager's parameters)
        self.shape, self.cudagraphs = shape, cudagraphs

    def forward(self, x: Tensor) -> Any:
        if tuple(x.shape) != self.shape:
            return self.eager(x)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._compiled[0](x)


def compiled_teacher(teacher: FrozenTeacher, mode: str, shape: tuple[int, ...]) -> FrozenTeacher:
    """The same teacher, its forward compiled (``torch.compile(mode=...)``, static shapes) for inputs of ``shape``;
    the model itself is untouched."""
    compiled = torch.compile(teacher.model, mode=None if mode == "default" else mode, dynamic=False)
    return FrozenTeacher(FixedShape(teacher.model, cast(Callable[[Tensor], Any], compiled), shape,
                                    mode == "reduce-overhead"))


def cxx_compiler() -> bool:
    """Whether a C++ compiler is on PATH (TorchInductor builds its CPU kernels with one)."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(teacher: Teacher, x: Tensor, dtype: torch.dtype | None, calls: int = TIMED_CALLS,
                 warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds per call of ``teacher(x)`` under ``dtype`` autocast, after ``warmup`` untimed calls: on CUDA
    between two events around the timed calls (the device's clock), elsewhere by ``clock`` (the device
    synchronized around the timed calls)."""
    run = InPrecision(teacher, dtype, x.device.type, cast=False)
    for _ in range(warmup):
        run(x)
    _sync(x.device)
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            run(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / calls
    t0 = clock()
    for _ in range(calls):
        run(x)
    _sync(x.device)
    return 1e3 * (clock() - t0) / calls


def time_precisions(teacher: Teacher, x: Tensor, low: str, rounds: int = PRECISION_ROUNDS) -> dict[str, float]:
    """Milliseconds per forward on ``x`` in fp32 and in ``low`` (keys ``fp32_ms``, ``<low>_ms``): the median of
    ``rounds`` timings of :data:`PRECISION_CALLS` calls each, the two alternating (so that a change of load hits
    both); the first round of each after :data:`PRECISION_WARMUP` untimed calls, the others after 2."""
    ms: dict[str, list[float]] = {"fp32_ms": [], f"{low}_ms": []}
    for r in range(rounds):
        warmup = PRECISION_WARMUP if r == 0 else 2
        ms["fp32_ms"].append(time_forward(teacher, x, None, calls=PRECISION_CALLS, warmup=warmup))
        ms[f"{low}_ms"].append(time_forward(teacher, x, PRECISIONS[low], calls=PRECISION_CALLS, warmup=warmup))
    return {k: round(statistics.median(v), 4) for k, v in ms.items()}


def same_outputs(a: Targets, b: Targets, temperature: float) -> float:
    """The largest ``|softmax(a/T) - softmax(b/T)|`` of two teachers' logits on the same batch."""
    pa = torch.softmax(logits_of(a).float() / temperature, -1)
    pb = torch.softmax(logits_of(b).float() / temperature, -1)
    return float((pa - pb).abs().max())


@dataclass(frozen=True)
class Probe:
    """What the start-up probes run on: batches of the run's size as the teacher sees them (its views, in the
    run's memory format), the objective's temperature and the run's length in steps."""

    batches: Sequence[Tensor]
    temperature: float
    total_steps: int


def choose_precision(teacher: FrozenTeacher, setting: str, device: torch.device, probe: Probe | None,
                     saved: dict[str, Any] | None) -> tuple[str, str, dict[str, float]]:
    """``(precision, decided by, measured)`` for ``train.teacher_precision=setting`` (``probe`` is needed for
    ``auto`` on CUDA only; ``saved`` is the record of a resumed ``last.pt``, whose choice is kept as it was made)."""
    if setting != "auto":
        return setting, "train.teacher_precision", {}
    if saved is not None:
        return saved["precision"], saved.get("precision_by", "resumed"), dict(saved.get("measured") or {})
    if device.type != "cuda":
        return "fp32", f"auto on {device.type}", {}
    assert probe is not None
    low = low_precision(device)
    measured = measure_precision(teacher, probe.batches, cast(torch.dtype, PRECISIONS[low]), probe.temperature)
    ms = time_precisions(teacher, probe.batches[0], low)
    faster = ms[f"{low}_ms"] <= PRECISION_MARGIN * ms["fp32_ms"]
    return (low if within_tolerance(measured) and faster else "fp32"), "probe", {"tried_" + low: 1.0, **measured,
                                                                                  **ms}


def choose_compile(teacher: FrozenTeacher, setting: str, train_compile: bool, device: torch.device,
                   dtype: torch.dtype | None, probe: Probe | None, saved: dict[str, Any] | None
                   ) -> tuple[str, str, dict[str, float]]:
    """``(mode, decided by, milliseconds)`` for ``train.teacher_compile=setting``."""
    if teacher.taps is not None:  # hooks that capture tensors under inference_mode do not survive tracing
        return "off", "features tapped", {}
    if setting != "auto":
        return setting, "train.teacher_compile", {}
    if train_compile:
        return "default", "train.compile", {}
    if saved is not None:
        return saved.get("compile", "off"), saved.get("compile_by", "resumed"), dict(saved.get("compile_ms") or {})
    if device.type not in ("cuda", "cpu"):
        return "off", f"auto on {device.type}", {}
    if device.type == "cpu" and not cxx_compiler():
        return "off", "auto on cpu: no C++ compiler for TorchInductor (g++, c++ or clang++)", {}
    assert probe is not None
    x = probe.batches[0]
    eager_ms = time_forward(teacher, x, dtype, calls=ESTIMATE_CALLS, warmup=1)
    ms = {"eager_ms": round(eager_ms, 4)}
    if eager_ms * probe.total_steps / 1e3 < COMPILE_PAYBACK_S:
        return "off", f"run too short to repay a compile (< {COMPILE_PAYBACK_S:g} s of teacher forwards)", ms
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    t0 = time.perf_counter()
    try:
        compiled = compiled_teacher(teacher, mode, tuple(x.shape))
        run, eager = InPrecision(compiled, dtype, device.type, True), InPrecision(teacher, dtype, device.type, True)
        gap = same_outputs(run(x), eager(x), probe.temperature)
        ms["compile_s"] = round(time.perf_counter() - t0, 2)
        ms["compiled_ms"] = round(time_forward(compiled, x, dtype), 4)
        ms["eager_ms"] = round(time_forward(teacher, x, dtype), 4)  # timed as the compiled one, right after it
    except Exception as e:  # noqa: BLE001  # the probe only saves time; a compiler fault leaves the teacher eager
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return "off", f"probe failed ({type(e).__name__}: {first})", ms
    ms["max_dprob"] = gap
    if gap > MAX_DPROB:
        return "off", f"probe: compiled outputs differ from eager (max |dp| {gap:.2e})", ms
    return (mode if keeps_compiled(ms, probe.total_steps) else "off"), "probe", ms


def keeps_compiled(ms: dict[str, float], total_steps: int) -> bool:
    """Whether the probe's compiled teacher is kept: its forward at most :data:`COMPILE_MARGIN` of the eager one, and
    the time it saves over the run's ``total_steps`` forwards more than its compile took (``compile_s``)."""
    saved_s = (ms["eager_ms"] - ms["compiled_ms"]) * total_steps / 1e3
    return ms["compiled_ms"] <= COMPILE_MARGIN * ms["eager_ms"] and saved_s > ms["compile_s"]


def choose(teacher: Teacher | None, precision: str, compile_mode: str, train_compile: bool, device: torch.device,
           probe: Callable[[], Probe] | None, saved: dict[str, Any] | None, main: bool = True,
           broadcast: Callable[[Any], Any] = lambda obj: obj) -> TeacherForward:
    """The teacher forward of a run: for a live teacher (:class:`FrozenTeacher`) its precision and compile
    mode from the settings (``train.teacher_precision``, ``train.teacher_compile``, ``train.compile``), the
    choices ``saved`` in a resumed ``last.pt``, or the probes (``probe()`` builds their batches; run on the main
    process only, whose choice ``broadcast`` gives every process). Any other teacher runs as it is."""
    check_setting(precision, compile_mode, device)
    if not isinstance(teacher, FrozenTeacher):
        return TeacherForward("fp32", "no live teacher", {}, "off", "no live teacher")
    compile_probe = device.type in ("cuda", "cpu") and compile_mode == "auto" and not train_compile
    needs_probe = saved is None and ((device.type == "cuda" and precision == "auto") or compile_probe)
    found: tuple[Any, ...] = ()
    if main:
        batches = probe() if needs_probe and probe is not None else None
        p = choose_precision(teacher, precision, device, batches, saved)
        c = choose_compile(teacher, compile_mode, train_compile, device, PRECISIONS[p[0]], batches, saved)
        found = (p, c)
    (p, c) = broadcast(found)
    return TeacherForward(p[0], p[1], p[2], c[0], c[1], c[2])


def apply(teacher: Teacher | None, forward: TeacherForward, amp_dtype: torch.dtype | None, device: torch.device,
          shape: Callable[[], tuple[int, ...]], compile_default: Callable[[FrozenTeacher], FrozenTeacher]
          ) -> Teacher | None:
    """The teacher as the loop calls it: a live one compiled and in its precision (outputs in float32), any other
    under the student's autocast (``amp_dtype``) as before. ``shape()``: the batch shape a static compile is for;
    ``compile_default``: how ``train.compile`` compiles a teacher."""
    if teacher is None:
        return None
    if not isinstance(teacher, FrozenTeacher):
        return teacher if amp_dtype is None else InPrecision(teacher, amp_dtype, device.type, cast=False)
    live: FrozenTeacher = teacher
    if forward.compile == "default" and forward.compile_by == "train.compile":
        live = compile_default(teacher)
    elif forward.compile != "off":
        live = compiled_teacher(teacher, forward.compile, shape())
    dtype = forward.dtype
    return live if dtype is None else InPrecision(live, dtype, device.type, cast=True)
