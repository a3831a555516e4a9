"""Online distillation: students that teach each other while they train.

Deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): a cohort of K students trains
at once; student k minimizes its cross-entropy plus the mean KL divergence from each peer's
prediction to its own,

    L_k = CE(z_k, y) + 1/(K-1) · Σ_{l≠k} T² · KL(p_l^T ‖ p_k^T),

with the peers' predictions held constant in student k's loss. Because the students share no
parameters, one backward pass of Σ_k L_k gives every student exactly the gradient of its own
L_k; one optimizer steps them all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import functional as DF
from distill.methods.base import tensor_sum
from distill.objectives.base import Objective, StepOutputs


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
