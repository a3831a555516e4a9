"""A frozen teacher's batch norms folded into the convolutions before them, for its forward pass only.

In eval mode a batch norm is a fixed affine map per channel, ``y = γ (z - μ) / sqrt(σ² + ε) + β``; after a
convolution ``z = W ∗ x + b`` it folds into the convolution: ``W' = W γ / sqrt(σ² + ε)``,
``b' = (b - μ) γ / sqrt(σ² + ε) + β`` (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, section 3.2; computed by torch's
``torch.nn.utils.fusion.fuse_conv_bn_eval``). The teacher's forward then skips one pass over every activation map
(on the CPU, resnet20's forward takes about a fifth less time: ``benchmarks/results/throughput.md``). The outputs are
the same function, computed in another order: equal to float rounding, not bit for bit.

In the same copy, each ``nn.ReLU`` whose input nothing else reads runs in place (:func:`analyse`; the copy is kept
only where its outputs then equal the folded copy's bit for bit and its input batch is untouched): one pass less
over memory per activation map (on the CPU, resnet20's folded forward took 0.89x of the time with them in place).

What is folded is a **copy** (:func:`fold_batchnorm`); the user's teacher, its weights and its checkpoints never
change. :class:`FoldedTeacher` folds the copy again if the teacher's weights change in place during the run.

A pair is folded only where that is provably the same function, found by running the copy once on a real batch
(:func:`foldable_pairs`): a ``nn.Conv1d/2d/3d`` (exactly that type: a subclass such as a weight-standardized
convolution may compute something else) whose output is used by nothing but one ``nn.BatchNorm1d/2d/3d`` (exactly,
not ``SyncBatchNorm``) in eval mode with running statistics, each module called once per forward, float32/64
weights, no hooks on the model. Then the folded copy's outputs are compared with the teacher's on that batch, both in
full float32 (:func:`full_float32`: on CUDA, TF32 convolutions and matrix products keep 10 mantissa bits, about 1e-3
relative, so two TF32 evaluations of one function differ by far more than the check's float32 tolerance).

``train.fold_teacher_batchnorm`` (:func:`fold_teacher`): ``auto`` (the default) folds a live teacher
(:class:`~distill.teachers.FrozenTeacher`) whose features are not tapped (a feature method reads a batch norm's
output or a convolution's output before its batch norm), whose parameters are not trained in the run, outside
``torchrun``; ``false`` never folds; ``true`` folds also under ``torchrun`` and refuses a teacher that cannot be
folded. The choice is logged and recorded in every epoch's record (``teacher_batchnorm``); a resumed run keeps
the choice it was trained with.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from distill.teachers import FrozenTeacher, Targets, Teacher

CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SETTING = "train.fold_teacher_batchnorm"


class _Dataflow(TorchFunctionMode):
    """One forward of ``model``, watched: which convolution's output each batch norm reads, and who else uses it.

    Forward hooks note each call of a convolution (its output, held by a weak reference) or batch norm (whose
    input is which convolution's output); every torch function and tensor method (``__torch_function__``) that
    takes a convolution's output outside the batch norm that reads it counts as another use."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()
                      if type(m) in CONVS or type(m) in NORMS or (type(m) is nn.ReLU and not m.inplace)}
        self.calls: dict[str, int] = {n: 0 for n in self.names.values()}
        self.outputs: dict[int, tuple[weakref.ref[Tensor], str]] = {}  # id of a convolution's output -> it, the conv
        self.reads: dict[str, str] = {}  # batch norm -> the convolution whose output it read
        self.other_use: set[str] = set()  # convolutions whose output something else used (or kept)
        self.running: list[str] = []  # the batch norms whose forward is running
        # ReLUs: the input each read (held by a weak reference), and those whose input something else used after
        # it, or that read no tensor made inside the forward (the model's input, a view, a parameter)
        self.relu_inputs: dict[str, weakref.ref[Tensor]] = {}
        self.relu_unsafe: set[str] = set()
        self.running_relu: str | None = None
        self.outside = {id(t) for t in (*model.parameters(), *model.buffers(), x)}  # tensors not made by the forward
        self.handles = [h for m in self.names for h in (m.register_forward_pre_hook(self._pre),
                                                         m.register_forward_hook(self._post))]

    def _conv_of(self, t: Any) -> str | None:
        if not isinstance(t, Tensor):
            return None
        entry = self.outputs.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names[module]
        self.calls[name] += 1
        if type(module) is nn.ReLU:
            t = args[0] if len(args) == 1 else None
            if not isinstance(t, Tensor) or t._base is not None or id(t) in self.outside:
                self.relu_unsafe.add(name)
            else:
                self.relu_inputs[name] = weakref.ref(t)
            self.running_relu = name
        elif type(module) in NORMS:
            conv = self._conv_of(args[0]) if len(args) == 1 else None
            if conv is not None:
                self.reads[name] = conv
            self.running.append(name)

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        name = self.names[module]
        if type(module) is nn.ReLU:
            self.running_relu = None
        elif type(module) in NORMS:
            self.running.pop()
        elif isinstance(output, Tensor):
            self.outputs[id(output)] = (weakref.ref(output), name)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for t in tree_leaves((args, kwargs or {})):
            conv = self._conv_of(t)
            if conv is not None and not any(self.reads.get(bn) == conv for bn in self.running):
                self.other_use.add(conv)
            if isinstance(t, Tensor):
                for relu, ref in self.relu_inputs.items():
                    if ref() is t and relu != self.running_relu:
                        self.relu_unsafe.add(relu)  # read again after the ReLU: it must stay as it was
        return func(*args, **(kwargs or {}))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def foldable_pairs(model: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    """The (convolution, batch norm) pairs of ``model`` (in eval mode) that fold exactly: one forward on ``x``,
    watched (:class:`_Dataflow`); a pair qualifies when the batch norm (exactly ``nn.BatchNorm1d/2d/3d``, in eval
    mode with running statistics) read the convolution's (exactly ``nn.Conv1d/2d/3d``, float weights) output,
    nothing else used that output or kept it past the forward, and each ran once."""
    return analyse(model, x)[0]


def analyse(model: nn.Module, x: Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """:func:`foldable_pairs`, and the ``nn.ReLU`` modules (exactly that type) that may run in place in an inference
    copy: called once, on a tensor the forward made (not the model's input, a parameter or a buffer, nor a view of
    another tensor) that nothing used after the ReLU read it, nor kept past the forward. (Overwriting such a tensor
    with its ReLU changes nothing anything else reads; :func:`fold_teacher` also checks the copy's outputs.)"""
    flow = _Dataflow(model, x)
    try:
        with torch.no_grad(), flow:
            out = model(x)
    finally:
        flow.close()
    returned = {id(t) for t in tree_leaves(out) if isinstance(t, Tensor)}
    flow.relu_unsafe.update(name for name, ref in flow.relu_inputs.items() if id(ref()) in returned)
    del out
    kept = {conv for ref, conv in flow.outputs.values() if ref() is not None}  # stored by the model somewhere
    relus = [name for name, ref in flow.relu_inputs.items()
             if name not in flow.relu_unsafe and ref() is None and flow.calls[name] == 1]
    modules = dict(model.named_modules())
    pairs = []
    for bn, conv in flow.reads.items():
        norm, layer = modules[bn], modules[conv]
        assert isinstance(norm, nn.modules.batchnorm._BatchNorm) and isinstance(layer, nn.modules.conv._ConvNd)
        if (conv in flow.other_use or conv in kept or flow.calls[bn] != 1 or flow.calls[conv] != 1
                or norm.training or not norm.track_running_stats or norm.running_mean is None
                or type(norm) is not NORMS[CONVS.index(type(layer))]
                or layer.weight.dtype not in (torch.float32, torch.float64)):
            continue
        pairs.append((conv, bn))
    return pairs, relus


def fold_batchnorm(model: nn.Module, pairs: Iterable[tuple[str, str]], relus: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` (eval mode) with each (convolution, batch norm) pair of ``pairs`` folded: the
    convolution replaced by ``fuse_conv_bn_eval(conv, bn)``, the batch norm by ``nn.Identity``; and the ``nn.ReLU``
    modules ``relus`` run in place (no new tensor: one pass less over memory). ``model`` is not changed."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv, bn in pairs:
        _set(folded, conv, fuse_conv_bn_eval(modules[conv], modules[bn]))
        _set(folded, bn, nn.Identity())
    for relu in relus:
        cast(nn.ReLU, modules[relu]).inplace = True
    return folded.requires_grad_(False)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _versions(model: nn.Module) -> tuple[int, ...]:
    """The version counters of ``model``'s parameters and buffers: any change in place increments one."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


class FoldedTeacher(FrozenTeacher):
    """A :class:`~distill.teachers.FrozenTeacher` whose forward runs a copy of ``source`` with the batch norms of
    ``pairs`` folded (:func:`fold_batchnorm`). ``model`` is that copy (what the run converts to its memory
    format); ``source`` stays as it is. When ``source``'s weights change in place, the next call folds again."""

    def __init__(self, source: nn.Module, pairs: list[tuple[str, str]], relus: Sequence[str] = ()) -> None:
        super().__init__(fold_batchnorm(source, pairs, relus))
        self.source, self.pairs, self.relus = source, pairs, list(relus)
        self.versions = _versions(source)

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        if _versions(self.source) != self.versions:
            self.versions = _versions(self.source)
            fmt = torch.channels_last if _in_channels_last(self.model) else torch.contiguous_format
            self.model = fold_batchnorm(self.source, self.pairs, self.relus).to(  # type: ignore[call-overload]
                memory_format=fmt)
        return super().__call__(x, index)

    def __repr__(self) -> str:
        return (f"FoldedTeacher({type(self.source).__name__}, {len(self.pairs)} batch norms folded, {len(self.relus)} "
                f"ReLUs in place)")


def _in_channels_last(model: nn.Module) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and weights[0].is_contiguous(memory_format=torch.channels_last) \
        and not weights[0].is_contiguous()


@dataclass(frozen=True)
class TeacherFold:
    """Whether the teacher's batch norms were folded, how many, and why (``decided_by``)."""

    folded: int  # batch norms folded into their convolutions (0: the teacher runs as it is)
    decided_by: str  # SETTING, "auto", or why not: "auto: <reason>", "resumed"
    relu_inplace: int = 0  # ReLUs of the folded copy that run in place

    def record(self) -> dict[str, Any]:
        if self.folded:
            return {"folded": self.folded, "decided_by": self.decided_by, "relu_inplace": self.relu_inplace}
        return {"folded": self.folded, "decided_by": self.decided_by}

    def line(self) -> str:
        if self.folded:
            return (f"teacher batch norm: {self.folded} folded into the convolutions before them, {self.relu_inplace} "
                    f"ReLUs in place ({SETTING}: {self.decided_by})")
        return f"teacher batch norm: not folded ({SETTING}: {self.decided_by})"


@contextmanager
def full_float32() -> Iterator[None]:
    """float32 convolutions and matrix products in full float32 inside (cuDNN's TF32 off, matmul precision
    ``highest``), the settings as they were after; on the CPU, where TF32 does not apply, the same arithmetic."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.set_float32_matmul_precision(matmul)


def fold_teacher(teacher: Teacher | None, setting: str | bool, x: Tensor, *, tapped: bool, trained: set[int],
                 world_size: int, saved: dict[str, Any] | None = None) -> tuple[Teacher | None, TeacherFold | None]:
    """The teacher the run calls, and the choice (None: no live teacher with a batch norm, nothing to choose).

    ``x``: a batch of the teacher's inputs (its view); ``tapped``: its features are read (by hooks); ``trained``:
    ids of the parameters the run trains; ``saved``: the choice recorded by the run being resumed (``auto``
    keeps it). ``setting`` is ``train.fold_teacher_batchnorm``; ``true`` raises where ``auto`` would not fold."""
    if not isinstance(teacher, FrozenTeacher) or isinstance(teacher, FoldedTeacher):
        return teacher, None
    model = teacher.model
    if not any(type(m) in NORMS or isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return teacher, None
    if setting is False:
        return teacher, TeacherFold(0, "false")
    auto = setting == "auto"
    reason = ""
    if tapped or teacher.taps is not None:
        reason = "its features are tapped, and a feature can be a batch norm's input or output"
    elif any(id(p) in trained for p in model.parameters()):
        reason = "its parameters are trained in this run"
    elif any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        reason = "hooks are attached to its modules"
    elif auto and world_size > 1:
        reason = "data parallel (torchrun); set it to true to fold there"
    elif auto and saved is not None and not saved.get("folded"):
        reason = "the run being resumed was trained with it unfolded"
    if reason:
        if not auto:
            raise ValueError(f"{SETTING}: true, but the teacher's batch norms cannot be folded: {reason}; set "
                             f"{SETTING} to auto or false")
        return teacher, TeacherFold(0, f"auto; {reason}")
    was_training = model.training
    model.eval()
    try:
        pairs, relus = analyse(model, x)
        folded = FoldedTeacher(model, pairs) if pairs else None
        if folded is not None:
            with torch.inference_mode(), full_float32():  # the tolerance is float32's, not TF32's
                want, got = model(x), folded.model(x)
            scale = float(want.abs().max()) if isinstance(want, Tensor) and want.numel() else 0.0
            if not (isinstance(got, Tensor) and got.shape == want.shape
                    and float((got - want).abs().max()) <= 1e-4 * scale + 1e-6):
                raise ValueError("the folded copy's outputs differ from the teacher's")
            folded = _with_relus_in_place(folded, relus, x, got)
    except Exception as e:  # a model the analysis (or copying it) cannot follow: the teacher runs as it is
        if not auto:
            raise ValueError(f"{SETTING}: true, but folding the teacher's batch norms failed ({e}); set {SETTING} "
                             "to auto or false") from e
        return teacher, TeacherFold(0, f"auto; folding failed ({type(e).__name__}: {str(e)[:120]})")
    finally:
        model.train(was_training)
    if folded is None:
        return teacher, TeacherFold(0, "auto; no batch norm directly after a convolution" if auto
                                    else "true; no batch norm directly after a convolution")
    return folded, TeacherFold(len(pairs), "auto" if auto else "true", len(folded.relus))


def _with_relus_in_place(folded: FoldedTeacher, relus: list[str], x: Tensor, want: Tensor) -> FoldedTeacher:
    """``folded`` with its copy's ``relus`` in place where the copy then computes the same outputs bit for bit (a
    ReLU in place computes the same numbers) and leaves its input ``x`` as it was (:func:`_unchanged`); else with
    them as they were."""
    if not relus:
        return folded
    modules = dict(folded.model.named_modules())
    chosen = [cast(nn.ReLU, modules[name]) for name in relus]
    for relu in chosen:
        relu.inplace = True
    with torch.inference_mode(), full_float32():
        same = _unchanged(folded.model, x, want)
    if same:
        folded.relus = list(relus)  # and when the teacher's weights change, the copy folded again has them too
    else:
        restore_relus(chosen)
    return folded


def _unchanged(model: nn.Module, x: Tensor, want: Any) -> bool:
    """Whether ``model(x)`` is ``want`` bit for bit (every tensor of it) and leaves ``x`` as it was."""
    before = x.clone()
    got = model(x)
    leaves = list(zip(tree_leaves(got), tree_leaves(want), strict=True))
    return all(isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b) for a, b in leaves) \
        and torch.equal(x, before)


RELU_CHECK_MAX_PARAMETERS = 50_000_000
""":func:`relus_in_place` checks a training step on a deep copy of the student: not for students larger than this
(the copy would take their memory again), which train as they are."""


def relus_in_place(model: nn.Module, x: Tensor) -> list[nn.ReLU]:
    """Set ``model``'s ``nn.ReLU`` modules whose input nothing else reads (:func:`analyse`, watched in eval mode on
    ``x``) to run in place, for a training run: the same numbers forward and backward (the ReLU's gradient mask
    ``y > 0`` equals ``x > 0``), one tensor less per activation, and autograd's version counters refuse, loudly, an
    in-place write over a tensor a backward needs. Not where hooks are attached (they may read a ReLU's input), and
    undone unless ``model`` then computes on ``x`` the same outputs bit for bit, leaving ``x`` as it was. Returns
    the modules set, for :func:`restore_relus` when the run ends."""
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()) \
            or sum(p.numel() for p in model.parameters()) > RELU_CHECK_MAX_PARAMETERS:
        return []
    was_training = model.training
    model.eval()
    relus: list[nn.ReLU] = []
    try:
        with torch.no_grad():
            want = model(x)
            modules = dict(model.named_modules())
            relus = [cast(nn.ReLU, modules[name]) for name in analyse(model, x)[1]]
            if not relus:
                return []
            for relu in relus:
                relu.inplace = True
            same = _unchanged(model, x, want)
        if same and _trains(model, x):
            return relus
    except Exception:  # noqa: BLE001  # a model the analysis cannot follow trains as it is
        pass
    finally:
        model.train(was_training)
    restore_relus(relus)
    return []


def _trains(model: nn.Module, x: Tensor) -> bool:
    """Whether a copy of ``model`` takes a training forward and backward on ``x`` (a ReLU in place over a tensor
    whose producer's backward needs it, e.g. a sigmoid's output, fails here instead of in the run)."""
    trial = copy.deepcopy(model).train()
    try:
        with torch.enable_grad():
            loss = sum(t.float().sum() for t in tree_leaves(trial(x)) if isinstance(t, Tensor) and t.requires_grad)
            if isinstance(loss, Tensor):
                loss.backward()
    except RuntimeError:
        return False
    return True


def restore_relus(relus: Iterable[nn.ReLU]) -> None:
    """Undo :func:`relus_in_place`."""
    for relu in relus:
        relu.inplace = False
