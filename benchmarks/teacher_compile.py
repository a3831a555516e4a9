"""A compiled teacher on the CPU: the teacher's forward eager and compiled (``torch.compile``, TorchInductor), and
fit's step with ``train.teacher_compile: default`` against ``off``, on the pairs of ``throughput.py``.

The teacher is fit's (batch norms folded, in the memory format fit chooses), compiled as fit compiles it
(:func:`distill.engine.teacher_forward.compiled_teacher`); per round, each forward is timed over ``--calls`` calls
(CPU time of the thread), eager and compiled alternating; the ratio is the median of the per-round ratios, with
their range. Then fit trains one epoch of ``--steps`` steps with the compiled and with the eager teacher,
alternating, timed per step from the fourth step on (the compile and the set-up are outside the window) and as a
whole call (the start-up: ``torch.compile`` runs in fit's set-up). ``train.teacher_compile: auto`` compiles on
the CPU when the teacher's forwards over the run take 2 minutes or more and its probe finds the compiled forward
at 0.9x of eager or faster (:mod:`distill.engine.teacher_forward`).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python benchmarks/teacher_compile.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402
from _common import REPO, BenchmarkParser, StepWindow, how_it_was_run, load_average, save_report  # noqa: E402

from distill.engine import fit  # noqa: E402
from distill.engine import teacher_forward as tf  # noqa: E402
from distill.methods.kd import KnowledgeDistillation  # noqa: E402
from distill.teachers import FrozenTeacher  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "teacher_compile.md"
SKIP = 3  # fit's first steps, outside the timed window
LONG_EPOCH_STEPS = 400  # the long run's epochs: at most this many batches (Fashion-MNIST has 468)


def forward_ms(teacher: FrozenTeacher, x: torch.Tensor, calls: int) -> float:
    return tf.time_forward(teacher, x, None, calls=calls, warmup=1, clock=time.thread_time)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (range {min(values):.3f}–{max(values):.3f})"


def run_case(case: tp.Case, rounds: int, calls: int, steps: int) -> list[str]:
    bs = case.batch_size
    bench = tp.build_bench(case, (steps + 1) * bs)
    cl = bench.layout(bs).channels_last
    eager = FrozenTeacher(bench.teacher_in(cl))
    x = bench.x[:bs].contiguous(memory_format=torch.channels_last) if cl else bench.x[:bs].contiguous()
    t0 = time.perf_counter()
    compiled = tf.compiled_teacher(eager, "default", tuple(x.shape))
    gap = tf.same_outputs(compiled(x), eager(x), tp.TEMPERATURE)
    compile_s = time.perf_counter() - t0
    fw: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        fw["eager"].append(forward_ms(eager, x, calls))
        fw["compiled"].append(forward_ms(compiled, x, calls))
    fw_ratio = [c / e for c, e in zip(fw["compiled"], fw["eager"])]

    data = bench.splits(steps * bs)

    def fit_round(setting: str) -> tuple[float, float, float]:
        window = StepWindow(SKIP, steps, lambda: None, lambda: None)
        t = time.perf_counter()
        result = fit(bench.new_student(), KnowledgeDistillation(tp.TEMPERATURE, tp.ALPHA), data,
                     tp.train_config(bs, teacher_compile=setting), teacher=FrozenTeacher(bench.teacher),
                     progress=None, callbacks=[window])
        assert result.history[-1]["teacher_forward"]["compile"] == setting, result.history[-1]["teacher_forward"]
        return 1e3 * window.cpu / (steps - SKIP), time.perf_counter() - t, result.history[-1]["train/loss"]

    step: dict[str, list[tuple[float, float, float]]] = {"default": [], "off": []}
    for _ in range(rounds):
        for setting in step:
            step[setting].append(fit_round(setting))
    step_ratio = [a[0] / b[0] for a, b in zip(step["default"], step["off"])]
    startup = [a[1] - b[1] for a, b in zip(step["default"], step["off"])]
    loss_gap = max(abs(a[2] - b[2]) for a, b in zip(step["default"], step["off"]))
    return [
        f"## {case.name}: {case.title}",
        "",
        f"Batch {bs}, memory format {'channels_last' if cl else 'contiguous'} (fit's probe); {rounds} rounds, "
        f"{calls} forward calls and {steps - SKIP} fit steps timed per round.",
        "",
        "| | eager (median ms) | compiled (median ms) | compiled / eager (median of rounds, range) |",
        "|---|---:|---:|---:|",
        f"| teacher forward | {statistics.median(fw['eager']):.2f} | {statistics.median(fw['compiled']):.2f} | "
        f"{spread(fw_ratio)} |",
        f"| fit step (KD, live teacher) | {statistics.median([s[0] for s in step['off']]):.2f} | "
        f"{statistics.median([s[0] for s in step['default']]):.2f} | {spread(step_ratio)} |",
        "",
        f"- First compile (with the check of its outputs): {compile_s:.1f} s; "
        f"max |softmax(z/T) − softmax(z_eager/T)| at T = {tp.TEMPERATURE:g}: {gap:.1e}.",
        f"- fit's start-up with the compiled teacher, over eager's (per round): "
        + ", ".join(f"{s:+.1f} s" for s in startup) + " (later rounds reuse TorchInductor's caches).",
        f"- Largest difference of the epoch's training loss, compiled against eager: {loss_gap:.1e}.",
        "",
    ]


def long_run(case: tp.Case, steps: int) -> list[str]:
    """One run of ``steps`` steps with ``train.teacher_compile: auto`` (its probe decides) and one with ``off``: the
    whole call's wall time, the probe's line and the final training loss."""
    bs = case.batch_size
    n = min(steps, LONG_EPOCH_STEPS) * bs
    bench = tp.build_bench(case, n)
    data = bench.splits(n)
    rows, probe_lines, losses = [], [], {}
    for setting in ("auto", "off"):
        lines: list[str] = []
        t = time.perf_counter()
        result = fit(bench.new_student(), KnowledgeDistillation(tp.TEMPERATURE, tp.ALPHA), data,
                     tp.train_config(bs, teacher_compile=setting, max_steps=steps),
                     teacher=FrozenTeacher(bench.teacher), progress=lines.append)
        wall = time.perf_counter() - t
        record = result.history[-1]["teacher_forward"]
        probe_lines += [line for line in lines if "teacher forward" in line]
        losses[setting] = result.history[-1]["train/loss"]
        rows.append(f"| `{setting}` | {record['compile']} ({record['compile_by']}) | {wall:.1f} | "
                    f"{1e3 * wall / steps:.2f} |")
    return [f"### One run of {steps} steps (`--long {steps}`)", "",
            "| `train.teacher_compile` | teacher compiled (decided by) | wall s, whole call | ms per step |",
            "|---|---|---:|---:|", *rows, "",
            *(f"- Logged: `{line}`" for line in probe_lines),
            f"- Training loss of the last epoch: auto {losses['auto']:.6f}, off {losses['off']:.6f}.", ""]


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick().add_out(DEFAULT_OUT).add_threads(1)
    p.add_argument("--cases", nargs="+", default=list(tp.CASES), choices=list(tp.CASES))
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default: %(default)s)")
    p.add_argument("--calls", type=int, default=10, help="timed forward calls per round (default: %(default)s)")
    p.add_argument("--steps", type=int, default=23, help="fit's steps per round (default: %(default)s)")
    p.add_argument("--long", type=int, default=0, metavar="STEPS",
                   help="also one fit of STEPS steps per case with teacher_compile auto and off (0: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not tf.cxx_compiler():
        print("no C++ compiler for TorchInductor (g++, c++ or clang++): nothing to measure", file=sys.stderr)
        return 1
    cases = tp.QUICK_CASES if args.quick else tp.CASES
    rounds, calls, steps = (2, 2, SKIP + 2) if args.quick else (args.rounds, args.calls, args.steps)
    load_start, t0 = load_average(), time.perf_counter()
    lines: list[str] = ["# A compiled teacher on the CPU (issue 16)", ""]
    for name in args.cases:
        lines += run_case(cases[name], rounds, calls, steps)
        if args.long:
            lines += long_run(cases[name], SKIP + 2 if args.quick else args.long)
        print("\n".join(lines[-20:]), flush=True)
    lines += how_it_was_run(time.perf_counter() - t0, load_start, load_average())
    if not args.quick and args.out is not None:
        print(f"wrote {save_report(args.out, lines)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
