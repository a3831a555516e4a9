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

Models of the ecosystem: ``create_model("hf", ..., id="microsoft/resnet-50")`` (Hugging Face
``transformers``, :mod:`distill.models.hf`), ``"timm"`` and ``"torchvision"`` (when installed). They
prepare their inputs themselves (:class:`Preprocessing`: resize, crop, mean/std from the model's own
config) and take ``[0, 1]`` pixels (``data.normalize: false``).

A user model needs no registration: ``create_model("package.module:factory", ...)`` imports
``factory`` and calls ``factory(num_classes=..., in_shape=..., **kw)``.
"""

from __future__ import annotations

from .preprocessing import Preprocess, Preprocessed, Preprocessing, declared_preprocessing, with_preprocessing
from .registry import (
    ModelFactory,
    UnknownModelError,
    count_parameters,
    create_model,
    list_models,
    register_model,
    weights_source,
)

# Importing the architecture modules registers their models.
from . import cnn, conv1d, mlp, mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: E402,F401  isort: skip
from . import hf, timm_models, torchvision_models  # noqa: E402,F401  isort: skip  (adapters; their libraries load lazily)

ECOSYSTEM_MODELS = ("hf", "timm", "torchvision")
"""The registered adapters to other libraries' models: they need an ``id`` (the model to load) and take
``[0, 1]`` pixels; the rest of :func:`list_models` is the zoo."""

SIGNAL_MODELS = ("fcn1d", "resnet1d")
"""The zoo's 1-D models (:mod:`distill.models.conv1d`): signals ``(C, L)`` or one-row ``(C, 1, L)``, not images."""

__all__ = [
    "ECOSYSTEM_MODELS",
    "SIGNAL_MODELS",
    "ModelFactory",
    "Preprocess",
    "Preprocessed",
    "Preprocessing",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "declared_preprocessing",
    "list_models",
    "register_model",
    "weights_source",
    "with_preprocessing",
]
