"""``recipe: cache``: run the teacher once over the training set and store its outputs.

The teacher is trained (or loaded from ``teacher.checkpoint``), run over the training split,
and its outputs written to ``distill.cache.path`` (default ``<run dir>/teacher_cache.npz``):
full logits, or the top ``distill.cache.topk`` probabilities at ``distill.temperature``, in
``distill.cache.dtype``. The file is then read back and checked against the data and the
teacher; ``results.json`` has the teacher's row and, under ``teacher_cache``, the file's path,
size and kind, and the fraction of training examples whose stored top-1 class is the
teacher's (1.0 unless float16 rounding broke a near-tie). A later ``distill`` or ``compare``
run with the same ``distill.cache.path`` distils from the file without the teacher.
"""

from __future__ import annotations

from typing import Any

from distill.cache import load_cache
from distill.engine import predict_logits
from distill.recipes.common import Run
from distill.recipes.hinton import _teacher_and_spec, cache_record, write_cache


def cache(run: Run) -> dict[str, Any]:
    teacher, spec = _teacher_and_spec(run)
    _, path = write_cache(run, teacher, spec)
    stored = load_cache(path, data=run.data, teacher=teacher)  # the round trip through the file
    live = predict_logits(teacher, run.data.train.x).argmax(-1).cpu()
    agreement = float((stored.top1() == live).float().mean())
    run.say(f"[cache] read back: stored top-1 = the teacher's on {100 * agreement:.2f}% of the training examples")
    record = {**cache_record(stored, path, built=True), "train_top1_agreement": agreement}
    return run.finish({"teacher": teacher}, None, {"teacher_cache": record})
