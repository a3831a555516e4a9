"""Online and self-distillation: no pre-trained teacher.

- ``online``: deep mutual learning (Zhang et al. 2018). ``online.members`` students (copies of
  ``student.model``, or one architecture each from ``online.models``) train together, each on
  the labels and on the others' predictions. Each is compared with the same architecture
  trained alone from the same initialization. With ``distill.method`` (a method on logits), each
  student learns with that method's objective against each peer's detached predictions, averaged
  over the peers, in place of the KL term (:class:`~distill.objectives.PeerMethod`); feature
  methods and ``distill.stages`` are refused (:func:`check_online`).
- ``born_again``: born-again networks (Furlanello et al. 2018). Generation 0 is the student
  trained on labels; generation k+1, the same architecture from a fresh initialization, is
  distilled from generation k with the ``distill`` settings: ``distill.loss``, or any method or
  stages (:mod:`distill.recipes.stages`, under ``gen<k>/``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import nn

from distill import distributed
from distill.checkpoint import save_checkpoint
from distill.config import Config, ModelConfig, RoleConfig, Section, register_recipe
from distill.objectives import Cohort, CrossEntropy, MutualLearning, Objective, PeerMethod
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED
from distill.recipes.stages import Stage, refuse_feature_methods, stage_objective, train_stages_with_spec
from distill.teachers import Ensemble, FrozenTeacher


class OnlineConfig(Section):
    """``recipe: online``: deep mutual learning (Zhang et al. 2018), students teaching each other."""

    members: int = Field(2, ge=2)
    models: list[ModelConfig] | None = Field(None, description="one architecture per member (default: "
                                             "student.model for all)")
    temperature: float = Field(1.0, gt=0)
    kl_weight: float = Field(1.0, ge=0, description="weight of the mean KL to the other members (CE has weight 1)")

    @model_validator(mode="after")
    def _consistent(self) -> OnlineConfig:
        if self.models is not None and len(self.models) != self.members:
            raise ValueError(f"online.models lists {len(self.models)} models but online.members is {self.members}")
        return self


class BornAgainConfig(Section):
    """``recipe: born_again`` (Furlanello et al. 2018): generation k+1 is distilled from generation k."""

    generations: int = Field(3, ge=1, description="distilled generations after the first (label-trained) one")


def _member_roles(run: Run) -> list[RoleConfig]:
    cfg = run.cfg
    o = cfg.options(OnlineConfig)
    if o.models is None:
        assert cfg.student is not None
        return [cfg.student] * o.members
    base = cfg.student if cfg.student is not None else RoleConfig(model=o.models[0], train=cfg.train)
    return [base.model_copy(update={"model": m}) for m in o.models]


def check_online(cfg: Config) -> None:
    """What ``recipe: online`` refuses: ``distill.stages`` (the cohort trains in one fit), methods that read
    the teacher's features (a peer gives its predictions only), and MutualLearning's ``online.temperature``
    and ``online.kl_weight`` next to ``distill.method`` (whose options are ``distill.options``)."""
    if cfg.distill.stages is not None:
        raise ValueError("distill.stages: recipe online trains its cohort in one fit; name one method in "
                         "distill.method (or unset distill.stages for deep mutual learning's KL)")
    refuse_feature_methods(cfg, "online", "distils each student from its peers' predictions (logits only)")
    given = sorted(cfg.options(OnlineConfig).model_fields_set & {"temperature", "kl_weight"})
    if cfg.distill.method is not None and given:
        raise ValueError(f"online.{given[0]}: it sets deep mutual learning's KL term, which distill.method="
                         f"{cfg.distill.method} replaces; give the method's options in distill.options "
                         f"(or unset distill.method)")


def _cohort_objective(run: Run) -> Objective:
    """Deep mutual learning's :class:`MutualLearning`, or with ``distill.method`` its objective against each
    peer (:class:`PeerMethod`)."""
    cfg = run.cfg
    if cfg.distill.method is None:
        o = cfg.options(OnlineConfig)
        return MutualLearning(o.temperature, o.kl_weight)
    stage = Stage("cohort", cfg.distill.method, dict(cfg.distill.options), cfg.train, "all", "distill")
    return PeerMethod(stage_objective(stage, cfg.distill, len(run.data.train), []))


@register_recipe("online", options=OnlineConfig, reads=("student", "distill"),
                 roles=lambda cfg: () if cfg.options(OnlineConfig).models else ("student",), check=check_online,
                 pairs=lambda tags: [(t, "alone" + t.removeprefix("mutual")) for t in tags if t.startswith("mutual")])
def online(run: Run) -> dict[str, Any]:
    """Deep mutual learning (Zhang et al. 2018): students teaching each other, each compared with itself
    trained alone."""
    cfg = run.cfg
    o = cfg.options(OnlineConfig)
    roles = _member_roles(run)
    built = [run.build_model(role, STUDENT_SEED + 100 * i) for i, role in enumerate(roles)]
    specs = [spec for _, spec in built]
    train = roles[0].train
    cohort = Cohort([m for m, _ in built])
    cohort_spec = {"name": "cohort", "members": specs}
    result = run.train("cohort", cohort, cohort_spec, _cohort_objective(run), roles[0], train=train)
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

    return run.finish(models, None, extra={"online": o.model_dump(mode="json")}, summarize=summarize)


@register_recipe("born_again", options=BornAgainConfig, reads=("student", "distill"), roles=("student",),
                 # no check: each generation distils from the live model of the one before, so every method
                 # works (feature methods tap it, simkd wraps it)
                 pairs=lambda tags: [(t, "gen0") for t in tags
                                     if t.startswith("gen") and t[3:].isdigit() and t != "gen0"])
def born_again(run: Run) -> dict[str, Any]:
    """Born-again networks (Furlanello et al. 2018): generations of the student, each distilled from the one
    before."""
    cfg = run.cfg
    role = cfg.student
    assert role is not None
    model, spec = run.build_model(role, STUDENT_SEED)
    generations = [run.train("gen0", model, spec, CrossEntropy(), role).model]
    specs = [spec]
    for k in range(1, cfg.options(BornAgainConfig).generations + 1):
        model, spec = run.build_model(role, STUDENT_SEED + 100 * k)
        teacher = FrozenTeacher(generations[-1])
        model, spec = train_stages_with_spec(run, model, spec, teacher, run.data, teacher_model=generations[-1],
                                             teacher_spec=specs[-1], tag=f"gen{k}")
        generations.append(model)
        specs.append(spec)
    models: dict[str, nn.Module] = {f"gen{k}": g for k, g in enumerate(generations)}
    models["generations_ensemble"] = Ensemble(generations[1:] if len(generations) > 1 else generations).eval()

    def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        accs = [rows[f"gen{k}"]["test_acc"] for k in range(len(generations))]
        return {"accuracy_by_generation": accs, "best_generation": max(range(len(accs)), key=accs.__getitem__)}

    options = cfg.options(BornAgainConfig).model_dump(mode="json")
    return run.finish(models, generations[0], extra={"born_again": options},
                      summarize=summarize)
