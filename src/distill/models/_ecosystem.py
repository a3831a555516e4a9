"""What the adapters to other libraries' models share (:mod:`.hf`, :mod:`.timm_models`, :mod:`.torchvision_models`).

The contract: a registered factory ``f(num_classes, in_shape, id, pretrained=True, new_head=False, ...)`` returns
an :class:`Adapted` module that takes ``[0, 1]`` pixels ``(N, C, H, W)``, prepares them as the model's own
library does (its :class:`~distill.models.preprocessing.Preprocessing`, applied on the device) and returns
logits ``(N, num_classes)`` as a tensor. Its module paths are the library model's under ``net.``;
``feature_stages`` lists its main stages; ``pretrained`` says whether it was loaded with its weights and its
own classifier (a teacher is then used as it is). The library is imported only when such a model is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor, nn

from .preprocessing import Preprocess, Preprocessing


def import_optional(module: str, model: str, extra: str) -> ModuleType:
    """``importlib.import_module(module)``, or an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"model {model} needs the {module.split('.')[0]} package ({e}); install it: "
                          f'pip install -c constraints.txt -e ".[{extra}]"') from None


def on_meta() -> bool:
    """Whether tensors are created on the meta device now (a run checks its models there, without weights)."""
    return torch.empty(0).device.type == "meta"


def check_classes(where: str, name: str, model_id: str, own: int, num_classes: int, new_head: bool) -> None:
    """A model whose classifier predicts ``own`` classes for data with ``num_classes``: fine with ``new_head``."""
    if own != num_classes and not new_head:
        raise ValueError(f"{where} predicts {own} classes but the data has {num_classes}; a teacher must be "
                         f"trained on the data's classes; for a student, set new_head: true (model: {{name: {name}, "
                         f"id: {model_id}, new_head: true}}) to replace its classifier with a fresh one for "
                         f"{num_classes} classes")


def with_channels(prep: Preprocessing, in_shape: Sequence[int], channels: int, where: str) -> Preprocessing:
    """``prep`` for data of ``in_shape`` and a model of ``channels`` input channels: a grey image is repeated
    to RGB (as ``PIL.Image.convert("RGB")``); any other difference is an error."""
    if len(in_shape) != 3:
        raise ValueError(f"{where} takes images (channels, height, width); the data's examples have shape "
                         f"{tuple(in_shape)}")
    if in_shape[0] == channels:
        return prep
    if in_shape[0] != 1:
        raise ValueError(f"{where} takes {channels}-channel images; the data has {in_shape[0]} channels")
    return dataclasses.replace(prep, channels=channels)


def replace_last_linear(net: nn.Module, num_classes: int) -> nn.Linear:
    """Put a fresh ``nn.Linear(in_features, num_classes)`` in place of ``net``'s last ``nn.Linear`` (its
    classifier: ``fc`` of a ResNet, ``heads.head`` of a ViT, ``classifier.2`` of a ConvNeXt) and return it."""
    path = next((name for name, m in reversed(list(net.named_modules())) if isinstance(m, nn.Linear)), None)
    if path is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier to replace for {num_classes} classes")
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old = getattr(parent, attr)
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(parent, attr, head)
    return head


class Adapted(nn.Module):
    """A library's classifier ``net`` behind its own preprocessing: ``forward(x) = net(preprocess(x))``."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, num_classes: int, pretrained: bool,
                 stages: Sequence[str] = ()) -> None:
        super().__init__()
        self.preprocess = Preprocess(preprocessing)
        self.net = net
        self.preprocessing = preprocessing
        self.num_classes = num_classes
        self.pretrained = pretrained  # loaded with its weights and its own classifier: a teacher is used as it is
        self.feature_stages = [f"net.{p}" for p in stages]
        head = next((name for name, m in reversed(list(net.named_modules())) if isinstance(m, nn.Linear)), None)
        #: the penultimate embedding (the classifier's input): the default layer of the relation methods
        self.embedding_layer = f"net.{head}:input" if head is not None else None

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(self.preprocess(x))
        return logits
