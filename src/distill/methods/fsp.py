"""Flow of solution procedure (Yim, Joo, Bae & Kim, CVPR 2017).

Its pure loss(es) and its objective, registered as ``fsp``.

Its initialization stage is a ``distill.stages`` entry with ``options: {ce_weight: 0}``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import make_connector
from distill.methods._features import FeatureObjective, Layers, Shape, feature_stages, pair_last, tokens_hint
from distill.methods._functional import _check_same_batch, _check_tensor, _compute_dtype, _shape
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method
from distill.taps import find_module

__all__ = ["fsp_matrix", "fsp_loss", "FSP"]


def fsp_matrix(f_a: Tensor, f_b: Tensor) -> Tensor:
    r"""The FSP ("flow of solution procedure") matrix of two layers: ``(B, C_a, C_b)``.

    J. Yim, D. Joo, J. Bae, J. Kim (2017), "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR:

    .. math::

        G_{ij} = \frac{1}{HW} \sum_{h,w} a_{i,h,w}\, b_{j,h,w}

    If the spatial sizes differ, the larger map is average-pooled to the smaller
    (``F.adaptive_avg_pool2d``), as RepDistiller does; a map larger in one dim and smaller in the
    other is an error. Nothing is detached here (use :func:`fsp_loss`). Result float32
    (float64 for float64 ``f_a``).
    """
    a = _check_tensor(f_a, "f_a", "a feature map (B, C, H, W)", 4, 4)
    b = _check_tensor(f_b, "f_b", "a feature map (B, C, H, W)", 4, 4)
    _check_same_batch(a, b, "f_a", "f_b")
    dtype = _compute_dtype(a)
    a, b = a.to(dtype), b.to(dtype)
    size_a, size_b = (a.shape[2], a.shape[3]), (b.shape[2], b.shape[3])  # (H, W) of each
    if size_a != size_b:
        if size_a[0] >= size_b[0] and size_a[1] >= size_b[1]:
            a = F.adaptive_avg_pool2d(a, size_b)
        elif size_b[0] >= size_a[0] and size_b[1] >= size_a[1]:
            b = F.adaptive_avg_pool2d(b, size_a)
        else:
            raise ValueError(
                f"fsp_matrix: f_a spatial size {size_a} and f_b spatial size {size_b} cannot be pooled to a "
                f"common size (one is larger in H, the other in W); pool them yourself first"
            )
    return a.flatten(2) @ b.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def _fsp_pair(pair: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (f_a, f_b) of feature maps, got {type(pair).__name__}")
    return pair[0], pair[1]


def fsp_loss(
    pairs_s: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
    pairs_t: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
) -> Tensor:
    r"""FSP loss (Yim et al. 2017): ``sum over pairs of mean((G_s - G_t)^2)``.

    ``G`` is :func:`fsp_matrix` of each pair of layers (e.g. the input and output of a stage).
    Per pair the squared difference is averaged over ``(B, C_a, C_b)``, and the pairs are summed,
    as RepDistiller does (the paper: ``1/N sum_x sum_i lambda_i ||G_i^t - G_i^s||_2^2`` with equal
    ``lambda_i``: the same up to a constant per pair). The teacher's maps are detached. Student
    and teacher layers of a pair must have the same channel counts (FSP has no connector).

    Args:
        pairs_s: sequence of ``(f_a, f_b)`` student feature-map pairs, each ``(B, C, H, W)``.
        pairs_t: the teacher's pairs, same length and channel counts.
    """
    if not isinstance(pairs_s, (list, tuple)) or not isinstance(pairs_t, (list, tuple)):
        raise TypeError(
            f"pairs_s and pairs_t must be lists of (f_a, f_b) pairs, got {type(pairs_s).__name__} "
            f"and {type(pairs_t).__name__}"
        )
    if len(pairs_s) != len(pairs_t) or not pairs_s:
        raise ValueError(
            f"pairs_s and pairs_t must hold the same number (>= 1) of pairs, got {len(pairs_s)} and {len(pairs_t)}"
        )
    total: Tensor | None = None
    for i, (pair_s, pair_t) in enumerate(zip(pairs_s, pairs_t)):
        g_s = fsp_matrix(*_fsp_pair(pair_s, f"pairs_s[{i}]"))
        a_t, b_t = _fsp_pair(pair_t, f"pairs_t[{i}]")
        g_t = fsp_matrix(a_t.detach(), b_t.detach()).to(g_s.dtype)
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"pair {i}: student FSP matrix {_shape(g_s)} and teacher FSP matrix {_shape(g_t)} differ; "
                f"FSP needs the same batch and channel counts (B, C_a, C_b) in student and teacher"
            )
        term = (g_s - g_t).square().mean()
        total = term if total is None else total + term
    assert total is not None
    return total


@register_method("fsp",
                 paper="Yim, Joo, Bae & Kim (2017), A Gift from Knowledge Distillation: Fast Optimization, Network "
                       "Minimization and Transfer Learning, CVPR",
                 defaults="RepDistiller",
                 order=16)
class FSP(FeatureObjective):
    """Flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017).

    ``fsp`` = Σ_i mean (G_s,i − G_t,i)², G_i = the FSP matrix (Σ_hw a_c b_c' / HW) between
    consecutive layers i and i + 1 of the list (the "flow" through the section between them). By
    default the list is the model's stages with, in front, the input of the first stage when that
    stage is a block (so a ResNet gives RepDistiller's (f0, f1), (f1, f2), (f2, f3)); a first stage
    that is a bare activation (VGG's ``relu1``, an MLP's ``hidden.relu1``) would only add its own
    pre-activation and is left out. The last k layers of each list are paired; k >= 2.

    The paper needs equal channel counts; here a student layer whose shape differs from the
    teacher's is mapped by a connector (``"auto"``: a parameter-free resize for equal channels, a
    1x1 conv otherwise, flatten-linear for an MLP); the teacher's layers must be maps.

    The reference is two-stage: (1) ``FSP(ce_weight=0)`` trains the student's layers (and any
    connectors) (RepDistiller: 30 epochs, weight 1); (2) plain CE (or KD). With the defaults
    (``weight`` 1, CE 1) both train jointly in one stage.
    """

    method = "FSP"

    def __init__(self, weight: float = 1.0, *, student_layers: Layers = None, teacher_layers: Layers = None,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"fsp": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        stages = feature_stages(model, role, self.method)
        is_block = len(list(find_module(model, stages[0]).children())) > 0
        return ([f"{stages[0]}:input"] if is_block else []) + stages

    def pair(self, student_layers: list[str], teacher_layers: list[str]) -> list[tuple[str, str]]:
        pairs = pair_last(student_layers, teacher_layers)
        if len(pairs) < 2:
            raise ValueError(f"FSP compares the flow between consecutive layers and needs at least two on each side; "
                             f"got student {student_layers} and teacher {teacher_layers}: pass student_layers / "
                             f"teacher_layers with two or more")
        return pairs

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        for (_, t_layer), t in zip(self.pairs, teacher_shapes):
            if len(t) != 3:
                raise ValueError(f"FSP needs feature maps from the teacher; the teacher's {t_layer!r} gives per-sample "
                                 f"shape {t}, not (C, H, W){tokens_hint(t)}")
        self.connectors = nn.ModuleList(make_connector(s, t) for s, t in zip(student_shapes, teacher_shapes))

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        mapped = [connector(f) for connector, f in zip(self.connectors, student)]
        return {"fsp": fsp_loss(list(zip(mapped[:-1], mapped[1:])), list(zip(teacher[:-1], teacher[1:])))}
