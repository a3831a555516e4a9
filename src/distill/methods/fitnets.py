"""FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

Its pure loss(es) and its objective, registered as ``fitnets``.

Its hint stage is a ``distill.stages`` entry ``{method: fitnets, options: {hint_only: true}, trainable: [...]}``."""

from __future__ import annotations

from torch import Tensor, nn

from distill.connectors import make_connector
from distill.methods._features import FeatureObjective, LayerChoice, Layers, Shape, _sum, compared_shapes, resample
from distill.methods._functional import _mse
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["fitnet_loss", "FitNets"]


def fitnet_loss(f_s_mapped: Tensor, f_t: Tensor) -> Tensor:
    r"""FitNets hint loss: ``mean((f_s_mapped - f_t)^2)``, the mean over all elements.

    A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio (2015), "FitNets: Hints
    for Thin Deep Nets", ICLR. The paper writes ``1/2 ||u_h - r(v_g)||^2`` (a sum over the
    elements of each sample); this is the normalization of the reference implementations
    (RepDistiller's ``HintLoss`` = ``nn.MSELoss()``, mdistiller's ``F.mse_loss``): the mean over
    all elements, without the 1/2, so that their published weight (100 on CIFAR-100) carries
    over unchanged and the loss does not grow with the size of the hint layer. It is
    ``2 / (numel / B)`` times the paper's per-sample value averaged over the batch.

    Args:
        f_s_mapped: the student's guided-layer features after the objective's regressor.
        f_t: the teacher's hint-layer features, same shape (detached).
    """
    return _mse(f_s_mapped, f_t, "f_s_mapped", "f_t", " (map the student's features with a regressor first)")


@register_method("fitnets",
                 paper="Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), FitNets: Hints for Thin Deep Nets, "
                       "ICLR",
                 defaults="RepDistiller / mdistiller (weight 100, CE 1)",
                 order=6)
class FitNets(FeatureObjective):
    """FitNets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``hint`` = Σ_pairs mean((r(f_s) − f_t)²), r a learned regressor (connector) from the student's
    guided layer to the teacher's hint layer; ``weight`` 100 and CE 1 as RepDistiller/mdistiller
    (which train hint and CE jointly). Default layers: the middle stage of each model
    (RepDistiller's ``hint_layer=2``). ``connector``: a kind from :mod:`distill.connectors`; by
    default a 3x3 conv + BN for maps (RepDistiller's ``ConvReg`` without its final ReLU) and a
    linear layer for vectors: always a learned regressor, even between equal shapes, as the paper.

    The paper's two stages: (1) ``FitNets(hint_only=True)`` (``ce`` and ``kd`` weights 0, ``weight``
    1 unless given: alone, the hint's weight only rescales the learning rate) trains the student up
    to its guided layer and the regressor (later layers get no gradient); (2) KD of the whole
    student (:class:`~distill.objectives.KnowledgeDistillation`); the regressor is dropped. In a
    hint-only stage the student's classifier is untrained: select its checkpoint by the last
    epoch, not by validation accuracy.
    """

    method = "FitNets"
    layers: LayerChoice = "middle"

    def __init__(self, weight: float | None = None, *, hint_only: bool = False, connector: str | None = None,
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        if hint_only:
            ce_weight = kd_weight = 0.0
        if weight is None:
            weight = 1.0 if hint_only else 100.0
        super().__init__({"hint": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.connector_kind = connector
        self.hint_only = hint_only

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        self.shapes = [compared_shapes(s, t, self.method) for s, t in zip(student_shapes, teacher_shapes)]
        kinds = [self.connector_kind or ("conv3x3_bn" if len(s) == 3 else "linear") for s, _ in self.shapes]
        self.connectors = nn.ModuleList(make_connector(s, t, kind) for (s, t), kind in zip(self.shapes, kinds))

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        losses = [fitnet_loss(connector(resample(f_s, s)), resample(f_t, t))
                  for connector, (s, t), f_s, f_t in zip(self.connectors, self.shapes, student, teacher)]
        return {"hint": _sum(losses)}
