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
=============  ==========================================  =========================================

A :class:`Views` object is the engine's ``views(x, index, generator=g) -> (student_x, teacher_x)``:
it draws every random parameter from ``g`` (the engine passes its augmentation stream, seeded per
epoch, so a run is reproducible and resumes exactly; without one, from the global RNG), where ``g``
lives (the batch's device), for the whole batch at once. One
crop may be resized to two resolutions (``student_size`` and ``teacher_size``). For the fixed
modes :func:`fixed_teacher_view` gives the view the cache must be built on.
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
    resize,
)

MODES = ("none", "fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch")
FIXED_MODES = ("fix/rs", "fix/cc", "fix/ic_ens")


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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distill.views.mode: unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.student_size = tuple(self.student_size or self.image_size)  # type: ignore[assignment]
        self.teacher_size = tuple(self.teacher_size or self.image_size)  # type: ignore[assignment]

    def boxes(self, n: int, kind: str, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """``n`` crop boxes of ``kind`` (rs, cc, rc, ic) on ``device``, drawn from ``generator``
        (default: the global RNG)."""
        if kind == "rs":
            return torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device).expand(n, 4)
        if kind == "cc":
            return center_boxes(n, self.image_size, device=device)
        if kind == "rc":
            return pad_crop_boxes(n, self.image_size, self.padding, generator=generator, device=device)
        return inception_boxes(n, self.image_size, self.scale, self.ratio, generator=generator, device=device)

    def _flips(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor | None:
        return flip_flags(n, generator=generator, device=device) if self.flip else None

    def __call__(self, x: Tensor, index: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(student_x, teacher_x)`` for the batch ``x``; random draws from ``generator`` (default:
        the global RNG). ``index`` (the examples' dataset indices) is not used by the views themselves."""
        n, dev, mode, g = x.shape[0], x.device, self.mode, generator
        if mode == "none":
            from distill.data.augment import random_shift

            v = random_shift(x, self.shift, generator=g) if self.shift else x
            return resize_to(v, self.student_size), resize_to(v, self.teacher_size)
        family, _, kind = mode.partition("/")
        if mode == "funmatch":
            family, kind = "same", "ic"
        if family == "fix":  # the teacher's side is a cache looked up by index: its view is never used
            kind = {"rs": "rs", "cc": "rc", "ic_ens": "ic"}[kind]
            student = crop_resize(x, self.boxes(n, kind, dev, g), self.student_size, self._flips(n, dev, g))
            return student, student
        boxes, flips = self.boxes(n, kind, dev, g), self._flips(n, dev, g)
        student = crop_resize(x, boxes, self.student_size, flips)
        if family == "ind":  # an independent crop (and flip) for the teacher
            teacher = crop_resize(x, self.boxes(n, kind, dev, g), self.teacher_size, self._flips(n, dev, g))
        elif self.teacher_size == self.student_size:
            teacher = student
        else:  # the same crop, resized for the teacher
            teacher = crop_resize(x, boxes, self.teacher_size, flips)
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
    size = views.teacher_size

    def view(x: Tensor) -> Tensor:
        n = x.shape[0]
        kind = {"fix/rs": "rs", "fix/cc": "cc", "fix/ic_ens": "ic"}[mode]
        flips = views._flips(n, x.device) if mode == "fix/ic_ens" else None
        return crop_resize(x, views.boxes(n, kind, x.device), size, flips)

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
    return record
