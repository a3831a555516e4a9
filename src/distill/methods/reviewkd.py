"""Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

Its pure loss(es) and its objective, registered as ``reviewkd``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.methods._common import warmup_factor
from distill.methods._features import (
    PENULTIMATE,
    FeatureObjective,
    Layers,
    Shape,
    _as_map,
    feature_stages,
    preactivation_taps,
)
from distill.methods._functional import _cast_pair, _check_equal_shapes, _check_tensor
from distill.methods.base import StepOutputs
from distill.methods.registry import register_method

__all__ = ["hcl_loss", "ReviewKD"]


def hcl_loss(
    features_s: Tensor | list[Tensor] | tuple[Tensor, ...],
    features_t: Tensor | list[Tensor] | tuple[Tensor, ...],
    levels: tuple[int, ...] = (4, 2, 1),
) -> Tensor:
    r"""ReviewKD's hierarchical context loss (HCL), summed over pairs of feature maps.

    P. Chen, S. Liu, H. Zhao, J. Jia (2021), "Distilling Knowledge via Knowledge Review", CVPR.
    For one pair, the MSE at full resolution and after average-pooling both maps to each
    ``l x l`` of ``levels``, with weights halving at each level, normalized by their sum:

    .. math::

        \mathcal{L} = \frac{\mathrm{MSE}(s, t) + \sum_k 2^{-k}\,\mathrm{MSE}(\mathrm{pool}_{l_k}(s),
                      \mathrm{pool}_{l_k}(t))}{1 + \sum_k 2^{-k}}

    where levels with ``l >= min(H, W)`` are skipped and ``k`` counts only the levels kept (for
    square maps this is the reference rule ``l >= h``; a ``1 x 1`` map gives the plain MSE).
    MSE is the mean over elements; pairs are summed, as in the reference (ReviewKD's code and
    mdistiller, weight 1 with a 20-epoch warm-up done by the objective). The student maps are the
    outputs of ReviewKD's fusion modules (the objective's).

    Args:
        features_s, features_t: a ``(B, C, H, W)`` map or a sequence of them, pairwise the same
            shape; the teacher's are detached.
        levels: pooled sizes, positive ints, in the order their weights halve.
    """
    list_s = [features_s] if isinstance(features_s, Tensor) else features_s
    list_t = [features_t] if isinstance(features_t, Tensor) else features_t
    if not isinstance(list_s, (list, tuple)) or not isinstance(list_t, (list, tuple)):
        raise TypeError("features_s and features_t must be (B, C, H, W) tensors or lists of them")
    if len(list_s) != len(list_t) or not list_s:
        raise ValueError(
            f"features_s and features_t must hold the same number (>= 1) of maps, got {len(list_s)} and {len(list_t)}"
        )
    if any(isinstance(level, bool) or not isinstance(level, int) or level < 1 for level in levels):
        raise ValueError(f"levels must be positive ints (pooled sizes), got {levels!r}")
    total: Tensor | None = None
    for i, (f_s, f_t) in enumerate(zip(list_s, list_t)):
        s = _check_tensor(f_s, f"features_s[{i}]", "a feature map (B, C, H, W)", 4, 4)
        t = _check_tensor(f_t, f"features_t[{i}]", "a feature map (B, C, H, W)", 4, 4)
        _check_equal_shapes(s, t, f"features_s[{i}]", f"features_t[{i}]")
        s, t = _cast_pair(s, t)
        loss, weight, weight_sum = F.mse_loss(s, t), 1.0, 1.0
        for level in levels:
            if level >= min(s.shape[2], s.shape[3]):
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            weight_sum += weight
        term = loss / weight_sum
        total = term if total is None else total + term
    assert total is not None
    return total


class _AttentionFusion(nn.Module):
    """ReviewKD's ABF: 1x1 conv–BN on the student's feature, fused with the deeper level's output by
    two spatial attention maps, then 3x3 conv–BN to the teacher's channels (mdistiller's ``ABF``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        reduce = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.conv1 = nn.Sequential(reduce, nn.BatchNorm2d(mid_channels))
        expand = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Sequential(expand, nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(reduce.weight, a=1)  # after every module is built, as mdistiller
        nn.init.kaiming_uniform_(expand.weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            assert deeper is not None
            deeper = F.interpolate(deeper, size=tuple(x.shape[2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if tuple(x.shape[2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@register_method("reviewkd",
                 paper="Chen, Liu, Zhao & Jia (2021), Distilling Knowledge via Knowledge Review, CVPR",
                 defaults="mdistiller's CIFAR-100 config",
                 order=19)
class ReviewKD(FeatureObjective):
    """Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

    The student's stage features and penultimate embedding (as a 1x1 map) are fused from the
    deepest level to the shallowest by attention-based fusion modules (owned, one per level,
    1x1 → ``min(max_mid_channels, deepest student channels)`` → 3x3 to the teacher's channels);
    level i's output is compared with the teacher's level i by the hierarchical context loss:
    ``reviewkd`` = w · Σ_levels HCL, w = min(epoch / ``warmup_epochs``, 1) (included in the logged
    term). Teacher stages are tapped at their pre-activations (:func:`preactivation_taps`), as
    mdistiller. Vectors are 1x1 maps, so any pair works. ``weight`` 1, warm-up 20, CE 1 as
    mdistiller's CIFAR-100 config. See :func:`distill.functional.hcl_loss`.
    """

    method = "ReviewKD"

    def __init__(self, weight: float = 1.0, *, warmup_epochs: float = 20.0, max_mid_channels: int = 512,
                 student_layers: Layers = None, teacher_layers: Layers = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__({"reviewkd": weight}, student_layers=student_layers, teacher_layers=teacher_layers,
                         ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
        self.warmup_epochs, self.max_mid_channels = warmup_epochs, max_mid_channels

    def default_layers(self, model: nn.Module, role: str, probe: Tensor) -> list[str]:
        stages = feature_stages(model, role, self.method)
        if role == "teacher":
            stages = preactivation_taps(model, stages, probe)
        return [*stages, getattr(model, "embedding_layer", None) or PENULTIMATE]

    def build(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        for (s_layer, t_layer), s, t in zip(self.pairs, student_shapes, teacher_shapes):
            if len(s) not in (1, 3) or len(t) not in (1, 3):
                raise ValueError(f"ReviewKD fuses vectors (D,) and maps (C, H, W); {s_layer!r} gives {s} and "
                                 f"{t_layer!r} gives {t}")
        self.out_sizes = [tuple(t[1:]) if len(t) == 3 else (1, 1) for t in teacher_shapes]
        mid = min(self.max_mid_channels, student_shapes[-1][0])
        n = len(student_shapes)
        self.fusions = nn.ModuleList(_AttentionFusion(s[0], mid, t[0], fuse=i < n - 1)
                                     for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes)))

    def fuse(self, student: list[Tensor]) -> list[Tensor]:
        """The fusion modules' outputs, level by level (shallow to deep), from the student's features."""
        results: list[Tensor] = []
        deeper = None
        for i in reversed(range(len(student))):
            out, deeper = self.fusions[i](_as_map(student[i]), deeper, self.out_sizes[i])
            results.insert(0, out)
        return results

    def method_terms(self, student: list[Tensor], teacher: list[Tensor], out: StepOutputs) -> dict[str, Tensor]:
        hcl = hcl_loss(self.fuse(student), [_as_map(t) for t in teacher])
        return {"reviewkd": warmup_factor(out.epoch, self.warmup_epochs) * hcl}
