"""A model's own input preprocessing, declared and applied on the device: :class:`Preprocessing`.

Pretrained models of the ecosystem (Hugging Face ``transformers``, timm, torchvision) expect their
inputs prepared their own way: resized to their resolution with their resampling filter, perhaps
center-cropped, and normalized with their mean and std. The data pipeline gives every model the
same batch; a model that declares a :class:`Preprocessing` turns that batch into its own input
inside its ``forward``, batched and on the device, so that teacher and student can each have
their own::

    from distill.models import Preprocessing, with_preprocessing

    prep = Preprocessing(resize=(224, 224), resample="bicubic", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225))
    model = with_preprocessing(my_module, prep)     # model(x) == my_module(prep.apply(x))

**The contract with the data.** A model that declares its preprocessing takes images as the data
pipeline gives them with ``data.normalize: false``: float pixels in ``[0, 1]``, shape ``(N, C, H, W)``.
A run refuses normalized data (``data.normalize: true``, the default) for such a model: the data's
own mean/std would be applied before the model's, and the model would see the wrong values. Any
``nn.Module`` can carry the declaration: :func:`with_preprocessing` wraps it (and applies it), or a
module that prepares its inputs itself sets ``self.preprocessing = Preprocessing(...)`` to say so;
:func:`declared_preprocessing` reads it.

The steps, in the order of Hugging Face's image processors (``resize -> center crop -> rescale ->
normalize``):

1. ``channels``: a one-channel batch is repeated to this many channels (a grey image converted to RGB,
   as ``PIL.Image.convert("RGB")`` does).
2. ``resize``: ``(height, width)``, exactly; or an int, the shorter side, the longer one scaled as
   ``int(size * long / short)`` (as ``transformers``' ``get_resize_output_image_size`` and
   torchvision's ``Resize(int)``). Bilinear and bicubic are Pillow's resampling (its kernels, with
   bicubic's a = -0.5, widened when downsampling: antialiased) computed in float as two small matrix
   products on the device (width first, then height); bicubic values are clipped to ``[0, 1]`` after
   each pass, as Pillow clips them to the 8-bit range; ``nearest`` is Pillow's nearest (source pixel ``floor((i + 0.5) * in / out)``, as Pillow rounds it).
3. ``crop``: a center crop ``(height, width)``; the top-left corner at ``((H - h) // 2, (W - w) // 2)``
   (Hugging Face), or with ``crop_offset="round"`` at ``round((H - h) / 2)`` (torchvision's
   ``CenterCrop``, also timm's; Python's rounding, half to even).
4. ``scale``: the pixels are multiplied by it: 1 for the usual ``1/255`` rescale of 8-bit images
   (the data is in ``[0, 1]`` already), 255 for a model that takes raw 0..255 values.
5. ``mean``/``std``: ``(x - mean) / std`` per channel.

Hugging Face's processors resize 8-bit images, so their output carries 8-bit rounding that this
float pipeline does not: the two agree to within one 8-bit step (``1/255``, divided by ``std``)
when a resize happens, and to float precision when none does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["Preprocess", "Preprocessed", "Preprocessing", "Resample", "declared_preprocessing",
           "with_preprocessing"]

Resample = Literal["nearest", "bilinear", "bicubic"]
_RESAMPLES: tuple[str, ...] = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """What a model does to a batch of ``[0, 1]`` pixels ``(N, C, H, W)`` before its first layer
    (the steps are in the module docstring of :mod:`distill.models.preprocessing`).

    Attributes:
        resize: ``(height, width)``; an int: the shorter side (aspect ratio kept); None: no resize.
        crop: center crop ``(height, width)`` after the resize; None: none.
        crop_offset: ``"floor"`` (Hugging Face) or ``"round"`` (torchvision, timm): how an odd margin is split.
        resample: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        mean, std: per-channel (or one value for all channels) normalization; None: none.
        scale: the ``[0, 1]`` pixels are multiplied by this before normalizing.
        channels: repeat a one-channel batch to this many channels; None: as given.
    """

    resize: tuple[int, int] | int | None = None
    crop: tuple[int, int] | None = None
    crop_offset: Literal["floor", "round"] = "floor"
    resample: Resample = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1.0
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLES:
            raise ValueError(f"Preprocessing.resample must be one of {', '.join(_RESAMPLES)}, got {self.resample!r}")
        if isinstance(self.resize, (list, tuple)):
            object.__setattr__(self, "resize", _pair(self.resize, "resize"))
        elif self.resize is not None and (isinstance(self.resize, bool) or not isinstance(self.resize, int)
                                          or self.resize < 1):
            raise ValueError(f"Preprocessing.resize is (height, width) or the shorter side (an int >= 1), "
                             f"got {self.resize!r}")
        if self.crop is not None:
            object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        if self.crop_offset not in ("floor", "round"):
            raise ValueError(f"Preprocessing.crop_offset must be floor or round, got {self.crop_offset!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Preprocessing: give both mean and std (or neither)")
        if self.mean is not None and self.std is not None:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
            if len(mean) != len(std) or any(s <= 0 for s in std):
                raise ValueError(f"Preprocessing: mean and std need one value per channel (the same count) and "
                                 f"std > 0, got mean {list(mean)}, std {list(std)}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if not self.scale > 0:
            raise ValueError(f"Preprocessing.scale must be > 0, got {self.scale}")
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"Preprocessing.channels must be >= 1, got {self.channels}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` of the model's input for data of ``height x width``."""
        h, w = self._resized(height, width)
        return self.crop if self.crop is not None else (h, w)

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def describe(self) -> str:
        """One line, e.g. ``resize 224x224 (bicubic), normalize mean [0.5, ...] std [...]``."""
        parts = []
        if self.channels is not None:
            parts.append(f"{self.channels} channels")
        if isinstance(self.resize, tuple):
            parts.append(f"resize {self.resize[0]}x{self.resize[1]} ({self.resample})")
        elif self.resize is not None:
            parts.append(f"resize the shorter side to {self.resize} ({self.resample})")
        if self.crop is not None:
            parts.append(f"center crop {self.crop[0]}x{self.crop[1]}")
        if self.scale != 1:
            parts.append(f"scale by {self.scale:g}")
        if self.mean is not None:
            parts.append(f"normalize mean {list(self.mean)} std {list(self.std or ())}")
        return ", ".join(parts) or "nothing"

    def apply(self, x: Tensor) -> Tensor:
        """The model's input for the batch ``x`` of ``[0, 1]`` pixels ``(N, C, H, W)``, computed in float32
        (also under autocast: mixed precision starts at the model's first layer)."""
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._apply(x.float())
        return self._apply(x)

    def _apply(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"a model with its own preprocessing ({self.describe()}) takes images (N, C, H, W) "
                             f"in [0, 1]; got a tensor of shape {tuple(x.shape)}")
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"the model takes {self.channels}-channel images; the data has {x.shape[1]} "
                                 f"channels (only one channel is repeated to {self.channels})")
            x = x.expand(-1, self.channels, -1, -1)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        size = self._resized(height, width)
        if size != (height, width):
            x = _resize(x, size, self.resample)
        if self.crop is not None and self.crop != size:
            ch, cw = self.crop
            if ch > size[0] or cw > size[1]:
                raise ValueError(f"center crop {ch}x{cw} is larger than the resized images {size[0]}x{size[1]}")
            if self.crop_offset == "round":
                top, left = int(round((size[0] - ch) / 2.0)), int(round((size[1] - cw) / 2.0))
            else:
                top, left = (size[0] - ch) // 2, (size[1] - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        if self.scale != 1:
            x = x * self.scale
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x


def _pair(value: object, name: str) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"Preprocessing.{name} is (height, width) with ints >= 1, got {value!r}")
    return (int(items[0]), int(items[1]))


def _resize(x: Tensor, size: tuple[int, int], resample: str) -> Tensor:
    """Pillow's ``Image.resize`` of a float batch: nearest, or bilinear/bicubic as two
    matrix products with Pillow's own resampling weights (:func:`_pil_weights`), bicubic clipped to [0, 1]
    after each."""
    if resample == "nearest":
        rows, cols = (_nearest_index(int(x.shape[d]), n, x.device) for d, n in ((-2, size[0]), (-1, size[1])))
        return x.index_select(-2, rows).index_select(-1, cols)
    rows = _pil_weights(int(x.shape[-2]), size[0], resample, x.dtype, x.device)
    cols = _pil_weights(int(x.shape[-1]), size[1], resample, x.dtype, x.device)
    if resample == "bilinear":
        return rows @ x @ cols.T
    # Pillow resizes the width first, then the height, and clips each pass to the 8-bit range.
    return (rows @ (x @ cols.T).clamp(0.0, 1.0)).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _nearest_index(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Pillow's nearest source pixels: ``(i + 0.5) * in / out`` accumulated in double precision as Pillow's
    affine transform steps along a row (so ties fall as they fall there), then truncated."""
    scale, position, index = size_in / size_out, 0.5 * size_in / size_out, []
    for _ in range(size_out):
        index.append(min(int(position), size_in - 1))
        position += scale
    return torch.tensor(index, device=device)


def _filter(resample: str, t: float) -> float:
    """Pillow's kernels: the triangle (support 1) and Keys' cubic with a = -0.5 (support 2)."""
    t = abs(t)
    if resample == "bilinear":
        return 1.0 - t if t < 1.0 else 0.0
    a = -0.5
    if t < 1.0:
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    if t < 2.0:
        return (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return 0.0


@functools.lru_cache(maxsize=64)
def _pil_weight_rows(size_in: int, size_out: int, resample: str) -> tuple[tuple[float, ...], ...]:
    """The ``(size_out, size_in)`` resampling matrix of Pillow's ``precompute_coeffs`` (Resample.c): output
    pixel i is centred on ``(i + 0.5) * scale`` in the input, the kernel is widened by the scale when
    downsampling (the antialiasing), and each row is normalized to sum 1."""
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support = (1.0 if resample == "bilinear" else 2.0) * filter_scale
    rows = []
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        weights = [_filter(resample, (j - center + 0.5) / filter_scale) for j in range(lo, hi)]
        total = sum(weights)
        row = [0.0] * size_in
        for j, w in zip(range(lo, hi), weights):
            row[j] = w / total if total else 0.0
        rows.append(tuple(row))
    return tuple(rows)


@functools.lru_cache(maxsize=64)
def _pil_weights(size_in: int, size_out: int, resample: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`_pil_weight_rows` as a tensor where the batch is (made once per size, dtype and device)."""
    return torch.tensor(_pil_weight_rows(size_in, size_out, resample), dtype=dtype, device=device)


class Preprocess(nn.Module):
    """:meth:`Preprocessing.apply` as a module (no parameters, nothing in the state dict)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.preprocessing = preprocessing

    def forward(self, x: Tensor) -> Tensor:
        return self.preprocessing.apply(x)

    def extra_repr(self) -> str:
        return self.preprocessing.describe()


class Preprocessed(nn.Module):
    """``model`` behind its :class:`Preprocessing`: ``forward(x) = model(preprocess(x))``.

    The state dict is the model's under ``model.`` (the preprocessing has none); module paths for
    feature taps are the model's with the prefix ``model.`` (``feature_stages`` and ``num_classes``
    are carried over, prefixed)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.preprocess = Preprocess(preprocessing)
        self.model = model
        self.preprocessing = preprocessing
        if hasattr(model, "num_classes"):
            self.num_classes = model.num_classes
        stages = getattr(model, "feature_stages", None)
        if stages:
            self.feature_stages = [f"model.{s}" for s in stages]

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))


def with_preprocessing(model: nn.Module, preprocessing: Preprocessing) -> Preprocessed:
    """``model`` taking ``[0, 1]`` pixels, prepared by ``preprocessing`` on the device (see :class:`Preprocessed`)."""
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"with_preprocessing needs a distill.models.Preprocessing, got {type(preprocessing).__name__}")
    return Preprocessed(model, preprocessing)


def declared_preprocessing(model: nn.Module) -> Preprocessing | None:
    """The :class:`Preprocessing` that ``model`` declares (its ``preprocessing`` attribute), or None.

    A model that declares one takes ``[0, 1]`` pixels (``data.normalize: false``)."""
    prep = getattr(model, "preprocessing", None)
    return prep if isinstance(prep, Preprocessing) else None
