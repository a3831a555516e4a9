"""What a run kept and gained: per-model metrics and the tables that show them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.data.tensors import TensorData
from distill.engine import Evaluation, evaluate, predict_logits
from distill.metrics import ECE_BINS
from distill.models import count_parameters


def latency_per_1000(model: nn.Module, x: Tensor, batch_size: int = 1000, min_repeats: int = 5,
                     budget_s: float = 0.5) -> float:
    """Seconds to predict 1,000 inputs in eval mode (inputs drawn from ``x``, cycled if short).

    One warm-up pass, then timed passes until ``min_repeats`` are done and ``budget_s`` has
    elapsed (at most 100). The minimum is reported: on a shared machine every disturbance
    only adds time, so the fastest pass is the best estimate of the model's own cost. CUDA
    work is synchronized before the clock is read. On the CPU the measurement uses one
    thread: the number then does not depend on how many cores the machine has or how busy
    they are (small models are slower, not faster, when their threads wait for a busy core).
    """
    if x.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _min_time(model, x, batch_size, min_repeats, budget_s)
        finally:
            torch.set_num_threads(threads)
    return _min_time(model, x, batch_size, min_repeats, budget_s)


def _min_time(model: nn.Module, x: Tensor, batch_size: int, min_repeats: int, budget_s: float) -> float:
    idx = torch.arange(1000, device=x.device) % x.shape[0]
    batch = x[idx]

    def sync() -> None:
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)

    predict_logits(model, batch, batch_size)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget_s and len(times) < 100):
        sync()
        t0 = time.perf_counter()
        predict_logits(model, batch, batch_size)
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def model_report(
    model: nn.Module,
    test: TensorData,
    *,
    teacher_predictions: Tensor | None = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 1024,
    latency: bool = True,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """Test metrics of one model: params, accuracy, errors, NLL, expected calibration error (``test_ece``, over
    ``ece_bins`` equal-width confidence bins), agreement, latency, size.

    ``latency=False`` skips the timing (:func:`latency_per_1000`): ``latency_ms_per_1000`` and
    ``latency_on`` are then None. ``evaluation``: ``evaluate(model, test)`` if the caller has it already.
    """
    ev = evaluation if evaluation is not None else evaluate(model, test, batch_size)
    x = test.x
    if test.stream is not None and latency:  # streamed from disk: timed on its first examples, decoded here
        x = test.stream.examples(64).to(next(iter(model.parameters()), ev.predictions).device)
    on_cpu = x.device.type == "cpu"
    row: dict[str, Any] = {
        "params": count_parameters(model),
        "test_acc": ev.accuracy,
        "test_errors": ev.errors,
        "test_nll": ev.nll,
        "test_ece": ev.ece,
        "ece_bins": ECE_BINS,
        "agreement": None if teacher_predictions is None
        else float((ev.predictions == teacher_predictions).float().mean()),
        "latency_ms_per_1000": 1000 * latency_per_1000(model, x, batch_size=min(batch_size, 1000))
        if latency else None,
        "latency_on": ("cpu, 1 thread" if on_cpu else str(x.device)) if latency else None,
        "size_bytes": Path(checkpoint).stat().st_size if checkpoint and Path(checkpoint).exists() else None,
        "n_test": ev.n,
    }
    return row


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _human_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _or_dash(key: str, fmt: Any) -> Any:
    """A column formatter that shows '-' for a value that is None (not measured, or unknown)."""
    return lambda r: "-" if r.get(key) is None else fmt(r)


COLUMNS = [
    ("model", "model", lambda r: r["model"]),
    ("params", "params", _or_dash("params", lambda r: _human_count(r["params"]))),
    ("test acc", "test_acc", _or_dash("test_acc", lambda r: f"{100 * r['test_acc']:.2f}%")),
    ("errors", "test_errors", _or_dash("test_errors", lambda r: f"{r['test_errors']}/{r['n_test']}")),
    ("agree w/ teacher", "agreement", _or_dash("agreement", lambda r: f"{100 * r['agreement']:.2f}%")),
    ("test NLL", "test_nll", _or_dash("test_nll", lambda r: f"{r['test_nll']:.4f}")),
    (f"ECE ({ECE_BINS} bins)", "test_ece", _or_dash("test_ece", lambda r: f"{r['test_ece']:.4f}")),
    ("ms / 1000 img", "latency_ms_per_1000",
     _or_dash("latency_ms_per_1000", lambda r: f"{r['latency_ms_per_1000']:.2f}")),
    ("size", "size_bytes", lambda r: _human_bytes(r.get("size_bytes"))),
]


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of :func:`model_report` rows, each with a ``model`` name.

    A value that is None (not measured, or unknown: e.g. the parameters of a teacher known only
    from its cache) is shown as ``-``.
    """
    header = [c[0] for c in COLUMNS]
    body = [[fmt(r) for _, _, fmt in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]

    def fmt_row(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt_row(header), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in body])
