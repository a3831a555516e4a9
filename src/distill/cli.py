"""The ``distill`` command: parse arguments, build a config, run a recipe. Nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill._version import __version__

if TYPE_CHECKING:  # for annotations only: the commands import the library when they run
    from distill.config import Config

# The command (``distill``, ``python -m distill``), not the library, chooses sleeping OpenMP waits,
# before anything imports torch (``import distill`` loads nothing heavy, and this module imports
# torch only inside its commands). OpenMP worker threads that spin while they wait make small
# models many times slower as soon as another process shares the cores (2 CPU cores, one busy: the
# demo took 502 s spinning, 20 s sleeping); on an idle machine sleeping waits cost about as much as
# the noise (two CNN epochs: 1.4-1.5 s vs 1.2-1.4 s). An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXAMPLES = {
    "main": """examples:
  distill demo                                   teacher, baseline and distilled student on digits
  distill run configs/digits_kd.yaml             a config file (configs/ of the source tree)
  distill run cfg.yaml --set train.epochs=5 --set distill.temperature=8
  distill eval runs/demo/distilled/best.pt       test metrics of a checkpoint
  distill export runs/demo --format onnx         the student as ONNX, parity-checked (--quantize int8)
  distill tune configs/digits_kd.yaml --trials 20  search method, T, alpha, lr, shift, epochs on validation
  distill models                                 the model names create_model knows
  distill methods                                the distillation methods: paper, options, defaults
  distill recipes                                the recipes (experiments): what each does, its options
""",
    "demo": """examples:
  distill demo
  distill demo --set train.epochs=10 --name quick
  distill demo --set student.model.hidden=[64] --set distill.temperature=8
""",
    "run": """config sections: name, recipe, seed, device, output_dir,
  data {name, path, download, val_size, train_size, split_seed, normalize},
  train {epochs, batch_size, optimizer{name,lr,momentum,nesterov,weight_decay,betas},
         schedule{name,warmup_epochs,step_size,milestones,gamma,min_lr}, clip_grad_norm,
         augment{shift, crop_padding, flip}, selection (acc|nll|last), amp, channels_last, log_every, eval_batch_size,
         compile, data_on_device, sync_batchnorm},
  teacher / student {model{name, ...factory keywords}, checkpoint, train{...overrides}},
  distill {loss (kd|logit_matching), temperature, alpha, method, options{...},
           stages[{method, options, epochs, trainable, train{...}}], cache{path, topk, dtype},
           views{mode, student_size, padding, scale, ratio, flip, mixup_alpha, ensemble_crops},
           transfer{name, path, download}},
  report {latency, loggers (tensorboard, mlflow), mlflow_uri, mlflow_experiment},
  and the recipe's own section: ensemble {...}, specialists {...}, online {...}, born_again {...},
  small_data {...}, left_out {...}, tune {...} (`distill recipes` lists every recipe with its options and defaults)

recipes: teacher, baseline, distill, compare, cache, ensemble, specialists, online, born_again,
  small_data, left_out_class, qat, tune (and any registered with distill.config.register_recipe)
views.mode: none, fix/rs, fix/cc, fix/ic_ens, ind/rc, ind/ic, same/rc, same/ic, funmatch, mixup

examples:
  distill run configs/digits_kd.yaml
  distill run cfg.yaml --set train.epochs=5 --set teacher.checkpoint=runs/t/teacher/best.pt
  distill run cfg.yaml --name exp1 --resume        continue an interrupted run
  distill run cfg.yaml --seeds 5                   mean ± sd over 5 seeds, gains with 95% intervals
  distill run cfg.yaml --set recipe=ensemble --set ensemble.members=5
  distill run cfg.yaml --set recipe=distill --set distill.views.mode=funmatch --set distill.alpha=1
  distill run cfg.yaml --set distill.method=at --set distill.options.weight=50
  distill run cfg.yaml --set 'distill.stages=[{method: ab, options: {ce_weight: 0}, epochs: 10}, {method: ce}]'
  torchrun --nproc_per_node=8 -m distill run cfg.yaml   data parallel on 8 GPUs (train.batch_size is global)
""",
    "tune": """the search space: the config's tune section (`distill recipes` lists its keys and defaults), e.g.
  tune: {methods: [kd, dkd, dist, mlkd, ctkd, wttm], temperature: {low: 1, high: 8}, alpha: {low: 0.1, high: 1},
         lr: {low: 0.001, high: 0.3, log: true}, shift: {low: 0, high: 2}, epochs: {low: 10, high: 100}}
  (a range set to null is not searched; the config's value is kept)

writes to <output_dir>/<study>/: study.db, teacher/, trials/<n>/, best.yaml, trials.csv, trials.md

examples:
  distill tune configs/digits_kd.yaml --trials 20
  distill tune configs/digits_kd.yaml --trials 20    again: continues the study with 20 more trials
  distill tune cfg.yaml --minutes 30 --workers 2 --set 'tune.methods=[kd, dist]' --set tune.epochs=null
  distill tune cfg.yaml --storage postgresql://user@host/db --study shared     one study, many machines
  distill run runs/digits_kd/best.yaml --seeds 3  the best config, its gain over seeds
""",
    "eval": """examples:
  distill eval runs/demo/distilled/best.pt
  distill eval runs/demo/distilled/best.pt --teacher runs/demo/teacher/best.pt --json
""",
    "export": """examples:
  distill export runs/demo --format onnx --quantize int8
  distill export runs/demo --format safetensors    then: distill.load_student("runs/demo/distilled/export/safetensors")
  distill export runs/demo/baseline/best.pt --format torchscript --out exported/ --no-latency
""",
}


IMPORT_HELP = ("let a checkpoint's recorded architecture name an import path (package.module:factory), which "
               "imports and runs that module: only for checkpoints you trust (default: registered models only)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="distill", description="Knowledge distillation for PyTorch.",
                                epilog=EXAMPLES["main"], formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="teacher, baseline and distilled student on the embedded digits data",
                          description="Train a teacher, a baseline student and a distilled student on "
                          "scikit-learn's digits, then print their test metrics side by side.",
                          epilog=EXAMPLES["demo"], formatter_class=fmt)
    _run_options(demo)

    run = sub.add_parser("run", help="run the recipe of a YAML config",
                         description="Validate a YAML config (plus --set overrides) and run its recipe.",
                         epilog=EXAMPLES["run"], formatter_class=fmt)
    run.add_argument("config", help="YAML config file")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config (the sections its recipe reads) and exit")
    _run_options(run)
    _add_tune(sub, fmt)
    _add_eval(sub, fmt)
    _add_export(sub, fmt)
    sub.add_parser("models", help="list the model names create_model knows")
    sub.add_parser("datasets", help="list the dataset names and where each is looked for")
    sub.add_parser("methods", help="list the distillation methods (distill.method): paper, options and defaults")
    sub.add_parser("recipes", help="list the recipes (recipe): what each runs, the sections it reads, its options")
    return p


def _run_options(sp: argparse.ArgumentParser) -> None:
    """The options of the commands that run a recipe (demo, run)."""
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. train.epochs=5 (repeatable; values are YAML)")
    sp.add_argument("--name", help="run name: outputs go to <output_dir>/<name>/ (letters, digits and "
                    "._-+@=, not starting with . or -)")
    sp.add_argument("--output-dir", help="parent directory of run directories (default: runs)")
    sp.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in <output_dir>/<name>/ from its last checkpoints (refused if "
                    "a setting that changes the result differs from its config.yaml)")
    sp.add_argument("--allow-changes", action="store_true",
                    help="with --resume: continue even though settings that change the result differ from "
                    "the run's config.yaml (the differences are printed)")
    sp.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="run the recipe with N seeds (seed, seed+1, ...; each in <run dir>/seed<s>/) and report "
                    "each metric as mean ± sd and each gain over the baseline with a 95%% paired bootstrap "
                    "interval (default 1: one run)")
    sp.add_argument("--quiet", action="store_true", help="print only the final table")
    sp.add_argument("--allow-model-import", action="store_true", help=IMPORT_HELP)


def _add_tune(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``distill tune``."""
    tune = sub.add_parser("tune", help="search the distillation's settings on the validation split (Optuna)",
                          description="Distil the config's student many times with settings drawn from the config's "
                          "tune section (method, temperature, alpha, learning rate, augmentation shift, epochs) by a "
                          "TPE sampler, pruning trials whose validation accuracy falls below the median, and write "
                          "the best config (best.yaml), the trials (trials.csv, trials.md) and what mattered. The "
                          "teacher is trained once; the objective is the validation accuracy (never the test "
                          "split). Running the same command again continues the study. Needs the tune extra.",
                          epilog=EXAMPLES["tune"], formatter_class=fmt)
    tune.add_argument("config", help="YAML config file (its recipe's teacher, student and distill sections)")
    tune.add_argument("--trials", type=int, metavar="N", help="trials to run now, over all workers (default: "
                      "tune.trials, 20)")
    tune.add_argument("--minutes", type=float, metavar="M", help="start no trial after M minutes (alone: trials "
                      "until then)")
    tune.add_argument("--storage", metavar="URL", help="the study's database, an SQLAlchemy URL (default: "
                      "sqlite:///<output_dir>/<study>/study.db)")
    tune.add_argument("--study", metavar="NAME", help="the study's name and directory (default: the config's name)")
    tune.add_argument("--workers", type=int, metavar="K", help="K processes running trials at once, sharing the "
                      "storage (default: tune.workers, 1)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. tune.trials=5 or train.batch_size=128 (repeatable)")
    tune.add_argument("--name", help="run name: the default study name")
    tune.add_argument("--output-dir", help="parent directory of the study directory (default: runs)")
    tune.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    tune.add_argument("--quiet", action="store_true", help="print only the summary")


def _add_eval(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``distill eval``."""
    ev = sub.add_parser("eval", help="test metrics of a checkpoint",
                        description="Rebuild the model recorded in a checkpoint and measure it on the test "
                        "split of its dataset (normalized as it was in training).",
                        epilog=EXAMPLES["eval"], formatter_class=fmt)
    ev.add_argument("checkpoint", help="a best.pt or last.pt written by distill")
    ev.add_argument("--teacher", help="a teacher checkpoint, to report agreement with its top-1")
    ev.add_argument("--data", help="dataset name (default: the one recorded in the checkpoint)")
    ev.add_argument("--data-path", help="where the dataset's files are (for npz: the .npz file)")
    ev.add_argument("--download", action="store_true", help="download the dataset if it is found nowhere")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--allow-model-import", action="store_true", help=IMPORT_HELP)
    ev.add_argument("--no-latency", dest="latency", action="store_false",
                    help="do not time inference (latency is null in JSON, '-' in the table)")


def _add_export(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``distill export``."""
    ex = sub.add_parser("export", help="export a student (ONNX, TorchScript, ExportedProgram, safetensors), "
                        "parity-checked, optionally int8",
                        description="Write the student of a run (its distilled/best.pt, or its only model) or of a "
                        "checkpoint in one format, run what was written on the test split and compare it with the "
                        "PyTorch student (max abs logit difference, top-1 agreement); with --quantize int8 also "
                        "int8 models. Writes export.json and MODEL_CARD.md (accuracy, NLL, ECE, sizes, latency).",
                        epilog=EXAMPLES["export"], formatter_class=fmt)
    ex.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory (runs/demo) or a best.pt")
    ex.add_argument("--format", required=True, choices=["safetensors", "onnx", "torchscript", "exported-program"])
    ex.add_argument("--quantize", choices=["int8"], help="also write int8 models: for onnx, onnxruntime dynamic and "
                    "static (QDQ, calibrated on the training split); for onnx and torchscript, PyTorch dynamic (Linear)")
    ex.add_argument("--out", help="output folder (default: <checkpoint folder>/export/<format>)")
    ex.add_argument("--atol", type=float, default=1e-4,
                    help="fp32 parity tolerance on the logits (default 1e-4); top-1 must agree on every test sample")
    ex.add_argument("--calibration-size", type=int, default=256,
                    help="training examples for static int8 calibration (default 256)")
    ex.add_argument("--data", help="dataset name (default: the one recorded in the checkpoint)")
    ex.add_argument("--data-path", help="where the dataset's files are (for npz: the .npz file)")
    ex.add_argument("--download", action="store_true", help="download the dataset if it is found nowhere")
    ex.add_argument("--no-latency", dest="latency", action="store_false", help="do not time the models")
    ex.add_argument("--json", action="store_true", help="print export.json instead of the table")
    ex.add_argument("--allow-model-import", action="store_true", help=IMPORT_HELP)


def _config_from_args(args: argparse.Namespace, base: dict[str, Any] | None, path: str | None) -> Config:
    from distill.recipes import load_config  # registers the recipes first

    literal = {"name": args.name, "output_dir": args.output_dir, "device": args.device}  # strings as typed
    return load_config(path, list(args.overrides), base=base,
                       settings={k: v for k, v in literal.items() if v is not None})


def _run(cfg: Config, args: argparse.Namespace) -> int:
    from distill import distributed
    from distill.engine import resolve_device
    from distill.recipes import run_recipe, run_seeds

    with distributed.process_group(resolve_device(cfg.device)):  # under torchrun: join the other processes
        if args.allow_changes and not args.resume:
            raise ValueError("--allow-changes applies to --resume only")
        # a new run claims output_dir/name (or name-2, ...) atomically on rank 0; see Run
        options = {"resume": args.resume, "progress": not args.quiet, "allow_import": args.allow_model_import,
                   "allow_changes": args.allow_changes}
        if args.seeds != 1:
            run_seeds(cfg, args.seeds, **options)
        else:
            run_recipe(cfg, **options)
    return 0


EVAL_FLAGS = (("--set data.path=", "--data-path "), ("--set data.name=", "--data "),
              ("--set data.download=true", "--download"))
"""``distill run``'s way of setting the data (config keys) -> ``distill eval``'s flags."""


def _eval_flags(message: str) -> str:
    """``message`` with the data's ``--set`` hints of ``distill run`` written as ``distill eval``'s flags."""
    for run_flag, eval_flag in EVAL_FLAGS:
        message = message.replace(run_flag, eval_flag)
    return message


def _eval(args: argparse.Namespace) -> int:
    import torch

    from distill import jsonio
    from distill.checkpoint import build_model_from_checkpoint
    from distill.data.sources import load_dataset
    from distill.data.tensors import make_splits
    from distill.engine import predict_logits, resolve_device
    from distill.report import format_table, model_report

    device = resolve_device(args.device)
    model, ckpt = build_model_from_checkpoint(args.checkpoint, map_location=device,
                                              allow_import=args.allow_model_import)
    data_rec = ckpt.get("data") or {}
    name = args.data or data_rec.get("name")
    if not name:
        raise ValueError(f"{args.checkpoint} does not record its dataset; pass --data NAME")
    if name == "npz" and args.data_path is None:
        raise ValueError(f"{args.checkpoint} was trained on an .npz file, which a checkpoint does not record; "
                         f"pass the file: distill eval {args.checkpoint} --data-path my.npz")
    try:
        raw = load_dataset(name, args.data_path, download=args.download)
    except (ValueError, OSError) as e:  # its advice names distill run's flags: say it with eval's
        raise ValueError(_eval_flags(str(e))) from None
    stats = (torch.tensor(data_rec["mean"]), torch.tensor(data_rec["std"])) if "mean" in data_rec else None
    data = make_splits(raw, val_size=0, stats=stats, device=device)
    if getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"{args.checkpoint} predicts {model.num_classes} classes but {name} has {data.num_classes}")
    preds = None
    if args.teacher:
        teacher, _ = build_model_from_checkpoint(args.teacher, map_location=device,
                                                 allow_import=args.allow_model_import)
        preds = predict_logits(teacher.to(device), data.test.x).argmax(-1)
    row = model_report(model.to(device), data.test, teacher_predictions=preds, checkpoint=args.checkpoint,
                       latency=args.latency)
    if args.json:
        print(jsonio.dumps({"checkpoint": str(args.checkpoint), "data": name, **row}, indent=2))
    else:
        print(format_table([{"model": Path(args.checkpoint).parent.name or "model", **row}]))
    return 0


def _export(args: argparse.Namespace) -> int:
    from distill import jsonio
    from distill.export import export_student, summary

    record = export_student(args.source, args.format, out=args.out, quantize_to=args.quantize, atol=args.atol,
                            latency=args.latency, calibration_size=args.calibration_size, data=args.data,
                            data_path=args.data_path, download=args.download, allow_import=args.allow_model_import)
    print(jsonio.dumps(record, indent=2) if args.json else summary(record))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from distill.recipes.tune import run_study

    cfg = _config_from_args(args, None, args.config)
    summary = run_study(cfg, trials=args.trials, minutes=args.minutes, storage=args.storage, study=args.study,
                        workers=args.workers, progress=not args.quiet)
    print(Path(summary["dir"], "trials.md").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "demo":
            from distill.config import builtin_config

            return _run(_config_from_args(args, builtin_config("demo"), None), args)
        if args.command == "run":
            cfg = _config_from_args(args, None, args.config)
            if args.dry_run:
                from distill.config import to_yaml

                print(to_yaml(cfg, used_only=True), end="")
                return 0
            return _run(cfg, args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "export":
            return _export(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "models":
            from distill.models import list_models

            print("\n".join(list_models()))
            return 0
        if args.command == "methods":
            from distill.methods import list_methods, method_card

            print("\n\n".join(method_card(m) for m in list_methods()))
            return 0
        if args.command == "recipes":
            from distill.recipes import describe_recipes

            print(describe_recipes())
            return 0
        if args.command == "datasets":
            from distill.data.sources import available_datasets, dataset_search_paths

            for name in available_datasets():
                if name == "npz":  # nothing to look for: the user's own file
                    where = "your .npz file, given as data.path (distill eval: --data-path)"
                else:
                    where = ", ".join(str(p) for p in dataset_search_paths(name)) or "embedded (scikit-learn)"
                print(f"{name:15s} {where}")
            return 0
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint of each model is kept (rerun with --resume)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as e:
        if os.environ.get("DISTILL_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        where = f" (process {os.environ.get('RANK')})" if os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"error{where}: {msg}\n(set DISTILL_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
