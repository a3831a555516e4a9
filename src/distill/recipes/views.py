"""The student's side of a distillation run: its transfer set, its views, its teacher's form.

Used by the ``distill`` and ``compare`` recipes (and through them, by every teaching mode of
Beyer et al. 2022, see :mod:`distill.views`):

- ``distill.transfer``: distil on other images (out-of-domain), normalized as the teacher's data;
- ``distill.views``: what student and teacher see of each image, possibly at two resolutions;
- fixed-teacher modes: the teacher's outputs on the prescribed view, computed once (in memory, or for a
  training split streamed from disk, memory-mapped in the run directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.cache import REBUILD, CachedTeacher, CacheError, build_cache, build_stream_cache
from distill.config import Config
from distill.data.sources import load_dataset
from distill.data.tensors import DataSplits, TensorData, make_splits
from distill.teachers import FrozenTeacher, Teacher
from distill.views import FIXED_MODES, Views, fixed_teacher_view, resize_to, teacher_inputs


def _hw(in_shape: Sequence[int]) -> tuple[int, int]:
    """The (height, width) of an example of shape ``in_shape`` (its last two sizes)."""
    return (int(in_shape[-2]), int(in_shape[-1]))


class ResizeInput(nn.Module):
    """``model`` behind a resize of its input to ``size``: a student trained at another resolution,
    evaluated on the dataset's images."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model, (int(size[0]), int(size[1]))
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(resize_to(x, self.size))


def transfer_data(cfg: Config, data: DataSplits) -> tuple[DataSplits, dict[str, Any]]:
    """``data`` with its training split replaced by ``distill.transfer``'s images, normalized with
    ``data``'s statistics and resized to its resolution (labels kept but never used)."""
    t = cfg.distill.transfer
    assert t is not None
    raw = load_dataset(t.name, t.path, download=t.download)
    if raw.train_x.shape[1] != data.in_shape[0]:
        raise ValueError(f"distill.transfer: {raw.name} images have {raw.train_x.shape[1]} channels but the teacher's "
                         f"data ({data.name}) has {data.in_shape[0]}; choose a transfer set with the same channels")
    splits = make_splits(raw, val_size=0, stats=(data.mean, data.std), device=data.train.x.device)
    x = resize_to(splits.train.x, _hw(data.in_shape))
    y = splits.train.y.clamp(max=data.num_classes - 1)  # unused (alpha = 1); kept in range for the checks
    record = {"name": raw.name, "train_examples": int(x.shape[0]), "source_shape": list(raw.train_x.shape[1:]),
              "resized_to": list(data.in_shape)}
    return dataclasses.replace(data, train=TensorData(x, y)), record


def student_views(cfg: Config, data: DataSplits, shift: int) -> Views | None:
    """The :class:`~distill.views.Views` of ``distill.views``, or None for plain same-view training."""
    v = cfg.distill.views
    size = (v.student_size, v.student_size) if v.student_size else None
    if v.mode == "none" and size is None:
        return None
    if v.mode == "mixup" and len(data.in_shape) != 3:  # vectors: mixed as they are, nothing to crop or resize
        if size is not None:
            raise ValueError(f"distill.views.student_size: {data.name}'s inputs have shape {tuple(data.in_shape)}, "
                             "not images, so there is nothing to resize; unset distill.views.student_size")
        return Views(mode="mixup", image_size=(1, 1), mixup_alpha=v.mixup_alpha)
    if len(data.in_shape) != 3:
        raise ValueError(f"distill.views.mode={v.mode}: the views need images (C, H, W) or 1-D signals (C, 1, L); "
                         f"{data.name}'s inputs have shape {tuple(data.in_shape)}; the modes that apply are none and "
                         f"mixup (and no distill.views.student_size)")
    return Views(mode=v.mode, image_size=_hw(data.in_shape), student_size=size, padding=v.padding,
                 scale=v.scale, ratio=v.ratio, flip=v.flip, mixup_alpha=v.mixup_alpha, shift=shift)


def student_data(data: DataSplits, views: Views | None) -> DataSplits:
    """``data`` with validation and test images at the student's resolution (training images stay
    at theirs: the views crop and resize them)."""
    if views is None or len(data.in_shape) != 3 or views.student_hw == _hw(data.in_shape):
        return data  # vectors (mode mixup) have no resolution
    size = views.student_hw

    def resized(split: TensorData) -> TensorData:
        if split.stream is None:
            return TensorData(resize_to(split.x, size), split.y)
        shape = (len(split), split.x.shape[1], *size)  # streamed: each batch resized as it is read
        return TensorData(torch.empty(shape, device="meta"), split.y, split.stream.map(lambda x: resize_to(x, size)))

    return dataclasses.replace(data, val=resized(data.val), test=resized(data.test))


def check_cacheable(mode: str) -> None:
    """Refuse a teaching mode whose teacher must run at every step (new random views) with a cache."""
    if mode != "none" and mode not in FIXED_MODES:
        raise ValueError(f"distill.views.mode={mode} needs the live teacher (its outputs on new random views at "
                         f"every step), which a cache of its outputs cannot give; unset distill.cache.path, or use "
                         f"mode none or a fixed mode ({', '.join(FIXED_MODES)})")


def teacher_for_views(cfg: Config, teacher: Teacher, views: Views | None, data: DataSplits,
                      device: torch.device, stream_dir: Path | None = None) -> Teacher:
    """The teacher as the mode needs it: live, or (fixed modes) its outputs on the prescribed view of
    every training image, computed once here: in memory, or for a training split streamed from disk in
    one pass over its files into a memory-mapped cache in ``stream_dir`` (:func:`build_stream_cache`)."""
    mode = views.mode if views is not None else "none"
    if isinstance(teacher, CachedTeacher):  # a cache serves only the views it was made with
        check_cacheable(mode)
        teacher.cache.verify(views=teacher_inputs(views, data.in_shape, cfg.distill.views.ensemble_crops),
                             source="the teacher cache (distill.cache.path)")
        if teacher.num_rows != len(data.train):
            raise CacheError(f"the teacher cache (distill.cache.path) has {teacher.num_rows} rows but the student "
                             f"distils on {len(data.train)} examples; {REBUILD} on this data")
        return teacher
    if mode not in FIXED_MODES:
        return teacher
    assert views is not None and isinstance(teacher, FrozenTeacher)
    torch.manual_seed(cfg.seed)  # the crops averaged by fix/ic_ens
    wrapped = fixed_teacher_view(views, cfg.distill.views.ensemble_crops)(teacher.model).eval()
    if data.stream is None:
        cache = build_cache(wrapped, data.train, device=device)
    elif stream_dir is None:
        raise ValueError(f"distill.views.mode={mode} on a training split streamed from disk: the teacher's outputs "
                         f"on its fixed views are cached on disk, and no directory was given")
    else:  # the test split is not needed (the teacher's own row comes from the live teacher)
        cache = build_stream_cache(stream_dir, wrapped, dataclasses.replace(data, test=data.test.rows(0, 0)),
                                   device=device)
    return CachedTeacher(cache, device)


def fixed_view_teacher(cfg: Config, model: nn.Module, views: Views | None) -> nn.Module:
    """``model`` as a cache file for ``views`` is built from it: behind
    :func:`~distill.views.fixed_teacher_view` for a fixed mode (its crops drawn from ``seed``), or
    ``model`` itself when it sees the plain images (other modes, and ``fix/rs`` at the images' size)."""
    if views is None or views.mode not in FIXED_MODES or teacher_inputs(views)["mode"] == "none":
        return model
    torch.manual_seed(cfg.seed)  # the crops averaged by fix/ic_ens
    return fixed_teacher_view(views, cfg.distill.views.ensemble_crops)(model).eval()
