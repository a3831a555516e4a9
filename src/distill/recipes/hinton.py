"""Hinton, Vinyals & Dean (2015): a teacher, a student on hard labels, the student distilled.

The distilled student and the baseline start from the same initial weights and train with the
same settings; the only difference is the objective, so the comparison isolates what the
teacher's soft targets add.

With ``distill.cache.path`` set, ``distill`` and ``compare`` distil from the teacher's stored
outputs (:mod:`distill.cache`). If the file exists, the teacher is never built, trained or
loaded, but the cache is checked against everything the run can recompute without it: the
examples the teacher is asked about (training split or ``distill.transfer`` set, and the test
split: checksums), what the teacher sees of them (``distill.views``), the teacher's architecture
(from its config or checkpoint) and, when the config names ``teacher.checkpoint``, its weights
(the checkpoint's tensors are hashed; no model is built). A cache that differs in any of these
is refused, naming the part. The teacher's row of the report then holds what the cache recorded
on the test split (accuracy, errors, NLL; its parameters, latency and size are unknown without
the model: '-', ``null`` in ``results.json``, where the row has ``"from_cache": true``);
agreement with the teacher comes from the teacher's test predictions stored in the cache. If
the file does not exist, the teacher is trained (or loaded), the cache written (for a
fixed-teacher mode, of the mode's views), and the student distilled from it, with a measured
teacher row as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.cache import (
    CachedTeacher,
    TeacherCache,
    build_cache,
    build_stream_cache,
    cache_size_bytes,
    describe_data,
    load_cache,
    save_cache,
)
from distill.checkpoint import describe_spec
from distill.config import Config, register_recipe
from distill.methods.registry import logit_methods, taps_teacher
from distill.models import weights_source
from distill.models.registry import is_pretrained
from distill.objectives import CrossEntropy
from distill.recipes.common import Run
from distill.recipes.stages import method_defaults, method_keys, plan, train_stages
from distill.data.tensors import DataSplits
from distill.recipes.views import (
    ResizeInput,
    check_cacheable,
    fixed_view_teacher,
    student_data,
    student_views,
    teacher_for_views,
    transfer_data,
)
from distill.teachers import FrozenTeacher, Teacher
from distill.views import Views, teacher_inputs

TEACHER_SEED, STUDENT_SEED = 1, 2


def _teacher_and_spec(run: Run) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher (trained now, or loaded from ``teacher.checkpoint``) and its architecture."""
    role = run.cfg.teacher
    assert role is not None
    model, spec = run.build_model(role, TEACHER_SEED)
    if role.checkpoint is not None:
        run.say(f"[teacher] using {spec['name']} from {role.checkpoint}")
        return model.to(run.device).eval(), spec
    if is_pretrained(model):  # e.g. a Hugging Face classifier loaded with its weights and classifier
        run.say(f"[teacher] using {describe_spec(spec)} with its pretrained weights (not trained here)")
        return model.to(run.device).eval(), spec
    return run.train("teacher", model, spec, CrossEntropy(), role).model, spec


def _teacher_model(run: Run) -> nn.Module:
    return _teacher_and_spec(run)[0]


def _baseline_model(run: Run) -> nn.Module:
    role = run.cfg.student
    assert role is not None
    model, spec = run.build_model(role, STUDENT_SEED)
    return run.train("baseline", model, spec, CrossEntropy(), role).model


def distill_data(run: Run) -> DataSplits:
    """The splits the student distils on: the run's, or with ``distill.transfer``'s images as the
    training split (the examples the teacher, or its cache, is asked about)."""
    if run.cfg.distill.transfer is None:
        return run.data
    data, record = transfer_data(run.cfg, run.data)
    run.extra["transfer"] = record
    run.say(f"[distilled] transfer set: {record['train_examples']} {record['name']} images (labels unused)")
    return data


def _views(run: Run, data: DataSplits) -> Views | None:
    role = run.cfg.student
    return student_views(run.cfg, data, role.train.augment.shift if role is not None else 0)


def _distilled_model(run: Run, teacher: Teacher, teacher_model: nn.Module | None = None,
                     teacher_spec: dict[str, Any] | None = None, data: DataSplits | None = None) -> nn.Module:
    """The student distilled from ``teacher`` with the config's objective or stages (:mod:`distill.recipes.stages`),
    on the transfer set and with the views the config names. ``teacher_model`` and its ``teacher_spec``: the
    live teacher, for SimKD (None with a cache). ``data``: :func:`distill_data`, if already made."""
    role = run.cfg.student
    assert role is not None
    data = data if data is not None else distill_data(run)
    views = _views(run, data)
    data = student_data(data, views)
    teacher = teacher_for_views(run.cfg, teacher, views, data, run.device, stream_dir=run.dir / "fixed_view_teacher")
    if views is not None:
        run.say(f"[distilled] views: {views.mode}, student at {views.student_size}, teacher at {views.teacher_size}")
    student_shape = tuple(data.val.x.shape[1:])  # the student's resolution
    model, spec = run.build_model(role, STUDENT_SEED, in_shape=student_shape)
    student = train_stages(run, model, spec, teacher, data, views, teacher_model, teacher_spec)
    if student_shape != tuple(run.data.in_shape):
        return ResizeInput(student, (student_shape[-2], student_shape[-1]))
    return student


# -- cached teachers ----------------------------------------------------------------------


def cache_path(run: Run) -> Path:
    """``distill.cache.path``, or in the run directory ``teacher_cache.npz`` (data in memory) or the directory
    ``teacher_cache`` (a training split streamed from disk: the cache is memory-mapped, see :mod:`distill.cache`)."""
    path = run.cfg.distill.cache.path
    if path is not None:
        return Path(path)
    return run.dir / ("teacher_cache" if run.data.stream is not None else "teacher_cache.npz")


def data_facts(run: Run) -> dict[str, Any]:
    """How the run made its data, recorded in a cache to explain a data mismatch (the checksum decides)."""
    d, transfer = run.cfg.data, run.cfg.distill.transfer
    return {"path": d.path, "split_seed": d.split_seed, "val_size": d.val_size, "train_size": d.train_size,
            "normalize": d.normalize, "transfer": transfer.name if transfer is not None else None}


def cache_views(run: Run, data: DataSplits) -> dict[str, Any]:
    """What the teacher must see of each example in this run (:func:`distill.views.teacher_inputs`),
    refusing a mode that a cache cannot serve."""
    views = _views(run, data)
    check_cacheable(views.mode if views is not None else "none")
    return teacher_inputs(views, data.in_shape, run.cfg.distill.views.ensemble_crops)


def write_cache(run: Run, teacher: nn.Module, spec: dict[str, Any],
                data: DataSplits | None = None) -> tuple[TeacherCache, Path]:
    """Run ``teacher`` over the training split (or ``data``'s: the transfer set), as the configured
    views present it, and over the test split (for agreement), and save it."""
    c, path = run.cfg.distill.cache, cache_path(run)
    data = data if data is not None else run.data
    temperature = run.cfg.distill.temperature if c.topk is not None else None
    views = _views(run, data)
    record = cache_views(run, data)
    where = f" ({record['mode']} views)" if record["mode"] != "none" else ""
    run.say(f"[cache] running the teacher over {len(data.train)} training examples{where}")
    role = run.cfg.teacher
    batch_size = role.train.eval_batch_size if role is not None else 1024
    options: dict[str, Any] = dict(topk=c.topk, dtype=c.dtype, temperature=temperature, batch_size=batch_size,
                                   device=run.device, model_spec=with_source(run, spec), data_record=data_facts(run),
                                   views=record, say=run.say if run.show_progress else None)
    if data.stream is not None:  # larger than memory: written to a directory as it is computed, memory-mapped
        cache = build_stream_cache(path, fixed_view_teacher(run.cfg, teacher, views), data, **options)
    else:
        cache = build_cache(fixed_view_teacher(run.cfg, teacher, views), data, **options)
        save_cache(path, cache)
    run.say(f"[cache] wrote {path} ({cache_size_bytes(path):,} bytes): {cache.describe()}")
    return cache, path


def cache_record(cache: TeacherCache, path: Path, built: bool) -> dict[str, Any]:
    """What ``results.json`` says about a cache (under ``teacher_cache``)."""
    test = {k: v for k, v in (cache.test or {}).items() if k != "checksum"} or None
    return {"path": str(path), "size_bytes": cache_size_bytes(path), "kind": cache.kind, "k": cache.k,
            "dtype": cache.dtype, "temperature": cache.temperature, "rows": cache.n, "built_by_this_run": built,
            "teacher_test": test, "teacher_model_spec": cache.model_spec, "views": cache.views,
            "created": cache.created}


def _check_cache_matches(run: Run, cache: TeacherCache, path: Path) -> None:
    """Refuse a cache that is not the one the config describes, or that an objective cannot use."""
    d = run.cfg.distill
    if (d.cache.topk, d.cache.dtype) != (cache.k, cache.dtype):
        want = "full logits" if d.cache.topk is None else f"top-{d.cache.topk}"
        raise ValueError(f"{path} holds {cache.describe()} but the config asks for {want} in {d.cache.dtype} "
                         f"(distill.cache.topk, distill.cache.dtype); make them agree, or delete the file to "
                         f"rebuild it")
    if cache.kind != "topk":
        return  # full logits: any logit method, at any temperature
    for stage in plan(run.cfg):
        name, key = (stage.method, f"{stage.key}.method") if stage.method else (d.loss, "distill.loss")
        if name == "ce":
            continue
        if name != "kd":
            raise ValueError(f"{key}={name} needs the teacher's full logits but {path} holds top-{cache.k} "
                             f"probabilities; use kd or a full-logit cache (distill.cache.topk=null)")
        options = {**method_defaults("kd", d), **stage.options} if stage.method else {"temperature": d.temperature}
        temperature = options["temperature"]
        where = f"{stage.key}.options.temperature" if "temperature" in stage.options else "distill.temperature"
        if cache.temperature is not None and abs(cache.temperature - temperature) > 1e-6:
            raise ValueError(f"{path} holds top-{cache.k} probabilities at temperature {cache.temperature} but "
                             f"{where} is {temperature}; set {where}={cache.temperature}, "
                             f"or delete the file to rebuild it at {temperature}")


def with_source(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``source``: what identifies the pretrained files of a teacher loaded from outside the run
    (:func:`distill.models.weights_source`: a Hugging Face directory's files, a hub id's commit), when the
    config names no ``teacher.checkpoint`` (whose weights the cache's fingerprint covers) and it is known."""
    role = run.cfg.teacher
    if role is None or role.checkpoint is not None:
        return spec
    source = weights_source(spec["name"], spec.get("kwargs"))
    return {**spec, "source": source} if source is not None else spec


def _read_cache(run: Run, path: Path, data: DataSplits) -> TeacherCache:
    """The cache at ``path``, checked against all this run can know without building the teacher:
    the data, the views and (when the config names one) the teacher: its architecture, its weights
    when it names ``teacher.checkpoint`` (hashed from the file), else its pretrained files where they
    are known (:func:`with_source`)."""
    role = run.cfg.teacher
    weights = spec = None
    if role is not None:
        spec = with_source(run, run._spec_for(role))
        if role.checkpoint is not None:
            weights = run._checkpoint(role.checkpoint)["model"]
        elif "source" not in spec:
            run.say(f"[teacher] note: checking {path} against the teacher's architecture only (the config names "
                    "no teacher.checkpoint, so there are no weights to compare)")
    return load_cache(path, data=data, teacher=weights, model_spec=spec, views=cache_views(run, data),
                      data_record=describe_data(data, **data_facts(run)))


def _cached_teacher(run: Run, data: DataSplits) -> tuple[CachedTeacher, TeacherCache, nn.Module | None,
                                                         dict[str, Any]]:
    """The teacher cache at ``distill.cache.path`` for the examples of ``data`` (:func:`distill_data`):
    read and checked without touching the teacher, or built.

    Returns the cache as a teacher, the cache, the teacher model if this run built it (else
    None), and the record of the cache for ``results.json``.
    """
    path = cache_path(run)
    model = None
    cache_views(run, data)  # a mode that needs the live teacher is refused before any work
    if path.exists():
        cache = _read_cache(run, path, data)
        test = f"; its test accuracy {100 * cache.test['accuracy']:.2f}%" if cache.test else ""
        run.say(f"[teacher] not loaded: distilling from {path} ({cache.describe()}, built {cache.created}{test})")
    else:
        if run.cfg.teacher is None:
            raise ValueError(f"distill.cache.path {path} does not exist and the config has no teacher to build it "
                             "from; run the cache recipe first (`--set recipe=cache`) or add a teacher section")
        run.say(f"[teacher] {path} does not exist yet: the teacher will write it")
        model, spec = _teacher_and_spec(run)
        cache, _ = write_cache(run, model, spec, data)
    _check_cache_matches(run, cache, path)
    student = run.cfg.student
    augment = student.train.augment if student is not None else None
    if augment is not None and (augment.shift or augment.crop_padding or augment.flip):
        run.say(f"[teacher] note: the student trains on augmented images ({augment}) but the cache holds the "
                "teacher's outputs on the plain ones")
    return CachedTeacher(cache, run.device), cache, model, cache_record(cache, path, built=model is not None)


def cached_teacher_row(cache: TeacherCache) -> dict[str, Any]:
    """The teacher's row of the results table, from what its cache recorded on this run's test split.

    Test accuracy, errors and NLL as measured when the cache was built (None if it recorded no
    test split); agreement 1.0 (the reference predictions are the teacher's own); parameters,
    latency and size are unknown without the model: None, shown as '-'.
    """
    test = cache.test or {}
    return {"params": None, "test_acc": test.get("accuracy"), "test_errors": test.get("errors"),
            "test_nll": test.get("nll"), "test_ece": None,
            "agreement": 1.0 if cache.test_predictions is not None else None,
            "latency_ms_per_1000": None, "latency_on": None, "size_bytes": None, "n_test": test.get("n"),
            "from_cache": True}


def _from_cache(run: Run, with_baseline: bool) -> dict[str, Any]:
    data = distill_data(run)
    teacher, cache, model, record = _cached_teacher(run, data)
    models = {"teacher": model} if model is not None else {}
    if with_baseline:
        models["baseline"] = _baseline_model(run)
    models["distilled"] = _distilled_model(run, teacher, data=data)
    preds = cache.test_predictions.to(run.device) if cache.test_predictions is not None else None
    recorded = {"teacher": cached_teacher_row(cache)} if model is None else None
    return run.finish(models, preds, {"teacher_cache": record}, recorded=recorded)


# -- recipes -------------------------------------------------------------------------------


def _teacher_and_student(cfg: Config) -> tuple[str, ...]:
    """The roles distill and compare need: a cache stands in for the teacher."""
    return ("student",) if cfg.distill.cache.path is not None else ("teacher", "student")


def check_fixed_teacher(cfg: Config) -> None:
    """A method that reads the teacher's features needs the live teacher: refused with a cache or a
    fixed-teacher views mode, which keep only its outputs."""
    d = cfg.distill
    if d.cache.path is not None:
        why = "distill.cache.path is set (a cache holds the teacher's outputs only)"
    elif d.views.mode.startswith("fix/"):
        why = f"distill.views.mode={d.views.mode} distils from the teacher's outputs computed once"
    else:
        return
    tapping = sorted({m for _, m in method_keys(cfg) if taps_teacher(m)})
    if tapping:
        raise ValueError(f"method {', '.join(tapping)} reads the teacher's intermediate features, so it needs the "
                         f"live teacher model, but {why}; unset it, or use a method on logits only "
                         f"({', '.join(logit_methods())})")


@register_recipe("teacher", reads=("teacher",), roles=("teacher",))
def teacher(run: Run) -> dict[str, Any]:
    """Train the teacher on hard labels (or measure the one ``teacher.checkpoint`` names)."""
    t = _teacher_model(run)
    return run.finish({"teacher": t}, None)


@register_recipe("baseline", reads=("student",), roles=("student",))
def baseline(run: Run) -> dict[str, Any]:
    """Train the student on hard labels: the reference a distilled student must beat."""
    return run.finish({"baseline": _baseline_model(run)}, None)


@register_recipe("distill", reads=("teacher", "student", "distill"), roles=_teacher_and_student,
                 check=check_fixed_teacher)
def distill(run: Run) -> dict[str, Any]:
    """Distil the student from the teacher (trained first unless ``teacher.checkpoint``), or from a cache of its
    outputs (``distill.cache.path``), with any method, stages, views or transfer set."""
    if run.cfg.distill.cache.path is not None:
        return _from_cache(run, with_baseline=False)
    t, spec = _teacher_and_spec(run)
    return run.finish({"teacher": t, "distilled": _distilled_model(run, FrozenTeacher(t), t, spec)},
                      run.teacher_predictions(t))


@register_recipe("compare", reads=("teacher", "student", "distill"), roles=_teacher_and_student,
                 check=check_fixed_teacher)
def compare(run: Run) -> dict[str, Any]:
    """Teacher, baseline student and distilled student side by side (``distill demo``)."""
    if run.cfg.distill.cache.path is not None:
        return _from_cache(run, with_baseline=True)
    t, spec = _teacher_and_spec(run)
    return run.finish({"teacher": t, "baseline": _baseline_model(run),
                       "distilled": _distilled_model(run, FrozenTeacher(t), t, spec)}, run.teacher_predictions(t))
