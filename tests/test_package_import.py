"""What ``import distill`` does to the process: it sets OMP_WAIT_POLICY=PASSIVE unless set (documented in the
README, "Running on a shared CPU"), and nothing else in the environment."""

import os
import subprocess
import sys

CODE = """
import os
before = dict(os.environ)
import distill
after = dict(os.environ)
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
print(changed, after.get("OMP_WAIT_POLICY"))
"""


def run_python(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_distill_sets_only_omp_wait_policy_and_an_explicit_value_wins() -> None:
    assert run_python(CODE) == "['OMP_WAIT_POLICY'] PASSIVE"
    assert run_python(CODE, OMP_WAIT_POLICY="ACTIVE") == "[] ACTIVE"
