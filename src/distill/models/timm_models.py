"""timm models as distill models: ``model: {name: timm, id: resnet50.a1_in1k}`` (timm's ``create_model`` names).

The contract of :mod:`distill.models._ecosystem`: ``[0, 1]`` pixels in, logits out, the model's own
preprocessing on the device: timm's evaluation transform for its pretrained config
(``timm.data.resolve_data_config``: ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``,
``mean``, ``std``), i.e. the shorter side resized to ``floor(size / crop_pct)`` and a center crop of
``size`` (``crop_mode: squash``: both sides resized, then the crop). A run with it sets
``data.normalize: false``.

Options: ``id`` (a timm model name, with its pretrained tag if any), ``pretrained`` (default true: timm
downloads or reads its cached weights; false: fresh weights), ``new_head`` (default false: allow data with
another number of classes; timm's ``reset_classifier`` puts a fresh classifier in place).

timm is an optional dependency: ``pip install timm`` (not installable on every machine: its tests skip
with the reason where it is missing). It is imported only when such a model is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from ._ecosystem import Adapted, check_classes, import_optional, on_meta, with_channels
from .preprocessing import Preprocessing, Resample
from .registry import register_model

__all__ = ["preprocessing_from_data_config", "timm_model"]


def preprocessing_from_data_config(cfg: dict[str, Any], where: str = "timm") -> Preprocessing:
    """The :class:`Preprocessing` of timm's ``transforms_imagenet_eval`` for a resolved data config."""
    size = tuple(int(d) for d in cfg["input_size"][-2:])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    crop_mode = cfg.get("crop_mode") or "center"
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"{where}: interpolation {interpolation!r} is not available on the device; distill "
                         f"resizes with nearest, bilinear or bicubic")
    resample: Resample = interpolation  # type: ignore[assignment]
    scale = tuple(math.floor(d / crop_pct) for d in size)
    resize: tuple[int, int] | int
    if crop_mode == "squash":
        resize = (scale[0], scale[1])
    elif crop_mode == "center" and scale[0] == scale[1]:
        resize = scale[0]  # the shorter side, as torchvision's Resize(int)
    else:
        raise ValueError(f"{where}: crop_mode {crop_mode!r} with input size {size} is not supported; distill takes "
                         f"timm's center (square inputs) and squash modes")
    return Preprocessing(resize=resize, crop=(size[0], size[1]), crop_offset="round", resample=resample,
                         mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _stage_paths(net: nn.Module) -> list[str]:
    """The modules timm lists in ``feature_info`` (its feature-extraction points) that ``net`` has."""
    names = dict(net.named_modules())
    info = getattr(net, "feature_info", None) or []
    return [f["module"] for f in info if isinstance(f, dict) and f.get("module") in names]


@register_model("timm")
def timm_model(num_classes: int, in_shape: Sequence[int], id: str, pretrained: bool = True,
               new_head: bool = False) -> Adapted:
    """A timm model with its own preprocessing; see :mod:`distill.models.timm_models`."""
    timm = import_optional("timm", "timm", "timm")
    import_optional("timm.data", "timm", "timm")
    where = f"model timm (id {id})"
    loaded = pretrained and not on_meta()
    net = timm.create_model(id, pretrained=loaded)
    own = int(net.num_classes)
    if pretrained:  # fresh weights take any number of classes
        check_classes(where, "timm", id, own, num_classes, new_head)
    if own != num_classes:
        net.reset_classifier(num_classes)
    cfg = timm.data.resolve_data_config({}, model=net)
    prep = with_channels(preprocessing_from_data_config(cfg, where), in_shape, int(cfg["input_size"][0]), where)
    return Adapted(net, prep, num_classes, pretrained=loaded and own == num_classes, stages=_stage_paths(net))
