"""What each process of a 2-process test in test_ddp.py runs (started by torchrun).

``python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_worker.py SCENARIO OUT_DIR``.
Files named ``*_rank<r>*`` are written by this harness on every rank, to let the test see what
each rank did; everything else is written by distill (rank 0 only).
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from distill import distributed
from distill.cache import build_cache, save_cache
from distill.config import OptimizerConfig, TrainConfig
from distill.data import load_dataset, make_splits
from distill.engine import NonFiniteLossError, fit
from distill.engine.evaluation import Validation, validate
from distill.models import create_model
from distill.objectives import CrossEntropy, Objective

CFG = TrainConfig(epochs=3, batch_size=64, log_every=5,
                  optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4))


def digits():
    return make_splits(load_dataset("digits"), val_size=0.1, split_seed=0)


def mlp(data, seed):
    torch.manual_seed(seed)
    return create_model("mlp", data.num_classes, data.in_shape, hidden=[32])


class NaNOnRank1(Objective):
    """Cross-entropy, NaN on rank 1 from its ``k``-th step on (rank 0 never sees a NaN itself)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, out):
        self.calls += 1
        loss = nn.functional.cross_entropy(out.logits, out.labels)
        return {"ce": loss * float("nan") if distributed.rank() == 1 and self.calls > self.k else loss}


def scenario_fit(out: Path) -> None:
    data, rank = digits(), distributed.rank()

    def log(record):
        with open(out / f"log_rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def progress(line):
        with open(out / f"progress_rank{rank}.txt", "a") as f:
            f.write(line + "\n")

    kw = dict(out_dir=out / "fit", seed=3, log=log, progress=progress)
    first = fit(mlp(data, 0), CrossEntropy(), data, CFG, stop_after_epochs=2, **kw)
    assert not first.finished
    # a fresh model, as a restarted process would build, overwritten by last.pt on every rank
    result = fit(mlp(data, 99), CrossEntropy(), data, CFG, resume=True, **kw)
    assert result.finished
    # the weights at the end of training (not the best epoch's, which fit returns)
    last = torch.load(out / "fit" / "last.pt", weights_only=True)["model"] if rank == 0 else None
    torch.save({"model": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
                "last": last, "history": result.history}, out / f"state_rank{rank}.pt")
    try:  # the global batch must split evenly over the processes
        fit(mlp(data, 0), CrossEntropy(), data, CFG.model_copy(update={"batch_size": 63}), progress=None)
    except ValueError as e:
        (out / f"batch_error_rank{rank}.txt").write_text(str(e))
    try:  # NaN on rank 1 only, at its step 7 (epoch 1): every rank must stop, naming step 7
        fit(mlp(data, 0), NaNOnRank1(7), data, CFG, out_dir=out / "nan", progress=None)
        (out / f"nan_rank{rank}.txt").write_text("no error")
    except NonFiniteLossError as e:
        (out / f"nan_rank{rank}.txt").write_text(str(e))


def scenario_cache(out: Path) -> None:
    data = digits()
    teacher = mlp(data, 1)
    full = build_cache(teacher, data, batch_size=100)
    save_cache(out / "full.npz", full)
    top3 = build_cache(teacher, data, topk=3, temperature=4.0, dtype="float16", batch_size=100)
    save_cache(out / "top3.npz", top3)
    torch.save({"logits": full.logits, "test_predictions": full.test_predictions},
               out / f"full_rank{distributed.rank()}.pt")


def scenario_tiny_val(out: Path) -> None:
    """Validation splits of 1 and 3 examples on 2 ranks (rank 0's slice of the 1 is empty), and a fit whose
    validation split is 1 example: every rank's numbers."""
    data, rank = digits(), distributed.rank()
    model = mlp(data, 0)
    got = {k: validate(model, data.val.rows(0, k), 64, torch.device("cpu")) for k in (1, 3)}
    tiny = dataclasses.replace(data, val=data.val.rows(0, 1))
    result = fit(mlp(data, 0), CrossEntropy(), tiny, CFG.model_copy(update={"epochs": 1}), progress=None)
    got["fit"] = Validation(result.history[-1]["val/acc"], result.history[-1]["val/nll"])
    (out / f"tiny_val_rank{rank}.json").write_text(json.dumps({k: list(v) for k, v in got.items()}))


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    with distributed.process_group(torch.device("cpu")):
        {"fit": scenario_fit, "cache": scenario_cache, "tiny_val": scenario_tiny_val}[scenario](out_dir)
