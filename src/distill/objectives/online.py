"""Online distillation: students that teach each other while they train.

Deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): a cohort of K students trains
at once; student k minimizes its cross-entropy plus the mean KL divergence from each peer's
prediction to its own,

    L_k = CE(z_k, y) + 1/(K-1) · Σ_{l≠k} T² · KL(p_l^T ‖ p_k^T),

with the peers' predictions held constant in student k's loss. Because the students share no
parameters, one backward pass of Σ_k L_k gives every student exactly the gradient of its own
L_k; one optimizer steps them all.

:class:`PeerMethod` puts any method on logits in place of the KL term: each student learns from each
peer's (detached) predictions with that method's objective, averaged over the peers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import functional as DF
from distill.methods.base import tensor_sum
from distill.objectives.base import Objective, StepOutputs
from distill.teachers import Targets


class Cohort(nn.Module):
    """Several students trained together as one module.

    In training mode ``forward`` returns every member's logits stacked, shape (K, B, C), which
    :class:`MutualLearning` consumes. In eval mode it returns the members' ensemble (log of the
    mean probability), shape (B, C), so the engine can evaluate and select the cohort like any
    classifier; evaluate ``cohort.members[k]`` for one student.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a cohort needs at least two students, got {len(members)}")
        self.members = nn.ModuleList(members)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.members[0], "num_classes", -1))

    def forward(self, x: Tensor) -> Tensor:
        logits = [m(x) for m in self.members]
        if len({z.shape for z in logits}) != 1:
            raise ValueError(f"cohort members disagree on the output shape: {[tuple(z.shape) for z in logits]}")
        stacked = torch.stack(logits)
        if self.training:
            return stacked
        return torch.logsumexp(F.log_softmax(stacked.float(), dim=-1), dim=0) - torch.log(
            torch.tensor(float(len(self.members)), device=stacked.device))


class MutualLearning(Objective):
    """Deep mutual learning (Zhang et al. 2018): terms ``ce`` = Σ_k CE(z_k, y) and
    ``mutual`` = Σ_k mean_{l≠k} T²·KL(p_l^T ‖ p_k^T) (peers detached), weighted 1 and ``kl_weight``.

    Expects the (K, B, C) logits of a training-mode :class:`Cohort`. The paper uses T = 1.
    """

    def __init__(self, temperature: float = 1.0, kl_weight: float = 1.0) -> None:
        super().__init__({"ce": 1.0, "mutual": kl_weight})
        self.temperature = temperature

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        z = out.logits
        if z.dim() != 3:
            raise ValueError(f"MutualLearning expects cohort logits (K, B, C), got shape {tuple(z.shape)}; "
                             "train a Cohort of students")
        k = z.shape[0]
        ce = tensor_sum(F.cross_entropy(z[i].float(), out.labels) for i in range(k))
        mutual = tensor_sum(DF.kd_loss(z[i], z[j].detach(), self.temperature)
                            for i in range(k) for j in range(k) if j != i)
        return {"ce": ce, "mutual": mutual / (k - 1)}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, kl_weight={self.weights['mutual']}"


class PeerMethod(Objective):
    r"""Deep mutual learning with another method's objective in place of the KL term: student k minimizes

        L_k = 1/(K-1) · Σ_{l≠k} L(z_k; z_l),

    where ``L(z_k; z_l)`` is ``method``'s whole objective (its own label term included) with student k's
    logits as the student's and peer l's detached logits as the teacher's. Each of the method's terms is
    summed over the students and averaged over the peers; the total is the method's own weighted sum, so
    ``PeerMethod(KnowledgeDistillation(T, alpha))`` gives student k ``alpha T² mean_l KL(p_l^T ‖ p_k^T)
    + (1 - alpha) CE(z_k, y)``. Expects the (K, B, C) logits of a training-mode :class:`Cohort`.
    """

    def __init__(self, method: Objective) -> None:
        super().__init__()
        self.method = method
        self.weights = method.weights  # the same dict: a method that changes its weights is followed

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        z = out.logits
        if z.dim() != 3:
            raise ValueError(f"PeerMethod expects cohort logits (K, B, C), got shape {tuple(z.shape)}; "
                             "train a Cohort of students")
        k = z.shape[0]
        terms: dict[str, Tensor] = {}
        for i in range(k):
            for j in range(k):
                if j == i:
                    continue
                pair = StepOutputs(logits=z[i], labels=out.labels, index=out.index,
                                   teacher=Targets(logits=z[j].detach()), epoch=out.epoch)
                for name, value in self.method(pair).items():
                    terms[name] = terms[name] + value / (k - 1) if name in terms else value / (k - 1)
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        return self.method.total(terms)

    def trains_predictions(self) -> bool:
        return self.method.trains_predictions()
