"""Hugging Face ``transformers`` image classifiers as distill models: ``model: {name: hf, id: ...}``.

``id`` is a hub id (``microsoft/resnet-50``) or a local directory written by ``save_pretrained``
(the model and its image processor: ``config.json``, the weights, ``preprocessor_config.json``).
The model is ``AutoModelForImageClassification`` and its preprocessing (size, crop, resampling,
mean/std) is read from its ``AutoImageProcessor`` config and applied on the device by the model
itself (:class:`~distill.models.preprocessing.Preprocessing`): a run with such a model takes
``data.normalize: false`` (pixels in ``[0, 1]``). Nothing runs remote code: every ``from_pretrained``
is called with ``trust_remote_code=False``. A hub id is downloaded (or read from the local cache,
``HF_HUB_OFFLINE=1``) by ``transformers`` itself.

Options (the keys beside ``name: hf``):

* ``id``: the hub id or directory.
* ``pretrained`` (default true): load its weights; false builds the architecture from its config with
  fresh weights (seeded by the run).
* ``new_head`` (default false): allow data with another number of classes than the model's
  ``num_labels``: its classifier is replaced by a fresh one for the data's classes (a student
  fine-tuned from a pretrained backbone). Without it a different count is an error.
* ``revision``: a hub branch, tag or commit.

The model returns logits as a tensor (not a ``ModelOutput``); ``class_names`` are its config's ``id2label``
(when they are names, not ``LABEL_i``): a run compares them with the data's classes. Its module paths are the Hugging Face
model's under ``net.`` (``net.resnet.encoder.stages.1``); ``feature_stages`` lists its stages (CNNs:
``*.encoder.stages.i``; ViTs: the transformer layers), the default layers of feature methods, and
``embedding_layer`` its classifier's input (the relation methods' default). A ViT (``patch_tokens``) gives
tokens ``(N, D)``, which the feature methods that compare maps read as ``(D, h, w)`` over its patch grid
(:mod:`distill.methods._features`).
A checkpoint records ``{name: hf, kwargs: {id: ...}}``: ``distill eval`` rebuilds the architecture
from the same ``id`` (which must still be there) and loads the trained weights. A teacher cache records
:func:`hf_weights_source` (the directory's files, or the hub commit), so that a teacher changed under the
same ``id`` is refused.

``transformers`` is imported only when such a model is built (``pip install -e ".[hf]"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from ._ecosystem import Adapted, check_classes, import_optional, on_meta, with_channels
from .preprocessing import Preprocessing, Resample
from .registry import register_model, register_weights_source

__all__ = ["HFImageClassifier", "hf", "hf_weights_source", "preprocessing_from_processor"]

# PIL's resampling filters, as transformers stores them (PILImageResampling) -> ours.
_PIL_RESAMPLE: dict[int, Resample] = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_PIL_NAMES = {1: "lanczos", 4: "box", 5: "hamming"}


def _transformers() -> ModuleType:
    return import_optional("transformers", "hf", "hf")


def _size_key(size: Any, key: str) -> int | None:
    """``size[key]`` of a processor's size (a dict, or transformers 5's SizeDict), None if absent."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def preprocessing_from_processor(processor: Any, where: str = "the image processor") -> Preprocessing:
    """The :class:`Preprocessing` a Hugging Face image processor applies (its ``do_resize``, ``size``,
    ``resample``, ``do_center_crop``, ``crop_size``, ConvNeXt's ``crop_pct``, ``do_rescale``,
    ``rescale_factor``, ``do_normalize``, ``image_mean``, ``image_std``)."""
    resize: tuple[int, int] | int | None = None
    crop: tuple[int, int] | None = None
    resample: Resample = "bilinear"
    if getattr(processor, "do_resize", False):
        size = processor.size
        height, width = _size_key(size, "height"), _size_key(size, "width")
        shortest = _size_key(size, "shortest_edge")
        if _size_key(size, "longest_edge") or _size_key(size, "max_height"):
            raise ValueError(f"{where}: a size with longest_edge or max_height/max_width ({size}) gives images of "
                             f"varying sizes, which a batch cannot hold; distill takes fixed-size processors only")
        if height and width:
            resize = (height, width)
        elif shortest:
            crop_pct = getattr(processor, "crop_pct", None)
            if type(processor).__name__.startswith("ConvNext") and crop_pct:
                # ConvNeXt (and ResNet's processor): below 384 px, the shorter side to size / crop_pct, then crop.
                resize, crop = (int(shortest / crop_pct), (shortest, shortest)) if shortest < 384 else (
                    (shortest, shortest), None)
            else:
                resize = shortest
        else:
            raise ValueError(f"{where}: size {size} has neither height and width nor shortest_edge")
        code = int(processor.resample) if getattr(processor, "resample", None) is not None else 2
        if code not in _PIL_RESAMPLE:
            raise ValueError(f"{where}: resampling filter {_PIL_NAMES.get(code, code)} is not available on the device; "
                             f"distill resizes with nearest, bilinear or bicubic")
        resample = _PIL_RESAMPLE[code]
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        ch, cw = _size_key(processor.crop_size, "height"), _size_key(processor.crop_size, "width")
        if not (ch and cw):
            raise ValueError(f"{where}: crop_size {processor.crop_size} has no height and width")
        crop = (ch, cw)
    scale = float(processor.rescale_factor) * 255.0 if getattr(processor, "do_rescale", False) else 255.0
    if abs(scale - 1.0) < 1e-9:
        scale = 1.0
    mean = std = None
    if getattr(processor, "do_normalize", False):
        mean = tuple(float(m) for m in _listed(processor.image_mean))
        std = tuple(float(s) for s in _listed(processor.image_std))
    return Preprocessing(resize=resize, crop=crop, resample=resample, mean=mean, std=std, scale=scale)


def _listed(value: Any) -> Sequence[float]:
    return [value] if isinstance(value, (int, float)) else list(value)


def _stage_paths(net: nn.Module) -> list[str]:
    """The paths of ``net``'s main stages: the children of a ``ModuleList`` named ``stages`` (ResNet,
    ConvNeXt, RegNet, ...), else of the shallowest one named ``layer`` or ``layers`` (ViT, DeiT, ...)."""
    lists = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.ModuleList)]
    for wanted in (("stages",), ("layer", "layers")):
        found = [(name, m) for name, m in lists if name.rsplit(".", 1)[-1] in wanted]
        if found:
            name, m = min(found, key=lambda item: item[0].count("."))
            return [f"{name}.{i}" for i in range(len(m))]
    return []


class HFImageClassifier(Adapted):
    """A ``transformers`` image classifier taking ``[0, 1]`` pixels and returning logits.

    ``forward(x) = net(pixel_values=preprocess(x)).logits``; ``preprocessing`` declares what
    ``preprocess`` does (from the model's processor config)."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, num_classes: int, pretrained: bool) -> None:
        super().__init__(net, preprocessing, num_classes, pretrained, _stage_paths(net))
        self.class_names: tuple[str, ...] | None = None  # its config's id2label, when it names its classes
        #: a vision transformer (its config has a patch size and attention heads): its blocks give tokens (N, D), a class token (and
        #: DeiT's distillation token) then a square grid of patches, which feature methods read as a map
        config = getattr(net, "config", None)
        self.patch_tokens = all(getattr(config, key, None) is not None for key in ("patch_size", "num_attention_heads"))

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(pixel_values=self.preprocess(x)).logits
        return logits


@register_model("hf")
def hf(num_classes: int, in_shape: Sequence[int], id: str, pretrained: bool = True, new_head: bool = False,
       revision: str | None = None) -> HFImageClassifier:
    """A Hugging Face image classifier (hub id or directory ``id``) with its own preprocessing; see
    :mod:`distill.models.hf`."""
    tf = _transformers()
    if not isinstance(id, str) or not id:
        raise ValueError(f"model hf: id must be a hub id or a directory, got {id!r}")
    where = f"model hf (id {id})"
    options: dict[str, Any] = {"trust_remote_code": False, "revision": revision}
    try:
        config = tf.AutoConfig.from_pretrained(id, **options)
        processor = tf.AutoImageProcessor.from_pretrained(id, **options)
    except OSError as e:
        raise OSError(f"{where}: cannot load its config and image processor ({str(e).splitlines()[0]}); give a hub "
                      f"id or a directory with config.json and preprocessor_config.json (save_pretrained writes "
                      f"them: model.save_pretrained(DIR); processor.save_pretrained(DIR))") from None
    prep = with_channels(preprocessing_from_processor(processor, where), in_shape,
                         int(getattr(config, "num_channels", 3)), where)
    own_head = config.num_labels == num_classes
    if pretrained:  # fresh weights take any number of classes
        check_classes(where, "hf", id, config.num_labels, num_classes, new_head)
    loaded = pretrained and not on_meta()
    if not loaded:
        config.num_labels = num_classes
        net = tf.AutoModelForImageClassification.from_config(config, trust_remote_code=False)
    else:
        extra: dict[str, Any] = {} if own_head else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
        net = tf.AutoModelForImageClassification.from_pretrained(id, **options, **extra)
    model = HFImageClassifier(net, prep, num_classes, pretrained=loaded and own_head)
    labels = [str(config.id2label.get(i, "")) for i in range(num_classes)] if own_head and pretrained else []
    if labels and labels != [f"LABEL_{i}" for i in range(num_classes)]:  # named in its config
        model.class_names = tuple(labels)
    return model


#: :func:`_folder_sha256`'s results in this process, by (resolved folder, each file's (relative path, size,
#: mtime_ns)).
_FOLDER_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _folder_sha256(folder: Path) -> str:
    """sha256 (hex) of every file under ``folder``, in path order: relative path, size and bytes. Memoized in
    the process by the folder's resolved path and each file's size and modification time (ns): a second use
    (a cache built, then read back) lists and stats the files but does not read the weights again; a file
    written again (another size or mtime) is hashed anew."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = [(f.relative_to(folder).as_posix(), f.stat()) for f in files]
    key = (str(folder.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if key not in _FOLDER_HASHES:
        _FOLDER_HASHES[key] = _hash_files(folder, key[1])
    return _FOLDER_HASHES[key]


def _hash_files(folder: Path, files: Sequence[tuple[str, int, int]]) -> str:
    """sha256 (hex) of ``files`` (relative path, size, mtime_ns under ``folder``), in order: each one's relative
    path, size and bytes."""
    h = hashlib.sha256()
    for name, size, _ in files:
        h.update(f"{name}:{size};".encode())
        with open(folder / name, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@register_weights_source("hf")
def hf_weights_source(id: str, pretrained: bool = True, revision: str | None = None, hub_cache: str | None = None,
                      **_: Any) -> str | None:
    """What identifies the weights ``hf`` loads for ``id``: for a local directory, ``dir:`` and the sha256 of
    every file in it (relative path, size, bytes: config, weights, processor config), so that weights or a
    config saved again in the same place are seen (hashed once per process while no file's size or mtime
    changes: :func:`_folder_sha256`); for a hub id, ``hub:<id>@<commit>``, the commit that
    ``revision`` (default ``main``) resolves to (from the hub, or offline from the local cache ``hub_cache``,
    default ``transformers``'); None with ``pretrained: false`` (fresh weights from the run's seed), or when a
    hub id cannot be resolved here (offline and not cached)."""
    if not pretrained:
        return None
    folder = Path(id).expanduser()
    if folder.is_dir():
        return f"dir:{_folder_sha256(folder)}"
    try:
        path = _transformers().utils.cached_file(id, "config.json", revision=revision, cache_dir=hub_cache,
                                                 _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):  # offline and not in the cache: unknown
        return None
    if path is None or Path(path).parent.parent.name != "snapshots":
        return None
    return f"hub:{id}@{Path(path).parent.name}"
