"""``recipe: cache``: run the teacher once over the training set and store its outputs.

The teacher is trained (or loaded from ``teacher.checkpoint``), run over the training split (or
the ``distill.transfer`` set, which a distill run would ask it about; for a fixed-teacher
``distill.views.mode``, over the mode's views of it), and its outputs written to
``distill.cache.path`` (default ``<run dir>/teacher_cache.npz``; for a training split streamed from
disk the directory ``<run dir>/teacher_cache``, memory-mapped, see :mod:`distill.cache`):
full logits, or the top ``distill.cache.topk`` probabilities at ``distill.temperature``, in
``distill.cache.dtype``. The file is then read back and checked against the data and the
teacher; ``results.json`` has the teacher's row and, under ``teacher_cache``, the file's path,
size and kind, and the fraction of training examples whose stored top-1 class is the
teacher's (1.0 unless float16 rounding broke a near-tie; null for a streamed split, not read
twice). A later ``distill`` or ``compare``
run with the same ``distill.cache.path`` distils from the file without the teacher.
"""

from __future__ import annotations

from typing import Any

from distill.cache import load_cache
from distill.config import register_recipe
from distill.engine import predict_logits
from distill.recipes.common import Run
from distill.recipes.hinton import _teacher_and_spec, cache_record, cache_views, distill_data, write_cache
from distill.views import teacher_inputs


@register_recipe("cache", reads=("teacher", "distill"), roles=("teacher",))
def cache(run: Run) -> dict[str, Any]:
    """Run the teacher once over the training (or transfer) set and store its outputs in
    ``distill.cache.path``, for distill runs that never load it."""
    data = distill_data(run)  # the examples a distill run will ask the cache about
    cache_views(run, data)  # a mode that needs the live teacher is refused before the teacher trains
    teacher, spec = _teacher_and_spec(run)
    built, path = write_cache(run, teacher, spec, data)
    stored = load_cache(path, data=data, teacher=teacher, model_spec=spec, views=built.views)  # the round trip
    agreement: float | None = None
    if data.stream is not None:  # streamed: written as computed; comparing would read every file again
        run.say("[cache] read back: shapes and meta checked (a streamed split is not compared row by row)")
    else:
        if built.views == teacher_inputs(None, data.in_shape):
            live = predict_logits(teacher, data.train.x).argmax(-1).cpu()
        else:  # the teacher behind views (crops drawn at random): compare with what was computed before saving
            live = built.top1()
        agreement = float((stored.top1() == live).float().mean())
        run.say(f"[cache] read back: stored top-1 = the teacher's on {100 * agreement:.2f}% of the training "
                "examples")
    record = {**cache_record(stored, path, built=True), "train_top1_agreement": agreement}
    return run.finish({"teacher": teacher}, None, {"teacher_cache": record})
