"""Where targets come from.

A teacher, here, is anything that gives targets for a batch of inputs: ``teacher(x) ->
Targets``. The engine calls it on exactly the views the student sees, together with the
batch's positions in the training set (``index``, which a cache of precomputed outputs looks
up), and knows nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from distill.taps import Taps


@dataclass(frozen=True)
class TopK:
    """The teacher's ``k`` most probable classes at ``temperature``; the rest is one tail bucket.

    ``indices`` (B, k) are class indices, ``log_probs`` (B, k) their log-probabilities
    log p_t^T; the tail's mass is ``1 - exp(log_probs).sum(-1)``. A cache of top-k outputs
    gives these (see :func:`distill.functional.topk_kd_loss` for the loss on them).
    """

    indices: Tensor
    log_probs: Tensor
    num_classes: int
    temperature: float

    def __post_init__(self) -> None:
        if self.indices.shape != self.log_probs.shape or self.indices.dim() < 1:
            raise ValueError(f"TopK: indices {tuple(self.indices.shape)} and log_probs "
                             f"{tuple(self.log_probs.shape)} must have the same shape (..., k)")
        if self.indices.shape[-1] > self.num_classes:
            raise ValueError(f"TopK: k={self.indices.shape[-1]} exceeds num_classes={self.num_classes}")


@dataclass(frozen=True)
class Targets:
    """A teacher's outputs for one batch: raw ``logits``, softened ``probs`` or a ``topk`` summary.

    ``probs`` are a distribution at the distillation temperature; ``logits`` are softened by
    the loss; ``topk`` holds only the k largest probabilities and a tail bucket (a compact
    cache). Exactly one is set.
    """

    logits: Tensor | None = None
    probs: Tensor | None = None
    topk: TopK | None = None
    features: dict[str, Tensor] | None = None  # tapped intermediate tensors, when an objective asks

    def __post_init__(self) -> None:
        if sum(t is not None for t in (self.logits, self.probs, self.topk)) != 1:
            raise ValueError("Targets needs exactly one of logits, probs or topk")

    @property
    def num_classes(self) -> int:
        if self.topk is not None:
            return self.topk.num_classes
        t = self.logits if self.logits is not None else self.probs
        assert t is not None
        return int(t.shape[-1])


@runtime_checkable
class Teacher(Protocol):
    """Anything that maps a batch of inputs to :class:`Targets` for that batch.

    ``index`` holds the batch's positions in the training (transfer) set; a teacher computed
    from the inputs ignores it, a cache of precomputed outputs reads its rows with it.
    """

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets: ...


class FrozenTeacher:
    """A trained model used as a teacher: eval mode, no gradients, no autograd graph.

    The model is put in eval mode (dropout off, batch-norm running statistics) and its
    parameters stop requiring grad. Each call runs under ``torch.inference_mode`` and returns
    a normal (non-inference) copy of the logits so the loss may save them for backward.
    ``features`` (key -> tap spec, see :mod:`distill.taps`) also returns those intermediate
    tensors in ``Targets.features``.
    """

    def __init__(self, model: nn.Module, features: dict[str, str] | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.taps: Taps | None = Taps(self.model, features) if features else None

    def with_features(self, features: dict[str, str]) -> FrozenTeacher:
        """The same model, also returning the tapped ``features``."""
        return FrozenTeacher(self.model, features)

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        if self.model.training:  # someone called .train() on the shared module
            self.model.eval()
        with torch.inference_mode():
            logits = self.model(x)
            features = self.taps.features if self.taps is not None else None
        return Targets(logits=logits.clone(), features=features)

    def __repr__(self) -> str:
        return f"FrozenTeacher({type(self.model).__name__})"


class Ensemble(nn.Module):
    r"""Several models' predictions combined into one distribution (Hinton et al. 2015, sections 1, 4).

    With members' logits ``z_m``, weights ``w_m`` (normalized to sum to 1) and temperature ``T``:

    - ``arithmetic``: q = Σ_m w_m softmax(z_m / T)  (the mean of the probabilities);
    - ``geometric``: q ∝ Π_m softmax(z_m / T)^{w_m}  (the normalized geometric mean, i.e. the
      softmax of the mean log-probability; independent of T up to the usual 1/T scaling).

    ``forward`` returns logits ``ℓ = T · log q`` so that ``softmax(ℓ / T) = q`` exactly: wrap the
    ensemble in :class:`FrozenTeacher` and distil at the same temperature, or build it with
    ``temperature=1`` to evaluate it as a classifier. Members may have different architectures;
    they must predict the same classes.
    """

    weights: Tensor  # a buffer (normalized member weights), registered in __init__

    def __init__(self, members: list[nn.Module] | tuple[nn.Module, ...], combine: str = "arithmetic",
                 weights: list[float] | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("Ensemble needs at least one member model")
        if combine not in ("arithmetic", "geometric"):
            raise ValueError(f"Ensemble combine={combine!r}: choose 'arithmetic' or 'geometric'")
        if temperature <= 0:
            raise ValueError(f"Ensemble temperature must be positive, got {temperature}")
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(members),) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"Ensemble weights must be {len(members)} non-negative numbers, not all zero; "
                             f"got {weights}")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.temperature = float(temperature)
        self.register_buffer("weights", w / w.sum(), persistent=False)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.members[0], "num_classes", -1))

    def forward(self, x: Tensor) -> Tensor:
        T = self.temperature
        outs = [torch.log_softmax(m(x).float() / T, dim=-1) for m in self.members]
        if len({o.shape for o in outs}) != 1:
            raise ValueError(f"Ensemble members disagree on the output shape: {[tuple(o.shape) for o in outs]}; "
                             "every member must predict the same classes")
        log_p = torch.stack(outs)  # (M, B, C)
        w = self.weights.to(log_p.device).view(-1, *([1] * (log_p.dim() - 1)))
        if self.combine == "arithmetic":
            log_q = torch.logsumexp(log_p + torch.log(w), dim=0)
        else:
            log_q = torch.log_softmax((w * log_p).sum(dim=0), dim=-1)
        return T * log_q

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, temperature={self.temperature}, weights={self.weights.tolist()}"
