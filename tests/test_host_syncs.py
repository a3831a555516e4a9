"""The training loop makes the host wait for the device only at log steps and at an epoch's end, never in the
other steps (issue 16: on a fast GPU a small model's step is bound by kernel launches, and a sync per step stalls
the launch queue). Counted on the CPU by watching every ATen op (a dispatch mode) that reads a tensor's value on
the host: ``aten::_local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``), ``aten::is_nonzero``,
``aten::nonzero`` (a data-dependent shape) and ``aten::equal``; and the Python ways of reading one. (On CUDA the
backward runs on autograd's device thread, which the dispatch mode, thread-local, does not see.)"""

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from distill.config import OptimizerConfig, TrainConfig
from distill.engine import fit
from distill.engine.callbacks import Callback
from distill.models import create_model
from distill.objectives import KnowledgeDistillation
from distill.teachers import FrozenTeacher

READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal"}
PYTHON_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class Reads(TorchDispatchMode):
    def __init__(self, step: list[int], seen: list[tuple[int, str]]) -> None:
        super().__init__()
        self.step, self.seen = step, seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = "aten::" + func.__name__.split(".")[0]
        if name in READS:
            self.seen.append((self.step[0], name))
        return func(*args, **(kwargs or {}))


class Watch(Callback):
    """Notes each host read with the number of steps taken before it, from the first step to the end of the call."""

    def __init__(self) -> None:
        self.step, self.seen = [0], []
        self.mode = Reads(self.step, self.seen)

    def on_fit_start(self, tag: str, step: int, total_steps: int) -> None:
        self.mode.__enter__()

    def on_step(self, step: int) -> None:
        self.step[0] = step

    def on_fit_end(self, tag: str) -> None:
        self.mode.__exit__(None, None, None)


@pytest.mark.parametrize("device, changes", [
    ("cpu", {}), ("cpu", {"clip_grad_norm": 1.0, "augment": {"shift": 2}}),
    pytest.param("cuda", {"clip_grad_norm": 1.0, "augment": {"shift": 2}},
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
])
def test_no_host_sync_but_at_log_steps_and_the_epoch_end(digits_splits, monkeypatch, device, changes):
    watch = Watch()
    python_reads: list[tuple[int, str]] = []
    for name in PYTHON_READS:
        original = getattr(Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if watch.mode.seen is not None and watch.step[0] > 0:
                python_reads.append((watch.step[0], _name))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(Tensor, name, counted)
    torch.manual_seed(0)
    student = create_model("cnn", 10, digits_splits.in_shape, channels=(4, 8), hidden=16)
    teacher = create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16).eval()
    cfg = TrainConfig.model_validate({"epochs": 1, "batch_size": 64, "max_steps": 7, "log_every": 3,
                                      "optimizer": OptimizerConfig(name="sgd", lr=0.01), **changes})
    fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg, teacher=FrozenTeacher(teacher.to(device)),
        device=device, progress=None, callbacks=[watch])
    steps_with_reads = {step for step, _ in watch.seen + python_reads}
    print(device, "host reads by step:", sorted(set(watch.seen + python_reads)))
    assert steps_with_reads <= {3, 6, 7}  # the finite-loss checks at steps 3 and 6; step 7 ends the run's epoch
    assert {step for step, _ in watch.seen} >= {3, 6, 7}  # (the watch sees them)
    assert not [r for r in watch.seen if r[0] == 0]  # nor before the first step, after the probes
