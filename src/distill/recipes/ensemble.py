"""An ensemble of teachers and one student distilled from it (Hinton et al. 2015, sections 1 and 4).

The paper's speech experiment (its Table 1): ten models trained from different random
initializations, their ensemble, and a single model of the same size distilled from the
ensemble, which keeps most of the ensemble's gain. ``recipe: ensemble`` runs exactly that:
``ensemble.members`` teachers (``teacher.model``, or one architecture each from
``ensemble.models``), their combination, a baseline student on hard labels, and the student
distilled from the ensemble at ``distill.temperature``.

The student learns with ``distill.loss``, or with any method on logits (``distill.method``,
``distill.stages``), each from the ensemble combined at the temperature at which that method softens
the teacher's logits (:func:`ensemble_teacher`). Methods that read the teacher's intermediate
features are refused before any training (:func:`check_config`): the ensemble has none.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from distill.config import Config, ModelConfig, RoleConfig, Section, register_recipe
from distill.objectives import CrossEntropy
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED, TEACHER_SEED
from distill.recipes.stages import Stage, plan, refuse_feature_methods, stage_temperature, train_stages
from distill.teachers import Ensemble, FrozenTeacher


class EnsembleConfig(Section):
    """``recipe: ensemble``: train ``members`` teachers from different seeds, distil one student."""

    members: int = Field(3, ge=1)
    combine: Literal["arithmetic", "geometric"] = Field(
        "arithmetic", description="mean of probabilities, or normalized geometric mean (mean of log-probabilities)")
    weights: list[float] | None = Field(None, description="one non-negative weight per member (default: equal)")
    models: list[ModelConfig] | None = Field(None, description="one architecture per member (default: teacher.model "
                                             "for all)")

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        if self.models is not None and len(self.models) != self.members:
            raise ValueError(f"ensemble.models lists {len(self.models)} models but ensemble.members is "
                             f"{self.members}; make them agree")
        if self.weights is not None:
            if len(self.weights) != self.members:
                raise ValueError(f"ensemble.weights has {len(self.weights)} entries for {self.members} members")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("ensemble.weights must be non-negative and not all zero")
        return self


def train_members(run: Run) -> list[nn.Module]:
    """Train (or, on resume, finish) every member; member i starts from seed ``seed + 1 + 100 i``."""
    cfg = run.cfg
    if cfg.teacher is not None:
        role = cfg.teacher
    else:
        models = cfg.options(EnsembleConfig).models
        assert models is not None, "the config requires a teacher where ensemble.models is unset"
        role = RoleConfig(model=models[0], train=cfg.train)
    if role.checkpoint is not None:
        raise ValueError("recipe ensemble trains its members, so teacher.checkpoint cannot be used; remove it "
                         "(or distil from one trained teacher with recipe: distill)")
    members = []
    e = cfg.options(EnsembleConfig)
    for i in range(e.members):
        member_role = role if e.models is None else role.model_copy(update={"model": e.models[i]})
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


def check_config(cfg: Config) -> None:
    """``recipe: ensemble`` refuses methods that read the teacher's intermediate features: its teacher is the
    members' combined prediction, which has none."""
    refuse_feature_methods(cfg, "ensemble", "distils from the members' combined predictions (logits only)")


def ensemble_teacher(members: list[nn.Module], cfg: Config, stage: Stage) -> FrozenTeacher:
    """The ensemble as the teacher of ``stage``: combined at the temperature T at which the stage's objective
    softens the teacher's logits (:func:`~distill.recipes.stages.stage_temperature`), so that its logits
    ``T log q_T`` give that objective exactly ``softmax(ℓ / T) = q_T``, the members' combined distribution at T
    (for ``arithmetic``, the weighted mean of ``softmax(z_m / T)``). ``standardized_kd`` standardizes the logits
    before its temperature: it sees the standardized ``log q_T`` (for ``geometric``, exactly the standardized
    weighted mean of the members' logits). ``logit_matching`` has no temperature: it matches ``T log q_T`` at
    ``distill.temperature``, as ``distill.loss: logit_matching`` always did. ``mlkd`` (several temperatures)
    and ``ctkd`` (a learned one) have no single temperature: the ensemble is combined at ``distill.temperature``
    and they soften ``T log q_T`` at theirs (for ``geometric``, exactly the combined distribution at each;
    for ``arithmetic``, at ``distill.temperature`` only)."""
    e = cfg.options(EnsembleConfig)
    return FrozenTeacher(Ensemble(members, e.combine, e.weights, temperature=stage_temperature(stage, cfg.distill)))


@register_recipe("ensemble", options=EnsembleConfig, reads=("teacher", "student", "distill"),
                 roles=lambda cfg: ("student",) if cfg.options(EnsembleConfig).models else ("teacher", "student"),
                 check=check_config)
def ensemble(run: Run) -> dict[str, Any]:
    """Several teachers from different seeds, their ensemble, and one student distilled from it (Hinton et al.
    2015, sections 1 and 4), beside a baseline student."""
    cfg = run.cfg
    student = cfg.student
    assert student is not None
    members = train_members(run)
    e = cfg.options(EnsembleConfig)
    combined = Ensemble(members, e.combine, e.weights, temperature=1.0).eval()  # the ensemble as a classifier

    model, spec = run.build_model(student, STUDENT_SEED)
    baseline = run.train("baseline", model, spec, CrossEntropy(), student).model
    model, spec = run.build_model(student, STUDENT_SEED)
    teacher = partial(ensemble_teacher, members, cfg)  # its soft targets, at each stage's temperature
    distilled = train_stages(run, model, spec, teacher(plan(cfg)[0]), run.data, stage_teacher=teacher)

    models: dict[str, nn.Module] = {f"member{i}": m for i, m in enumerate(members)}
    models.update(ensemble=combined, baseline=baseline, distilled=distilled)
    results = run.finish(models, combined, extra={"ensemble": e.model_dump(mode="json")}, summarize=summarize)
    s = results["summary"]
    run.say(f"members mean {100 * s['member_mean_acc']:.2f}%, ensemble {100 * s['ensemble_acc']:.2f}%, "
            f"baseline {100 * s['baseline_acc']:.2f}%, distilled {100 * s['distilled_acc']:.2f}%")
    return results
