"""Where the cached-teacher step's time goes: ATen ops of ``fit`` with a ``CachedTeacher`` against the plain
student step (cross-entropy), per step, from ``torch.profiler`` (CPU, one thread).

Both run the same number of steps over the same batches (the fit run's first epoch order), from the same
initial weights, in the memory format fit chooses; fit's steps are profiled from its ``skip``-th step to its
last (a callback starts and stops the profiler), the plain loop over the same batches after ``skip`` warm-up
steps. Per op: calls and self µs per step in each, and the difference. The times are the profiler's (wall clock,
inflated by the profiler itself and, on a shared machine, by other processes: compare them within one run), so
the call counts matter as much as the times; the script also times both loops without the profiler (CPU time of
the thread). Run in a tight loop, the same small calls take 3-5x less than inside a step (benchmarks/results/
throughput.md, "Cached teacher: reruns").

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python benchmarks/profile_cached.py --case fmnist --steps 40
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import throughput as tp  # noqa: E402
from _common import BenchmarkParser, StepWindow  # noqa: E402

from distill.cache import CachedTeacher, build_cache  # noqa: E402
from distill.engine import fit  # noqa: E402
from distill.methods.kd import KnowledgeDistillation  # noqa: E402


def table(prof: Any, steps: int) -> dict[str, tuple[int, float]]:
    return {e.key: (e.count / steps, e.self_cpu_time_total / steps) for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_threads(1)
    p.add_argument("--case", default="fmnist", choices=list(tp.CASES), help="the case of throughput.py")
    p.add_argument("--steps", type=int, default=40, help="steps profiled (and timed) per loop")
    p.add_argument("--skip", type=int, default=5, help="warm-up steps before them")
    p.add_argument("--top", type=int, default=45, help="ops listed, by their difference")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    case = tp.CASES[case_name := args.case]
    bs, skip, steps = case.batch_size, args.skip, args.steps
    n = (skip + steps) * bs
    bench = tp.build_bench(case, n)
    data = bench.splits(n)
    cached = CachedTeacher(build_cache(bench.teacher, data.train))
    cl = bench.layout(bs, teacher=None).channels_last
    batches = bench.batches(n, bs, cl)
    cfg = tp.train_config(bs)

    def run_fit(prof: Any) -> float:
        profiling = (prof.start, prof.stop) if prof is not None else (lambda: None, lambda: None)
        cb = StepWindow(skip, skip + steps, *profiling)
        fit(bench.new_student(), KnowledgeDistillation(tp.TEMPERATURE, tp.ALPHA), data, cfg, teacher=cached,
            progress=None, callbacks=[cb])
        return cb.cpu / steps

    def run_ce(prof: Any) -> float:
        student = bench.new_student(cl)
        opt = tp.engine_optimizer(student)
        tp.student_step_ce(student, opt, batches[:skip])
        if prof is not None:
            prof.start()
        t = tp.student_step_ce(student, opt, batches[skip:]).cpu
        if prof is not None:
            prof.stop()
        assert t is not None
        return t

    run_fit(None), run_ce(None)  # warm-up (the layout probe, lazy imports)
    plain = {"fit": [], "ce": []}
    for _ in range(5):
        plain["fit"].append(run_fit(None))
        plain["ce"].append(run_ce(None))
    profs = {}
    for name, run in (("fit", run_fit), ("ce", run_ce)):
        prof = profile(activities=[ProfilerActivity.CPU])
        run(prof)
        profs[name] = table(prof, steps)
    print(f"# {case_name}: {steps} profiled steps, batch {bs}, channels_last {cl}")
    print("unprofiled CPU ms/step (5 rounds): fit " + ", ".join(f"{1e3 * v:.2f}" for v in plain["fit"])
          + "; ce " + ", ".join(f"{1e3 * v:.2f}" for v in plain["ce"]))
    ratios = sorted(a / b for a, b in zip(plain["fit"], plain["ce"]))
    print(f"per-round ratio fit/ce: median {ratios[len(ratios) // 2]:.3f}, all " + ", ".join(f"{r:.3f}" for r in ratios))
    keys = set(profs["fit"]) | set(profs["ce"])
    rows = []
    for k in keys:
        cf, tf = profs["fit"].get(k, (0, 0.0))
        cc, tc = profs["ce"].get(k, (0, 0.0))
        rows.append((tf - tc, k, cf, tf, cc, tc))
    rows.sort(key=lambda r: -abs(r[0]))
    tot_f = sum(r[3] for r in rows)
    tot_c = sum(r[5] for r in rows)
    print(f"sum of self CPU µs/step: fit {tot_f:.1f}, ce {tot_c:.1f}, difference {tot_f - tot_c:+.1f}")
    print("| op | calls/step fit | µs/step fit | calls/step ce | µs/step ce | fit − ce µs |")
    print("|---|---:|---:|---:|---:|---:|")
    for d, k, cf, tf, cc, tc in rows[: args.top]:
        print(f"| {k} | {cf:.1f} | {tf:.1f} | {cc:.1f} | {tc:.1f} | {d:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
