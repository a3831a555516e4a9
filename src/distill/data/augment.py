"""Augmentations applied to a whole batch at once, on the batch's device.

Each function draws per-sample parameters from an explicit ``torch.Generator`` (or the global
RNG when none is given) and never loops over samples in Python. Parameters are drawn where the
generator lives (the batch's device when none is given) and then moved to the batch's device,
so a seeded generator gives the same augmentation on every device.

Crops are described by **boxes**, so that teacher and student can see one crop at different
resolutions (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent": "consistent" teaching gives both the same view). A batch of boxes is a tensor
``(N, 4)`` of ``(x0, y0, x1, y1)`` in fractions of the image's width and height, measured from
its top-left corner, with pixel *edges* as the reference: ``x = 0`` is the left edge of the first
column, ``x = 1`` the right edge of the last. The full image is ``(0, 0, 1, 1)`` at every
resolution; a box may reach past ``[0, 1]`` (padded crops). Flips are a boolean ``(N,)`` tensor.

    boxes = inception_boxes(n, (h, w), generator=g)     # or pad_crop_boxes, center_boxes
    flips = flip_flags(n, generator=g)
    teacher_view = crop_resize(x, boxes, 224, flips)
    student_view = crop_resize(x, boxes, 160, flips)    # the same crop, at another resolution

Resampling (:func:`crop_resize`) is separable linear interpolation written as two batched
matrix products, ``out = W_y @ x @ W_x^T``, with one ``(out, in)`` weight matrix per sample and
axis, sampling at pixel centres (the ``align_corners=False`` convention). Compared with
``F.grid_sample`` it costs more arithmetic, ``C (H W w + H h w)`` multiply-adds per image for an
``h x w`` output (0.2 M for 3x32x32; measured at 3-6% of a small CNN's training step, see
``benchmarks/augment_speed.py``), but it is exact where exactness can be had and it antialiases:

- an integer box is a slice: ``crop_resize(x, box, size)`` equals
  ``F.interpolate(x[..., y0:y1, x0:x1], size, mode="bilinear", antialias=True)`` (the PIL /
  torchvision ``resized_crop`` convention), so the full box at the input's size returns the
  input exactly and a box at its own pixel size is exactly the slice;
- when shrinking by a factor ``s > 1`` the triangle filter is widened to ``s`` input pixels
  (antialiasing, as PIL and ``antialias=True`` do), so an inception crop of a large image
  resized to a small one does not alias;
- outside the image (boxes past ``[0, 1]``) the output is 0 (``padding_mode="zeros"``, the
  CIFAR convention of padding with zeros: the dataset mean for normalized data) or the nearest
  edge pixel (``"replicate"``, which keeps a background a background, as :func:`random_shift`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Mix",
    "center_boxes",
    "center_crop",
    "crop_resize",
    "cutmix",
    "cutmix_images",
    "flip_flags",
    "inception_boxes",
    "inception_crop",
    "mixup",
    "mixup_images",
    "pad_crop_boxes",
    "pad_crop_segments",
    "random_crop",
    "random_flip",
    "random_shift",
    "resize",
    "segment_boxes",
]

PaddingMode = Literal["zeros", "replicate"]
Size = int | tuple[int, int]

# Box edges this close to a whole pixel are snapped to it: k / W is not exact in floating point,
# and without snapping an integer crop would blend in 1e-7 of its neighbours instead of copying.
_SNAP_PIXELS = 1e-3


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own integer offset in [-s, s] per axis.

    The border is extended by replication, so a background stays background. This is the
    "jitter the input by up to two pixels" regularizer of Hinton et al. (2015), section 3.
    ``max_shift=0`` returns ``x`` unchanged.
    """
    if max_shift == 0:
        return x
    if x.dim() != 4:
        raise ValueError(f"random_shift expects images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    # drawn where the generator lives (the batch's device when none is given), then moved if needed
    draw_on = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=draw_on).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=draw_on).to(x.device)
    # two gathers (rows, then columns) cost about half of one 4-d advanced index (benchmarks/throughput.md)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    shifted_rows = padded.gather(2, rows.expand(n, c, h, w + 2 * s))
    return shifted_rows.gather(3, cols.expand(n, c, h, w))


# ----------------------------------------------------------------------------------------------
# Boxes and flips: sampled here, applied by crop_resize


def inception_boxes(
    n: int,
    image_size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random "inception" crop boxes (Szegedy et al. 2015, "Going deeper with convolutions").

    For each sample, up to 10 candidates are drawn (all at once): an area fraction
    ``a ~ U(scale)`` of the image and an aspect ratio (width / height, in pixels)
    ``r = exp(U(log ratio))``; for an ``H x W`` image the box is then ``sqrt(a r H / W)`` of the
    width and ``sqrt(a W / (r H))`` of the height, so its pixel area is ``a H W`` and its pixel
    aspect ``r``. The first candidate that fits in the image is placed uniformly at random in it.
    If none fits (rare unless the image's aspect is far outside ``ratio``), the box is the largest
    centred one with the image's aspect clipped to ``ratio`` (the whole image when its aspect is
    in ``ratio``), as in torchvision's ``RandomResizedCrop``. Boxes are continuous (not rounded
    to whole pixels); the sampled aspects favour the image's orientation when it is not square,
    since boxes that do not fit are rejected (as in torchvision).

    ``image_size`` is ``(H, W)``. Parameters are drawn in float64 on the generator's device (else
    on ``device``, default the CPU); the boxes are returned as float32 on ``device`` (default:
    where they were drawn).
    """
    height, width = _pair(image_size, "image_size")
    _check_count(n)
    lo_scale, hi_scale = _range(scale, "scale", upper=1.0)
    lo_ratio, hi_ratio = _range(ratio, "ratio")
    draw_on = _draw_device(generator, device)
    attempts = 10
    area = _uniform(lo_scale, hi_scale, (n, attempts), generator, draw_on)
    aspect = _uniform(math.log(lo_ratio), math.log(hi_ratio), (n, attempts), generator, draw_on).exp()
    box_w = (area * aspect * height / width).sqrt()
    box_h = (area / aspect * width / height).sqrt()
    fits = (box_w <= 1) & (box_h <= 1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    box_w, box_h = box_w.gather(1, first).squeeze(1), box_h.gather(1, first).squeeze(1)
    u = torch.rand(2, n, dtype=torch.float64, generator=generator, device=draw_on)

    image_aspect = width / height
    fallback_aspect = min(max(image_aspect, lo_ratio), hi_ratio)
    fallback_w, fallback_h = min(1.0, fallback_aspect / image_aspect), min(1.0, image_aspect / fallback_aspect)
    found = fits.any(dim=1)
    box_w = torch.where(found, box_w, fallback_w)
    box_h = torch.where(found, box_h, fallback_h)
    x0 = torch.where(found, u[0] * (1 - box_w), (1 - box_w) / 2)
    y0 = torch.where(found, u[1] * (1 - box_h), (1 - box_h) / 2)
    boxes = torch.stack([x0, y0, (x0 + box_w).clamp(max=1), (y0 + box_h).clamp(max=1)], dim=1)
    return boxes.to(device=device or draw_on, dtype=torch.float32)


def pad_crop_boxes(
    n: int,
    image_size: tuple[int, int],
    padding: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boxes of the "pad by ``padding`` pixels, crop back to the original size" augmentation.

    Each box is the whole image shifted by integer offsets ``dy, dx`` drawn uniformly from
    ``[-padding, padding]`` (dy first, then dx: the same draws as :func:`random_shift`), i.e. the
    mild random crop used for CIFAR since He et al. (2016). Parts past the image are filled by
    :func:`crop_resize`'s ``padding_mode``. ``image_size`` is ``(H, W)``.
    """
    height, width = _pair(image_size, "image_size")
    _check_count(n)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
    draw_on = _draw_device(generator, device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on) - padding
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on) - padding
    x0, y0 = dx.double() / width, dy.double() / height
    boxes = torch.stack([x0, y0, x0 + 1, y0 + 1], dim=1)
    return boxes.to(device=device or draw_on, dtype=torch.float32)


def segment_boxes(
    n: int,
    scale: tuple[float, float] = (0.08, 1.0),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random segments of 1-D signals stored as one row, ``(N, C, 1, L)``: the 1-D analogue of
    :func:`inception_boxes`. Each box keeps the whole row and a fraction ``a ~ U(scale)`` of the
    length, placed uniformly at random: ``(x0, 0, x0 + a, 1)`` with ``x0 = u (1 - a)``. (An inception
    box cannot fit in a row: its aspect ratio range would leave a sliver a pixel or two wide.)
    """
    _check_count(n)
    lo_scale, hi_scale = _range(scale, "scale", upper=1.0)
    draw_on = _draw_device(generator, device)
    length = _uniform(lo_scale, hi_scale, (n,), generator, draw_on)
    x0 = torch.rand(n, dtype=torch.float64, generator=generator, device=draw_on) * (1 - length)
    zeros, ones = torch.zeros_like(x0), torch.ones_like(x0)
    boxes = torch.stack([x0, zeros, (x0 + length).clamp(max=1), ones], dim=1)
    return boxes.to(device=device or draw_on, dtype=torch.float32)


def pad_crop_segments(
    n: int,
    length: int,
    padding: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boxes of the mild random crop along 1-D signals stored as one row, ``(N, C, 1, length)``: the
    whole signal shifted by an integer ``d`` drawn uniformly from ``[-padding, padding]`` samples,
    the row kept whole (:func:`pad_crop_boxes` would also shift the single row off the image)."""
    _check_count(n)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a whole number of samples >= 0, got {padding!r}")
    draw_on = _draw_device(generator, device)
    d = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on) - padding
    x0 = d.double() / length
    boxes = torch.stack([x0, torch.zeros_like(x0), x0 + 1, torch.ones_like(x0)], dim=1)
    return boxes.to(device=device or draw_on, dtype=torch.float32)


def center_boxes(
    n: int,
    image_size: tuple[int, int],
    crop_fraction: float = 0.875,
    aspect_ratio: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` copies of the central box: the largest centred box of pixel aspect ``aspect_ratio``
    (width / height) that fits in the image, shrunk to ``crop_fraction`` of its side.

    With a square output this is the usual evaluation crop: "resize the shorter side to
    ``size / crop_fraction``, take the central ``size x size``" (224 / 256 = 0.875 for ImageNet;
    big_vision's ``resize_small(256)|central_crop(224)`` used by Beyer et al. 2022).
    ``crop_fraction=1`` keeps the whole image when the aspects match.
    """
    height, width = _pair(image_size, "image_size")
    _check_count(n)
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be > 0, got {aspect_ratio!r}")
    image_aspect = width / height
    box_w = crop_fraction * min(1.0, aspect_ratio / image_aspect)
    box_h = crop_fraction * min(1.0, image_aspect / aspect_ratio)
    box = torch.tensor([(1 - box_w) / 2, (1 - box_h) / 2, (1 + box_w) / 2, (1 + box_h) / 2], dtype=torch.float64)
    return box.to(device=device, dtype=torch.float32).expand(n, 4).clone()


def flip_flags(
    n: int, p: float = 0.5, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Boolean ``(n,)``: which samples to mirror left-right, each with probability ``p``."""
    _check_count(n)
    _check_probability(p)
    draw_on = _draw_device(generator, device)
    return (torch.rand(n, generator=generator, device=draw_on) < p).to(device or draw_on)


def crop_resize(
    x: Tensor,
    boxes: Tensor,
    size: Size,
    flip: Tensor | None = None,
    *,
    antialias: bool = True,
    padding_mode: PaddingMode = "zeros",
) -> Tensor:
    """Crop each image of ``x`` (N, C, H, W) to its box, mirror it where ``flip``, resize to ``size``.

    ``boxes``: ``(N, 4)`` of ``(x0, y0, x1, y1)`` in fractions of the width and height, pixel
    edges as reference (see the module docstring), with ``x0 < x1`` and ``y0 < y1`` (not checked:
    that would cost a device sync). ``size``: ``(height, width)`` of the output, or an int for a
    square. ``flip``: optional boolean ``(N,)``. Returns ``(N, C, *size)`` in ``x``'s dtype
    (computed in float32 for half-precision inputs), channels_last if ``x`` was.

    Along each axis, for a box ``[a, b]`` in input pixels and ``m`` output pixels of width
    ``s = (b - a) / m`` input pixels, output pixel ``i`` is the weighted mean
    ``sum_j w_ij x_j / sum_j w_ij`` with the triangle (linear-interpolation) filter
    ``w_ij = max(0, 1 - |(j + 1/2) - c_i| / r)`` centred on ``c_i = a + (i + 1/2) s`` with
    half-width ``r = max(s, 1)`` (``r = 1`` if not ``antialias``), over the input pixels ``j``
    whose centres lie in the box (its edges rounded to whole pixels, at least one pixel inside
    the image). For an integer box this is exactly ``F.interpolate(mode="bilinear",
    antialias=antialias)`` of the slice. Output pixels whose centre ``c_i`` lies outside the
    image are 0 (``padding_mode="zeros"``) or take the value at the nearest point of the image
    (``"replicate"``).
    """
    _check_images(x, "crop_resize")
    n, _, height, width = x.shape
    out_h, out_w = _pair(size, "size")
    if not isinstance(boxes, Tensor) or boxes.shape != (n, 4) or not boxes.is_floating_point():
        got = f"shape {tuple(boxes.shape)}, {boxes.dtype}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"crop_resize: boxes must be a float tensor (N, 4) = ({n}, 4) for x of shape "
                         f"{tuple(x.shape)}, got {got}")
    if flip is not None and (not isinstance(flip, Tensor) or flip.shape != (n,) or flip.dtype != torch.bool):
        got = f"shape {tuple(flip.shape)}, {flip.dtype}" if isinstance(flip, Tensor) else type(flip).__name__
        raise ValueError(f"crop_resize: flip must be a bool tensor (N,) = ({n},) for x of shape "
                         f"{tuple(x.shape)}, got {got}")
    if padding_mode not in ("zeros", "replicate"):
        raise ValueError(f"crop_resize: padding_mode must be 'zeros' or 'replicate', got {padding_mode!r}")
    dtype = _compute_dtype(x)
    edges = boxes.to(device=x.device, dtype=torch.float64) * torch.tensor(
        [width, height, width, height], dtype=torch.float64, device=x.device)
    snapped = edges.round()
    edges = torch.where((edges - snapped).abs() < _SNAP_PIXELS, snapped, edges)
    weights_x = _axis_weights(edges[:, 0], edges[:, 2], width, out_w, antialias, padding_mode, dtype)
    weights_y = _axis_weights(edges[:, 1], edges[:, 3], height, out_h, antialias, padding_mode, dtype)
    if flip is not None:
        weights_x = torch.where(flip.to(x.device)[:, None, None], weights_x.flip(1), weights_x)
    out = torch.einsum("nchw,nvw->nchv", x.to(dtype), weights_x)  # along the width,
    out = torch.einsum("nuh,nchv->ncuv", weights_y, out)  # then along the height
    return _like(out, x)


def _axis_weights(start: Tensor, stop: Tensor, in_size: int, out_size: int, antialias: bool,
                  padding_mode: PaddingMode, dtype: torch.dtype) -> Tensor:
    """``(N, out_size, in_size)`` resampling weights along one axis for boxes ``[start, stop]``
    (float64, in input pixels); see :func:`crop_resize` for the formula."""
    device = start.device
    step = (stop - start) / out_size  # input pixels per output pixel
    centres = start[:, None] + (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * step[:, None]
    inside = (centres >= 0) & (centres <= in_size)
    centres = centres.clamp(0, in_size)  # "replicate": the nearest point of the image ("zeros" masks it below)
    radius = step.clamp(min=1) if antialias else torch.ones_like(step)
    first = start.round().clamp(0, in_size - 1)  # the box's pixels: those whose centres lie in it
    stop_pixel = torch.maximum(stop.round().clamp(max=in_size), first + 1)
    pixel = torch.arange(in_size, device=device, dtype=dtype)
    distance = (pixel + 0.5) - centres.to(dtype)[:, :, None]
    weights = (1 - distance.abs() / radius.to(dtype)[:, None, None]).clamp(min=0)
    in_box = (pixel >= first.to(dtype)[:, None, None]) & (pixel < stop_pixel.to(dtype)[:, None, None])
    weights = weights * in_box
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
    if padding_mode == "zeros":
        weights = weights * inside[:, :, None]
    return weights


# ----------------------------------------------------------------------------------------------
# Convenience: sample and apply in one call


def inception_crop(
    x: Tensor,
    size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random-resized ("inception") crop of each image of ``x`` to ``size``: :func:`inception_boxes`
    then :func:`crop_resize` (antialiased bilinear). Szegedy et al. 2015; the "inception crop" of
    Beyer et al. 2022's function matching."""
    _check_images(x, "inception_crop")
    n, _, height, width = x.shape
    boxes = inception_boxes(n, (height, width), scale, ratio, generator=generator, device=x.device)
    return crop_resize(x, boxes, size)


def random_crop(
    x: Tensor, padding: int, generator: torch.Generator | None = None, padding_mode: PaddingMode = "zeros"
) -> Tensor:
    """Pad each image by ``padding`` pixels and crop a random window of the original size
    (:func:`pad_crop_boxes`): the mild CIFAR-style crop. Exact pixel copies, no interpolation.
    ``padding_mode="zeros"`` pads with 0 (torchvision's ``RandomCrop(padding=...)``); with
    ``"replicate"`` it is :func:`random_shift` (same draws, same result). ``padding=0`` returns ``x``'s values."""
    _check_images(x, "random_crop")
    n, _, height, width = x.shape
    boxes = pad_crop_boxes(n, (height, width), padding, generator=generator, device=x.device)
    return crop_resize(x, boxes, (height, width), padding_mode=padding_mode)


def center_crop(x: Tensor, size: Size, crop_fraction: float = 0.875) -> Tensor:
    """The central crop of :func:`center_boxes` (aspect of ``size``), resized to ``size``.
    ``center_crop(x, 224)`` on ImageNet-sized images is "resize the shorter side to 256, crop 224"."""
    _check_images(x, "center_crop")
    n, _, height, width = x.shape
    out_h, out_w = _pair(size, "size")
    boxes = center_boxes(n, (height, width), crop_fraction, aspect_ratio=out_w / out_h, device=x.device)
    return crop_resize(x, boxes, (out_h, out_w))


def resize(x: Tensor, size: Size, antialias: bool = True) -> Tensor:
    """Resize the whole images to ``size`` (not aspect-preserving); equal to
    ``F.interpolate(x, size, mode="bilinear", antialias=antialias)`` (``align_corners=False``)."""
    _check_images(x, "resize")
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=x.device).expand(x.shape[0], 4)
    return crop_resize(x, boxes, size, antialias=antialias)


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability ``p`` (exact: a reversal of the width)."""
    _check_images(x, "random_flip")
    flips = flip_flags(x.shape[0], p, generator=generator, device=x.device)
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------------------------
# Mixing images: mixup and cutmix


@dataclass(frozen=True)
class Mix:
    """A mixed batch and what is needed to mix anything else the same way.

    Sample ``i`` of ``images`` mixes image ``i`` (weight ``lam[i]``) with image
    ``permutation[i]`` (weight ``1 - lam[i]``). ``lam`` is per sample, shape ``(N,)``; for cutmix
    it is the fraction of image ``i``'s pixels that were kept, and ``boxes`` ``(N, 4)`` (same
    convention as crops) are the pasted regions (None for mixup). To mix another view of the same
    batch (e.g. the teacher's, at another resolution) use :func:`mixup_images` or
    :func:`cutmix_images` with these fields.
    """

    images: Tensor
    permutation: Tensor
    lam: Tensor
    boxes: Tensor | None = None

    def mix_targets(self, targets: Tensor) -> Tensor:
        """``lam * t + (1 - lam) * t[permutation]`` for per-sample targets ``(N, ...)``: one-hot
        labels (``F.one_hot(y, k).float()``) or probabilities. Equivalently, for integer labels
        ``y``: ``loss = lam * ce(z, y) + (1 - lam) * ce(z, y[permutation])`` per sample, then the mean."""
        if targets.shape[:1] != self.lam.shape or not targets.is_floating_point():
            raise ValueError(f"mix_targets: targets must be floating point (N, ...) with N = {self.lam.shape[0]}, "
                             f"got shape {tuple(targets.shape)}, {targets.dtype}; one-hot integer labels first")
        lam = self.lam.to(targets.device, targets.dtype).reshape(-1, *[1] * (targets.dim() - 1))
        return lam * targets + (1 - lam) * targets[self.permutation.to(targets.device)]


def mixup(x: Tensor, alpha: float, generator: torch.Generator | None = None) -> Mix:
    """Mixup (Zhang et al. 2018): ``x~_i = lam_i x_i + (1 - lam_i) x_perm(i)``, ``lam_i ~ Beta(alpha, alpha)``.

    One ``lam`` **per sample** and a uniformly random permutation (which may pair a sample with
    itself). Zhang et al. and big_vision (Beyer et al. 2022 use ``alpha = 1``: lam uniform) draw
    one lam per batch; per sample gives every step the whole range of mixing strengths, so the
    step-to-step variance of the gradient and of batch-norm statistics is lower, at no cost.
    Function matching needs no labels (the teacher labels the mixed image); to mix labels use
    :meth:`Mix.mix_targets`. For one lam per batch, call :func:`mixup_images` with a scalar lam.
    """
    _check_images(x, "mixup")
    _check_alpha(alpha, "mixup")
    n = x.shape[0]
    draw_on = _draw_device(generator, x.device)
    lam = _beta(alpha, n, generator, draw_on)
    permutation = torch.randperm(n, generator=generator, device=draw_on)
    lam, permutation = lam.to(x.device, _compute_dtype(x)), permutation.to(x.device)
    return Mix(images=mixup_images(x, lam, permutation), permutation=permutation, lam=lam)


def mixup_images(x: Tensor, lam: Tensor | float, permutation: Tensor) -> Tensor:
    """``lam * x + (1 - lam) * x[permutation]`` with ``lam`` per sample ``(N,)`` or one for the
    batch (a float or a 0-d tensor); exact at ``lam = 1`` (returns ``x``) and ``lam = 0``."""
    _check_images(x, "mixup_images")
    n = x.shape[0]
    _check_permutation(permutation, n, "mixup_images")
    lam = torch.as_tensor(lam, device=x.device)
    if lam.shape not in ((), (n,)):
        raise ValueError(f"mixup_images: lam must be a scalar or (N,) = ({n},) for x of shape {tuple(x.shape)}, "
                         f"got shape {tuple(lam.shape)}")
    dtype = _compute_dtype(x)
    lam = lam.to(dtype).reshape(-1, 1, 1, 1)
    xc = x.to(dtype)
    return _like(lam * xc + (1 - lam) * xc[permutation.to(x.device)], x)


def cutmix(x: Tensor, alpha: float, generator: torch.Generator | None = None) -> Mix:
    """CutMix (Yun et al. 2019): paste a box of another image of the batch into each image.

    Per sample: ``lam ~ Beta(alpha, alpha)``; a box of ``sqrt(1 - lam)`` of the width and of the
    height (area ``1 - lam``, the image's aspect) centred at a uniform point of the image and
    clipped to it; ``x~_i = M_i * x_i + (1 - M_i) * x_perm(i)`` where ``M_i`` is 0 on the pixels
    whose centres lie in the box. As in the paper, the returned ``lam`` is then the exact fraction
    of pixels kept, ``1 - |box| / (H W)``. Per-sample lam and a random permutation, as :func:`mixup`.
    """
    _check_images(x, "cutmix")
    _check_alpha(alpha, "cutmix")
    n = x.shape[0]
    draw_on = _draw_device(generator, x.device)
    side = (1 - _beta(alpha, n, generator, draw_on)).sqrt()
    centre = torch.rand(2, n, dtype=torch.float64, generator=generator, device=draw_on)
    permutation = torch.randperm(n, generator=generator, device=draw_on)
    boxes = torch.stack([centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2], 1)
    boxes = boxes.clamp(0, 1).to(device=x.device, dtype=torch.float32)
    permutation = permutation.to(x.device)
    images, lam = cutmix_images(x, boxes, permutation)
    return Mix(images=images, permutation=permutation, lam=lam, boxes=boxes)


def cutmix_images(x: Tensor, boxes: Tensor, permutation: Tensor) -> tuple[Tensor, Tensor]:
    """Paste ``x[permutation]`` into ``x`` inside ``boxes`` ``(N, 4)`` (fractions, as for crops;
    a pixel is pasted when its centre lies in the box). Returns the images and ``lam`` ``(N,)``,
    the fraction of each image's own pixels kept (at this resolution)."""
    _check_images(x, "cutmix_images")
    n, _, height, width = x.shape
    _check_permutation(permutation, n, "cutmix_images")
    if not isinstance(boxes, Tensor) or boxes.shape != (n, 4):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"cutmix_images: boxes must be (N, 4) = ({n}, 4) for x of shape {tuple(x.shape)}, got {got}")
    boxes = boxes.to(device=x.device, dtype=torch.float64)
    cols = (torch.arange(width, device=x.device, dtype=torch.float64) + 0.5) / width
    rows = (torch.arange(height, device=x.device, dtype=torch.float64) + 0.5) / height
    in_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # (N, W)
    in_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # (N, H)
    pasted = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (N, 1, H, W)
    images = torch.where(pasted, x[permutation.to(x.device)], x)
    lam = 1 - pasted.flatten(1).to(_compute_dtype(x)).mean(dim=1)
    return images, lam


# ----------------------------------------------------------------------------------------------
# Helpers


def _beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` draws of Beta(alpha, alpha) as ``G1 / (G1 + G2)`` with ``G ~ Gamma(alpha, 1)`` (float64).

    ``torch.distributions.Beta`` takes no generator; ``torch._standard_gamma`` (what
    ``torch.distributions.Gamma`` samples with) does. Gammas are clamped away from 0, which a
    small ``alpha`` can underflow to, so that 0 / 0 cannot happen.
    """
    concentration = torch.full((2, n), float(alpha), dtype=torch.float64, device=device)
    gammas = torch._standard_gamma(concentration, generator=generator).clamp(min=torch.finfo(torch.float64).tiny)
    return gammas[0] / gammas.sum(dim=0)


def _uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """float64 draws from U(low, high); exactly ``low`` when ``low == high``."""
    return low + (high - low) * torch.rand(shape, dtype=torch.float64, generator=generator, device=device)


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Random parameters are drawn where the generator lives, else on ``device`` (default: the CPU)."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; float32 and half-precision inputs are computed (and lam returned) in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _like(out: Tensor, x: Tensor) -> Tensor:
    """``out`` in ``x``'s dtype, and in channels_last memory format if ``x`` is."""
    out = out.to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _check_images(x: Tensor, fn: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: x must be a tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{fn}: x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: x must be floating point, got {x.dtype} (shape {tuple(x.shape)}); "
                        "convert integer images first, e.g. x.float() / 255")


def _pair(size: Size | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, tuple | list) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return pair


def _range(bounds: tuple[float, float], name: str, upper: float = math.inf) -> tuple[float, float]:
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1] <= upper:
        limit = f" <= {upper:g}" if math.isfinite(upper) else ""
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high{limit}, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n (the number of samples) must be an int >= 0, got {n!r}")


def _check_probability(p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")


def _check_alpha(alpha: float, fn: str) -> None:
    if not alpha > 0:
        raise ValueError(f"{fn}: alpha (the Beta(alpha, alpha) concentration) must be > 0, got {alpha!r}")


def _check_permutation(permutation: Tensor, n: int, fn: str) -> None:
    if not isinstance(permutation, Tensor) or permutation.shape != (n,) or permutation.is_floating_point():
        got = (f"shape {tuple(permutation.shape)}, {permutation.dtype}" if isinstance(permutation, Tensor)
               else type(permutation).__name__)
        raise ValueError(f"{fn}: permutation must be an integer tensor (N,) = ({n},), got {got}")
