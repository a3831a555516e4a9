"""Issue 14 item 2: one ``distill tune`` study shared by many machines through a database server (PostgreSQL),
simulated by two ``distill tune`` processes started at once, each with its own output directory (its "machine")
and the teacher given as ``teacher.checkpoint`` (a shared disk).

Runs only when ``DISTILL_TEST_POSTGRES_URL`` names a database the test may create Optuna's tables in, e.g.
``postgresql+psycopg2://user:password@127.0.0.1:5432/distill_test`` (the driver: ``pip install psycopg2-binary``);
the study it makes has a fresh name and is deleted at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from distill.checkpoint import load_checkpoint
from distill.cli import main
from distill.recipes.tune import shown_storage

URL = os.environ.get("DISTILL_TEST_POSTGRES_URL")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not URL, reason="set DISTILL_TEST_POSTGRES_URL to a PostgreSQL database's "
                                 "SQLAlchemy URL to run the shared-study test")]


def test_two_processes_share_one_study_in_postgresql(tmp_path):
    optuna = pytest.importorskip("optuna")
    assert URL is not None
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "recipe": "distill", "output_dir": str(tmp_path / "teacher"),
        "data": {"name": "digits", "val_size": 0.2}, "train": {"epochs": 2, "batch_size": 128},
        "report": {"latency": False}, "teacher": {"model": {"name": "mlp", "hidden": [32]}},
        "student": {"model": {"name": "mlp", "hidden": [16]}},
        "tune": {"epochs": {"low": 1, "high": 2}, "startup_trials": 2, "prune_startup_trials": 1}}))
    assert main(["run", str(config), "--set", "recipe=teacher", "--name", "t", "--quiet"]) == 0
    teacher = tmp_path / "teacher" / "t" / "teacher" / "best.pt"
    study = f"pgtest-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    machines = [tmp_path / "a", tmp_path / "b"]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "distill", "tune", str(config), "--storage", URL, "--study", study, "--trials", "2",
         "--output-dir", str(where), "--set", f"teacher.checkpoint={teacher}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for where in machines]
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        shared = optuna.load_study(study_name=study, storage=URL)
        assert sorted(t.number for t in shared.trials) == [0, 1, 2, 3]  # shared: 2 + 2, no number twice
        assert {t.state.name for t in shared.trials} <= {"COMPLETE", "PRUNED"}
        ran = {where: sorted(int(p.name) for p in (where / study / "trials").iterdir()) for where in machines}
        assert sorted(ran[machines[0]] + ran[machines[1]]) == [0, 1, 2, 3] and all(len(n) == 2 for n in ran.values())
        for out, err in outputs:
            assert f"[tune] study '{study}' in {shown_storage(URL)}: 2 trials, 1 worker(s)" in err
            assert f"in {shown_storage(URL)}; objective:" in out
        # the process that ended last saw all 4 trials: its best.yaml is the study's best
        bests = [where / study / "best.yaml" for where in machines if (where / study / "best.yaml").is_file()]
        header = f"trial {shared.best_trial.number}, validation accuracy {100 * shared.best_value:.2f}%"
        best = next(p for p in bests if header in p.read_text().splitlines()[0])
        assert main(["run", str(best), "--name", "again", "--output-dir", str(tmp_path / "again"), "--quiet"]) == 0
        again = load_checkpoint(tmp_path / "again" / "again" / "distilled" / "best.pt")
        assert again["best"]["val_acc"] == shared.best_value  # the best config reproduces its validation score
        secret = URL.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2] if "@" in URL else ""
        if secret:  # the password is in no line and no file the study wrote
            assert not any(secret in out + err for out, err in outputs)
            assert not [p for where in machines for p in where.rglob("*")
                        if p.is_file() and p.suffix in (".yaml", ".md", ".csv", ".json") and secret in p.read_text()]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        try:
            optuna.delete_study(study_name=study, storage=URL)
        except KeyError:
            pass
