"""GPU throughput of distill's training step (issue 16): what the defaults choose on the device and what each
choice is worth, on the Fashion-MNIST CNN pair and resnet32x4 -> resnet8x4.

Per case, each part guarded (a failure is recorded and the next part runs):

1. **default**: ``fit`` with every setting at its default (``amp``, ``channels_last``, ``teacher_precision``,
   ``teacher_compile`` all ``auto``) against a hand-written loop (fp32, contiguous, the teacher under
   ``torch.no_grad``, ``F.kl_div`` KD + CE, ``loss.item()`` per step), ms per step in :data:`ROUNDS` alternating
   rounds (each from a fresh student, its :data:`WARMUP_STEPS` first steps untimed): the medians, their ranges and
   the median of the rounds' hand/fit ratios; the choices fit made.
2. **precision**: the teacher's forward in fp32 and under bf16 autocast (ms per batch), the probe's measurement
   (``max |dp|``, KL at T=4, top-1 agreement), the probe's own timing (``probe_ms``) and ``fit`` with
   ``train.teacher_precision`` fp32 vs bf16.
3. **compile**: the teacher's forward eager vs ``torch.compile`` (``reduce-overhead``: CUDA graphs), with the
   compile time and the largest probability difference to eager.
4. **layout**: the channels_last probe's ms per step of each layout and its choice (under the run's autocast).
5. **pinned**: host-memory batches (``train.data_on_device: false``) copied from pinned vs pageable memory
   (``TensorBatches``, ms per batch) and ``fit`` with the data on the device vs in pinned host memory (both with
   the hand loop's settings, :data:`AS_HAND`: no probes at each start).
6. **overhead**: ``fit`` with the hand loop's settings (amp off, contiguous, fp32 eager teacher, no batch-norm
   folding, no compile: :data:`AS_HAND`) against the hand loop, ms per step as in part 1; and ``torch.profiler``
   over :data:`PROFILE_STEPS` steps after the warm-up steps of each (steady state): per step the self CPU ms of the top ops, the host syncs
   (``cudaStreamSynchronize``/``cudaDeviceSynchronize``/``aten::item``/``aten::_local_scalar_dense``/...), the kernel
   launches, the top-level ATen ops, the CPU ms and the GPU kernel ms. The two top-op tables are printed (the log);
   the counts are in the JSON and in the second table of the summary.

Data are random tensors of each case's shape (the device machine has no datasets; speed does not depend on the
values). Times: CUDA events around synchronized loops on a GPU, ``time.perf_counter`` on the CPU. ``fit``'s
times are those of its steps after the warm-up steps (:class:`_common.StepWindow` around a :class:`Timer`, without set-up or probes). Single timings
of a few ms are noisy on a GPU (a 40-step hand loop took 10.1 ms per step in one run, 14.9 in the next), hence
medians of alternating rounds and repeats, with their ranges: variants compared alternate, so that a change of
load or clocks hits both. Micro-timings (teacher forwards, batch copies) come after warm-up calls of each variant
(cuDNN's algorithm choice, the caching host allocator's pinned blocks).

    python benchmarks/throughput_gpu.py --device cuda --results $OUT            # ~2 min on an H200
    python benchmarks/throughput_gpu.py --device cpu --quick --steps 3 --rounds 2 --results /tmp/g  # smoke test
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchmarkParser, StepWindow  # noqa: E402

from distill.config import TrainConfig  # noqa: E402
from distill.data.batches import TensorBatches  # noqa: E402
from distill.data.tensors import DataSplits, TensorData  # noqa: E402
from distill.engine import fit, layout  # noqa: E402
from distill.engine.callbacks import Callback  # noqa: E402
from distill.engine import teacher_forward as tf  # noqa: E402
from distill.engine.setup import resolve_amp  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.objectives import KnowledgeDistillation  # noqa: E402
from distill.teachers import FrozenTeacher  # noqa: E402

TEMPERATURE, ALPHA = 4.0, 0.9
AS_HAND: dict[str, Any] = {"amp": "off", "channels_last": False, "teacher_precision": "fp32", "teacher_compile": "off",
           "fold_teacher_batchnorm": False, "compile": False}
"""fit's settings equal to the hand loop's (fp32, contiguous, the teacher eager and as it is)."""
WARMUP_STEPS = 10
"""Untimed steps at the start of each timed fit and hand loop (a fresh student: allocations, cuDNN's choices)."""
ROUNDS = 5  # alternating rounds of fit and the hand loop in parts default and overhead (--rounds)
FIT_ROUNDS = 3  # alternating rounds of the two fits compared in parts precision and pinned
REPEATS = 7  # alternating timings of each variant in the micro-timings (teacher forwards, batch copies)
WARMUP_CALLS = 10  # untimed calls of each variant before them
MICRO_CALLS = 20  # calls per timing of a teacher forward
PROFILE_STEPS = 20  # steps profiled in part overhead (after the warm-up steps)
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaMemcpyAsync")
"""Ops that make the host wait for the device (besides the ``*Synchronize`` calls), counted per step."""


@dataclass(frozen=True)
class Case:
    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    teacher: dict[str, Any]
    student: dict[str, Any]
    batch_size: int


CASES = {
    "fmnist": Case("fmnist", (1, 28, 28), 10, {"name": "cnn", "channels": (64, 128), "hidden": 256},
                   {"name": "cnn", "channels": (16, 32), "hidden": 64}, 128),
    "resnet": Case("resnet", (3, 32, 32), 100, {"name": "resnet32x4"}, {"name": "resnet8x4"}, 64),
}
QUICK = {  # tiny models for a CPU smoke test of the code paths
    "fmnist": Case("fmnist", (1, 28, 28), 10, {"name": "cnn", "channels": (8, 16), "hidden": 32},
                   {"name": "cnn", "channels": (4, 8), "hidden": 16}, 16),
    "resnet": Case("resnet", (3, 16, 16), 100, {"name": "resnet8"}, {"name": "resnet8"}, 8),
}


def build(spec: dict[str, Any], case: Case, seed: int) -> nn.Module:
    kw = dict(spec)
    torch.manual_seed(seed)
    return create_model(kw.pop("name"), case.num_classes, case.in_shape, **kw)


class Timer:
    """Milliseconds of the work queued inside, on the device's clock (CUDA events) or the host's."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, 0.0

    def __enter__(self) -> Timer:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.end.record()
            torch.cuda.synchronize(self.device)
            self.ms = float(self.start.elapsed_time(self.end))
        else:
            self.ms = 1e3 * (time.perf_counter() - self.t0)


def spread(values: list[float]) -> dict[str, Any]:
    """The median of ``values`` and their range ``[min, max]`` (ms, rounded)."""
    return {"median": round(statistics.median(values), 4), "range": [round(min(values), 4), round(max(values), 4)],
            "all": [round(v, 4) for v in values]}


def alternate(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds of every timing ``fn`` (each returns ms), alternating: the order reversed every other
    round, so that neither is always first after the other (a change of load or clocks hits both)."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            out[k].append(fns[k]())
    return out


def per_call(fns: dict[str, Callable[[], Any]], device: torch.device, calls: int, warmup: int = WARMUP_CALLS,
             repeats: int = REPEATS) -> dict[str, list[float]]:
    """ms per call of each ``fn``: ``warmup`` untimed calls of each first (allocations, cuDNN's algorithm choice),
    then ``repeats`` alternating timings of ``calls`` calls each (:func:`alternate`)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()

    def timing(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            with Timer(device) as t:
                for _ in range(calls):
                    fn()
            return t.ms / calls
        return run
    return alternate({k: timing(fn) for k, fn in fns.items()}, repeats)


class Bench:
    def __init__(self, case: Case, device: torch.device, steps: int, rounds: int = ROUNDS,
                 warmup: int = WARMUP_STEPS) -> None:
        self.case, self.device, self.steps, self.rounds, self.warmup = case, device, steps, rounds, warmup
        self.total = warmup + steps  # steps per epoch: the warm-up steps, then the timed ones
        n = case.batch_size * self.total
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, *case.in_shape, generator=g)
        self.y = torch.randint(0, case.num_classes, (n,), generator=g)
        self.teacher = build(case.teacher, case, 1).to(device).eval().requires_grad_(False)
        self.student = build(case.student, case, 2)

    def splits(self, on_device: bool = True) -> DataSplits:
        train = TensorData(self.x, self.y)
        train = train.to(self.device) if on_device else train
        empty = TensorData(self.x[:0].to(self.device), self.y[:0].to(self.device))
        c = self.case
        return DataSplits(c.name, train, empty, empty, c.num_classes, tuple(map(str, range(c.num_classes))),
                          torch.zeros(c.in_shape[0]), torch.ones(c.in_shape[0]))

    def fit(self, callbacks: tuple[Callback, ...] = (), **changes: Any) -> tuple[float, dict[str, Any]]:
        """One epoch of fit (``warmup`` + ``steps`` steps) from a fresh student: ms per step of its last ``steps``
        steps (a :class:`Timer` in a :class:`_common.StepWindow`), and its record."""
        timer = Timer(self.device)
        window = StepWindow(self.warmup, self.total, timer.__enter__, timer.__exit__)
        cfg = TrainConfig.model_validate({"epochs": 1, "batch_size": self.case.batch_size, **changes})
        on_device = cfg.data_on_device
        student = copy.deepcopy(self.student)
        result = fit(student, KnowledgeDistillation(TEMPERATURE, ALPHA), self.splits(on_device), cfg,
                     teacher=FrozenTeacher(self.teacher), device=self.device, progress=None,
                     callbacks=(window, *callbacks))
        return timer.ms / self.steps, result.history[-1]

    def fit_ms(self, **changes: Any) -> Callable[[], float]:
        """A timing of :meth:`fit` with ``changes`` (for :func:`alternate`)."""
        return lambda: self.fit(**changes)[0]

    def hand_loop(self) -> Callable[[int, int], None]:
        """The hand-written loop (its own defaults: fp32, contiguous, ``.item()`` per step): ``run(start, stop)``
        takes steps ``start`` to ``stop`` of an epoch."""
        student = copy.deepcopy(self.student).to(self.device).train()
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        x, y, b, T = self.x.to(self.device), self.y.to(self.device), self.case.batch_size, TEMPERATURE
        perm = torch.randperm(len(y), device=self.device)

        def run(start: int, stop: int) -> None:
            for k in range(start, stop):
                i = perm[k * b:(k + 1) * b]
                xb, yb = x[i], y[i]
                with torch.no_grad():
                    t = self.teacher(xb)
                s = student(xb)
                loss = ALPHA * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T \
                    + (1 - ALPHA) * F.cross_entropy(s, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
        return run

    def hand(self) -> float:
        """The hand-written loop from a fresh student, ms per step of its last ``steps`` steps (after ``warmup``)."""
        run = self.hand_loop()
        run(0, self.warmup)
        with Timer(self.device) as t:
            run(self.warmup, self.total)
        return t.ms / self.steps


def fit_vs_hand(b: Bench, **changes: Any) -> dict[str, Any]:
    """``b.rounds`` alternating rounds of fit (with ``changes``) and the hand loop, each from a fresh student with
    its own warm-up steps: the median ms per step of each, their ranges, the median of the rounds' hand/fit ratios
    and fit's last record."""
    records: list[dict[str, Any]] = []

    def fit_ms() -> float:
        ms, record = b.fit(**changes)
        records.append(record)
        return ms
    ms = alternate({"fit": fit_ms, "hand": b.hand}, b.rounds)
    fit_s, hand_s = spread(ms["fit"]), spread(ms["hand"])
    ratios = spread([h / f for f, h in zip(ms["fit"], ms["hand"])])
    return {"fit_ms": fit_s["median"], "hand_ms": hand_s["median"], "hand_over_fit": round(ratios["median"], 3),
            "fit_ms_range": fit_s["range"], "hand_ms_range": hand_s["range"], "hand_over_fit_range": ratios["range"],
            "rounds": {"fit_ms": fit_s["all"], "hand_ms": hand_s["all"]}, "record": records[-1]}


def part_default(b: Bench) -> dict[str, Any]:
    out = fit_vs_hand(b)
    record = out.pop("record")
    return {**out, "memory_format": record.get("memory_format"), "teacher_forward": record.get("teacher_forward"),
            "loss": record.get("train/loss")}


def timings(out: dict[str, Any], ms: dict[str, list[float]], key: str = "{}_ms") -> None:
    """``out[key]``: the median of each variant's timings, ``out[key + '_range']``: their range."""
    for name, values in ms.items():
        s = spread(values)
        out[key.format(name)], out[key.format(name) + "_range"] = s["median"], s["range"]


def part_precision(b: Bench) -> dict[str, Any]:
    teacher, xs = FrozenTeacher(b.teacher), b.x[:4 * b.case.batch_size].to(b.device).split(b.case.batch_size)
    out: dict[str, Any] = {}
    low = tf.low_precision(b.device)
    dtype = tf.PRECISIONS[low]
    assert dtype is not None
    run = tf.InPrecision(teacher, dtype, b.device.type, cast=True)
    timings(out, per_call({"fp32": lambda: teacher(xs[0]), low: lambda: run(xs[0])}, b.device, MICRO_CALLS),
            "forward_{}_ms")
    out["measured"] = tf.measure_precision(teacher, xs, dtype, TEMPERATURE)
    out["within_tolerance"] = tf.within_tolerance(out["measured"])
    out["probe_ms"] = tf.time_precisions(teacher, xs[0], low)  # what fit's probe measures (its own timing)
    if b.device.type == "cuda":  # (a low-precision teacher is refused on the CPU)
        timings(out, alternate({p: b.fit_ms(teacher_precision=p) for p in ("fp32", low)}, FIT_ROUNDS),
                "fit_{}_ms")
    return out


def part_compile(b: Bench, modes: list[str]) -> dict[str, Any]:
    teacher, x = FrozenTeacher(b.teacher), b.x[:b.case.batch_size].to(b.device)
    dtype = tf.PRECISIONS[tf.low_precision(b.device)] if b.device.type == "cuda" else None
    eager = tf.InPrecision(teacher, dtype, b.device.type, True)
    out: dict[str, Any] = {"precision": str(dtype)}
    reference = eager(x)
    fns: dict[str, Callable[[], Any]] = {"eager": lambda: eager(x)}
    for mode in modes:
        t0 = time.perf_counter()
        compiled = tf.InPrecision(tf.compiled_teacher(teacher, mode, tuple(x.shape)), dtype, b.device.type, True)
        first = compiled(x)
        out[mode] = {"compile_s": round(time.perf_counter() - t0, 2),
                     "max_dprob_vs_eager": tf.same_outputs(first, reference, TEMPERATURE),
                     "partial_batch_ok": tuple(compiled(x[:3]).logits.shape) == (3, b.case.num_classes)}
        fns[mode] = functools.partial(compiled, x)
    ms = per_call(fns, b.device, MICRO_CALLS)  # eager and every mode, alternating
    out["eager_ms"], out["eager_ms_range"] = spread(ms["eager"])["median"], spread(ms["eager"])["range"]
    for mode in modes:
        out[mode]["ms"], out[mode]["ms_range"] = spread(ms[mode])["median"], spread(ms[mode])["range"]
    return out


def part_layout(b: Bench) -> dict[str, Any]:
    amp = resolve_amp("auto", b.device)
    x = b.x[:b.case.batch_size].to(b.device)
    student = copy.deepcopy(b.student).to(b.device)
    if amp != torch.bfloat16:  # no amp probe (the CPU): the layouts alone
        ms = layout.probe(student, b.teacher, x, x, b.device, amp)
        return {"amp": str(amp), "ms_per_step": ms, "choice": layout.decide(ms)}
    ms = layout.probe(student, b.teacher, x, x, b.device, amps=(None, amp))  # train.amp: auto's grid
    chosen = layout.decide_amp(ms, amp)
    under = {k: ms[layout.variant(k, None if chosen == "off" else amp)] for k in (layout.CONTIGUOUS,
                                                                                 layout.CHANNELS_LAST)}
    return {"amp": chosen, "ms_per_step": ms, "choice": f"{layout.decide(under)}, amp {chosen}"}


def part_pinned(b: Bench) -> dict[str, Any]:
    data = TensorData(b.x, b.y)
    out: dict[str, Any] = {}
    epochs: dict[str, Callable[[], Any]] = {}
    n = 1
    for name, pin in (("pinned", True), ("pageable", False)):
        batches = TensorBatches(data, b.case.batch_size, b.device, on_device=False)  # pinned source: allocated here
        if not pin:  # the same source copying from pageable memory, synchronously
            batches.pinned = False
            batches.x, batches.y = b.x.clone(), b.y.clone()
        n = len(batches)

        def epoch(src: TensorBatches = batches) -> None:
            for x, _, _ in src.epoch(0):
                x.add_(0)  # a consumer on the device
        epochs[name] = epoch
    # 2 untimed epochs of each (the caching host allocator's pinned blocks), then alternating epochs
    ms = per_call(epochs, b.device, 1, warmup=2, repeats=5)
    timings(out, {k: [v / n for v in vs] for k, vs in ms.items()}, "{}_batch_ms")
    # the fits with the hand loop's settings: no probes at each start (the data path does not depend on them)
    timings(out, alternate({k: b.fit_ms(data_on_device=on, **AS_HAND) for k, on in (("on_device", True),
                                                                                    ("host_pinned", False))},
                           FIT_ROUNDS), "fit_{}_ms")
    return out


class Profile:
    """``torch.profiler`` (CPU, and CUDA on a GPU) between :meth:`start` and :meth:`stop`, the device synchronized
    at both (one ``cudaDeviceSynchronize`` inside the window, alike for fit and the hand loop)."""

    def __init__(self, device: torch.device) -> None:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.device, self.prof = device, torch.profiler.profile(activities=acts)

    def start(self) -> None:
        layout.synchronize(self.device)
        self.prof.start()

    def stop(self) -> None:
        layout.synchronize(self.device)
        self.prof.stop()

    def summary(self, steps: int, top: int = 15) -> dict[str, Any]:
        """Per step: the top ops by self CPU time ([name, self CPU ms, calls]), host syncs by op, kernel launches,
        top-level ATen ops, the CPU ms of all ops and the GPU's kernel ms."""
        avgs = self.prof.key_averages()
        per = 1.0 / max(steps, 1)
        syncs = {e.key: round(e.count * per, 2) for e in avgs if "Synchronize" in e.key or e.key in SYNC_OPS}
        aten_top = sum(1 for e in self.prof.events() if e.name.startswith("aten::")
                       and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
        ranked = sorted(avgs, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        return {"steps": steps,
                "top_self_cpu": [[e.key, round(e.self_cpu_time_total * per / 1e3, 4), round(e.count * per, 2)]
                                 for e in ranked],
                "syncs": syncs, "syncs_total": round(sum(syncs.values()), 2),
                "launches": round(sum(e.count for e in avgs if "LaunchKernel" in e.key) * per, 2),
                "aten_ops": round(aten_top * per, 2),
                "cpu_ms": round(sum(e.self_cpu_time_total for e in avgs) * per / 1e3, 4),
                "gpu_ms": round(sum(e.self_device_time_total for e in avgs) * per / 1e3, 4)}

    def table(self, rows: int = 25) -> str:
        return str(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def part_overhead(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"settings": AS_HAND, **fit_vs_hand(b, **AS_HAND)}
    del out["record"]
    start = b.warmup
    stop = start + max(1, min(PROFILE_STEPS, b.steps))  # after the warm-up: no probe or epoch start in the window
    fit_prof = Profile(b.device)
    b.fit(callbacks=(StepWindow(start, stop, fit_prof.start, fit_prof.stop),), **AS_HAND)
    hand_prof, run = Profile(b.device), b.hand_loop()
    run(0, start)  # the hand loop's warm-up steps
    hand_prof.start()
    run(start, stop)
    hand_prof.stop()
    out["profile_fit"], out["profile_hand"] = fit_prof.summary(stop - start), hand_prof.summary(stop - start)
    for name, prof in (("fit (hand settings)", fit_prof), ("hand loop", hand_prof)):
        print(f"  profile of {name}, steps {start + 1}-{stop} ({stop - start} steps; totals, not per step):\n"
              f"{prof.table()}", flush=True)
    return out


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001  # one part's failure must not stop the others
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}
    out["part_s"] = round(time.perf_counter() - t0, 2)
    print(f"  {name}: {json.dumps(out, default=str)[:600]}", flush=True)
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return "-"
        d = d[k]
    return d


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _ms(d: Any, key: str) -> str:
    """``d[key]`` (a median) with its range ``d[key + '_range']`` where there is one: ``1.23 (1.2-1.31)``."""
    v, r = _get(d, key), _get(d, key + "_range")
    return f"{_num(v)} ({_num(r[0])}-{_num(r[1])})" if isinstance(r, list) and len(r) == 2 else _num(v)


def summary(results: dict[str, Any]) -> list[str]:
    """One row per case: the numbers of every part (``-`` where a part did not run or failed); medians over the
    rounds or repeats, their range in brackets."""
    rows = ["| case | fit ms/step | hand ms/step | hand/fit | fit chose: layout, amp; teacher | teacher fwd fp32 / low ms "
            "| max dp, KL | fit fp32 / low teacher ms | teacher eager / compiled ms (compile s) "
            "| batch copy pinned / pageable ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["cases"].items():
        d, p, c, pin = r.get("default", {}), r.get("precision", {}), r.get("compile", {}), r.get("pinned", {})
        fw = _get(d, "teacher_forward")
        low = next((k for k in p if k.startswith("forward_") and k.endswith("_ms") and k != "forward_fp32_ms"), None)
        low_fit = next((k for k in p if k.startswith("fit_") and k.endswith("_ms") and k != "fit_fp32_ms"), None)
        mode = next((k for k in c if isinstance(c[k], dict)), None)
        probe = _get(fw, "measured")
        probe_ms = " / ".join(_num(v) for k, v in probe.items() if k.endswith("_ms")) if isinstance(probe, dict) else ""
        cells = [name, _ms(d, "fit_ms"), _ms(d, "hand_ms"), _ms(d, "hand_over_fit"),
                 f"{_get(d, 'memory_format', 'format')}, {_get(d, 'memory_format', 'amp')}; {_get(fw, 'precision')}"
                 + (f" (probe {probe_ms} ms)" if probe_ms else "") + f", compile {_get(fw, 'compile')}",
                 f"{_ms(p, 'forward_fp32_ms')} / {_ms(p, low) if low else '-'}",
                 f"{_num(_get(p, 'measured', 'max_dprob'))}, {_num(_get(p, 'measured', 'kl'))}",
                 f"{_ms(p, 'fit_fp32_ms')} / {_ms(p, low_fit) if low_fit else '-'}",
                 f"{_ms(c, 'eager_ms')} / {_ms(c[mode], 'ms') if mode else '-'} "
                 f"({_get(c, mode, 'compile_s') if mode else '-'})",
                 f"{_ms(pin, 'pinned_batch_ms')} / {_ms(pin, 'pageable_batch_ms')}"]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
        errors = [f"{k}: {v['error']}" for k, v in r.items() if isinstance(v, dict) and "error" in v]
        if errors:
            rows.append(f"| {name} errors: {'; '.join(errors)[:400]} |")
    return rows


def overhead_summary(results: dict[str, Any]) -> list[str]:
    """Where the time goes: fit with the hand loop's settings against the hand loop, and per step of each (fit /
    hand) from the profiler: host syncs, kernel launches, top-level ATen ops, CPU ms of all ops, GPU kernel ms, and
    fit's three ops with the most self CPU time."""
    rows = ["| case | fit (hand settings) / hand ms/step | hand/fit | syncs/step fit / hand | launches/step "
            "| ATen ops/step | CPU ms/step | GPU kernel ms/step | fit's top self-CPU ops (ms/step) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["cases"].items():
        o = r.get("overhead")
        if not isinstance(o, dict) or "error" in o or "profile_fit" not in o:
            continue
        f, h = o["profile_fit"], o["profile_hand"]

        def both(key: str) -> str:
            return f"{_num(f[key])} / {_num(h[key])}"
        top = ", ".join(f"{k} {v:.3g}" for k, v, _ in f["top_self_cpu"][:3])
        rows.append(f"| {name} | {_ms(o, 'fit_ms')} / {_ms(o, 'hand_ms')} | {_ms(o, 'hand_over_fit')} "
                    f"| {both('syncs_total')} "
                    f"| {both('launches')} | {both('aten_ops')} | {both('cpu_ms')} | {both('gpu_ms')} | {top} |")
    return rows if len(rows) > 2 else []


def main(argv: list[str] | None = None) -> int:
    ap = BenchmarkParser(__doc__).add_quick("tiny models: a smoke test of the code paths").add_results()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default="fmnist,resnet")
    ap.add_argument("--steps", type=int, default=60, help=f"timed steps per loop (after {WARMUP_STEPS} warm-up "
                    "steps)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds of fit and the hand loop")
    ap.add_argument("--parts", default="default,overhead,precision,compile,layout,pinned")
    ap.add_argument("--compile-modes", default="reduce-overhead", help="comma-separated torch.compile modes")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False  # fit's default
    parts = args.parts.split(",")
    modes = [m for m in args.compile_modes.split(",") if m]
    results: dict[str, Any] = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "python": platform.python_version(),
                               "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                               "steps": args.steps, "rounds": args.rounds,
                               "warmup_steps": 2 if args.quick else WARMUP_STEPS, "cases": {}}
    t0 = time.perf_counter()
    for name in args.cases.split(","):
        case = (QUICK if args.quick else CASES)[name]
        print(f"case {name} on {results['device']}", flush=True)
        b = Bench(case, device, args.steps, args.rounds, results["warmup_steps"])
        r: dict[str, Any] = {"teacher": case.teacher, "student": case.student, "batch_size": case.batch_size}
        table: dict[str, Callable[[], dict[str, Any]]] = {
            "default": lambda: part_default(b), "precision": lambda: part_precision(b),
            "compile": lambda: part_compile(b, modes), "layout": lambda: part_layout(b),
            "pinned": lambda: part_pinned(b), "overhead": lambda: part_overhead(b)}
        for part in parts:
            r[part] = guarded(part, table[part])
        results["cases"][name] = r
        md = write(results, args.results, args.steps, time.perf_counter() - t0)  # after each case: a timeout keeps it
    print("\n".join(md))
    return 0


def write(results: dict[str, Any], out: Path, steps: int, wall: float) -> list[str]:
    results["wall_s"] = round(wall, 1)
    md = [f"# GPU throughput ({results['device']}, torch {results['torch']}, CUDA {results['cuda']})", "",
          f"`{results['command']}`, wall {results['wall_s']} s. ms per step: medians over {results['rounds']} "
          f"alternating rounds of fit and the hand loop (each from a fresh student, {steps} timed steps after "
          f"{results['warmup_steps']} warm-up steps), the range in brackets, hand/fit the median of the rounds' ratios; "
          f"the precision and pinned parts' fits {FIT_ROUNDS} alternating rounds; teacher forwards and batch copies: "
          f"medians of {REPEATS} (copies: 5) alternating timings after warm-up calls.", "",
          *summary(results), ""]
    where = overhead_summary(results)
    if where:
        md += ["Where the time goes (part overhead: fit with the hand loop's settings, timed as above; per step, "
               f"profiled over {PROFILE_STEPS} steps after the warm-up steps; fit / hand):", "", *where, ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput_gpu.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "throughput_gpu.md").write_text("\n".join(md))
    return md


if __name__ == "__main__":
    raise SystemExit(main())
