"""What batched augmentation costs next to a student training step, as a ratio measured in one run.

ratio = time of (inception crop + horizontal flip + mixup) of one batch, ``distill.data.augment``
        / time of one training step of a small CNN student on that batch

The augmentation is the function-matching pipeline of Beyer et al. (2022): ``inception_crop`` back
to the input size (scale (0.08, 1), ratio (3/4, 4/3), antialiased bilinear), ``random_flip``
(p = 0.5), ``mixup`` (alpha = 1, one lambda per sample), parameters from a seeded CPU generator.
The training step is the registry's ``cnn`` with channels (16, 32) (the student of
``benchmarks/overhead.py``): forward, cross-entropy, backward, SGD step. Both run on random tensors
of the batch's shape, in one process, alternating (augment k batches, train k steps, augment, ...);
the first pair is warm-up and discarded. The report gives the median ratio over the pairs, its
spread, and the ratio of the fastest times (on a shared machine interference only adds time).
It also times each augmentation on its own (median ms per batch), and ``F.grid_sample`` on the same
boxes for comparison (the usual way to crop-and-resize a batch: cheaper, but without antialiasing
and not exact for integer boxes).

    python benchmarks/augment_speed.py                   # 256 x 1x28x28 and 256 x 3x32x32, ~1 min
    python benchmarks/augment_speed.py --reps 5 --out /tmp/augment.md    # quick look
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: sleeping (not spinning) waits; see benchmarks/README.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, BenchmarkParser, how_it_was_run, load_average, save_report  # noqa: E402

from distill.data.augment import (  # noqa: E402
    crop_resize,
    cutmix,
    inception_boxes,
    inception_crop,
    mixup,
    random_crop,
    random_flip,
    random_shift,
)
from distill.models import create_model  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "augment_speed.md"
CASES = {"28x28": (1, 28, 28), "3x32x32": (3, 32, 32)}
STUDENT = {"name": "cnn", "channels": (16, 32)}


def function_matching_views(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    views = inception_crop(x, x.shape[-2:], generator=generator)
    views = random_flip(views, generator=generator)
    return mixup(views, 1.0, generator=generator).images


def grid_sample_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The usual alternative to ``crop_resize``, for comparison: bilinear ``F.grid_sample`` of the same
    boxes at the input size (no antialiasing, not exact for integer boxes)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    zeros = torch.zeros_like(x0)
    row_x = torch.stack([x1 - x0, zeros, x0 + x1 - 1], 1)  # output [-1, 1] -> the box, in grid_sample's [-1, 1]
    row_y = torch.stack([zeros, y1 - y0, y0 + y1 - 1], 1)
    theta = torch.stack([row_x, row_y], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def timed(fn: Callable[[], Any], k: int) -> float:
    """Seconds per call, over ``k`` calls."""
    start = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - start) / k


def measure(case: str, batch: int, reps: int, k: int) -> dict[str, Any]:
    shape = (batch, *CASES[case])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    model = create_model(STUDENT["name"], 10, CASES[case], channels=STUDENT["channels"]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def augment() -> None:
        function_matching_views(x, generator)

    def train_step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    pairs = [(timed(augment, k), timed(train_step, k)) for _ in range(reps + 1)][1:]  # first pair: warm-up
    ratios = sorted(a / s for a, s in pairs)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    boxes = inception_boxes(batch, x.shape[-2:], generator=generator)
    parts = {
        "inception_crop": lambda: inception_crop(x, x.shape[-2:], generator=generator),
        "crop_resize (given boxes)": lambda: crop_resize(x, boxes, x.shape[-2:]),
        "grid_sample (same boxes, reference)": lambda: grid_sample_crop(x, boxes),
        "random_flip": lambda: random_flip(x, generator=generator),
        "mixup (alpha=1)": lambda: mixup(x, 1.0, generator=generator),
        "cutmix (alpha=1)": lambda: cutmix(x, 1.0, generator=generator),
        "random_crop (padding=4)": lambda: random_crop(x, 4, generator=generator),
        "random_shift (2, existing)": lambda: random_shift(x, 2, generator=generator),
    }
    components = {}
    for name, fn in parts.items():
        fn()
        components[name] = statistics.median(timed(fn, k) for _ in range(max(3, reps // 3))) * 1e3
    return {
        "case": case, "shape": shape, "k": k, "reps": reps,
        "augment_ms": statistics.median(a for a, _ in pairs) * 1e3,
        "step_ms": statistics.median(s for _, s in pairs) * 1e3,
        "ratio": statistics.median(ratios), "q1": quartiles[0], "q3": quartiles[2],
        "ratio_of_minima": min(a for a, _ in pairs) / min(s for _, s in pairs),
        "components": components,
    }


def write_report(out: Path, results: list[dict[str, Any]], wall: float, load_start: str, load_end: str) -> None:
    lines = ["# Batched augmentation vs. a student training step", ""]
    lines += ["ratio = time of (`inception_crop` to the input size + `random_flip` + `mixup`, alpha 1, per-sample "
              "lambda) of one batch / time of one training step (forward, cross-entropy, backward, SGD step) of "
              f"the `{STUDENT['name']}` student with channels {STUDENT['channels']} on that batch; same process, "
              "alternating, first pair discarded; CPU, random tensors.", ""]
    lines += ["| batch | augment ms (median) | train step ms (median) | ratio (median) | IQR | ratio of minima |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {' x '.join(map(str, r['shape']))} | {r['augment_ms']:.2f} | {r['step_ms']:.2f} | "
                     f"**{r['ratio']:.3f}** | {r['q1']:.3f}–{r['q3']:.3f} | {r['ratio_of_minima']:.3f} |")
    lines += ["", f"Each of {results[0]['reps']} pairs times {results[0]['k']} batches of each side.", ""]
    names = list(results[0]["components"])
    lines += ["Each augmentation on its own (median ms per batch):", "",
              "| batch | " + " | ".join(f"`{n}`" for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for r in results:
        lines.append(f"| {' x '.join(map(str, r['shape']))} | "
                     + " | ".join(f"{r['components'][n]:.2f}" for n in names) + " |")
    lines += ["", *how_it_was_run(wall, load_start, load_end), ""]
    save_report(out, lines)


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_threads(default=1).add_out(DEFAULT_OUT)
    p.add_argument("--batch", type=int, default=256, help="batch size (default: %(default)s)")
    p.add_argument("--reps", type=int, default=15, help="measured (augment, train) pairs (default: %(default)s)")
    p.add_argument("--k", type=int, default=10, help="batches per side of a pair (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start, t0 = load_average(), time.perf_counter()
    results = []
    for case in CASES:
        r = measure(case, args.batch, args.reps, args.k)
        results.append(r)
        print(f"{case}: augment {r['augment_ms']:.2f} ms, train step {r['step_ms']:.2f} ms, ratio {r['ratio']:.3f} "
              f"(IQR {r['q1']:.3f}-{r['q3']:.3f}, ratio of minima {r['ratio_of_minima']:.3f})", flush=True)
    write_report(args.out, results, time.perf_counter() - t0, load_start, load_average())
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
