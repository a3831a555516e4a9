import os

# Before torch loads OpenMP: sleeping (not spinning) waits, as `import distill` sets; see there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits_splits():
    """Digits as normalized tensor splits (loaded once per test session)."""
    from distill.data import load_dataset, make_splits

    return make_splits(load_dataset("digits"), val_size=0.1, split_seed=0)
