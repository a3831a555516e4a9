"""What the student and the teacher see of a batch: the teaching modes of Beyer et al. (2022).

Beyer, Zhai, Royer, Markeeva, Anil & Kolesnikov (2022), "Knowledge distillation: A good teacher
is patient and consistent", compare ways to present an image to teacher and student (their
Figure 2). Fixed-teacher modes precompute the teacher's outputs once per image (a cache, looked
up by the example's index); independent modes give each model its own random crop; consistent
modes give both the same crop; ``funmatch`` adds mixup to the shared crop:

=============  ==========================================  =========================================
mode           student sees                                 teacher gives (for that example)
=============  ==========================================  =========================================
``fix/rs``     the image, resized                           its outputs on the resized image (cached)
``fix/cc``     a mild random crop (pad and crop)            its outputs on the central crop (cached)
``fix/ic_ens`` an inception crop                            its mean output over many inception crops
                                                            (cached)
``ind/rc``     a mild random crop                           its outputs on an independent mild crop
``ind/ic``     an inception crop                            its outputs on an independent inception crop
``same/rc``    a mild random crop                           its outputs on the same crop
``same/ic``    an inception crop                            its outputs on the same crop
``funmatch``   an inception crop, mixed up with another     its outputs on the same mixed image
``mixup``      the example mixed up with another (no crop)  its outputs on the same mixed example
=============  ==========================================  =========================================

``mixup`` is function matching's consistency without the crops: both models see the same mixup of
the batch (after ``train.augment.shift``), so it applies to any input, vectors included.

A :class:`Views` object is the engine's ``views(x, index, generator=g) -> (student_x, teacher_x)``:
it draws every random parameter from ``g`` (the engine passes its augmentation stream, seeded per
epoch, so a run is reproducible and resumes exactly; without one, from the global RNG), where ``g``
lives (the batch's device), for the whole batch at once. One
crop may be resized to two resolutions (``student_size`` and ``teacher_size``). For the fixed
modes :func:`fixed_teacher_view` gives the view the cache must be built on.

Inputs are images ``(N, C, H, W)``. 1-D signals stored as one row ``(N, C, 1, L)`` or one column
``(N, C, L, 1)`` get the 1-D version of every view, along the signal only: a random segment
(a fraction ``U(scale)`` of its length) for the inception crop, a shift by up to ``padding``
samples for the mild crop, its central 87.5% for the central crop; a flip reverses the signal,
and both models take it at its own length (``student_size`` must be unset). The 2-D crops would be
garbage there: an inception box of aspect ``ratio`` in a 1-pixel row is a sliver a pixel or two
wide, stretched over the whole signal, and a padded crop shifts the single row off the image in
8 of 9 draws (padding 4). A shape a mode cannot handle at all (single pixels; inception crops that
cannot fit the images' aspect; a padding as large as the image) is refused when the
:class:`Views` is made, with the modes that apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from distill.data.augment import (
    center_boxes,
    crop_resize,
    flip_flags,
    inception_boxes,
    mixup,
    mixup_images,
    pad_crop_boxes,
    pad_crop_segments,
    random_shift,
    resize,
    segment_boxes,
)

MODES = ("none", "fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch", "mixup")
FIXED_MODES = ("fix/rs", "fix/cc", "fix/ic_ens")
MILD_CROP_MODES = ("fix/cc", "ind/rc", "same/rc")  # the student's (or both models') view is the mild crop
INCEPTION_MODES = ("fix/ic_ens", "ind/ic", "same/ic", "funmatch")
CENTER_FRACTION = 0.875  # fix/cc's central crop (center_boxes' default)


def _hw(size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from a 2-sequence (a YAML list or a tuple)."""
    return (int(size[0]), int(size[1]))


@dataclass
class Views:
    """The two views of a batch for ``mode`` (see the module docstring).

    ``image_size``: (H, W) of the stored images; ``student_size`` / ``teacher_size``: the
    resolution each model takes (default: ``image_size``); ``padding``: pixels of the mild
    random crop; ``scale``/``ratio``: the inception crop's ranges; ``flip``: mirror each view
    with probability 1/2; ``mixup_alpha``: Beta(α, α) of funmatch's mixup; ``shift``: for mode
    ``none``, Hinton's random translation of the shared view.
    """

    mode: str
    image_size: tuple[int, int]
    student_size: tuple[int, int] | None = None
    teacher_size: tuple[int, int] | None = None
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    mixup_alpha: float = 1.0
    shift: int = 0

    @property
    def student_hw(self) -> tuple[int, int]:
        """``student_size`` as resolved at construction (``image_size`` where it was unset)."""
        return self.student_size or self.image_size

    @property
    def teacher_hw(self) -> tuple[int, int]:
        """``teacher_size`` as resolved at construction (``image_size`` where it was unset)."""
        return self.teacher_size or self.image_size

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distill.views.mode: unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        size = self.image_size
        if (not isinstance(size, tuple | list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"distill.views.mode={self.mode}: the views need images (N, C, H, W) and their (H, W), "
                             f"got image_size {size!r}")
        self.image_size = (int(size[0]), int(size[1]))
        height, width = self.image_size
        # 1-D signals get the 1-D views, computed on rows (a column is transposed to a row and back)
        self.signal = "row" if height == 1 < width else "column" if width == 1 < height else None
        self.student_size = _hw(self.student_size or self.image_size)
        self.teacher_size = _hw(self.teacher_size or self.image_size)
        self._check_shape()

    def _check_shape(self) -> None:
        """Refuse a mode (or setting) that the inputs' shape makes degenerate, naming the modes that apply."""
        mode, (height, width) = self.mode, self.image_size
        shape = f"{height}x{width}"
        if height == width == 1 and mode not in ("none", "fix/rs", "mixup"):
            raise ValueError(f"distill.views.mode={mode}: the inputs are single pixels (1x1), which have nothing to "
                             "crop; the modes that apply are none, fix/rs and mixup")
        if self.signal is not None:
            length = max(height, width)
            kind = f"one {self.signal} of {length} samples ({shape}: 1-D signals)"
            if self.student_size != self.image_size or self.teacher_size != self.image_size:
                raise ValueError(f"distill.views.student_size: the inputs are {kind}, which the views crop along "
                                 f"the signal and keep at its length; unset distill.views.student_size")
            if mode in MILD_CROP_MODES and self.padding >= length:
                raise ValueError(f"distill.views.padding={self.padding}: mode {mode} shifts the {length}-sample "
                                 f"signals by up to {self.padding} samples, so some views would be blank; use a "
                                 f"padding below {length}")
            return
        if mode in MILD_CROP_MODES and self.padding >= min(height, width):
            raise ValueError(f"distill.views.padding={self.padding}: mode {mode} shifts the {shape} images by up to "
                             f"{self.padding} pixels, so some views would be entirely blank; use a padding below "
                             f"{min(height, width)}")
        if mode in INCEPTION_MODES:
            aspect = width / height  # the best candidate has the aspect closest to the image's
            best = min(max(aspect, self.ratio[0]), self.ratio[1])
            if min(aspect / best, best / aspect) < self.scale[0]:
                raise ValueError(
                    f"distill.views.mode={mode}: no inception crop with distill.views.ratio={list(self.ratio)} and "
                    f"scale={list(self.scale)} fits in the {shape} images (aspect {aspect:.3g}), so every crop "
                    f"would be the same central sliver; widen distill.views.ratio to include {aspect:.3g}, or use a mode "
                    f"without inception crops: {', '.join(m for m in MODES if m not in INCEPTION_MODES)}")

    def boxes(self, n: int, kind: str, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """``n`` crop boxes of ``kind`` (rs, cc, rc, ic) on ``device``, drawn from ``generator``
        (default: the global RNG). For 1-D signals the boxes are those of the signal as a row."""
        if kind == "rs":
            return torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device).expand(n, 4)
        if self.signal is not None:
            if kind == "cc":
                edge = (1 - CENTER_FRACTION) / 2
                return torch.tensor([[edge, 0.0, 1 - edge, 1.0]], device=device).expand(n, 4)
            if kind == "rc":
                return pad_crop_segments(n, max(self.image_size), self.padding, generator=generator, device=device)
            return segment_boxes(n, self.scale, generator=generator, device=device)
        if kind == "cc":
            return center_boxes(n, self.image_size, device=device)
        if kind == "rc":
            return pad_crop_boxes(n, self.image_size, self.padding, generator=generator, device=device)
        return inception_boxes(n, self.image_size, self.scale, self.ratio, generator=generator, device=device)

    def _flips(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor | None:
        return flip_flags(n, generator=generator, device=device) if self.flip else None

    def crop(self, x: Tensor, boxes: Tensor, size: Sequence[int], flips: Tensor | None = None) -> Tensor:
        """:func:`~distill.data.augment.crop_resize` of ``x`` to ``boxes`` (from :meth:`boxes`) at ``size``;
        a column signal is cropped as a row (transposed there and back)."""
        if self.signal == "column":
            row = crop_resize(x.transpose(-1, -2), boxes, (int(size[1]), int(size[0])), flips)
            return row.transpose(-1, -2).contiguous()
        return crop_resize(x, boxes, (int(size[0]), int(size[1])), flips)

    def __call__(self, x: Tensor, index: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(student_x, teacher_x)`` for the batch ``x``; random draws from ``generator`` (default:
        the global RNG). ``index`` (the examples' dataset indices) is not used by the views themselves."""
        n, dev, mode, g = x.shape[0], x.device, self.mode, generator
        if mode == "none":
            v = random_shift(x, self.shift, generator=g) if self.shift else x
            return resize_to(v, self.student_hw), resize_to(v, self.teacher_hw)
        if mode == "mixup":  # both see the same mixture of two (shifted) examples, of any shape
            v = random_shift(x, self.shift, generator=g) if self.shift else x
            mixed = mixup(v.reshape(n, 1, 1, -1), self.mixup_alpha, generator=g).images.reshape(v.shape)
            if self.student_hw == self.teacher_hw == self.image_size:
                return mixed, mixed
            return resize_to(mixed, self.student_hw), resize_to(mixed, self.teacher_hw)
        family, _, kind = mode.partition("/")
        if mode == "funmatch":
            family, kind = "same", "ic"
        if family == "fix":  # the teacher's side is a cache looked up by index: its view is never used
            kind = {"rs": "rs", "cc": "rc", "ic_ens": "ic"}[kind]
            student = self.crop(x, self.boxes(n, kind, dev, g), self.student_hw, self._flips(n, dev, g))
            return student, student
        boxes, flips = self.boxes(n, kind, dev, g), self._flips(n, dev, g)
        student = self.crop(x, boxes, self.student_hw, flips)
        if family == "ind":  # an independent crop (and flip) for the teacher
            teacher = self.crop(x, self.boxes(n, kind, dev, g), self.teacher_hw, self._flips(n, dev, g))
        elif self.teacher_hw == self.student_hw:
            teacher = student
        else:  # the same crop, resized for the teacher
            teacher = self.crop(x, boxes, self.teacher_hw, flips)
        if mode == "funmatch":  # both see the same mixture of two crops
            mix = mixup(student, self.mixup_alpha, generator=g)
            same = teacher is student
            student = mix.images
            teacher = student if same else mixup_images(teacher, mix.lam, mix.permutation)
        return student, teacher


def resize_to(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """The whole images of ``x`` at ``size`` (:func:`distill.data.augment.resize`); ``x`` itself when
    ``size`` is None or already its size."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize(x, size)


class AveragedTeacher(nn.Module):
    """A teacher whose output for an image is its mean prediction over ``crops`` random views.

    ``forward(x)`` returns ``log(mean_k softmax(teacher(view_k(x))))``, logits whose softmax is
    the averaged distribution: the fixed ``fix/ic_ens`` teacher of Beyer et al. (2022), who
    averaged 1,024 inception crops per image. Views are drawn from the global RNG.
    """

    def __init__(self, teacher: nn.Module, view: Callable[[Tensor], Tensor], crops: int) -> None:
        super().__init__()
        if crops < 1:
            raise ValueError(f"distill.views.ensemble_crops must be at least 1, got {crops}")
        self.teacher, self.view, self.crops = teacher, view, crops
        self.inputs: dict[str, Any] | None = None  # what the teacher sees (:func:`teacher_inputs`), for a cache

    def forward(self, x: Tensor) -> Tensor:
        log_p = torch.stack([torch.log_softmax(self.teacher(self.view(x)).float(), -1) for _ in range(self.crops)])
        return torch.logsumexp(log_p, 0) - torch.log(torch.tensor(float(self.crops), device=x.device))


def fixed_teacher_view(views: Views, crops: int = 16) -> Callable[[nn.Module], nn.Module]:
    """For a fixed mode: wrap the teacher model so that a cache built from it holds the outputs
    the mode prescribes (resized image, central crop, or the mean over ``crops`` inception crops)."""
    mode = views.mode
    if mode not in FIXED_MODES:
        raise ValueError(f"fixed_teacher_view: {mode!r} is not a fixed-teacher mode ({', '.join(FIXED_MODES)})")
    size = views.teacher_hw

    def view(x: Tensor) -> Tensor:
        n = x.shape[0]
        kind = {"fix/rs": "rs", "fix/cc": "cc", "fix/ic_ens": "ic"}[mode]
        flips = views._flips(n, x.device) if mode == "fix/ic_ens" else None
        return views.crop(x, views.boxes(n, kind, x.device), size, flips)

    def wrap(teacher: nn.Module) -> nn.Module:
        wrapped = AveragedTeacher(teacher, view, crops if mode == "fix/ic_ens" else 1)
        wrapped.inputs = teacher_inputs(views, crops=crops)  # recorded by a cache built from it
        return wrapped

    return wrap


def teacher_inputs(views: Views | None, in_shape: Sequence[int] = (), crops: int = 16) -> dict[str, Any]:
    """What the teacher sees of each training example under ``views``: its mode and every setting
    that changes the teacher's inputs (a teacher cache records it as ``views``, and a run that reads
    the cache compares it with its own).

    ``{"mode": "none", "size": [H, W]}``: the stored examples themselves (``views`` None, mode
    ``none``, or ``fix/rs`` at the images' own size), ``in_shape`` (C, H, W) giving the size when
    ``views`` is None. ``fix/cc`` adds nothing beyond its size (the crop is fixed); ``fix/ic_ens``
    the inception crops' ``scale``, ``ratio``, ``flip`` and the number of ``crops`` averaged; the
    live modes every setting of their crops. The student's resolution and ``train.augment`` do not
    enter: they change only what the student sees.
    """
    if views is None:
        return {"mode": "none", "size": [int(v) for v in in_shape[1:]]}
    size = [int(v) for v in (views.teacher_size or views.image_size)]
    mode = views.mode
    if mode == "none" or (mode == "fix/rs" and size == [int(v) for v in views.image_size]):
        return {"mode": "none", "size": size}
    record: dict[str, Any] = {"mode": mode, "size": size}
    inception = {"scale": list(views.scale), "ratio": list(views.ratio), "flip": views.flip}
    if mode == "fix/ic_ens":
        record.update(inception, crops=crops)
    elif mode in ("ind/rc", "same/rc"):
        record.update(padding=views.padding, flip=views.flip)
    elif mode in ("ind/ic", "same/ic", "funmatch"):
        record.update(inception)
        if mode == "funmatch":
            record["mixup_alpha"] = views.mixup_alpha
    elif mode == "mixup":
        record["mixup_alpha"] = views.mixup_alpha
    return record
