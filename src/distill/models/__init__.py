"""The model zoo: a registry of classifiers, addressed by name as in timm.

    >>> from distill.models import create_model, list_models
    >>> net = create_model("resnet8x4", num_classes=100, in_shape=(3, 32, 32))
    >>> student = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=(800, 800))

Every model maps a float tensor ``(N, *in_shape)`` to logits ``(N, num_classes)``, has a
final ``nn.Linear`` named ``classifier`` and an attribute ``num_classes``. Models return
only logits; intermediate features are read with forward hooks on named modules
(see each architecture's module docstring for its hook points). No in-place operations
are used, so a hooked activation is never overwritten later in the forward pass. Each model
lists the module paths of its main stages' outputs in ``model.feature_stages`` (ResNet:
``["layer1", "layer2", "layer3"]``): the default layers of the feature-distillation objectives.

A user model needs no registration: ``create_model("package.module:factory", ...)`` imports
``factory`` and calls ``factory(num_classes=..., in_shape=..., **kw)``.
"""

from __future__ import annotations

from .registry import (
    ModelFactory,
    UnknownModelError,
    count_parameters,
    create_model,
    list_models,
    register_model,
)

# Importing the architecture modules registers their models.
from . import cnn, mlp, mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: E402,F401  isort: skip

__all__ = [
    "ModelFactory",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "list_models",
    "register_model",
]
