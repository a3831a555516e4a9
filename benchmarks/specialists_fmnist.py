"""Hinton, Vinyals & Dean (2015), section 5 (specialist models), transposed to Fashion-MNIST.

Generalist: a small CNN (3 conv stages, 111K parameters). Specialists: copies of it, each for a
group of classes the generalist confuses (found by k-means on the covariance of its predicted
probabilities on the validation split), predicting its classes plus a dustbin, trained on half
its own classes and half the rest. At test time the specialists whose classes meet the
generalist's two most probable classes are consulted and the prediction is the distribution q
minimizing KL(p_generalist || q) + sum of KL(p_specialist || q on the specialist's classes).

The experiment is the ``specialists`` config ``configs/specialists_fmnist.yaml`` run through
``distill.recipes.run_recipe``, i.e. exactly what ``distill run configs/specialists_fmnist.yaml``
does; this script adds epoch overrides and writes ``benchmarks/results/specialists_fmnist.md``:
generalist alone vs generalist + specialists, overall and on the specialists' classes, beside the
paper's JFT numbers, with the command, wall time and machine.

    python benchmarks/specialists_fmnist.py              # the benchmark (~5-10 min on 2 shared CPU cores)
    python benchmarks/specialists_fmnist.py --quick      # smoke test (1 + 1 epochs, ~2-3 min)
    python benchmarks/specialists_fmnist.py --set specialists.soft_targets=true --out /tmp/soft.md
    python benchmarks/specialists_fmnist.py --report-only   # rewrite the report of a finished run
    # three seeds of the specialists (each seed a complete run, as `distill run --seeds 3`; here one trained
    # generalist for all): mean ± sd and the paired bootstrap interval of the ensemble's gain
    python benchmarks/specialists_fmnist.py --seeds 3 --set teacher.checkpoint=<generalist best.pt> --out /tmp/s.md
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# Sleeping (not spinning) OpenMP waits on a shared machine; see benchmarks/README.md. Must be set
# before torch is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO, BenchmarkParser, aggregate_seeds, command_line, fmt_seconds, load_average, machine, per_seed_table,
    save_json, save_report,
)

from distill.config import Config, load_config  # noqa: E402
from distill.recipes import run_recipe  # noqa: E402
from distill.recipes.seeds import format_seeds_table, run_seeds  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "specialists_fmnist.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "specialists_fmnist.md"

# Hinton et al. (2015), section 5, Table 3 (JFT, 15,000 classes): top-1 test accuracy.
PAPER = {"baseline": 25.0, "specialists": 26.1, "num_specialists": 61, "relative": 4.4}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def sign_test(fixed: int, broken: int) -> float:
    """Two-sided exact binomial (McNemar) p-value of ``fixed`` vs ``broken`` changed predictions."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _data(cfg: Config, device: torch.device | str = "cpu"):
    """The run's splits, as :class:`distill.recipes.common.Run` makes them."""
    from distill.data import load_dataset, make_splits
    from distill.data.tensors import stratified_split

    d = cfg.data
    data = make_splits(load_dataset(d.name, d.path), val_size=int(d.val_size) if d.val_size >= 1 else d.val_size,
                       split_seed=d.split_seed, normalize=d.normalize, device=device)
    if d.train_size is not None and d.train_size < len(data.train):
        _, keep = stratified_split(data.train.y, d.train_size, d.split_seed + 1)
        data = dataclasses.replace(data, train=data.train.subset(keep))
    return data


def _generalist_path(cfg: Config, run_dir: Path) -> Path:
    assert cfg.teacher is not None
    return Path(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else run_dir / "generalist" / "best.pt"


def clusterings(cfg: Config, run_dir: Path, counts: tuple[int, ...] = (1, 2, 3)) -> dict[int, list[list[int]]]:
    """The subsets :func:`find_confusable_subsets` returns for several ``num_specialists``, on the
    same validation predictions of the run's generalist (cheap: no training)."""
    import torch.nn.functional as F

    from distill.checkpoint import build_model_from_checkpoint
    from distill.engine import predict_logits
    from distill.specialists import find_confusable_subsets

    model, _ = build_model_from_checkpoint(_generalist_path(cfg, run_dir))
    probs = F.softmax(predict_logits(model, _data(cfg).val.x), dim=-1)
    return {k: find_confusable_subsets(probs, k, seed=cfg.seed) for k in counts}


def control(cfg: Config, run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The generalist trained further on all classes for as many example passes as all specialists
    together, with their settings: does the ensemble beat simply spending that compute on the
    generalist? ``epochs = ceil(passes / N)`` over a fixed random subset of ``passes / epochs`` of
    the ``N`` training images (all of them when that is N)."""
    from distill.checkpoint import build_model_from_checkpoint
    from distill.engine import evaluate, fit, resolve_device
    from distill.objectives import CrossEntropy

    device = resolve_device(cfg.device)
    data = _data(cfg, device)
    info = results["summary"]
    passes = sum(s["train_examples"] for s in info["subsets"]) * cfg.specialists.train.epochs
    epochs = max(1, math.ceil(passes / len(data.train)))
    size = min(len(data.train), passes // epochs)
    keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))[:size]
    subset = dataclasses.replace(data, train=data.train.subset(keep))
    model, _ = build_model_from_checkpoint(_generalist_path(cfg, run_dir), map_location=device)
    train = cfg.specialists.train.model_copy(update={"epochs": epochs})
    print(f"[control] the generalist trained {epochs} more epochs on {size:,} training images ({epochs * size:,} "
          f"example passes; the specialists had {passes:,})", file=sys.stderr, flush=True)
    fit(model, CrossEntropy(), subset, train, device=device, seed=cfg.seed, out_dir=run_dir / "control", tag="control")
    ev = evaluate(model, data.test)
    ok = ev.predictions == data.test.y
    specialist_classes = torch.tensor(sorted({c for s in info["subsets"] for c in s["classes"]}), device=device)
    in_subsets = torch.isin(data.test.y, specialist_classes)
    return {"epochs": epochs, "images": size, "example_passes": epochs * size, "specialist_passes": passes,
            "test_acc": ev.accuracy, "test_errors": ev.errors, "test_nll": ev.nll,
            "test_errors_specialist_classes": int((~ok & in_subsets).sum()),
            "test_acc_specialist_classes": float(ok[in_subsets].float().mean())}


def inference_variants(cfg: Config, run_dir: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation and test errors of the trained generalist + specialists combined with other
    inference settings (``top_classes``, with or without the dustbin correction): no retraining,
    each model runs once per split and only the combination is repeated."""
    import torch.nn.functional as F

    from distill.checkpoint import build_model_from_checkpoint
    from distill.engine import predict_logits
    from distill.specialists import active_specialists, combine_specialists, dustbin_maps, subset_mask

    data = _data(cfg)
    info = results["summary"]["subsets"]
    subsets = [s["classes"] for s in info]
    generalist, _ = build_model_from_checkpoint(_generalist_path(cfg, run_dir))
    specialists = [build_model_from_checkpoint(s["checkpoint"])[0] for s in info]
    maps, mask = dustbin_maps(subsets, data.num_classes), subset_mask(subsets, data.num_classes)
    outputs = {}
    for name in ("val", "test"):
        split = getattr(data, name)
        log_pg = F.log_softmax(predict_logits(generalist, split.x), dim=-1)
        logits = [predict_logits(m, split.x) for m in specialists]
        outputs[name] = (split.y, log_pg, logits)
    rows = []
    for top in (1, 2, 3):
        for corrected in (False, True):
            row: dict[str, Any] = {"top_classes": top, "dustbin_correction": corrected}
            for name, (y, log_pg, logits) in outputs.items():
                probs = torch.zeros(len(y), len(subsets), maps.shape[-1])
                for m, (z, s) in enumerate(zip(logits, info)):
                    offset = s["dustbin_logit_offset"] if corrected else 0.0
                    probs[:, m, : z.shape[1]] = F.softmax(z + F.pad(torch.tensor([offset]), (z.shape[1] - 1, 0)), -1)
                active = active_specialists(log_pg, mask, top)
                log_q = combine_specialists(log_pg, probs, maps, active, steps=cfg.specialists.combine_steps,
                                            lr=cfg.specialists.combine_lr)
                row[f"{name}_errors"] = int((log_q.argmax(-1) != y).sum())
                row[f"{name}_generalist_errors"] = int((log_pg.argmax(-1) != y).sum())
            rows.append(row)
    return rows


ENSEMBLE = "generalist+specialists"


def test_correct(cfg: Config, run_dir: Path, results: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per test image, whether the run's generalist and its generalist + specialists got it right: the run's
    checkpoints combined as the recipe combines them (:class:`distill.specialists.SpecialistEnsemble` with the
    config's ``top_classes``, ``combine_steps``, ``combine_lr`` and each specialist's dustbin offset)."""
    from distill.checkpoint import build_model_from_checkpoint
    from distill.engine import predict_logits
    from distill.specialists import SpecialistEnsemble

    data = _data(cfg)
    info = results["summary"]["subsets"]
    generalist, _ = build_model_from_checkpoint(_generalist_path(cfg, run_dir))
    specialists = [build_model_from_checkpoint(i["checkpoint"])[0] for i in info]
    s = cfg.specialists
    ensemble = SpecialistEnsemble(generalist, specialists, [i["classes"] for i in info], data.num_classes,
                                  top_classes=s.top_classes, steps=s.combine_steps, lr=s.combine_lr,
                                  dustbin_offsets=[i["dustbin_logit_offset"] for i in info]).eval()
    y = data.test.y
    return {"generalist": predict_logits(generalist, data.test.x).argmax(-1) == y,
            ENSEMBLE: predict_logits(ensemble, data.test.x).argmax(-1) == y}


def seeds_aggregate(seeds: list[int], per_seed: list[dict[str, Any]],
                    correct: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Mean ± sd of the two models over the seeds and the paired bootstrap interval of the ensemble's gain
    (:func:`_common.aggregate_seeds`); ``per_seed``: each seed's ``results.json``, ``correct``: each seed's
    :func:`test_correct`."""
    tags = ("generalist", ENSEMBLE)
    return aggregate_seeds(seeds, {t: [r["models"][t] for r in per_seed] for t in tags},
                           {t: [c[t] for c in correct] for t in tags}, [(ENSEMBLE, "generalist")])


def write_seeds_report(out: Path, cfg: Config, agg: dict[str, Any], per_seed: list[dict[str, Any]], wall: float,
                       machine_txt: str, run_dir: Path, command: str) -> None:
    """The report of ``--seeds N``: mean ± sd, the gain's interval, and per seed the subsets and the predictions
    the specialists changed."""
    seeds = agg["seeds"]
    assert cfg.teacher is not None
    gen = (f"one generalist for every seed (`{cfg.teacher.checkpoint}`): the seeds vary the specialists' "
           "initial head, data order and the clustering" if cfg.teacher.checkpoint else "its own generalist per seed")
    lines = [f"# Hinton et al. (2015) §5 specialists on {per_seed[0]['data']['name']}, {len(seeds)} seeds", "",
             f"Seeds {', '.join(map(str, seeds))}: each seed is a complete run of the `specialists` recipe "
             f"(`distill run --seeds`), with {gen}. Test set: {per_seed[0]['summary']['test_examples']:,} images. "
             f"The paper (JFT): 25.0% → 26.1% top-1 with 61 specialists (+4.4% relative).", "",
             format_seeds_table(agg), "", "(agree w/ teacher: agreement with the generalist.)", "",
             "Test accuracy per seed (%):", "", *per_seed_table(agg), "",
             "| seed | subsets | consulted | errors fixed | errors made | test errors: generalist → ensemble |",
             "|---:|---|---:|---:|---:|---|"]
    for seed, r in zip(seeds, per_seed):
        info, rows = r["summary"], r["models"]
        subsets = "; ".join("{" + ", ".join(x["names"]) + "}" for x in info["subsets"])
        lines.append(f"| {seed} | {subsets} | {info['consulted']:,} | {info['fixed']} | {info['broken']} | "
                     f"{rows['generalist']['test_errors']} → {rows[ENSEMBLE]['test_errors']} |")
    lines += ["", "No compute-matched control in this mode (the single-seed run has it: `specialists_fmnist.md`).",
              "", "## Setup", ""] + describe_config(cfg) + [""]
    lines += ["## How it was run", "", "```", command, "```", "",
              f"Per-seed runs and the aggregate results.json: `{_rel(run_dir)}`.", "",
              f"- wall time: {fmt_seconds(wall)}", machine_txt, ""]
    save_report(out, lines)


def _held_out(cfg: Config) -> str:
    v = cfg.data.val_size
    if cfg.data.name == "fashion-mnist" and v >= 1:
        return f"{int(v):,} of the 60,000 training images"
    return f"{int(v):,} training examples" if v >= 1 else f"a fraction {v:g} of the training examples"


def describe_config(cfg: Config) -> list[str]:
    assert cfg.teacher is not None
    s = cfg.specialists

    def train_txt(t: Any) -> str:
        o = t.optimizer
        return (f"{t.epochs} epochs, batch {t.batch_size}, {o.name} lr {o.lr:g}, weight decay {o.weight_decay:g}, "
                f"{t.schedule.name} schedule")

    model = f"`{cfg.teacher.model.name}` {cfg.teacher.model.kwargs}" if cfg.teacher.model else "(from checkpoint)"
    soft = (f"cross-entropy on the dustbin labels plus the generalist's distribution merged into subset + dustbin, "
            f"softened at T = {s.temperature:g} (alpha = {s.alpha:g})" if s.soft_targets else
            "cross-entropy on the dustbin labels (hard labels only, as in section 5)")
    soft += ("; at inference the dustbin logit is raised by the log of the factor by which the subset was "
             "oversampled (the paper's correction)")
    return [
        f"- generalist: {model}; {train_txt(cfg.teacher.train)}",
        f"- specialists: the generalist's weights, classifier cut to subset + dustbin (subset rows copied; dustbin "
        f"row fitted by least squares to the log-sum-exp of the other classes' logits on 4,096 of its training "
        f"images); trained on all training images of its subset plus as many drawn from the rest; "
        f"{train_txt(s.train)}; {soft}; checkpoint chosen on a validation set built the same way",
        f"- inference: specialists whose subset meets the generalist's top {s.top_classes} classes are consulted; "
        f"q minimizes KL(p_g ‖ q) + Σ KL(p_m ‖ q_m) by {s.combine_steps} gradient steps (lr {s.combine_lr:g}) on "
        f"the logits of q from log p_g",
        f"- data: {cfg.data.name}, {_held_out(cfg)} held out for validation (split_seed {cfg.data.split_seed}: "
        f"subsets found and checkpoints chosen there), the test split for the numbers above; seed {cfg.seed}",
    ]


def machine_md(m: dict[str, str], load_start: str, load_end: str) -> str:
    """:func:`_common.machine_md` for the machine recorded in the run's ``benchmark.json``."""
    return (f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs visible, torch uses {m['torch_threads']} threads "
            f"(OMP_WAIT_POLICY={m['omp_wait_policy']}; shared machine: load average {load_start} at start, "
            f"{load_end} at the end)\n- torch {m['torch']}, Python {m['python']}, {m['platform']}")


def write_report(out: Path, cfg: Config, results: dict[str, Any], wall: float, machine_txt: str,
                 quick: bool, run_dir: Path, command: str, found: dict[int, list[list[int]]] | None,
                 extra: dict[str, Any]) -> None:
    rows, info = results["models"], results["summary"]
    ctrl, variants = extra.get("control"), extra.get("variants") or []
    g, e = rows["generalist"], rows["generalist+specialists"]
    n_test = info["test_examples"]
    n_spec = info["test_examples_of_specialist_classes"]
    acc_g, acc_e = 100 * g["test_acc"], 100 * e["test_acc"]
    rel = 100 * (e["test_acc"] - g["test_acc"]) / g["test_acc"]
    p = sign_test(info["fixed"], info["broken"])
    subsets_txt = "; ".join("{" + ", ".join(s["names"]) + "}" for s in info["subsets"])

    lines = [f"# Hinton et al. (2015) §5 specialists on Fashion-MNIST"
             f"{' (QUICK smoke run: not a result)' if quick else ''}", ""]
    lines += [f"A CNN generalist plus {len(info['subsets'])} specialists for the groups of classes it confuses, "
              f"found by clustering the covariance of its predictions: {subsets_txt}. Test set: {n_test:,} images, "
              f"{n_spec:,} of them of the specialists' classes. The paper's numbers are on JFT (100M images, "
              "15,000 classes, a generalist trained for about six months); compare the direction and the relative size "
              "of the change, not the accuracies.", ""]
    lines += ["| | generalist | generalist + specialists | change | relative change |",
              "|---|---:|---:|---:|---:|",
              f"| paper (JFT), test top-1 accuracy | {PAPER['baseline']:.1f}% | {PAPER['specialists']:.1f}% "
              f"({PAPER['num_specialists']} specialists) | +{PAPER['specialists'] - PAPER['baseline']:.1f} | "
              f"+{PAPER['relative']:.1f}% |",
              f"| ours, test accuracy | {acc_g:.2f}% | {acc_e:.2f}% ({len(info['subsets'])} specialists) | "
              f"{acc_e - acc_g:+.2f} | {rel:+.2f}% |"]
    sg, se = g["test_acc_specialist_classes"], e["test_acc_specialist_classes"]
    if sg is not None and se is not None:
        lines.append(f"| ours, accuracy on the specialists' classes ({n_spec:,} images) | {100 * sg:.2f}% | "
                     f"{100 * se:.2f}% | {100 * (se - sg):+.2f} | {100 * (se - sg) / sg:+.2f}% |")
    lines.append(f"| ours, test errors | {g['test_errors']} | {e['test_errors']} | "
                 f"{e['test_errors'] - g['test_errors']:+d} | |")
    if ctrl:
        lines.append(f"| control: the generalist trained {ctrl['epochs']} more epochs instead, test accuracy "
                     f"(errors) | {acc_g:.2f}% ({g['test_errors']}) | {100 * ctrl['test_acc']:.2f}% "
                     f"({ctrl['test_errors']}) | {100 * ctrl['test_acc'] - acc_g:+.2f} | "
                     f"{100 * (ctrl['test_acc'] - g['test_acc']) / g['test_acc']:+.2f}% |")
    lines.append("")
    fewer = e["test_errors"] < g["test_errors"]
    if p < 0.05:
        verdict = "Yes" if fewer else "No, they hurt"
    else:
        verdict = "Not measurably" + (" (slightly, within noise)" if fewer else "")
    lines += [f"**Did the specialists help?** {verdict}: {g['test_errors']} → {e['test_errors']} test errors. "
              f"Specialists were consulted on {info['consulted']:,} of {n_test:,} test images and changed "
              f"{info['fixed'] + info['broken']} predictions: {info['fixed']} errors fixed, {info['broken']} made "
              f"(exact two-sided sign test on these changes: p = {p:.2g}"
              f"{', not distinguishable from chance at 5%' if p >= 0.05 else ', significant at 5%'}). "]
    if ctrl:
        better = ctrl["test_errors"] < e["test_errors"]
        lines[-1] += (f"Each specialist is the generalist trained further on its subset, so the ensemble also had "
                      f"more training compute. The control spends it on the generalist instead ({ctrl['epochs']} "
                      f"more epochs on {ctrl['images']:,} training images of all classes: {ctrl['example_passes']:,} "
                      f"example passes, as many as the specialists' {ctrl['specialist_passes']:,}, with their "
                      f"optimizer settings): "
                      f"{ctrl['test_errors']} test errors, {ctrl['test_errors_specialist_classes']} on the "
                      f"specialists' classes, "
                      + ("fewer than the ensemble: here the gain is better explained by the extra training than by "
                         "specialization." if better else "not fewer than the ensemble."))
    else:
        lines[-1] += ("Caveat: each specialist is the generalist trained further on its subset, so the ensemble "
                      "also had more training compute; this run has no control that spends it on the generalist "
                      "(run without --no-control).")
    lines.append("")

    lines += ["| model | params | test acc | test errors | errors on specialists' classes | test NLL "
              "| agreement with generalist | ms / 1000 img | size |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tag, r in rows.items():
        agree = "—" if r.get("agreement") is None else f"{100 * r['agreement']:.2f}%"
        size = f"{r['size_bytes'] / 1024:.0f} KB" if r.get("size_bytes") else "—"
        lines.append(f"| {tag} | {r['params'] / 1e3:.1f}K | {100 * r['test_acc']:.2f}% | {r['test_errors']} | "
                     f"{r['test_errors_specialist_classes']} | {r['test_nll']:.4f} | {agree} | "
                     f"{r['latency_ms_per_1000']:.0f} | {size} |")
    lines += ["", f"Latency: {g['latency_on']}, fastest of repeated passes over 1,000 test images, each model "
              "measured on its own while other jobs shared the 2 cores (load average below), so the two numbers are "
              "only roughly comparable. The ensemble runs the generalist, each specialist on the images that consult "
              f"it ({info['consulted']:,} of {n_test:,}, some consult both), then the "
              f"{cfg.specialists.combine_steps}-step combination; expect 1.5-2x the generalist's time.", ""]

    lines += ["By the number of consulted specialists whose subset holds the true class (the paper's Table 4):", "",
              "| specialists covering the true class | test images | generalist correct | ensemble correct "
              "| change | relative change |", "|---:|---:|---:|---:|---:|---:|"]
    for b in info["by_covering_specialists"]:
        delta = b["ensemble_correct"] - b["generalist_correct"]
        relc = f"{100 * delta / b['generalist_correct']:+.2f}%" if b["generalist_correct"] else "—"
        lines.append(f"| {b['covering_specialists']} | {b['test_examples']:,} | {b['generalist_correct']:,} | "
                     f"{b['ensemble_correct']:,} | {delta:+d} | {relc} |")
    lines.append("")

    if variants:
        lines += ["The same trained models combined with other inference settings (no retraining; the run above uses "
                  f"top_classes = {cfg.specialists.top_classes} with the dustbin correction). Errors out of "
                  f"{n_test:,} test and 5,000 validation images; the generalist alone makes "
                  f"{variants[0]['test_generalist_errors']} and {variants[0]['val_generalist_errors']}:", "",
                  "| top_classes | dustbin correction | test errors | validation errors |", "|---:|---|---:|---:|"]
        for v in variants:
            lines.append(f"| {v['top_classes']} | {'yes' if v['dustbin_correction'] else 'no'} | {v['test_errors']} | "
                         f"{v['val_errors']} |")
        lines.append("")

    lines += ["## The specialists", "", f"Subsets from {info['subsets_from']}.", "",
              "| specialist | classes | training images | best epoch | val acc (subset + dustbin, half/half) "
              "| dustbin logit offset | test images consulting it |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s, n_cons in zip(info["subsets"], info["consultations_per_specialist"]):
        classes = ", ".join(f"{c} {n}" for c, n in zip(s["classes"], s["names"]))
        lines.append(f"| {s['tag']} | {classes} | {s['train_examples']:,} | {s['best_epoch']} | "
                     f"{100 * s['best_val_acc']:.2f}% | {s['dustbin_logit_offset']:.3f} | {n_cons:,} |")
    lines.append("")
    if found:
        from distill.data import load_dataset

        class_names = load_dataset(cfg.data.name, cfg.data.path).class_names
        lines += ["What the clustering returns for other `specialists.num_specialists` (same generalist, same "
                  "validation predictions):", "", "| num_specialists | subsets |", "|---:|---|"]
        for k, subsets in found.items():
            txt = "; ".join("{" + ", ".join(f"{c} {class_names[c]}" for c in s) + "}" for s in subsets) or "(none)"
            if len(subsets) < k:
                txt += f" (only {len(subsets)}: no other cluster passes the rule of `find_confusable_subsets`)"
            lines.append(f"| {k} | {txt} |")
        lines.append("")

    lines += ["## Setup", ""] + describe_config(cfg) + [""]
    lines += ["## How it was run", "", "```", command, "```", "",
              f"Equivalent: `distill run {_rel(DEFAULT_CONFIG)}` (plus the same overrides as `--set`). Run directory "
              f"(checkpoints, metrics.jsonl, results.json): `{_rel(run_dir)}`.", "",
              f"- wall time: {fmt_seconds(wall + extra.get('wall_s', 0.0))}: the recipe {fmt_seconds(wall)}, then "
              f"the inference variants{' and the control' if ctrl else ''} {fmt_seconds(extra.get('wall_s', 0.0))}; "
              f"device {results['device']}", machine_txt, ""]
    save_report(out, lines)


def main(argv: list[str] | None = None) -> int:
    p = BenchmarkParser(__doc__).add_quick("smoke version: 1 generalist / 1 specialist epoch")
    p.add_out(None, f"Markdown report (default: {_rel(DEFAULT_OUT)}; with --quick: specialists_fmnist_quick.md)")
    p.add_overrides().add_threads().add_seeds()
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="specialists config (default: %(default)s)")
    p.add_argument("--epochs-generalist", type=int, help="generalist epochs (default: the config's)")
    p.add_argument("--epochs-specialists", type=int, help="epochs of each specialist (default: the config's)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory (default: runs/benchmarks/<config name>[-quick]); overwritten")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control (the generalist trained further for the specialists' compute)")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: rewrite the report from --run-dir's results.json and benchmark.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    g_epochs, s_epochs = args.epochs_generalist, args.epochs_specialists
    if args.quick:
        g_epochs = g_epochs if g_epochs is not None else 1
        s_epochs = s_epochs if s_epochs is not None else 1
    if g_epochs is not None:
        overrides.append(f"teacher.train.epochs={g_epochs}")
    if s_epochs is not None:
        overrides.append(f"specialists.train.epochs={s_epochs}")
    cfg = load_config(args.config, overrides)
    out = args.out or (DEFAULT_OUT.with_name("specialists_fmnist_quick.md") if args.quick else DEFAULT_OUT)
    run_dir = args.run_dir or REPO / "runs" / "benchmarks" / (cfg.name + ("-quick" if args.quick else ""))

    sidecar = Path(run_dir) / "benchmark.json"
    if args.seeds > 1:
        return main_seeds(args, cfg, out, Path(run_dir), sidecar)
    if args.report_only:
        results = json.loads((Path(run_dir) / "results.json").read_text())
        info = json.loads(sidecar.read_text())
        cfg = load_config(Path(run_dir) / "config.yaml")  # what the run used
        wall, load_start, load_end, command = info["wall_s"], info["load_start"], info["load_end"], info["command"]
        extra, quick, machine_info = info["extra"], info.get("quick", False), info["machine"]
    else:
        load_start = load_average()
        threads = os.environ.get("OMP_NUM_THREADS")
        command = (f"OMP_NUM_THREADS={threads} " if threads else "") + command_line()
        print(f"config {args.config} overrides {overrides} -> run dir {run_dir}", file=sys.stderr, flush=True)
        print(f"machine {machine()}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = run_recipe(cfg, run_dir=run_dir, resume=args.resume, progress=True)
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        extra = {"variants": inference_variants(cfg, Path(run_dir), results)}
        if not args.no_control:
            extra["control"] = control(cfg, Path(run_dir), results)
        extra["wall_s"] = time.perf_counter() - t1
        load_end = load_average()
        quick, machine_info = args.quick, machine()
        save_json(sidecar, {"wall_s": wall, "load_start": load_start, "load_end": load_end, "command": command,
                            "machine": machine_info, "quick": quick, "extra": extra}, indent=2, end="\n")
    try:
        found = clusterings(cfg, Path(run_dir))
    except Exception as e:  # the report is still worth writing without it
        print(f"(clustering for other num_specialists unavailable: {type(e).__name__}: {e})", file=sys.stderr)
        found = None
    write_report(out, cfg, results, wall, machine_md(machine_info, load_start, load_end), quick, Path(run_dir), command,
                 found, extra)
    print(out.read_text())
    print(f"wrote {out}; wall {wall:.0f} s", file=sys.stderr, flush=True)
    return 0


def main_seeds(args: Any, cfg: Config, out: Path, run_dir: Path, sidecar: Path) -> int:
    """``--seeds N``: :func:`distill.recipes.seeds.run_seeds`, then each seed's test correctness from its
    checkpoints (:func:`test_correct`) for the interval, and :func:`write_seeds_report`."""
    from distill.recipes.seeds import seed_dir

    if args.report_only:
        info = json.loads(sidecar.read_text())
        wall, load_start, load_end, command, machine_info = (info["wall_s"], info["load_start"], info["load_end"],
                                                             info["command"], info["machine"])
        seeds = json.loads((run_dir / "results.json").read_text())["seeds"]
    else:
        load_start = load_average()
        threads = os.environ.get("OMP_NUM_THREADS")
        command = (f"OMP_NUM_THREADS={threads} " if threads else "") + command_line()
        t0 = time.perf_counter()
        seeds = run_seeds(cfg, args.seeds, run_dir=run_dir, resume=args.resume, progress=True)["seeds"]
        wall = time.perf_counter() - t0
        load_end, machine_info = load_average(), machine()
        save_json(sidecar, {"wall_s": wall, "load_start": load_start, "load_end": load_end, "command": command,
                            "machine": machine_info}, indent=2, end="\n")
    dirs = [seed_dir(run_dir, s) for s in seeds]
    per_seed = [json.loads((d / "results.json").read_text()) for d in dirs]
    correct = [test_correct(load_config(d / "config.yaml"), d, r) for d, r in zip(dirs, per_seed)]
    agg = seeds_aggregate(seeds, per_seed, correct)
    save_json(run_dir / "seeds_benchmark.json", agg, indent=2, end="\n")
    write_seeds_report(out, cfg, agg, per_seed, wall, machine_md(machine_info, load_start, load_end), run_dir, command)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
