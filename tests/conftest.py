import os

# Before torch loads OpenMP: sleeping (not spinning) waits, as `import distill` sets; see there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import distill.recipes  # noqa: E402,F401  (registers the built-in recipes, as the command line does)

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_data(name): the test reads dataset `name`, which is not shipped; it is skipped, saying "
        "why, unless distill finds the files where `distill datasets` says it looks",
    )


@functools.cache
def missing_data_reason(name: str) -> str | None:
    """Why dataset ``name`` cannot be used here (None if distill finds it), resolved as distill does."""
    from distill.data import sources

    if sources.find_dataset(name) is not None:
        return None
    where = ", ".join(str(p) for p in sources.dataset_search_paths(name))
    package = sources._SPECS[sources.canonical_name(name)].apt_package
    get = f"apt-get install {package}, or " if package else ""
    return f"needs the {name} dataset, found in none of {where} ({get}put it in $DISTILL_DATA/{name}/)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``requires_data(name)`` whose data is absent (before its fixtures run)."""
    for mark in item.iter_markers("requires_data"):
        reason = missing_data_reason(mark.args[0])
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def digits_splits():
    """Digits as normalized tensor splits (loaded once per test session)."""
    from distill.data import load_dataset, make_splits

    return make_splits(load_dataset("digits"), val_size=0.1, split_seed=0)
