"""Data-parallel training: two processes on 127.0.0.1 (gloo), started by torchrun as a user would.

The processes run ``tests/_ddp_worker.py`` (or ``-m distill run``); what they leave on disk is
compared here with single-process runs of the same settings.
"""

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from distill import distributed
from distill.cache import build_cache, load_cache
from distill.checkpoint import build_model_from_checkpoint
from distill.engine import evaluate, fit
from distill.objectives import CrossEntropy, KnowledgeDistillation

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_worker import CFG, mlp  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="this torch build has no torch.distributed with gloo")]
WORKER = Path(__file__).parent / "_ddp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 ARGS`` on loopback; fails the test with its output unless it succeeds."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_WAIT_POLICY": "PASSIVE"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """Two processes: fit for 2 of 3 epochs, resume (fresh models) to the end; then a NaN on rank 1."""
    out = tmp_path_factory.mktemp("ddp_fit")
    torchrun(str(WORKER), "fit", str(out), cwd=out)
    return out


def test_parameters_are_identical_on_every_rank(fit_run):
    a = torch.load(fit_run / "state_rank0.pt", weights_only=True)["model"]
    b = torch.load(fit_run / "state_rank1.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_match_one_with_the_same_global_batch_through_a_resume(fit_run, digits_splits, tmp_path):
    """2 ranks x 32 examples = one process with batches of 64 (MLP, no dropout or batch norm), even
    though the 2-rank run was stopped after epoch 2 and resumed from last.pt by fresh processes."""
    ddp = torch.load(fit_run / "state_rank0.pt", weights_only=True)
    single = fit(mlp(digits_splits, 0), CrossEntropy(), digits_splits, CFG, seed=3, out_dir=tmp_path, progress=None)
    want = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for k, v in want.items():  # float32 sums in another order: differences of a few 1e-7 after 54 steps
        torch.testing.assert_close(ddp["last"][k], v, rtol=1e-4, atol=1e-5)
    got = {r["epoch"]: r for r in ddp["history"]}
    for r in single.history:
        assert got[r["epoch"]]["train/loss"] == pytest.approx(r["train/loss"], rel=1e-5)
        assert got[r["epoch"]]["val/acc"] == r["val/acc"]
        assert got[r["epoch"]]["val/nll"] == pytest.approx(r["val/nll"], rel=1e-5)


def test_only_rank_0_logs_prints_and_writes_checkpoints(fit_run):
    assert sorted(p.name for p in (fit_run / "fit").iterdir()) == ["best.pt", "last.pt"]  # no temporary files
    lines = [json.loads(line) for line in (fit_run / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert "resuming from" in (fit_run / "progress_rank0.txt").read_text()
    assert not (fit_run / "log_rank1.jsonl").exists() and not (fit_run / "progress_rank1.txt").exists()


def test_a_nan_on_one_rank_stops_every_rank_at_that_step(fit_run):
    for rank in (0, 1):
        assert "the loss became NaN or inf at step 7 (epoch 1)" in (fit_run / f"nan_rank{rank}.txt").read_text()


def test_the_global_batch_must_split_evenly(fit_run):
    for rank in (0, 1):
        assert "train.batch_size=63 is the global batch" in (fit_run / f"batch_error_rank{rank}.txt").read_text()


def test_a_sharded_cache_equals_a_single_process_build(tmp_path, digits_splits):
    torchrun(str(WORKER), "cache", str(tmp_path), cwd=tmp_path)
    teacher = mlp(digits_splits, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun process, so that every matmul is computed alike
    try:
        full = build_cache(teacher, digits_splits, batch_size=100)
        top3 = build_cache(teacher, digits_splits, topk=3, temperature=4.0, dtype="float16", batch_size=100)
    finally:
        torch.set_num_threads(threads)
    sharded_full = load_cache(tmp_path / "full.npz", data=digits_splits, teacher=teacher)
    sharded_top3 = load_cache(tmp_path / "top3.npz", data=digits_splits, teacher=teacher)
    assert torch.equal(sharded_full.logits, full.logits)
    assert torch.equal(sharded_full.test_predictions, full.test_predictions)
    assert sharded_full.test == full.test
    assert torch.equal(sharded_top3.indices, top3.indices) and torch.equal(sharded_top3.log_probs, top3.log_probs)
    rank1 = torch.load(tmp_path / "full_rank1.pt", weights_only=True)  # every rank holds the whole cache
    assert torch.equal(rank1["logits"], full.logits) and torch.equal(rank1["test_predictions"], full.test_predictions)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["full.npz", "top3.npz"]


def test_torchrun_distill_run_end_to_end(tmp_path, digits_splits):
    """``torchrun -m distill run cfg.yaml``: teacher, baseline and a student distilled from a cache the
    two processes build together; one run directory, one set of outputs."""
    cfg = {"name": "ddp", "recipe": "compare", "device": "cpu", "data": {"name": "digits"},
           "train": {"epochs": 2, "batch_size": 64, "log_every": 1000},
           "teacher": {"model": {"name": "cnn", "channels": [8, 16], "hidden": 32}},
           "student": {"model": {"name": "mlp", "hidden": [16]}},
           "distill": {"cache": {"path": str(tmp_path / "teacher_cache.npz")}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "runs" / "ddp").mkdir(parents=True)
    (tmp_path / "runs" / "ddp" / "other.txt").write_text("an earlier run")  # so a free name must be chosen
    proc = torchrun("-m", "distill", "run", "cfg.yaml", "--output-dir", "runs", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "ddp-2"]  # both ranks chose ddp-2
    assert proc.stderr.count("writing to runs/ddp-2 instead") == 1
    assert proc.stdout.count("distilled") == 1  # the table, printed once
    run = tmp_path / "runs" / "ddp-2"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "results.json", "report.md",
                                              "test_predictions.npz", "teacher", "baseline", "distilled"}
    results = json.loads((run / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "baseline", "distilled"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["epoch"]) for r in lines] == [(m, e) for m in ("teacher", "baseline", "distilled")
                                                         for e in (1, 2)]
    kd = KnowledgeDistillation().weights
    for row in lines[4:]:  # the distilled student's objective: KD (its default weights) on the cached teacher
        terms = {k[len("train/"):]: v for k, v in row.items() if k.startswith("train/") and k != "train/loss"}
        assert set(terms) == {"kd", "ce"}
        assert row["train/loss"] == pytest.approx(sum(kd[k] * v for k, v in terms.items()), rel=1e-5)
    for tag in ("teacher", "baseline", "distilled"):
        assert sorted(p.name for p in (run / tag).iterdir()) == ["best.pt", "last.pt"]
        losses = [r["train/loss"] for r in lines if r["model"] == tag]
        assert losses[1] < losses[0], (tag, losses)  # each learns (no noisy accuracy bar)
        # the accuracy the two processes gathered is the saved model's on the whole test split, in one process
        model, _ = build_model_from_checkpoint(run / tag / "best.pt")
        assert evaluate(model, digits_splits.test).accuracy == results["models"][tag]["test_acc"], tag
    assert [p.name for p in tmp_path.glob("*.npz")] == ["teacher_cache.npz"]
    assert results["teacher_cache"]["built_by_this_run"] is True


def test_a_rank_with_an_empty_validation_slice_adds_zeros_to_the_reduction(tmp_path, digits_splits):
    """More ranks than validation examples: rank 0's slice of a 1-example split is empty; it evaluates nothing,
    still joins the all-reduce, and both ranks get the one-process numbers (a fit validates alike)."""
    torchrun(str(WORKER), "tiny_val", str(tmp_path), cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"tiny_val_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    model, val, cpu = mlp(digits_splits, 0), digits_splits.val, torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun process, so that every matmul is computed alike
    try:
        one = evaluate(model, val.rows(0, 1))
        two = evaluate(model, val.rows(1, 3))  # rank 1's slice of 3 examples; rank 0 takes the first
    finally:
        torch.set_num_threads(threads)
    assert ranks[0]["1"] == [one.accuracy, one.nll]
    correct = one.n - one.errors + two.n - two.errors
    assert ranks[0]["3"] == [correct / 3, (one.nll * one.n + two.nll * two.n) / 3]
    acc, nll = ranks[0]["fit"]
    assert acc in (0.0, 1.0) and math.isfinite(nll)


def test_fit_refuses_to_train_alone_in_a_process_torchrun_started(digits_splits, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="one of 2 started by torchrun, but no process group"):
        fit(mlp(digits_splits, 0), CrossEntropy(), digits_splits, CFG, progress=None)


def test_shards_cover_the_rows_in_order_in_whole_blocks(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    spans = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        spans.append(distributed.shard(1050, block=100))
    assert spans == [(0, 300), (300, 700), (700, 1050)]  # 11 blocks of 100 (the last one short): 3, 4, 4
    index = torch.arange(12)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.local_batch(index).tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("fails", [False, True])
def test_a_process_group_block_waits_for_every_rank_only_after_success_and_always_leaves(monkeypatch, fails):
    calls = []
    monkeypatch.setattr(distributed, "init", lambda device: calls.append("init") or torch.device("cpu"))
    monkeypatch.setattr(distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed, "cleanup", lambda: calls.append("cleanup"))
    with pytest.raises(RuntimeError, match="boom") if fails else contextlib.nullcontext():
        with distributed.process_group(torch.device("cpu")) as device:
            assert device == torch.device("cpu")
            calls.append("block")
            if fails:
                raise RuntimeError("boom")
    # after an error the other ranks may never reach a barrier: leave at once
    assert calls == (["init", "block", "cleanup"] if fails else ["init", "block", "barrier", "cleanup"])


@pytest.mark.parametrize("backend, drained", [("gloo", True), ("nccl", False)])
def test_a_gloo_process_group_leaves_the_gil_free_after_the_barrier(monkeypatch, backend, drained):
    calls = []
    monkeypatch.setattr(distributed, "init", lambda device: device)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    monkeypatch.setattr(distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.time, "sleep", lambda s: calls.append(("sleep", s)))
    monkeypatch.setattr(distributed, "cleanup", lambda: calls.append("cleanup"))
    with distributed.process_group(torch.device("cpu")):
        calls.append("block")
    drain = [("sleep", distributed.GLOO_DRAIN_S)] if drained else []
    assert calls == ["block", "barrier", *drain, "cleanup"]


def test_a_process_group_block_leaves_even_when_the_final_barrier_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "init", lambda device: device)

    def barrier():
        raise RuntimeError("peer gone")

    monkeypatch.setattr(distributed, "barrier", barrier)
    monkeypatch.setattr(distributed, "cleanup", lambda: calls.append("cleanup"))
    with pytest.raises(RuntimeError, match="peer gone"):
        with distributed.process_group(torch.device("cpu")):
            pass
    assert calls == ["cleanup"]
