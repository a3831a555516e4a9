"""Cached teachers: run a teacher once over the training set, store its outputs, distil without it.

Beyer et al. (2022) call this a "fixed teacher": the teacher's outputs on the (un-augmented)
training examples are computed once, and every later distillation reads them by the example's
position instead of running the teacher. It saves the teacher's forward pass and its memory;
the price is that the targets are those of the stored inputs, so it fits training without
augmentation (with ``train.augment`` the student sees shifted views but gets the targets of the
unshifted ones).

File format (``distill.teacher_cache`` version 2): one ``.npz`` (a zip of ``.npy`` arrays,
uncompressed, read with ``numpy.load(path, allow_pickle=False)``), written atomically (a temporary
file in the same directory, fsync, ``os.replace``), with these entries:

``meta``
    a 0-d unicode array holding one JSON object: ``format`` ("distill.teacher_cache"),
    ``version`` (2), ``kind`` ("logits" or "topk"), ``n`` (rows = training examples),
    ``num_classes``, ``k`` (top-k only, else null), ``temperature`` (top-k only, else null: full
    logits work at any temperature), ``dtype`` ("float16" or "float32"), ``data_checksum``
    (:func:`dataset_checksum` of the training split), ``data`` (:func:`describe_data`: rows,
    input shape, name, normalization and how the split was made, to explain a mismatch),
    ``teacher_fingerprint`` (:func:`teacher_fingerprint` of the teacher's weights, or null when the
    teacher was not an ``nn.Module``), ``model_spec`` (the teacher's architecture if known, else
    null; with ``source``, :func:`distill.models.weights_source`, for a teacher whose pretrained weights
    come from outside the run, e.g. a Hugging Face directory or hub id), ``views`` (:func:`distill.views.teacher_inputs`: what the teacher saw of each example),
    ``test`` (null, or the teacher's results on the test split: ``n``, ``checksum``,
    ``accuracy``, ``errors``, ``nll``), ``created`` (UTC, ISO 8601), ``distill_version`` and
    ``checksums`` (the sha256 of every other array entry: its dtype, shape and bytes).
``meta_sha256``
    a 0-d unicode array: the sha256 of the ``meta`` JSON text.
``logits`` (kind "logits")
    (n, C) float16/float32: the teacher's raw logits, row i for training example i.
``indices``, ``log_probs`` (kind "topk")
    (n, k) class indices, in the smallest unsigned integer type that holds C - 1 (uint8 up to
    256 classes), and (n, k) float16/float32 log-probabilities at ``temperature`` of those classes,
    most probable first. The rest of the distribution is one tail bucket of mass
    ``1 - exp(log_probs).sum(-1)``.
``test_predictions`` (when ``meta.test`` is set)
    (n_test,) the teacher's top-1 class on each test example (smallest unsigned integer type),
    so a run that distils from the cache can report agreement with the teacher without it.

Directory format (the same ``format``/``version``, for a training split streamed from disk,
larger than memory): a directory ``<path>/`` holding one ``.npy`` file per array (``logits.npy``,
or ``indices.npy`` and ``log_probs.npy``; ``test_predictions.npy``), written row by row with
``numpy.lib.format.open_memmap`` in one streaming pass over the training files in sample-index
order (:func:`build_stream_cache`), and ``meta.json``: the ``meta`` object above, written last and
atomically, so a build killed before the end leaves a directory without ``meta.json``, which
:func:`load_cache` refuses as incomplete. Its ``indices`` are uint8, int16 or int32 (the smallest
that torch reads and that holds C - 1). :func:`load_cache` maps the arrays (``mmap_mode="c"``:
copy-on-write, never written back) instead of reading them, checks their shapes and dtypes against
``meta.json``, but does not re-hash their bytes (that would read the whole file: the recorded
``checksums`` are there for an explicit check); :class:`CachedTeacher` gathers each batch's rows
from the map on the host. The rule: a streamed training split gets the directory format, an
in-memory one the ``.npz``; :func:`load_cache` reads a directory as the directory format. The data
checksum of a streamed split is :func:`stream_checksum` (its files, not their pixels).

A cache belongs to one teacher, one training set (in one order, normalized one way: rows are
looked up by position) and one way of presenting the examples to the teacher. :func:`load_cache`
verifies every array against its recorded sha256 (a damaged file is an error, never wrong
targets) and refuses, saying which part differs, a cache whose training checksum differs from
the data it is given, whose teacher differs from the teacher (weights and architecture) it is
given, or whose views differ from the views it is given. A cache of format version 1 (made by an
older distill, without the views, the architecture check or the array checksums) is refused:
rebuilding is cheap and the only way to know what it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import distributed
from distill._version import __version__
from distill.checkpoint import describe_spec, write_atomic
from distill.data.streaming import FileStream
from distill.data.tensors import DataSplits, TensorData, require_in_memory, split_batches
from distill.engine import predict_logits
from distill.engine.progress import Phase
from distill.teachers import FrozenTeacher, Targets, Teacher, TopK
from distill.views import AveragedTeacher, teacher_inputs

FORMAT = "distill.teacher_cache"
VERSION = 2
DTYPES = {"float16": torch.float16, "float32": torch.float32}
META = "meta.json"  # the directory format's record, written last
_CPU = torch.device("cpu")
REBUILD = "rebuild it with `distill run <config> --set recipe=cache` (or distill.cache.build_cache)"


class CacheError(ValueError):
    """A teacher cache is missing, unreadable, or does not belong to the data or teacher at hand."""


# --------------------------------------------------------------------------- identities


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())


def dataset_checksum(data: TensorData) -> str:
    """sha256 of the inputs and labels exactly as the teacher sees them (hex).

    Covers ``x`` and ``y``: their dtypes, shapes and bytes (read from CPU copies), so the
    checksum is that of the tensors *after* normalization and splitting: another split seed,
    validation size or normalization gives another checksum, as does the same data on a
    machine that normalized it differently.
    """
    h = hashlib.sha256()
    _hash_tensor(h, "x", data.x)
    _hash_tensor(h, "y", data.y)
    return h.hexdigest()


def stream_checksum(data: DataSplits) -> str:
    """sha256 (hex) of a training split streamed from image files, without decoding them: covers every
    file's path, byte size and label, in order, the resolution and channels the files are decoded to,
    and the normalization (mean, std). It does not cover the pixels: a file rewritten in place with the
    same size is not seen (rebuild the cache after editing images)."""
    stream = data.stream
    if not isinstance(stream, FileStream):
        raise CacheError(f"a teacher cache over a streamed training split needs image files (a FileStream), "
                         f"got {type(stream).__name__}")
    h = hashlib.sha256(f"stream:{list(stream.size)}:{stream.channels};".encode())
    for path in stream.files.paths:
        h.update(f"{path}:{os.path.getsize(path) if os.path.exists(path) else -1};".encode())
    _hash_tensor(h, "y", stream.files.labels)
    _hash_tensor(h, "mean", stream.mean.float())
    _hash_tensor(h, "std", stream.std.float())
    return h.hexdigest()


def split_checksum(data: TensorData) -> str:
    """The checksum a cache records of a test split: :func:`dataset_checksum` of one in memory, the stream's
    own (its files, :meth:`distill.data.streaming.FileSplit.checksum`) of one streamed from disk."""
    return data.stream.checksum() if data.stream is not None else dataset_checksum(data)


def train_checksum(data: TensorData | DataSplits) -> str:
    """The checksum a cache records of its training split: :func:`stream_checksum` for a streamed one,
    else :func:`dataset_checksum`."""
    if isinstance(data, DataSplits):
        return stream_checksum(data) if data.stream is not None else dataset_checksum(data.train)
    return dataset_checksum(data)


def teacher_fingerprint(model: nn.Module | Mapping[str, Tensor]) -> str:
    """sha256 of a model's weights, hex: every entry of its ``state_dict`` (buffers included) by name,
    dtype, shape and bytes, in name order.

    ``model`` may also be a state dict itself, such as a checkpoint's ``model`` entry: a model and
    the checkpoint it was loaded from (or saved to) have the same fingerprint, so a run can check a
    cache against ``teacher.checkpoint`` without building the model.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        _hash_tensor(h, name, state[name])
    return h.hexdigest()


SPEC_KEYS = ("name", "kwargs", "num_classes", "in_shape")


def architecture(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a ``model_spec`` that defines the model (registry name, keywords, classes, input
    shape) in its JSON form, so that a spec from a config and one read back from a file compare equal."""
    if spec is None:
        return None
    return json.loads(json.dumps({k: (spec.get(k) or {}) if k == "kwargs" else spec.get(k) for k in SPEC_KEYS},
                                 sort_keys=True))


def _describe_source(source: str) -> str:
    """A :func:`distill.models.weights_source` record in words."""
    kind, _, what = source.partition(":")
    return f"files sha256 {what[:12]}" if kind == "dir" else f"{what}" if kind == "hub" else source


def describe_data(data: TensorData | DataSplits, **facts: Any) -> dict[str, Any]:
    """What a cache records about the examples it was built over, to explain a mismatch (the
    checksum decides): rows and input shape; for a ``DataSplits`` its name and normalization
    (per-channel mean and std); ``facts``: how the run made the split (``split_seed``,
    ``val_size``, ``train_size``, ``transfer``...). JSON values only."""
    train = data.train if isinstance(data, DataSplits) else data
    record: dict[str, Any] = {"rows": len(train), "input_shape": [int(v) for v in train.x.shape[1:]]}
    if isinstance(data, DataSplits):
        record.update(name=data.name, mean=data.mean.tolist(), std=data.std.tolist())
    return json.loads(json.dumps({**record, **facts}))


def _array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _differences(recorded: Mapping[str, Any] | None, given: Mapping[str, Any] | None) -> str:
    """``key recorded -> given`` for the keys both records hold with different values."""
    if not recorded or not given:
        return ""
    keys = [k for k in recorded if k in given and recorded[k] != given[k]]
    return "; ".join(f"{k} {json.dumps(recorded[k])} -> {json.dumps(given[k])}" for k in keys)


def describe_views(record: Mapping[str, Any] | None) -> str:
    """A :func:`distill.views.teacher_inputs` record in words."""
    if record is None:
        return "unrecorded views"
    size = "x".join(str(v) for v in record.get("size") or []) or "?"
    if record.get("mode") == "none":
        return f"the plain examples ({size})"
    rest = ", ".join(f"{k}={json.dumps(v)}" for k, v in record.items() if k not in ("mode", "size"))
    return f"views {record.get('mode')} at {size}" + (f" ({rest})" if rest else "")


# --------------------------------------------------------------------------- the cache in memory


@dataclass(eq=False)
class TeacherCache:
    """A teacher's outputs for every training example, on the CPU.

    Exactly one form: ``logits`` (n, C), or ``indices`` (n, k, int64) with ``log_probs`` (n, k)
    at ``temperature``. ``test_predictions`` (the teacher's top-1 on the test split) and
    ``test`` (its test metrics and the test split's checksum) are optional. ``data_record``
    (:func:`describe_data`) and ``views`` (:func:`distill.views.teacher_inputs`) say what it was
    built over. See the module docstring for what each field means on disk.
    """

    num_classes: int
    data_checksum: str
    logits: Tensor | None = None
    indices: Tensor | None = None
    log_probs: Tensor | None = None
    temperature: float | None = None
    teacher_fingerprint: str | None = None
    model_spec: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    test_predictions: Tensor | None = None
    created: str = ""
    distill_version: str = ""
    data_record: dict[str, Any] | None = None
    views: dict[str, Any] | None = None
    #: the memory maps behind ``logits`` / ``indices`` / ``log_probs`` of a directory cache (else empty):
    #: their rows are read from disk when gathered, never all at once
    mapped: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()

    @property
    def kind(self) -> Literal["logits", "topk"]:
        return "logits" if self.logits is not None else "topk"

    @property
    def n(self) -> int:
        values = self.logits if self.logits is not None else self.log_probs
        assert values is not None
        return int(values.shape[0])

    @property
    def k(self) -> int | None:
        return None if self.indices is None else int(self.indices.shape[1])

    @property
    def dtype(self) -> str:
        values = self.logits if self.logits is not None else self.log_probs
        assert values is not None
        return str(values.dtype).removeprefix("torch.")

    def top1(self) -> Tensor:
        """The teacher's most probable class for each training example (n,)."""
        if self.logits is not None:
            return self.logits.argmax(-1)
        assert self.indices is not None
        return self.indices[:, 0].long()

    def describe(self) -> str:
        what = "full logits" if self.kind == "logits" else f"top-{self.k} at temperature {self.temperature}"
        return f"{self.n} rows of {what} ({self.dtype}, {self.num_classes} classes)"

    def _check(self) -> None:
        """Shapes, dtypes and values that every valid cache has (ValueError otherwise)."""
        C = self.num_classes
        if (self.logits is None) == (self.indices is None and self.log_probs is None):
            raise ValueError("a teacher cache holds either logits or indices with log_probs, not both or neither")
        if self.logits is not None:
            z = self.logits
            if z.dim() != 2 or z.shape[1] != C or z.dtype not in DTYPES.values():
                raise ValueError(f"logits must be (n, {C}) float16/float32, got {tuple(z.shape)} {z.dtype}")
            if not self.mapped and not bool(torch.isfinite(z).all()):  # a map's values are not all read
                raise ValueError("logits contain NaN or inf")
        else:
            idx, lp = self.indices, self.log_probs
            if idx is None or lp is None:
                raise ValueError("a top-k cache needs both indices and log_probs")
            if idx.dim() != 2 or idx.shape != lp.shape or not 1 <= idx.shape[1] <= C:
                raise ValueError(f"indices {tuple(idx.shape)} and log_probs {tuple(lp.shape)} must both be "
                                 f"(n, k) with 1 <= k <= {C}")
            index_dtypes = (torch.uint8, torch.int16, torch.int32) if self.mapped else (torch.int64,)
            if idx.dtype not in index_dtypes or lp.dtype not in DTYPES.values():
                raise ValueError(f"indices must be {' or '.join(str(d) for d in index_dtypes)} and log_probs "
                                 f"float16/float32, got {idx.dtype}, {lp.dtype}")
            if self.temperature is None or not self.temperature > 0:
                raise ValueError(f"a top-k cache needs the temperature > 0 of its probabilities, "
                                 f"got {self.temperature}")
            if self.mapped:
                pass  # a map's values are not all read: its rows were checked when written
            elif idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= C):
                raise ValueError(f"indices must be class indices in [0, {C})")
            mass = lp[:0 if self.mapped else None].float().exp().sum(-1)
            if not self.mapped and bool(lp.isnan().any()) or bool((lp > 1e-3).any()) or bool((mass > 1.01).any()):
                raise ValueError("log_probs are not log-probabilities (NaN, > 0, or summing to more than 1)")
        if (self.test is None) != (self.test_predictions is None):
            raise ValueError("test metrics and test_predictions come together")
        if self.test_predictions is not None and self.test is not None:
            p = self.test_predictions
            if p.dim() != 1 or p.shape[0] != self.test["n"] or (p.numel() and int(p.max()) >= C):
                raise ValueError(f"test_predictions must be {self.test['n']} class indices")

    def verify(self, *, data: TensorData | DataSplits | None = None,
               teacher: nn.Module | Mapping[str, Tensor] | str | None = None,
               model_spec: Mapping[str, Any] | None = None, views: Mapping[str, Any] | None = None,
               data_record: Mapping[str, Any] | None = None, source: str = "this teacher cache") -> None:
        """Raise :class:`CacheError` unless the cache belongs to ``data``, ``teacher`` and ``views``;
        the message says which part differs (data, teacher or views) and what to do.

        ``data``: the training split the cache must have been built over (for a ``DataSplits``,
        its ``train``, and also its ``test`` when the cache records test predictions);
        ``data_record`` (:func:`describe_data` of it, with the run's facts) only explains a
        mismatch. ``teacher``: a model, a state dict (a checkpoint's ``model`` entry) or a
        :func:`teacher_fingerprint`, whose weights must be those the cache was made from;
        ``model_spec``: the architecture it must have been made from (and, where both record its ``source``,
        the pretrained files: a teacher changed under the same name differs there). ``views``: the
        :func:`distill.views.teacher_inputs` record of what the teacher must have seen.
        Whatever is not given is not checked.
        """
        if data is not None:
            train = data.train if isinstance(data, DataSplits) else data
            given = data_record if data_record is not None else describe_data(data)
            self._check_split(train_checksum(data), len(train), self.data_checksum, self.n, "training", source, given)
            if isinstance(data, DataSplits) and self.test is not None:
                self._check_split(split_checksum(data.test), len(data.test), self.test["checksum"], self.test["n"],
                                  "test", source, given)
        if teacher is not None or model_spec is not None:
            self._check_teacher(teacher, model_spec, source)
        if views is not None and json.loads(json.dumps(dict(views))) != self.views:
            raise CacheError(
                f"{source} does not match this run's views: it holds the teacher's outputs on "
                f"{describe_views(self.views)}, but this run's teacher must see {describe_views(views)} "
                f"(distill.views); {REBUILD} with these views, or point distill.cache.path to a cache made with them."
            )

    def _check_teacher(self, teacher: nn.Module | Mapping[str, Tensor] | str | None,
                       model_spec: Mapping[str, Any] | None, source: str) -> None:
        fix = (f"{REBUILD} from this teacher, or point distill.cache.path to the cache made from it "
               "(or teacher.checkpoint to the teacher the cache was made from)")
        if model_spec is not None:
            recorded, given = architecture(self.model_spec), architecture(model_spec)
            if recorded is None:
                raise CacheError(f"{source} does not record its teacher's architecture, so it cannot be checked "
                                 f"against {describe_spec(given)}; {fix}")
            if recorded != given:
                raise CacheError(f"{source} does not match this run's teacher (a different teacher architecture): "
                                 f"it was made from {describe_spec(recorded)}, this run's teacher is "
                                 f"{describe_spec(given)} ({_differences(recorded, given)}); {fix}")
            made, now = (self.model_spec or {}).get("source"), model_spec.get("source")
            if made is not None and now is not None and made != now:
                raise CacheError(f"{source} does not match this run's teacher (the same name, {describe_spec(given)}, "
                                 f"but other pretrained files: {_describe_source(made)} when the cache was made, "
                                 f"{_describe_source(now)} now: its weights or config changed); {fix}")
        if teacher is not None:
            given_fp = teacher if isinstance(teacher, str) else teacher_fingerprint(teacher)
            if self.teacher_fingerprint is None:
                raise CacheError(f"{source} does not record which teacher it came from (it was built from a "
                                 "teacher function, not an nn.Module), so it cannot be checked against one")
            if given_fp != self.teacher_fingerprint:
                raise CacheError(f"{source} does not match this run's teacher (a different teacher: its weights "
                                 f"differ, sha256 {self.teacher_fingerprint[:12]} in the cache, {given_fp[:12]} "
                                 f"here); {fix}")

    def _check_split(self, actual: str, rows: int, recorded: str, n: int, split: str, source: str,
                     given: Mapping[str, Any]) -> None:
        if actual != recorded:
            changed = _differences(self.data_record, given)
            raise CacheError(
                f"{source} does not match this run's data (a different dataset/split/normalization): its {split} "
                f"set has {n} rows and checksum {recorded[:12]}, this run's has {rows} rows and checksum "
                f"{actual[:12]}{f' (changed: {changed})' if changed else ''}. Its rows would be paired with the "
                f"wrong examples; {REBUILD} on this data, or point distill.cache.path to the cache made for it."
            )


# --------------------------------------------------------------------------- building


def _row_batches(start: int, stop: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for i in range(start, stop, batch_size):
        yield i, min(i + batch_size, stop)


def _teacher_logits(teacher: nn.Module | Teacher, x: Tensor, index: Tensor | None) -> Tensor:
    """Float32 logits of one batch: an ``nn.Module`` in eval mode, or a teacher's ``logits`` targets."""
    if isinstance(teacher, nn.Module):
        return predict_logits(teacher, x, batch_size=max(len(x), 1))
    targets = teacher(x, index)
    if targets.logits is None:
        raise CacheError(f"{teacher!r} gives probabilities or a top-k summary, not logits; a cache is built "
                         "from logits (use the underlying model, or an ensemble's members one by one)")
    return targets.logits.detach().float()


def _batch_outputs(teacher: nn.Module | Teacher, x: Tensor, index: Tensor, topk: int | None,
                   temperature: float | None, torch_dtype: torch.dtype, rows: str) -> dict[str, Tensor]:
    """The cache's arrays for one batch (on the batch's device): logits, or top-k indices and log-probabilities."""
    z = _teacher_logits(teacher, x, index)
    if not bool(torch.isfinite(z).all()):
        raise CacheError(f"the teacher's logits for {rows} contain NaN or inf; check the teacher")
    if topk is None:
        if torch_dtype == torch.float16 and bool((z.abs() > torch.finfo(torch.float16).max).any()):
            raise CacheError("the teacher's logits exceed the float16 range; use dtype float32")
        return {"logits": z.to(torch_dtype)}
    assert temperature is not None
    values, classes = F.log_softmax(z / temperature, dim=-1).topk(topk, dim=-1)
    # probabilities below float16's range are 0 either way; keep the stored values finite
    values = values.clamp_min(torch.finfo(torch_dtype).min)
    return {"indices": classes, "log_probs": values.to(torch_dtype)}


def teacher_outputs(teacher: nn.Module | Teacher, x: Tensor, start: int, stop: int, *, topk: int | None = None,
                    temperature: float | None = None, dtype: str = "float32", batch_size: int = 1024,
                    device: torch.device | str | None = None, phase: Phase | None = None) -> dict[str, Tensor]:
    """The cache's arrays for rows ``[start, stop)`` of ``x``, on the CPU.

    Returns ``{"logits": (m, C)}`` or ``{"indices": (m, k) int64, "log_probs": (m, k)}`` with
    ``m = stop - start``, values in ``dtype``. :func:`build_cache` calls it on all rows; a
    sharded build calls it on each worker's slice and concatenates the results in order.
    A teacher that is not an ``nn.Module`` is called as ``teacher(x_batch, index)`` with the
    batch's positions in ``x``. ``phase``: told of each batch's rows (a progress bar or lines).
    """
    device = torch.device(device) if device is not None else x.device
    parts: dict[str, list[Tensor]] = {}
    for i, j in _row_batches(start, stop, batch_size):
        out = _batch_outputs(teacher, x[i:j].to(device), torch.arange(i, j, device=device), topk, temperature,
                             DTYPES[dtype], f"rows {i}..{j - 1}")
        for key, value in out.items():
            parts.setdefault(key, []).append(value.cpu())
        if phase is not None:
            phase.update(j - i)
    if not parts:
        raise CacheError(f"no rows to cache in [{start}, {stop})")
    return {key: torch.cat(values) for key, values in parts.items()}


def _all_outputs(teacher: nn.Module | Teacher, x: Tensor, shard: bool, batch_size: int,
                 **kw: Any) -> dict[str, Tensor]:
    """:func:`teacher_outputs` for every row of ``x``. With ``shard``, each rank of the process group
    computes a contiguous run of whole batches (the very batches a single process would run, so
    the rows are the same) and every rank receives all the rows, in order."""
    n = x.shape[0]
    if not shard or -(-n // batch_size) < distributed.world_size():  # fewer batches than ranks: not worth it
        return teacher_outputs(teacher, x, 0, n, batch_size=batch_size, **kw)
    start, stop = distributed.shard(n, block=batch_size)
    part = teacher_outputs(teacher, x, start, stop, batch_size=batch_size, **kw)
    return {key: distributed.gather_rows(rows) for key, rows in part.items()}


def build_cache(teacher: nn.Module | Teacher, data: TensorData | DataSplits, *, topk: int | None = None,
                dtype: str = "float32", temperature: float | None = None, batch_size: int = 1024,
                device: torch.device | str | None = None,
                model_spec: dict[str, Any] | None = None, shard: bool | None = None,
                data_record: dict[str, Any] | None = None, views: dict[str, Any] | None = None,
                say: Callable[[str], None] | None = None) -> TeacherCache:
    """Run ``teacher`` once over the training examples and keep its outputs.

    ``teacher``: an ``nn.Module`` (run in eval mode without a graph, its mode restored; its
    fingerprint is recorded) or any :class:`~distill.teachers.Teacher` that gives logits.
    ``data``: the training split, or a ``DataSplits`` (its ``train``; the teacher's top-1 on
    its ``test`` is stored too, so agreement can be reported later without the teacher).
    ``topk``: keep only the k most probable classes at ``temperature`` (required then) and a
    tail bucket; None keeps the full logits, usable at any temperature. ``dtype``: "float32"
    or "float16". ``device``: where the teacher runs (default: that of its parameters, or of
    the data). ``model_spec``: the teacher's architecture, recorded and checked by a run that
    names its teacher. ``data_record``: facts about how the data was made (split seed, sizes),
    recorded with :func:`describe_data`. ``views``: what the teacher saw of each example
    (:func:`distill.views.teacher_inputs`); default: what a teacher wrapped by
    :func:`distill.views.fixed_teacher_view` records, else the plain examples. A teacher wrapped
    that way is fingerprinted (and its test predictions taken) without the wrapper.

    ``shard``: split the work over the ranks of a ``torch.distributed`` process group: rank r runs
    the teacher on its contiguous slice of the rows and every rank receives the whole cache, equal
    to a single-process build. None (default): shard whenever a group of several processes is
    initialized (``torchrun``); every rank must then call ``build_cache``, as ``distill run`` does.

    ``say``: where progress goes (:class:`distill.engine.progress.Phase`: a bar on a terminal, else a line every
    tenth of the rows; rank 0 only); None: none.
    """
    train = data.train if isinstance(data, DataSplits) else data
    require_in_memory(train, "the teacher cache (build_cache)")
    p = _prepare(teacher, train.x[:1], len(train), topk=topk, dtype=dtype, temperature=temperature, device=device,
                 views=views)
    shard = distributed.is_distributed() if shard is None else shard
    with Phase(len(train), "[cache] teacher", unit="example", say=say if distributed.is_main() else None) as phase:
        fields: dict[str, Any] = _all_outputs(p.model, train.x, shard, batch_size, topk=topk,
                                              temperature=p.temperature, dtype=dtype, device=p.device, phase=phase)
    if isinstance(data, DataSplits):
        fields.update(_test_fields(p.plain, data, shard, batch_size, p.device))
    return TeacherCache(
        num_classes=p.num_classes, data_checksum=dataset_checksum(train), temperature=p.temperature,
        teacher_fingerprint=teacher_fingerprint(p.plain) if isinstance(p.plain, nn.Module) else None,
        model_spec=model_spec, created=distributed.broadcast_object(_now()) if shard else _now(),
        distill_version=__version__, data_record=describe_data(data, **(data_record or {})),
        views=json.loads(json.dumps(p.views)), **fields,
    )


@dataclass
class _Build:
    model: nn.Module | Teacher  # what runs on the inputs
    plain: nn.Module | Teacher  # the teacher behind a fixed view: fingerprinted, asked about the test split
    views: dict[str, Any]
    device: torch.device
    temperature: float | None
    num_classes: int


def _prepare(teacher: nn.Module | Teacher, probe_x: Tensor, n: int, *, topk: int | None, dtype: str,
             temperature: float | None, device: torch.device | str | None,
             views: dict[str, Any] | None) -> _Build:
    """Check a build's request and find what every build needs (the teacher's classes from one probe input)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if n == 0:
        raise ValueError("the training set is empty: there is nothing to cache")
    if topk is not None:
        if temperature is None:
            raise ValueError("a top-k cache stores probabilities at one temperature: pass temperature=, the one "
                             "the student will be distilled at (distill.temperature)")
        if topk < 1:
            raise ValueError(f"topk must be a positive number of classes, got {topk}")
        temperature = float(temperature)
    else:
        temperature = None  # full logits are softened at whatever temperature the loss uses
    model = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
    plain = model.teacher if isinstance(model, AveragedTeacher) else model  # the teacher behind a fixed view
    if views is None:
        views = getattr(model, "inputs", None) or teacher_inputs(None, tuple(probe_x.shape[1:]))
    if device is None:
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else (probe_x.device if probe_x.device.type != "meta" else "cpu")
    device = torch.device(device)
    probe = _teacher_logits(model, probe_x.to(device), torch.zeros(1, dtype=torch.long, device=device))
    num_classes = int(probe.shape[-1])
    if topk is not None and topk > num_classes:
        raise ValueError(f"topk={topk} exceeds the teacher's {num_classes} classes")
    return _Build(model, plain, views, device, temperature, num_classes)


def _test_fields(plain: nn.Module | Teacher, data: DataSplits, shard: bool, batch_size: int,
                 device: torch.device) -> dict[str, Any]:
    """The teacher's top-1 on the test split and its metrics there (nothing for an empty test split)."""
    if not len(data.test):
        return {}
    if data.test.stream is None:
        z = _all_outputs(plain, data.test.x, shard, batch_size, device=device)["logits"]
        y = data.test.y.cpu()
    else:  # streamed from disk: one pass in index order (unreadable files left out)
        parts = [(_teacher_logits(plain, x, index).cpu(), y.cpu())
                 for x, y, index in split_batches(data.test, batch_size, device)]
        z, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    preds = z.argmax(-1)
    errors = int((preds != y).sum())
    return {"test_predictions": preds,
            "test": {"n": len(y), "checksum": split_checksum(data.test), "accuracy": (len(y) - errors) / len(y),
                     "errors": errors, "nll": float(F.cross_entropy(z, y))}}


def build_stream_cache(path: str | Path, teacher: nn.Module | Teacher, data: DataSplits, *, topk: int | None = None,
                       dtype: str = "float32", temperature: float | None = None, batch_size: int = 1024,
                       device: torch.device | str | None = None, model_spec: dict[str, Any] | None = None,
                       data_record: dict[str, Any] | None = None,
                       views: dict[str, Any] | None = None, say: Callable[[str], None] | None = None) -> TeacherCache:
    """:func:`build_cache` for a training split streamed from image files (``data.stream``), larger than
    memory: written, as it is computed, to the directory ``path`` (the directory format of the module
    docstring) in one pass over the files in sample-index order, ``meta.json`` last; returned as read
    back by :func:`load_cache` (memory-mapped). The arguments are :func:`build_cache`'s. Rows of files
    that cannot be decoded stay zero (training drops those files too, so they are never asked for);
    their count is recorded as ``data.unreadable_rows``. Under ``torchrun`` rank 0 builds it while the
    others wait; every rank returns the cache. ``say``: where progress goes (as :func:`build_cache`'s).
    """
    path = Path(path)
    if not isinstance(data.stream, FileStream):
        raise ValueError("build_stream_cache needs a training split streamed from image files (data.stream); "
                         "use build_cache and save_cache for data in memory")
    if distributed.is_distributed():
        if distributed.is_main():
            _write_stream_cache(path, teacher, data, data.stream, topk, dtype, temperature, batch_size, device,
                                model_spec, data_record, views, say)
        distributed.barrier()
    else:
        _write_stream_cache(path, teacher, data, data.stream, topk, dtype, temperature, batch_size, device,
                            model_spec, data_record, views, say)
    return load_cache(path)


def _write_stream_cache(path: Path, teacher: nn.Module | Teacher, data: DataSplits, stream: FileStream,
                        topk: int | None, dtype: str, temperature: float | None, batch_size: int,
                        device: torch.device | str | None, model_spec: dict[str, Any] | None,
                        data_record: dict[str, Any] | None, views: dict[str, Any] | None,
                        say: Callable[[str], None] | None = None) -> None:
    n = stream.num_examples
    p = _prepare(teacher, stream.examples(1), n, topk=topk, dtype=dtype, temperature=temperature, device=device,
                 views=views)
    if path.exists() and not path.is_dir():
        raise CacheError(f"{path} is a file; a teacher cache over streamed data is a directory: remove the file "
                         "or choose another distill.cache.path")
    path.mkdir(parents=True, exist_ok=True)
    (path / META).unlink(missing_ok=True)  # incomplete from here until meta.json is written again
    for old in path.glob("*.npy"):
        old.unlink()
    C = p.num_classes
    shapes = {"logits": (n, C)} if topk is None else {"indices": (n, topk), "log_probs": (n, topk)}
    dtypes = {"logits": np.dtype(dtype), "indices": _index_dtype(C), "log_probs": np.dtype(dtype)}
    arrays = {k: np.lib.format.open_memmap(path / f"{k}.npy", mode="w+", dtype=dtypes[k], shape=shape)
              for k, shape in shapes.items()}
    written = 0
    with Phase(n, "[cache] teacher", unit="example", say=say) as phase:
        for x, _, index in stream.in_order(batch_size, p.device):
            rows = index.cpu().numpy()
            out = _batch_outputs(p.model, x, index, topk, p.temperature, DTYPES[dtype],
                                 f"training files {int(rows[0])}..{int(rows[-1])}")
            for key, value in out.items():
                arrays[key][rows] = value.cpu().numpy().astype(dtypes[key])
            written += len(rows)
            phase.update(len(rows))
    for a in arrays.values():
        a.flush()
    fields = _test_fields(p.plain, data, False, batch_size, p.device)
    tensors: dict[str, Any] = {k: torch.from_numpy(a) for k, a in arrays.items()}
    record = describe_data(data, **(data_record or {}), unreadable_rows=n - written)
    cache = TeacherCache(
        num_classes=C, data_checksum=stream_checksum(data), temperature=p.temperature,
        teacher_fingerprint=teacher_fingerprint(p.plain) if isinstance(p.plain, nn.Module) else None,
        model_spec=model_spec, created=_now(), distill_version=__version__, data_record=record,
        views=json.loads(json.dumps(p.views)), mapped=dict(arrays),
        **tensors, **fields)
    test_predictions = {}
    if cache.test_predictions is not None:
        test_predictions["test_predictions"] = cache.test_predictions.numpy().astype(_smallest_uint(C - 1))
        np.save(path / "test_predictions.npy", test_predictions["test_predictions"])
    meta = _meta(cache, {**arrays, **test_predictions})
    write_atomic(path / META, lambda f: f.write(json.dumps(meta, allow_nan=False, indent=1).encode()))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the file


def _smallest_uint(max_value: int) -> np.dtype:
    return np.min_scalar_type(max(int(max_value), 0))


def _index_dtype(num_classes: int) -> np.dtype:
    """The directory format's class indices: the smallest of uint8, int16, int32 (the integer types torch
    reads from a map) that holds ``num_classes - 1``."""
    for t in (np.uint8, np.int16, np.int32):
        if num_classes - 1 <= np.iinfo(t).max:
            return np.dtype(t)
    raise ValueError(f"{num_classes} classes do not fit int32 class indices")


def cache_size_bytes(path: str | Path) -> int:
    """The bytes a cache takes on disk: the ``.npz`` file, or every file of a directory cache."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else path.stat().st_size


def save_cache(path: str | Path, cache: TeacherCache) -> Path:
    """Write ``cache`` to ``path`` (the format in the module docstring), atomically: a crash
    leaves the previous file, if any, intact.

    In a process group of several ranks (after a sharded :func:`build_cache`, every rank holding
    the same cache) rank 0 writes the one file and every rank returns once it is there; every
    rank must call it then.
    """
    path = Path(path)
    if distributed.is_distributed():
        if distributed.is_main():
            _write_cache(path, cache)
        distributed.barrier()
        return path
    return _write_cache(path, cache)


def _meta(cache: TeacherCache, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The ``meta`` record of the module docstring, with the sha256 of each of ``arrays``."""
    meta = {"format": FORMAT, "version": VERSION, "kind": cache.kind, "n": cache.n, "num_classes": cache.num_classes,
            "k": cache.k, "temperature": cache.temperature, "dtype": cache.dtype,
            "data_checksum": cache.data_checksum, "data": cache.data_record,
            "teacher_fingerprint": cache.teacher_fingerprint, "model_spec": cache.model_spec, "views": cache.views,
            "test": cache.test, "created": cache.created, "distill_version": cache.distill_version}
    meta["checksums"] = {name: _array_sha256(a) for name, a in arrays.items()}
    return meta


def _write_cache(path: Path, cache: TeacherCache) -> Path:
    arrays: dict[str, np.ndarray] = {}
    if cache.logits is not None:
        arrays["logits"] = cache.logits.numpy()
    else:
        assert cache.indices is not None and cache.log_probs is not None
        arrays["indices"] = cache.indices.numpy().astype(_smallest_uint(cache.num_classes - 1))
        arrays["log_probs"] = cache.log_probs.numpy()
    if cache.test_predictions is not None:
        arrays["test_predictions"] = cache.test_predictions.numpy().astype(_smallest_uint(cache.num_classes - 1))
    text = json.dumps(_meta(cache, arrays), allow_nan=False)
    # Any, not np.ndarray: mypy would match **entries against savez's allow_pickle: bool keyword
    entries: dict[str, Any] = {"meta": np.array(text),
                               "meta_sha256": np.array(hashlib.sha256(text.encode()).hexdigest()), **arrays}
    return write_atomic(path, lambda f: np.savez(f, **entries))


def load_cache(path: str | Path, *, data: TensorData | DataSplits | None = None,
               teacher: nn.Module | Mapping[str, Tensor] | str | None = None,
               model_spec: Mapping[str, Any] | None = None, views: Mapping[str, Any] | None = None,
               data_record: Mapping[str, Any] | None = None) -> TeacherCache:
    """Read a cache written by :func:`save_cache`, verify its arrays, and check it against what the
    caller passes.

    ``data``: the training split (or ``DataSplits``) it must have been built over; ``teacher``:
    the model, state dict or fingerprint whose weights it must come from, ``model_spec`` the
    architecture; ``views``: what the teacher must have seen (see :meth:`TeacherCache.verify`).
    Raises :class:`CacheError` for a missing, truncated, damaged or altered file (every array is
    checked against the sha256 its meta records), another format version (a version-1 cache, made
    by an older distill, must be rebuilt), or a cache that belongs to other data, another teacher
    or other views.
    """
    path = Path(path)
    if path.is_dir():
        meta, arrays = _read_dir(path)
    elif path.is_file():
        meta, arrays = _read_npz(path)
    else:
        raise CacheError(f"teacher cache {path} does not exist; build it with `distill run <config> --set "
                         "recipe=cache` (or distill.cache.build_cache and save_cache)")
    mapped = path.is_dir()

    def indices(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a if mapped else a.astype(np.int64))

    try:
        cache = TeacherCache(
            num_classes=int(meta["num_classes"]), data_checksum=str(meta["data_checksum"]),
            logits=torch.from_numpy(arrays["logits"]) if meta["kind"] == "logits" else None,
            indices=indices(arrays["indices"]) if meta["kind"] == "topk" else None,
            log_probs=torch.from_numpy(arrays["log_probs"]) if meta["kind"] == "topk" else None,
            temperature=meta["temperature"], teacher_fingerprint=meta["teacher_fingerprint"],
            model_spec=meta["model_spec"], test=meta["test"],
            test_predictions=(torch.from_numpy(arrays["test_predictions"].astype(np.int64))
                              if "test_predictions" in arrays else None),
            created=str(meta["created"]), distill_version=str(meta["distill_version"]),
            data_record=meta["data"], views=meta["views"],
            mapped={k: a for k, a in arrays.items() if k != "test_predictions"} if mapped else {})
        recorded = {"n": meta["n"], "k": meta["k"], "dtype": meta["dtype"]}
        actual = {"n": cache.n, "k": cache.k, "dtype": cache.dtype}
        if recorded != actual:
            raise ValueError(f"its meta entry records {recorded} but its arrays hold {actual}")
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e} entry" if isinstance(e, KeyError) else str(e)
        raise CacheError(f"teacher cache {path} is inconsistent ({what}); it was altered or written by "
                         f"something else: {REBUILD}") from None
    cache.verify(data=data, teacher=teacher, model_spec=model_spec, views=views, data_record=data_record,
                 source=f"teacher cache {path}")
    return cache


def _check_format(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CacheError(f"{path} is not a distill teacher cache (its meta entry names no {FORMAT!r} format)")
    version = meta.get("version")
    if isinstance(version, int) and version < VERSION:
        raise CacheError(f"teacher cache {path} was made by an older distill (format version {version}; this one "
                         f"reads version {VERSION}, which records the teacher's architecture, the views and a "
                         f"checksum of every array, so that a cache that does not fit the run is refused): "
                         f"{REBUILD}")
    if version != VERSION:
        raise CacheError(f"teacher cache {path} has format version {version}, this distill reads "
                         f"version {VERSION} (it may come from a newer distill); {REBUILD}")


def _read_dir(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A directory cache's meta and its arrays, memory-mapped (copy-on-write: torch can wrap them without
    a copy, and nothing is ever written back). The arrays' bytes are not re-hashed (a full read)."""
    if not (path / META).is_file():
        raise CacheError(f"teacher cache {path} is incomplete: the directory has no {META}, which its build writes "
                         f"last (the build was interrupted, or this is not a teacher cache); delete {path} and "
                         f"{REBUILD}")
    try:
        meta = json.loads((path / META).read_text())
    except Exception as e:
        raise CacheError(f"teacher cache {path} cannot be read ({path / META}: {type(e).__name__}: "
                         f"{str(e)[:200]}): {REBUILD}") from None
    _check_format(path, meta)
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or not set(checksums) <= {"logits", "indices", "log_probs", "test_predictions"}:
        raise CacheError(f"teacher cache {path} is corrupted: {META} does not record the checksums of the cache's "
                         f"arrays; delete {path} and {REBUILD}")
    arrays: dict[str, np.ndarray] = {}
    for name in checksums:
        file = path / f"{name}.npy"
        try:
            arrays[name] = np.load(file, mmap_mode=None if name == "test_predictions" else "c", allow_pickle=False)
        except Exception as e:  # missing, truncated (shorter than its header says), not an .npy
            raise CacheError(f"teacher cache {path} is damaged: {file.name} cannot be read ({type(e).__name__}: "
                             f"{str(e)[:200]}); delete {path} and {REBUILD}") from None
    return meta, arrays


def _read_npz(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An ``.npz`` cache's meta and arrays, every array checked against its recorded sha256."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reading checks each entry's CRC
        text = str(arrays.pop("meta"))
        meta = json.loads(text)
    except Exception as e:  # not a zip, truncated, altered bytes, no or unreadable meta
        raise CacheError(f"teacher cache {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it may be "
                         f"truncated or not a distill teacher cache: {REBUILD}") from None
    _check_format(path, meta)
    _verify_checksums(path, text, arrays, meta)
    return meta, arrays


def _verify_checksums(path: Path, text: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Refuse a cache whose meta or arrays are not those it was written with (sha256 of each)."""
    damaged = f"; it was damaged or altered after it was written: {REBUILD}"
    recorded = arrays.pop("meta_sha256", None)
    if recorded is None or str(recorded) != hashlib.sha256(text.encode()).hexdigest():
        raise CacheError(f"teacher cache {path} is corrupted: its meta entry does not match the sha256 recorded "
                         f"with it{damaged}")
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or set(checksums) != set(arrays):
        names = sorted(checksums) if isinstance(checksums, dict) else None
        raise CacheError(f"teacher cache {path} is corrupted: it holds the arrays {sorted(arrays)} but its meta "
                         f"records checksums for {names}{damaged}")
    for name, array in arrays.items():
        actual = _array_sha256(array)
        if actual != checksums[name]:
            raise CacheError(f"teacher cache {path} is corrupted: the sha256 of its {name!r} array is "
                             f"{actual[:12]}, its meta records {str(checksums[name])[:12]}{damaged}")


# --------------------------------------------------------------------------- the teacher


class CachedTeacher:
    """A :class:`~distill.teachers.Teacher` that reads stored outputs instead of running a model.

    ``teacher(x, index)`` returns the rows ``index`` (positions in the training set the cache
    was built over, as :func:`distill.engine.fit` passes them): ``Targets(logits=...)`` (float32)
    for a full-logit cache, ``Targets(topk=TopK(...))`` for a top-k one. ``x`` is not looked
    at beyond its batch size: the targets are those of the stored, un-augmented examples.

    The cache's tensors are moved once to ``device`` (default: the device of the first batch)
    and stay there in their stored dtype. A call does not synchronize with the host: :func:`fit`
    checks once, before training, that the cache covers the training set (:meth:`check_positions`),
    so its positions are in range by construction; a position outside the cache in a direct call
    raises :class:`CacheError` on the CPU (elsewhere the gather itself fails).
    Load the cache with ``load_cache(path, data=...)`` to be sure its rows are this data's.

    A memory-mapped (directory) cache stays on disk: each call gathers the batch's rows from the map
    on the host (reading only those rows) and copies them to the batch's device.
    """

    def __init__(self, cache: TeacherCache, device: torch.device | str | None = None) -> None:
        self.cache = cache
        self.num_rows = cache.n
        self.device: torch.device | None = None
        self._rows: dict[str, Tensor] = {}
        if device is not None:
            self._move_to(torch.device(device))

    def _move_to(self, device: torch.device) -> None:
        c = self.cache
        rows = {"logits": c.logits} if c.logits is not None else {"indices": c.indices, "log_probs": c.log_probs}
        where = torch.device("cpu") if c.mapped else device  # a map is gathered on the host, row by row
        self._rows = {k: v.to(where) for k, v in rows.items() if v is not None}
        self.device = device

    def check_positions(self, num_examples: int) -> None:
        """Refuse a training set of ``num_examples`` whose positions (0 to ``num_examples - 1``) are not all rows
        of the cache: called once by :func:`fit`, before training."""
        if num_examples > self.num_rows:
            raise CacheError(f"the training set has {num_examples} examples but the teacher cache only "
                             f"{self.num_rows} rows: the cache was built over another training set; {REBUILD}")

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        if index is None:
            raise ValueError("CachedTeacher looks its targets up by position in the training set but got "
                             "index=None; pass the batch's positions (fit does), or use FrozenTeacher(model) for "
                             "inputs that are not training examples")
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32) or index.shape[0] != x.shape[0]:
            raise ValueError(f"CachedTeacher needs one integer position per input: got index of shape "
                             f"{tuple(index.shape)} ({index.dtype}) for a batch of {x.shape[0]} inputs")
        if self.device != x.device:
            self._move_to(x.device)
        where = _CPU if self.cache.mapped else x.device
        if index.device != where:
            index = index.to(where)
        try:
            rows = {k: v.index_select(0, index) for k, v in self._rows.items()}
        except (IndexError, RuntimeError):  # the CPU's gather checks the range (an accelerator's fails on its own)
            self._refuse_positions(index)
            raise
        if self.cache.mapped:
            rows = {k: v.to(x.device, torch.int64 if k == "indices" else None) for k, v in rows.items()}
        if "logits" in rows:
            logits = rows["logits"]
            return Targets(logits=logits if logits.dtype == torch.float32 else logits.float())
        c = self.cache
        assert c.temperature is not None
        return Targets(topk=TopK(indices=rows["indices"], log_probs=rows["log_probs"].float(),
                                 num_classes=c.num_classes, temperature=c.temperature))

    def _refuse_positions(self, index: Tensor) -> None:
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0 or hi >= self.num_rows:
            raise CacheError(f"training-set position {hi if hi >= self.num_rows else lo} is outside the "
                             f"teacher cache's {self.num_rows} rows: the cache was built over another "
                             f"training set; {REBUILD}")

    def __repr__(self) -> str:
        return f"CachedTeacher({self.cache.describe()})"
