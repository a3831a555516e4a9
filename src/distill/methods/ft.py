"""Factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018), two stages: ``ft_paraphraser`` trains the paraphraser, then ``ft`` the student with it (the
recipe hands the first stage's paraphraser to the second). The pure loss, both objectives, both registered."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.methods._common import _teacher, check_weight
from distill.methods._features import (
    FeatureObjective,
    LayerChoice,
    Layers,
    Shape,
    _grid_shape,
    _probe,
    compared_shapes,
    feature_stages,
    resample,
    token_grid,
    tokens_to_map,
)
from distill.methods._functional import _cast_pair, _check_number, _check_same_batch, _check_tensor, _shape
from distill.methods.base import Objective, StepOutputs
from distill.methods.registry import RunFacts, StagePlan, register_method

__all__ = ["factor_transfer_loss", "Paraphraser", "FactorTransferParaphraser", "FactorTransfer"]


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, p: float = 1.0) -> Tensor:
    r"""Factor transfer (FT): distance between L2-normalized factors.

    J. Kim, S. Park, N. Kwak (2018), "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS. ``factor_t`` is the teacher's paraphraser output, ``factor_s`` the
    student's translator output (both trained modules are the objective's):

    .. math::

        \mathcal{L} = \frac{1}{B D} \sum_{b,d} \Big|\frac{F_s^{(b)}}{\|F_s^{(b)}\|_2}
                      - \frac{F_t^{(b)}}{\|F_t^{(b)}\|_2}\Big|_d^{\,p}

    with ``F`` flattened per sample to ``D`` values; ``p = 1`` as in the paper. This is the
    authors' code (``nn.L1Loss`` on ``F.normalize(x.view(B, -1))``, weight 500 there): the mean
    over elements, not the paper's per-sample norm sum (a constant factor). RepDistiller's
    ``FactorTransfer`` instead compares channel-mean-squared ("attention") maps of the factors;
    this function follows the paper and the authors.

    Args:
        factor_s, factor_t: ``(B, ...)`` factors with the same number of values per sample;
            ``factor_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(factor_s, "factor_s", "(B, ...) factors", 2)
    t = _check_tensor(factor_t, "factor_t", "(B, ...) factors", 2)
    _check_same_batch(s, t, "factor_s", "factor_t")
    if s[0].numel() != t[0].numel():
        raise ValueError(
            f"factor_s shape {_shape(s)} and factor_t shape {_shape(t)} must have the same number of values per "
            f"sample (the translator's output matches the paraphraser's factor)"
        )
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    diff = F.normalize(s.flatten(1), dim=1) - F.normalize(t.flatten(1), dim=1)
    return diff.abs().pow(p).mean()


def _encoder(shape: Shape, channels: Sequence[int], batch_norm: bool) -> nn.Sequential:
    """3x3 convs (maps) or linear layers (vectors) through ``channels``, each with [BN and]
    LeakyReLU(0.1): the paraphraser's and translator's encoders of Kim et al."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        if len(shape) == 3:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1)] + ([nn.BatchNorm2d(c_out)] if batch_norm else [])
        else:
            layers += [nn.Linear(c_in, c_out)] + ([nn.BatchNorm1d(c_out)] if batch_norm else [])
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's paraphraser: an autoencoder of the teacher's feature (C channels) through a factor of
    ``int(C · rate)`` channels; 3x3 convs (transposed convs in the decoder) with LeakyReLU(0.1) and
    no BN, as RepDistiller (linear layers for vectors). ``encode`` gives the factor."""

    def __init__(self, shape: Shape, rate: float = 0.5) -> None:
        super().__init__()
        if len(shape) not in (1, 3):
            raise ValueError(f"the paraphraser takes vectors (D,) or maps (C, H, W), got per-sample shape {shape}")
        c, k = shape[0], max(1, int(shape[0] * rate))
        self.shape = tuple(shape)
        self.factor_shape: Shape = (k, *shape[1:])
        self.encoder = _encoder(shape, [c, c, k, k], batch_norm=False)
        if len(shape) == 3:
            decoder: list[nn.Module] = []
            for c_in, c_out in ((k, k), (k, c), (c, c)):
                decoder += [nn.ConvTranspose2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1)]
            self.decoder = nn.Sequential(*decoder)
        else:
            self.decoder = _encoder(shape, [k, k, c, c], batch_norm=False)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``."""
        return self.decoder(self.encoder(x))


@register_method("ft_paraphraser",
                 paper="Kim, Park & Kwak (2018), Paraphrasing Complex Network: Network Compression via Factor "
                       "Transfer, NeurIPS (stage 1: the paraphraser)",
                 defaults="RepDistiller",
                 order=14)
class FactorTransferParaphraser(Objective):
    """FT's first stage (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018): train the paraphraser to reconstruct the teacher's last-stage
    feature; the student is not used (it gets no gradient; the engine still runs it).

    One term, ``reconstruction`` = mean (P(f_t) − f_t)² (RepDistiller's ``nn.MSELoss``, 30 epochs;
    it uses lr 0.01 for the CIFAR ResNets/WRNs). Owns :attr:`paraphraser`; pass this objective to
    :class:`FactorTransfer` for the second stage. ``teacher_layer``: default the teacher's last
    feature stage; ``rate``: factor channels / teacher channels (0.5).
    """

    needs_teacher = True
    taps_teacher = True

    def __init__(self, *, rate: float = 0.5, teacher_layer: str | None = None, weight: float = 1.0) -> None:
        super().__init__({"reconstruction": check_weight(weight, "weight")})
        self.rate = rate
        self.teacher_layer = teacher_layer
        self.paraphraser: Paraphraser | None = None
        self._grid: tuple[int, int] | None = None

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if teacher is None:
            raise ValueError("FactorTransferParaphraser needs the teacher model itself (a live FrozenTeacher)")
        self.teacher_layer = self.teacher_layer or feature_stages(teacher, "teacher", "FT")[-1]
        self.teacher_features = {"t0": self.teacher_layer}
        (shape,) = _probe(teacher, [self.teacher_layer], probe, "FT", "teacher")
        self._grid = token_grid(teacher, shape, "FT")  # a vision transformer's tokens: read as a map of its patches
        shape = _grid_shape(self._grid, shape)
        if self.paraphraser is None:
            self.paraphraser = Paraphraser(shape, self.rate).to(probe.device)
        elif self.paraphraser.shape != shape:
            raise ValueError(f"FT: this paraphraser was built for teacher features of shape {self.paraphraser.shape}, "
                             f"but {self.teacher_layer!r} gives {shape}")
        self.paraphraser.requires_grad_(True)

    def trains_predictions(self) -> bool:
        """False: it trains the paraphraser only."""
        return False

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        targets = _teacher(out, "FactorTransferParaphraser")
        if self.paraphraser is None or targets.features is None:
            raise RuntimeError("FactorTransferParaphraser: call setup (distill.fit does) before the first step")
        f_t = tokens_to_map(targets.features["t0"].detach(), self._grid)
        return {"reconstruction": F.mse_loss(self.paraphraser(f_t), f_t)}


def _paraphraser_of_earlier_stage(facts: RunFacts) -> dict[str, object]:
    """FT's ``paraphraser``: that of the last ``ft_paraphraser`` stage trained before (None if there is none)."""
    paraphrasers = [o for o in facts.earlier if isinstance(o, FactorTransferParaphraser)]
    return {"paraphraser": paraphrasers[-1] if paraphrasers else None}


def _after_a_paraphraser_stage(plan: StagePlan) -> str | None:
    if "ft_paraphraser" in plan.methods[:plan.position]:
        return None
    return ("ft needs a trained paraphraser; train one in a stage before it: "
            "distill.stages: [{method: ft_paraphraser, trainable: objective}, {method: ft}]")


@register_method("ft",
                 paper="Kim, Park & Kwak (2018), Paraphrasing Complex Network: Network Compression via Factor "
                       "Transfer, NeurIPS (stage 2)",
                 defaults="RepDistiller and AberHu (weight 200, p 1, CE 1)",
                 order=15,
                 automatic={"paraphraser": "the paraphraser of the ft_paraphraser stage before it"},
                 supply=_paraphraser_of_earlier_stage,
                 check_plan=_after_a_paraphraser_stage)
class FactorTransfer(FeatureObjective):
    """Factor transfer (Kim, Park & Kwak, NeurIPS 2018), second stage.

    ``ft`` = mean |T(f_s)/‖T(f_s)‖ − P(f_t)/‖P(f_t)‖|^p, P the paraphraser's (frozen) encoder on the
    teacher's last-stage feature, T the translator (3x3 conv–BN–LeakyReLU x3, as RepDistiller;
    linear layers for vectors) on the student's, compared at the smaller spatial size. ``weight``
    200 (RepDistiller, AberHu), ``p`` 1, CE 1. See :func:`distill.functional.factor_transfer_loss`.

    ``paraphraser``: the trained :class:`FactorTransferParaphraser` objective of the first stage
    (or its :class:`Paraphraser`); its teacher layer is used. The paraphraser is not trained here
    (its parameters stop requiring grad). Owns the translator.
    """

    method = "FT"
    layers: LayerChoice = "last"

    def __init__(self, paraphraser: FactorTransferParaphraser | Paraphraser | None = None, weight: float = 200.0, *,
                 p: float = 1.0, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"ft": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        # The first stage is referenced, not owned (a tuple is not registered as a submodule): its
        # paraphraser is read in setup, after that stage trained it.
        self._first_stage = (paraphraser,) if isinstance(paraphraser, FactorTransferParaphraser) else ()
        self.paraphraser = paraphraser if isinstance(paraphraser, Paraphraser) else None
        self.p = p

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        if self.paraphraser is None:
            raise ValueError("FactorTransfer needs a trained paraphraser: train one first with "
                             "FactorTransferParaphraser (a stage of its own, the student unused), then pass "
                             "FactorTransfer(paraphraser=<that objective>)")
        if len(self.pairs) != 1 or self.paraphraser.shape != teacher_shapes[0]:
            raise ValueError(f"FT: the paraphraser was built for one teacher feature of shape "
                             f"{self.paraphraser.shape}; the teacher layers {[t for _, t in self.pairs]} give "
                             f"{teacher_shapes}")
        s_shape, self.factor_shape = compared_shapes(student_shapes[0], self.paraphraser.factor_shape, self.method)
        self.student_shape = s_shape
        k = self.factor_shape[0]
        self.translator = _encoder(s_shape, [s_shape[0], s_shape[0], k, k], batch_norm=True)

    def setup(self, student: nn.Module, teacher: nn.Module | None, probe: Tensor) -> None:
        if self._first_stage:
            first = self._first_stage[0]
            self.paraphraser = first.paraphraser
            if self.teacher_layers is None and first.teacher_layer is not None:
                self.teacher_layers = [first.teacher_layer]
        super().setup(student, teacher, probe)
        assert self.paraphraser is not None
        self.paraphraser.requires_grad_(False)

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        assert self.paraphraser is not None
        with torch.no_grad():
            factor_t = resample(self.paraphraser.encode(teacher[0]), self.factor_shape)
        factor_s = self.translator(resample(student[0], self.student_shape))
        return {"ft": factor_transfer_loss(factor_s, factor_t, self.p)}
