"""Hinton, Vinyals & Dean (2015): a teacher, a student on hard labels, the student distilled.

The distilled student and the baseline start from the same initial weights and train with the
same settings; the only difference is the objective, so the comparison isolates what the
teacher's soft targets add.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.objectives import CrossEntropy, build_objective
from distill.recipes.common import Run
from distill.teachers import FrozenTeacher

TEACHER_SEED, STUDENT_SEED = 1, 2


def _teacher_model(run: Run) -> nn.Module:
    role = run.cfg.teacher
    assert role is not None
    model, spec = run.build_model(role, TEACHER_SEED)
    if role.checkpoint is not None:
        run.say(f"[teacher] using {spec['name']} from {role.checkpoint}")
        return model.to(run.device).eval()
    return run.train("teacher", model, spec, CrossEntropy(), role).model


def _baseline_model(run: Run) -> nn.Module:
    role = run.cfg.student
    assert role is not None
    model, spec = run.build_model(role, STUDENT_SEED)
    return run.train("baseline", model, spec, CrossEntropy(), role).model


def _distilled_model(run: Run, teacher_model: nn.Module) -> nn.Module:
    role = run.cfg.student
    assert role is not None
    d = run.cfg.distill
    model, spec = run.build_model(role, STUDENT_SEED)
    objective = build_objective(d.loss, d.temperature, d.alpha)
    frozen = FrozenTeacher(teacher_model)
    return run.train("distilled", model, spec, objective, role, teacher=frozen).model


def _finish(run: Run, models: dict[str, nn.Module], teacher_model: nn.Module | None) -> dict[str, Any]:
    run.say("measuring test metrics, latency and size ...")
    preds = run.teacher_predictions(teacher_model) if teacher_model is not None else None
    rows = {tag: run.report(m, tag, preds) for tag, m in models.items()}
    results = run.write_results(rows)
    run.print_table(rows)
    run.say(f"wrote {run.dir}/results.json, report.md, metrics.jsonl, config.yaml and checkpoints "
            f"({results['wall_time_s']:.1f}s)")
    return results


def teacher(run: Run) -> dict[str, Any]:
    t = _teacher_model(run)
    return _finish(run, {"teacher": t}, None)


def baseline(run: Run) -> dict[str, Any]:
    return _finish(run, {"baseline": _baseline_model(run)}, None)


def distill(run: Run) -> dict[str, Any]:
    t = _teacher_model(run)
    return _finish(run, {"teacher": t, "distilled": _distilled_model(run, t)}, t)


def compare(run: Run) -> dict[str, Any]:
    t = _teacher_model(run)
    return _finish(run, {"teacher": t, "baseline": _baseline_model(run), "distilled": _distilled_model(run, t)}, t)
