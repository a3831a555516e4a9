"""What the method tests share at the objective level: two unlike teacher/student pairs on digits-shaped
inputs, one step of an objective with the features tapped as the engine taps them, and short runs of
``distill.fit`` on digits (a paired student: the same initial weights in every run)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import TrainConfig
from distill.engine import evaluate, fit
from distill.models import create_model
from distill.objectives import FactorTransferParaphraser, SimKDStudent, build_method
from distill.objectives.base import StepOutputs
from distill.taps import run_with_taps
from distill.teachers import FrozenTeacher, Targets


DIGITS = (1, 8, 8)


def cnn_teacher_mlp_student() -> tuple[nn.Module, nn.Module]:
    """Features of different rank: teacher maps (16, 4, 4), (32, 2, 2); student vectors (24,), (16,)."""
    return (create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=32),
            create_model("mlp", 10, DIGITS, hidden=[24, 16]))


def wide_cnn_teacher_resnet_student() -> tuple[nn.Module, nn.Module]:
    """Teacher stages (24, 4, 4), (48, 2, 2), (64, 2, 2); student (16, 8, 8), (32, 4, 4), (64, 2, 2)."""
    return (create_model("cnn", 10, DIGITS, channels=(24, 48, 64), hidden=0),
            create_model("resnet8", 10, DIGITS))


PAIRS = {"cnn->mlp": cnn_teacher_mlp_student, "wide cnn->resnet8": wide_cnn_teacher_resnet_student}


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *DIGITS, generator=g), torch.arange(n) % 10


def make_method(name: str, student: nn.Module, teacher: nn.Module, x: torch.Tensor, **options):
    """``(objective, model to train)`` for method ``name``: CRD sized for the batch, FT after its
    paraphraser stage's setup, SimKD with its wrapped student."""
    if name == "crd":
        options = {"num_data": len(x), "nce_k": 12, "feat_dim": 16, **options}
    if name == "ft":
        first = FactorTransferParaphraser()
        first.setup(student, teacher, x[:2])
        options = {"paraphraser": first, **options}
    if name == "simkd":
        student = SimKDStudent(student, teacher, x[:2])
    return build_method(name, **options), student


def step(objective, student: nn.Module, teacher: nn.Module, x, y, *, epoch: float = 100.0):
    """setup, then one step's terms with the features tapped as the engine taps them. The teacher
    runs with gradients enabled, so a term that failed to detach it would reach its parameters."""
    objective.setup(student, teacher, x[:2])
    teacher.eval()
    if objective.teacher_features:
        t_logits, t_features = run_with_taps(teacher, x, objective.teacher_features)
    else:
        t_logits, t_features = teacher(x), None
    if objective.student_features:
        logits, features = run_with_taps(student, x, objective.student_features)
    else:
        logits, features = student(x), {}
    out = StepOutputs(logits=logits, labels=y, index=torch.arange(len(y)), epoch=epoch, features=features,
                      teacher=Targets(logits=t_logits, features=t_features))
    return objective(out), out


def pool(x: torch.Tensor, size) -> torch.Tensor:
    return x if tuple(x.shape[2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def allclose(a, b) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-6)


def _step(teacher: Targets | None = None):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (6,), generator=g)
    return StepOutputs(logits=logits, labels=labels, index=torch.arange(6), teacher=teacher)


EPOCHS = 4


def _student(data) -> nn.Module:
    torch.manual_seed(1)
    return create_model("cnn", 10, data.in_shape, channels=(16, 32), hidden=0)


def _train(objective, data, teacher, model=None, epochs: int = EPOCHS, selection: str = "acc"):
    model = model if model is not None else _student(data)
    cfg = TrainConfig(epochs=epochs, batch_size=64, log_every=1000, selection=selection)
    result = fit(model, objective, data, cfg, teacher=FrozenTeacher(teacher), progress=None)
    return evaluate(result.model, data.test).accuracy, result.history


def _fit(objective, data, teacher, epochs: int = EPOCHS):
    """A paired run: the same student initial weights (``_student``), data order and random streams (fit's seed)."""
    cfg = TrainConfig(epochs=epochs, batch_size=64, log_every=1000, selection="last")
    return fit(_student(data), objective, data, cfg, teacher=FrozenTeacher(teacher), progress=None)
