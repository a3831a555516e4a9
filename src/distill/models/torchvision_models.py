"""torchvision classifiers as distill models: ``model: {name: torchvision, id: resnet18}``.

The contract of :mod:`distill.models._ecosystem`: ``[0, 1]`` pixels in, logits out, the model's own
preprocessing on the device: its weights' ``transforms()`` (``ImageClassification``: the shorter side to
``resize_size``, a center crop of ``crop_size``, ``interpolation``, ``mean``, ``std``). A run with it sets
``data.normalize: false``.

Options: ``id`` (a ``torchvision.models.get_model`` name), ``weights`` (default ``DEFAULT``; a name of the
model's weights enum, e.g. ``IMAGENET1K_V2``), ``pretrained`` (default true: torchvision downloads or reads
its cached weights; false: fresh weights, with the preprocessing of ``weights`` all the same), ``new_head``
(default false: allow data with another number of classes; the last ``nn.Linear`` is replaced by a fresh one).

torchvision is an optional dependency (``pip install torchvision`` matching your torch; not installable on
every machine: its tests skip with the reason where it is missing). It is imported only when such a model
is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ._ecosystem import Adapted, check_classes, import_optional, on_meta, replace_last_linear, with_channels
from .preprocessing import Preprocessing, Resample
from .registry import register_model

__all__ = ["preprocessing_from_transforms", "torchvision_model"]


def preprocessing_from_transforms(preset: Any, where: str = "torchvision") -> Preprocessing:
    """The :class:`Preprocessing` of a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
    try:
        resize_size, crop_size = list(preset.resize_size), list(preset.crop_size)
        mean, std = tuple(preset.mean), tuple(preset.std)
        interpolation = str(getattr(preset.interpolation, "value", preset.interpolation))
    except AttributeError:
        raise ValueError(f"{where}: its weights' transforms ({type(preset).__name__}) are not an image "
                         f"classification preset (resize_size, crop_size, mean, std, interpolation)") from None
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"{where}: interpolation {interpolation!r} is not available on the device")
    resample: Resample = interpolation  # type: ignore[assignment]
    resize = resize_size[0] if len(resize_size) == 1 else (resize_size[0], resize_size[1])
    crop = (crop_size[0], crop_size[-1])
    return Preprocessing(resize=resize, crop=crop, crop_offset="round", resample=resample, mean=mean, std=std)


def _stage_paths(net: nn.Module) -> list[str]:
    """ResNet-style ``layer1..layer4``, else the blocks of ``features`` (VGG, MobileNet, EfficientNet, ConvNeXt)."""
    names = dict(net.named_children())
    if "layer1" in names:
        return [n for n in ("layer1", "layer2", "layer3", "layer4") if n in names]
    features = names.get("features")
    return [f"features.{i}" for i in range(len(features))] if isinstance(features, nn.Sequential) else []


@register_model("torchvision")
def torchvision_model(num_classes: int, in_shape: Sequence[int], id: str, weights: str = "DEFAULT",
                      pretrained: bool = True, new_head: bool = False) -> Adapted:
    """A torchvision classifier with its own preprocessing; see :mod:`distill.models.torchvision_models`."""
    models = import_optional("torchvision.models", "torchvision", "torchvision")
    where = f"model torchvision (id {id})"
    enum = models.get_model_weights(id)
    chosen = enum[weights.rsplit(".", 1)[-1]] if weights != "DEFAULT" else enum.DEFAULT
    loaded = pretrained and not on_meta()
    own = len(chosen.meta["categories"])
    if pretrained:  # fresh weights take any number of classes
        check_classes(where, "torchvision", id, own, num_classes, new_head)
    if loaded:
        net = models.get_model(id, weights=chosen)
        if own != num_classes:
            replace_last_linear(net, num_classes)
    else:
        net = models.get_model(id, weights=None, num_classes=num_classes)
    prep = with_channels(preprocessing_from_transforms(chosen.transforms(), where), in_shape, 3, where)
    return Adapted(net, prep, num_classes, pretrained=loaded and own == num_classes, stages=_stage_paths(net))
