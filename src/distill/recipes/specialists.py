"""Hinton, Vinyals & Dean (2015), section 5: a generalist and specialists for confusable classes.

1. The generalist is the ``teacher`` role, trained on hard labels (or used as it is from
   ``teacher.checkpoint``).
2. The subsets: ``specialists.subsets`` (class indices or names), or ``num_specialists`` found
   by clustering the covariance of the generalist's predictions on the validation split
   (:func:`distill.specialists.find_confusable_subsets`).
3. One specialist per subset, initialized from the generalist, trained with :func:`fit` on
   half subset / half other examples relabeled to ``S ∪ {dustbin}``: cross-entropy on those
   labels, plus (``soft_targets``) the generalist's soft targets mapped to ``S ∪ {dustbin}`` at
   ``temperature``, weighted by ``alpha`` (or ``distill.method``: a shift-invariant method on logits learning
   from the same targets, the generalist's distribution merged at temperature 1 and then softened by the
   method, as :class:`~distill.specialists.DustbinTeacher` explains; or a feature method tapping the
   generalist, whose layers the specialist shares: :func:`check_config`, :func:`specialist_objective`). Selected on a validation set built the same way. At
   inference its dustbin logit is raised by the log of the factor by which its subset was
   oversampled (the paper's correction, :func:`~distill.specialists.dustbin_logit_offset`).
   Measured on Fashion-MNIST (5,000 validation images, generalist 456 errors, specialists for
   {T-shirt/top, shirt} and {pullover, coat}; benchmarks/results/specialists_fmnist.md):
   hard-label specialists 457 errors without the correction, 443 with it; in an earlier run
   with soft targets (T = 2, alpha = 0.5), 459 without, 455 with half of it, 449 with all of it.
   So it is applied in full, soft targets or not.
4. On the test split: the generalist alone against generalist + specialists combined by
   minimizing ``KL(p_g || q) + sum_m KL(p_m || q_m)`` over the specialists consulted
   (subset meets the generalist's ``top_classes`` best classes); overall, on the specialists'
   classes, and how many examples consulted a specialist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.config import Config, Section, TrainConfig, register_recipe
from distill.engine import fit, predict_logits
from distill.methods.registry import get_method, method_objective, method_options, taps_teacher
from distill.models import count_parameters
from distill.objectives import CrossEntropy, KnowledgeDistillation, Objective
from distill.recipes.common import Run
from distill.recipes.hinton import TEACHER_SEED
from distill.report import model_report
from distill.specialists import (
    DustbinTeacher,
    SpecialistEnsemble,
    TappedDustbinTeacher,
    dustbin_logit_offset,
    find_confusable_subsets,
    init_specialist,
    specialist_splits,
)


class SpecialistsConfig(Section):
    """``recipe: specialists`` (Hinton et al. 2015, section 5): a generalist (the teacher role) plus
    specialists on confusable classes, each with a dustbin class for everything else."""

    subsets: list[list[int | str]] | None = Field(
        None, description="class subsets (indices or names), one per specialist; default: found by clustering "
        "the covariance of the generalist's predictions")
    num_specialists: int = Field(2, ge=1, description="how many subsets clustering finds when subsets is unset")
    top_classes: int = Field(2, ge=1, description="at inference, specialists whose subset meets the generalist's "
                             "top classes are consulted")
    soft_targets: bool = Field(True, description="also distil from the generalist's soft targets (a regularizer)")
    temperature: float = Field(2.0, gt=0, description="temperature of the generalist's soft targets")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft term when soft_targets is on")
    combine_steps: int = Field(100, gt=0, description="gradient steps of the inference-time KL combination")
    combine_lr: float = Field(0.5, gt=0)
    train: TrainConfig = Field(default_factory=TrainConfig)


SHIFT_INVARIANT = ("kd", "dkd", "dist", "standardized_kd")
"""The methods on logits that read the teacher's logits only through softmax or standardization (so a shift
per example changes nothing): they can learn from the generalist's log-probabilities over ``S ∪ {dustbin}``."""


def check_config(cfg: Config) -> None:
    """What ``recipe: specialists`` refuses (a ``ValueError`` starting with the config key): ``distill.stages``
    (each specialist trains in one fit), ``distill.method`` with ``specialists.soft_targets: false``, a method
    that predicts with the teacher's classifier (``simkd``: a specialist predicts its subset and a dustbin), and
    methods on logits that are not shift-invariant in the teacher's logits (``logit_matching``: the merged
    targets are log-probabilities, defined up to a shift). Feature methods tap the generalist."""
    d = cfg.distill
    if d.stages is not None:
        raise ValueError("distill.stages: recipe specialists trains each specialist in one fit; name one method in "
                         "distill.method")
    if d.method is None:
        return
    if not cfg.options(SpecialistsConfig).soft_targets:
        raise ValueError(f"distill.method: specialists.soft_targets is false, so the specialists train on hard "
                         f"labels only; set specialists.soft_targets=true to distil them with {d.method}, or unset "
                         f"distill.method")
    method = get_method(d.method)
    if method.wrap_student is not None:
        raise ValueError(f"distill.method: {d.method} predicts with the teacher's classifier, but a specialist "
                         f"predicts its subset and a dustbin, not the generalist's classes; use another method")
    if method.objective.needs_teacher and not method.taps_teacher and d.method not in SHIFT_INVARIANT:
        raise ValueError(f"distill.method: {d.method} reads the teacher's logits as they are, but a specialist's "
                         f"targets are the generalist's log-probabilities merged into its subset and a dustbin, "
                         f"defined only up to a shift per example; use one of {', '.join(SHIFT_INVARIANT)}")


def specialist_objective(cfg: Config, num_data: int) -> Objective:
    """``distill.method``'s objective for a specialist, with ``distill.options``; ``kd``'s ``temperature`` and
    ``alpha`` default to ``specialists.temperature`` and ``specialists.alpha`` (so ``distill.method: kd`` is the
    recipe's own soft targets)."""
    method, s = cfg.distill.method, cfg.options(SpecialistsConfig)
    assert method is not None
    defaults = {"temperature": s.temperature, "alpha": s.alpha} if get_method(method).follows_distill_loss else {}
    options = {k: v for k, v in defaults.items() if k in method_options(method)}
    return method_objective(method, {**options, **cfg.distill.options}, num_data=num_data)


def resolve_subsets(subsets: list[list[int | str]], class_names: tuple[str, ...]) -> list[list[int]]:
    """``specialists.subsets`` as class indices; names match exactly, then ignoring case."""
    num_classes = len(class_names)
    listing = ", ".join(f"{i} {n!r}" for i, n in enumerate(class_names))
    lowered = [n.lower() for n in class_names]
    resolved = []
    for i, subset in enumerate(subsets):
        where = f"specialists.subsets[{i}]"
        if not subset:
            raise ValueError(f"{where}: an empty subset; list at least one class ({listing})")
        indices = []
        for j, item in enumerate(subset):
            if isinstance(item, str):
                if item in class_names:
                    c = class_names.index(item)
                elif item.lower() in lowered:
                    c = lowered.index(item.lower())
                else:
                    raise ValueError(f"{where}[{j}]: unknown class name {item!r}; classes are {listing}")
            else:
                c = int(item)
                if not 0 <= c < num_classes:
                    raise ValueError(f"{where}[{j}]: class {c} is out of range; there are {num_classes} classes "
                                     f"({listing})")
            if c in indices:
                raise ValueError(f"{where}[{j}]: class {c} {class_names[c]!r} is listed twice in this subset")
            indices.append(c)
        if len(indices) >= num_classes:
            raise ValueError(f"{where}: holds all {num_classes} classes, which leaves nothing for the dustbin; "
                             "a specialist needs classes outside its subset")
        resolved.append(indices)
    return resolved


def _generalist(run: Run) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """The generalist (``teacher`` role): trained here, or used as it is from its checkpoint."""
    role = run.cfg.teacher
    assert role is not None
    model, spec = run.build_model(role, TEACHER_SEED)
    if role.checkpoint is not None:
        run.say(f"[generalist] using {spec['name']} from {role.checkpoint}")
        return model.to(run.device).eval(), spec, Path(role.checkpoint)
    result = run.train("generalist", model, spec, CrossEntropy(), role)
    return result.model, spec, result.best_path


def _find_subsets(run: Run, generalist: nn.Module) -> tuple[list[list[int]], str]:
    cfg, data = run.cfg.options(SpecialistsConfig), run.data
    split_name, split = ("validation", data.val) if len(data.val) else ("training", data.train)
    probs = F.softmax(predict_logits(generalist, split.x), dim=-1)
    found = find_confusable_subsets(probs, cfg.num_specialists, seed=run.cfg.seed)
    source = (f"k-means on the columns of the covariance (as correlations) of the generalist's predicted "
              f"probabilities on the {len(split)} {split_name} examples")
    if not found:
        raise ValueError(f"specialists: clustering the generalist's predictions found no group of classes it "
                         f"confuses ({source}); list the groups in specialists.subsets")
    if len(found) < cfg.num_specialists:
        run.say(f"[specialists] clustering found {len(found)} subsets of confused classes, not "
                f"specialists.num_specialists={cfg.num_specialists}; training {len(found)}")
    return found, source


def _train_specialist(run: Run, generalist: nn.Module, spec: dict[str, Any], subset: list[int],
                      m: int) -> tuple[nn.Module, dict[str, Any]]:
    cfg = run.cfg.options(SpecialistsConfig)
    tag = f"specialist{m}"
    data = specialist_splits(run.data, subset, seed=run.cfg.seed * 1_000 + 2 * m)
    model = init_specialist(generalist, subset, inputs=data.train.x[:4096].to(run.device))
    objective: Objective
    teacher: DustbinTeacher | None
    method = run.cfg.distill.method
    if method is not None:  # a feature method taps the generalist
        objective = specialist_objective(run.cfg, len(data.train))
        teacher = TappedDustbinTeacher(generalist, subset) if taps_teacher(method) else DustbinTeacher(generalist,
                                                                                                       subset)
    elif cfg.soft_targets:
        objective, teacher = KnowledgeDistillation(cfg.temperature, cfg.alpha), DustbinTeacher(generalist, subset)
    else:
        objective, teacher = CrossEntropy(), None
    run.say(f"[{tag}] {', '.join(data.class_names[:-1])} + dustbin: {len(data.train)} training examples "
            f"(half from the subset), {count_parameters(model):,} parameters, {cfg.train.epochs} epochs with "
            f"{type(objective).__name__}")
    record = {**run.data_record(), "num_classes": data.num_classes, "class_names": list(data.class_names),
              "subset": subset}
    result = fit(model, objective, data, cfg.train, teacher=teacher, device=run.device, seed=run.cfg.seed,
                 out_dir=run.dir / tag, tag=tag, log=run.log, resume=run.resume, allow_changes=run.allow_changes,
                 checkpoint_extra={"model_spec": {**spec, "num_classes": data.num_classes}, "data": record},
                 progress=run.say if run.show_progress else None)
    info = {
        "tag": tag,
        "classes": subset,
        "names": list(data.class_names[:-1]),
        "train_examples": len(data.train),
        "val_examples": len(data.val),
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val["acc"],
        "dustbin_logit_offset": dustbin_logit_offset(run.data.train.y, subset, data.train.y),
        "checkpoint": str(result.best_path) if result.best_path else None,
    }
    return result.model, info


def _accuracy(correct: Tensor, where: Tensor) -> float | None:
    n = int(where.sum())
    return float(correct[where].float().mean()) if n else None


@register_recipe("specialists", options=SpecialistsConfig, reads=("teacher", "distill"), roles=("teacher",),
                 check=check_config)
def specialists(run: Run) -> dict[str, Any]:
    """A generalist plus specialists on confusable classes, each with a dustbin class (Hinton et al. 2015,
    section 5)."""
    cfg = run.cfg.options(SpecialistsConfig)
    given = resolve_subsets(cfg.subsets, run.data.class_names) if cfg.subsets is not None else None  # fail early
    generalist, spec, generalist_path = _generalist(run)
    subsets, source = (given, "specialists.subsets") if given is not None else _find_subsets(run, generalist)
    names = run.data.class_names
    run.say("[specialists] subsets: " + "; ".join(
        "{" + ", ".join(f"{c} {names[c]}" for c in s) + "}" for s in subsets) + f" (from {source})")
    trained = [_train_specialist(run, generalist, spec, s, m) for m, s in enumerate(subsets)]
    models, infos = [t[0] for t in trained], [t[1] for t in trained]
    ensemble = SpecialistEnsemble(generalist, models, subsets, run.data.num_classes, top_classes=cfg.top_classes,
                                  steps=cfg.combine_steps, lr=cfg.combine_lr,
                                  dustbin_offsets=[i["dustbin_logit_offset"] for i in infos]).to(run.device).eval()

    latency = run.cfg.report.latency
    run.say(f"measuring test metrics{', latency' if latency else ''} and size ...")
    test = run.data.test
    log_pg = F.log_softmax(predict_logits(generalist, test.x), dim=-1)
    consulted = ensemble.consulted(log_pg)  # (N, K)
    generalist_ok = log_pg.argmax(-1) == test.y
    ensemble_ok = predict_logits(ensemble, test.x).argmax(-1) == test.y
    in_subsets = ensemble.mask.any(0)[test.y]  # true class belongs to some specialist
    covering = (consulted & ensemble.mask[:, test.y].T).sum(-1)  # consulted specialists that cover the true class

    rows = {"generalist": model_report(generalist, test, checkpoint=generalist_path, latency=latency),
            "generalist+specialists": model_report(ensemble, test, teacher_predictions=log_pg.argmax(-1),
                                                   latency=latency)}
    paths = [generalist_path] + [Path(i["checkpoint"]) for i in infos if i["checkpoint"]]
    saved = [p for p in paths if p is not None and p.exists()]
    if len(saved) == len(paths):
        rows["generalist+specialists"]["size_bytes"] = sum(p.stat().st_size for p in saved)
    for tag, ok in (("generalist", generalist_ok), ("generalist+specialists", ensemble_ok)):
        rows[tag]["test_acc_specialist_classes"] = _accuracy(ok, in_subsets)
        rows[tag]["test_errors_specialist_classes"] = int((~ok & in_subsets).sum())
    by_covering = []
    for k in sorted(set(covering.tolist())):
        sel = covering == k
        by_covering.append({"covering_specialists": k, "test_examples": int(sel.sum()),
                            "generalist_correct": int(generalist_ok[sel].sum()),
                            "ensemble_correct": int(ensemble_ok[sel].sum())})
    summary = {
        "subsets": infos,
        "subsets_from": source,
        "top_classes": cfg.top_classes,
        "test_examples": len(test),
        "test_examples_of_specialist_classes": int(in_subsets.sum()),
        "consulted": int(consulted.any(-1).sum()),
        "consultations_per_specialist": consulted.sum(0).tolist(),
        "fixed": int((ensemble_ok & ~generalist_ok).sum()),
        "broken": int((~ensemble_ok & generalist_ok).sum()),
        "by_covering_specialists": by_covering,
    }
    results = run.write_results(rows, extra={"summary": summary})
    run.print_table(rows)
    g, e = (rows[tag]["test_acc_specialist_classes"] for tag in ("generalist", "generalist+specialists"))
    on_classes = (f"; accuracy on the specialists' classes ({summary['test_examples_of_specialist_classes']} "
                  f"examples) {100 * g:.2f}% -> {100 * e:.2f}%" if g is not None and e is not None else "")
    run.say(f"specialists consulted on {summary['consulted']}/{len(test)} test examples; "
            f"{summary['fixed']} errors fixed, {summary['broken']} made{on_classes}")
    run.say(f"wrote {run.dir}/results.json, report.md, metrics.jsonl, config.yaml and checkpoints "
            f"({results['wall_time_s']:.1f}s)")
    return results
