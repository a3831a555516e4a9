import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits_splits():
    """Digits as normalized tensor splits (loaded once per test session)."""
    from distill.data import load_dataset, make_splits

    return make_splits(load_dataset("digits"), val_size=0.1, split_seed=0)
