"""``import distill`` leaves the process alone; the ``distill`` command sets OMP_WAIT_POLICY before torch loads."""

import os
import subprocess
import sys


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter without OMP_WAIT_POLICY in its environment (unless given); returns
    its stdout."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_distill_leaves_the_environment_unchanged() -> None:
    out = run_python(
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import distill\n"
        "light = 'torch' not in sys.modules\n"  # names load on first use
        "from distill import fit, kd_loss\n"
        "import distill.engine\n"
        "print(dict(os.environ) == before, light, distill.fit is distill.engine.fit is fit, 'kd_loss' in dir(distill))"
    )
    assert out == "True True True True"


def test_the_command_sets_omp_wait_policy_before_torch_loads() -> None:
    # the OMP_WAIT_POLICY seen at the moment torch is first imported, under `python -m distill models`
    hook = (
        "import os, runpy, sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] == 'torch' and not seen:\n"
        "        seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['distill', 'models']\n"
        "try:\n"
        "    runpy.run_module('distill', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('SEEN', seen)\n"
    )
    assert run_python(hook).splitlines()[-1] == "SEEN ['PASSIVE']"
    # the `distill` console script imports distill.cli (which sets it, torch not yet loaded) and calls main
    check = "import os, sys, distill.cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    assert run_python(check) == "PASSIVE False"
    assert run_python(check, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"  # an explicit setting wins
