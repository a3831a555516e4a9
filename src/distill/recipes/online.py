"""Online and self-distillation: no pre-trained teacher.

- ``online``: deep mutual learning (Zhang et al. 2018). ``online.members`` students (copies of
  ``student.model``, or one architecture each from ``online.models``) train together, each on
  the labels and on the others' predictions. Each is compared with the same architecture
  trained alone from the same initialization.
- ``born_again``: born-again networks (Furlanello et al. 2018). Generation 0 is the student
  trained on labels; generation k+1, the same architecture from a fresh initialization, is
  distilled from generation k with the ``distill`` settings.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill import distributed
from distill.checkpoint import save_checkpoint
from distill.config import RoleConfig
from distill.objectives import Cohort, CrossEntropy, MutualLearning, build_objective
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED
from distill.teachers import Ensemble, FrozenTeacher


def _member_roles(run: Run) -> list[RoleConfig]:
    cfg = run.cfg
    o = cfg.online
    if o.models is None:
        assert cfg.student is not None
        return [cfg.student] * o.members
    base = cfg.student if cfg.student is not None else RoleConfig(model=o.models[0], train=cfg.train)
    return [base.model_copy(update={"model": m}) for m in o.models]


def online(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    roles = _member_roles(run)
    built = [run.build_model(role, STUDENT_SEED + 100 * i) for i, role in enumerate(roles)]
    specs = [spec for _, spec in built]
    train = roles[0].train
    cohort = Cohort([m for m, _ in built])
    cohort_spec = {"name": "cohort", "members": specs}
    result = run.train("cohort", cohort, cohort_spec, MutualLearning(cfg.online.temperature, cfg.online.kl_weight),
                       roles[0], train=train)
    trained = result.model
    assert isinstance(trained, Cohort)  # fit returns the model it was given
    models: dict[str, nn.Module] = {}
    for i, (member, spec) in enumerate(zip(trained.members, specs)):
        tag = f"mutual{i}"
        if distributed.is_main():  # each student on its own, loadable by `distill eval`
            (run.dir / tag).mkdir(exist_ok=True)
            save_checkpoint(run.dir / tag / "best.pt", {"model": member.state_dict(), "model_spec": spec,
                                                        "data": run.data_record(), "epoch": result.best_epoch})
        models[tag] = member
    models["cohort_ensemble"] = Ensemble(list(trained.members)).eval()
    for i, role in enumerate(roles):  # the same students from the same initial weights, trained alone
        model, spec = run.build_model(role, STUDENT_SEED + 100 * i)
        models[f"alone{i}"] = run.train(f"alone{i}", model, spec, CrossEntropy(), role).model

    def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        k = len(roles)
        gains = [rows[f"mutual{i}"]["test_acc"] - rows[f"alone{i}"]["test_acc"] for i in range(k)]
        return {"mean_gain_over_alone": sum(gains) / k, "gains": gains}

    return run.finish(models, None, extra={"online": cfg.online.model_dump(mode="json")}, summarize=summarize)


def born_again(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    role = cfg.student
    assert role is not None
    d = cfg.distill
    model, spec = run.build_model(role, STUDENT_SEED)
    generations = [run.train("gen0", model, spec, CrossEntropy(), role).model]
    for k in range(1, cfg.born_again.generations + 1):
        model, spec = run.build_model(role, STUDENT_SEED + 100 * k)
        objective = build_objective(d.loss, d.temperature, d.alpha)
        teacher = FrozenTeacher(generations[-1])
        generations.append(run.train(f"gen{k}", model, spec, objective, role, teacher=teacher).model)
    models: dict[str, nn.Module] = {f"gen{k}": g for k, g in enumerate(generations)}
    models["generations_ensemble"] = Ensemble(generations[1:] if len(generations) > 1 else generations).eval()

    def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        accs = [rows[f"gen{k}"]["test_acc"] for k in range(len(generations))]
        return {"accuracy_by_generation": accs, "best_generation": max(range(len(accs)), key=accs.__getitem__)}

    return run.finish(models, generations[0], extra={"born_again": cfg.born_again.model_dump(mode="json")},
                      summarize=summarize)
