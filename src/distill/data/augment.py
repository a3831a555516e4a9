"""Augmentations applied to a whole batch at once, on the batch's device.

Each function draws per-sample parameters from an explicit ``torch.Generator`` (or the global
RNG when none is given) and never loops over samples in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own integer offset in [-s, s] per axis.

    The border is extended by replication, so a background stays background. This is the
    "jitter the input by up to two pixels" regularizer of Hinton et al. (2015), section 3.
    ``max_shift=0`` returns ``x`` unchanged.
    """
    if max_shift == 0:
        return x
    if x.dim() != 4:
        raise ValueError(f"random_shift expects images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    # drawn where the generator lives (the batch's device when none is given), then moved if needed
    draw_on = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=draw_on).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=draw_on).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]
