"""An ensemble of teachers and one student distilled from it (Hinton et al. 2015, sections 1 and 4).

The paper's speech experiment (its Table 1): ten models trained from different random
initializations, their ensemble, and a single model of the same size distilled from the
ensemble, which keeps most of the ensemble's gain. ``recipe: ensemble`` runs exactly that:
``ensemble.members`` teachers (``teacher.model``, or one architecture each from
``ensemble.models``), their combination, a baseline student on hard labels, and the student
distilled from the ensemble at ``distill.temperature``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import RoleConfig
from distill.objectives import CrossEntropy, build_objective
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED, TEACHER_SEED
from distill.teachers import Ensemble, FrozenTeacher


def train_members(run: Run) -> list[nn.Module]:
    """Train (or, on resume, finish) every member; member i starts from seed ``seed + 1 + 100 i``."""
    cfg = run.cfg
    if cfg.teacher is not None:
        role = cfg.teacher
    else:
        assert cfg.ensemble.models is not None, "the config requires a teacher where ensemble.models is unset"
        role = RoleConfig(model=cfg.ensemble.models[0], train=cfg.train)
    if role.checkpoint is not None:
        raise ValueError("recipe ensemble trains its members, so teacher.checkpoint cannot be used; remove it "
                         "(or distil from one trained teacher with recipe: distill)")
    members = []
    for i in range(cfg.ensemble.members):
        member_role = role if cfg.ensemble.models is None else role.model_copy(update={"model": cfg.ensemble.models[i]})
        model, spec = run.build_model(member_role, TEACHER_SEED + 100 * i)
        members.append(run.train(f"member{i}", model, spec, CrossEntropy(), member_role).model)
    return members


def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean member, ensemble, baseline and distilled accuracy, and the share of the ensemble's gain kept."""
    accs = [r["test_acc"] for tag, r in rows.items() if tag.startswith("member")]
    s = {"member_mean_acc": sum(accs) / len(accs), "ensemble_acc": rows["ensemble"]["test_acc"],
         "baseline_acc": rows["baseline"]["test_acc"], "distilled_acc": rows["distilled"]["test_acc"]}
    gain = s["ensemble_acc"] - s["member_mean_acc"]
    s["gain_kept"] = (s["distilled_acc"] - s["member_mean_acc"]) / gain if gain > 0 else None
    return s


def ensemble(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    student = cfg.student
    assert student is not None
    members = train_members(run)
    e = cfg.ensemble
    combined = Ensemble(members, e.combine, e.weights, temperature=1.0).eval()  # the ensemble as a classifier
    soft = Ensemble(members, e.combine, e.weights, temperature=cfg.distill.temperature)  # its soft targets

    model, spec = run.build_model(student, STUDENT_SEED)
    baseline = run.train("baseline", model, spec, CrossEntropy(), student).model
    model, spec = run.build_model(student, STUDENT_SEED)
    objective = build_objective(cfg.distill.loss, cfg.distill.temperature, cfg.distill.alpha)
    distilled = run.train("distilled", model, spec, objective, student, teacher=FrozenTeacher(soft)).model

    models: dict[str, nn.Module] = {f"member{i}": m for i, m in enumerate(members)}
    models.update(ensemble=combined, baseline=baseline, distilled=distilled)
    results = run.finish(models, combined, extra={"ensemble": e.model_dump(mode="json")}, summarize=summarize)
    s = results["summary"]
    run.say(f"members mean {100 * s['member_mean_acc']:.2f}%, ensemble {100 * s['ensemble_acc']:.2f}%, "
            f"baseline {100 * s['baseline_acc']:.2f}%, distilled {100 * s['distilled_acc']:.2f}%")
    return results
