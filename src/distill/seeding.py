"""Independent random streams for one run, all derived from the run's ``seed``.

Training draws random numbers for several purposes: the order of the examples in each epoch,
the augmentation and views of each batch, and everything else that uses torch's global RNG
(dropout, objectives that sample). Seeding two generators with the same number gives them the
same stream, so their draws are not independent: the augmentation would replay the numbers that
shuffled the data. Each purpose therefore gets its own seed, a function of
``(seed, purpose, epoch, rank)``:

- ``order``: the permutation of the examples in an epoch (the same on every DDP rank, rank 0);
- ``augment``: the augmentation and views of the batches (per rank: each rank augments its slice);
- ``global``: torch's global RNG during training: dropout and anything else (per rank).

:func:`stream_seed` mixes these with NumPy's ``SeedSequence``, the mechanism NumPy designed for
independent child streams (``SeedSequence(seed).spawn``), as PyTorch Lightning does for the seeds
of its DataLoader workers. Every epoch's streams are a pure function of these values, so a
resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

# the spawn key of each purpose; never renumber (it would change every run's random draws)
PURPOSES = {"order": 0, "augment": 1, "global": 2}


def stream_seed(seed: int, purpose: str, epoch: int = 0, rank: int = 0) -> int:
    """A 63-bit seed (``0 <= s < 2**63``, valid for ``torch.manual_seed`` and ``torch.Generator``)
    for ``purpose`` (one of :data:`PURPOSES`) in ``epoch`` on DDP ``rank`` of a run seeded with
    ``seed``. Different arguments give unrelated seeds; the same arguments, the same seed on
    every machine. All values must be integers ``>= 0`` (any size)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}; choose one of {', '.join(PURPOSES)}")
    values = []
    for name, value in (("seed", seed), ("epoch", epoch), ("rank", rank)):
        whole = None
        if not isinstance(value, bool):
            try:
                whole = operator.index(value)
            except TypeError:
                pass
        if whole is None or whole < 0:
            raise ValueError(f"{name} must be a whole number >= 0 for the random streams, got {value!r}")
        values.append(whole)
    seed, epoch, rank = values
    sequence = np.random.SeedSequence(seed, spawn_key=(PURPOSES[purpose], epoch, rank))
    return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` on ``device`` (so that draws for a batch are made
    where the batch lives, without a copy), or on the CPU where the device has no generators of its own."""
    device = torch.device(device)
    try:
        g = torch.Generator(device=device)
    except RuntimeError:
        g = torch.Generator()
    return g.manual_seed(seed)
