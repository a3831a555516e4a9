"""``recipe: qat``: quantization-aware distillation. The student learns from the teacher's soft targets
while its convolutions and linear layers compute as int8 will (fake quantization, Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"), so
that the int8 model ``distill export --format onnx --quantize int8`` makes from it loses less than
post-training quantization of a student trained in float.

What is simulated is what onnxruntime's static QDQ quantization (the export's ``int8 static``) does:

- weights: per-tensor symmetric int8, ``scale = max|w| / 127``, zero point 0;
- activations (each Conv2d/Linear's input and output): per-tensor asymmetric int8 in [-128, 127],
  the range an exponential moving average of the batches' min and max (``qat.momentum``; onnxruntime
  calibrates the same ranges with MinMax on training data).

Rounding passes gradients straight through (``torch.fake_quantize_per_tensor_affine``). The fake
quantization lives in instance ``forward`` methods and plain attributes, never in parameters or buffers:
the checkpoints hold the plain architecture's float weights (``best.pt`` loads, evaluates and exports
like any student), and it is removed when training ends. Typical use fine-tunes a distilled float
student (``student.checkpoint``) for a few epochs:

    distill run cfg.yaml --set recipe=qat --set student.checkpoint=runs/x/distilled/best.pt --set train.epochs=3
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.config import Config, Section, register_recipe
from distill.engine import predict_logits
from distill.recipes.common import Run
from distill.recipes.hinton import STUDENT_SEED, _teacher_and_spec
from distill.recipes.stages import train_stages
from distill.teachers import FrozenTeacher

QUANTIZED = (nn.Conv2d, nn.Linear)


class QATConfig(Section):
    """``recipe: qat``: distil the student with int8 fake quantization (see the module's docstring)."""

    momentum: float = Field(0.01, gt=0, le=1, description="weight of each training batch in the moving average "
                            "of the activation ranges (torch's MovingAverageMinMaxObserver: 0.01)")


def fake_quantize_weight(w: Tensor) -> Tensor:
    """``w`` rounded to per-tensor symmetric int8 (scale max|w|/127), gradients passed straight through."""
    scale = (w.detach().abs().amax() / 127).clamp_min(1e-12).float()
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros((), dtype=torch.int32, device=w.device),
                                                 -127, 127)


class ActivationRange:
    """The moving-average (min, max) of a tensor seen in training; ``__call__`` fake-quantizes to int8 in it."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.range: Tensor | None = None

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if training or self.range is None:
            lo, hi = x.detach().float().aminmax()
            seen = torch.stack([lo.clamp(max=0), hi.clamp(min=0)])  # zero stays exactly representable
            self.range = seen if self.range is None else self.range.to(x.device).lerp(seen, self.momentum)
        lo, hi = self.range.to(x.device)
        scale = ((hi - lo) / 255).clamp_min(1e-12)
        zero_point = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


def _quantized_forward(module: nn.Module, momentum: float) -> Any:
    inputs, outputs = ActivationRange(momentum), ActivationRange(momentum)

    def forward(self: nn.Conv2d | nn.Linear, x: Tensor) -> Tensor:
        x = inputs(x, self.training)
        w = fake_quantize_weight(self.weight)
        if isinstance(self, nn.Conv2d):
            y = self._conv_forward(x, w, self.bias)
        else:
            y = F.linear(x, w, self.bias)
        return outputs(y, self.training)

    return types.MethodType(forward, module)


@contextmanager
def fake_quantized(model: nn.Module, momentum: float = 0.01) -> Iterator[list[str]]:
    """Within the block, every Conv2d and Linear of ``model`` computes with fake-quantized int8 weights and
    activations; yields their names. The model's parameters, buffers and ``state_dict`` keys are unchanged;
    on leaving, the modules compute in float again."""
    names = [name for name, m in model.named_modules() if type(m) in QUANTIZED]
    modules = [m for m in model.modules() if type(m) in QUANTIZED]
    for m in modules:
        m.forward = _quantized_forward(m, momentum)
    try:
        yield names
    finally:
        for m in modules:
            del m.forward


def check_qat(cfg: Config) -> None:
    """What ``recipe: qat`` refuses: a teacher cache and teaching views (the student trains on the run's data)."""
    if cfg.distill.cache.path is not None:
        raise ValueError("distill.cache.path: recipe qat distils from a live teacher; unset the cache")
    if cfg.distill.views.mode != "none" or cfg.distill.transfer is not None:
        raise ValueError("distill.views / distill.transfer: recipe qat trains on the run's own training split; "
                         "unset them")


@register_recipe("qat", options=QATConfig, reads=("teacher", "student", "distill"), roles=("teacher", "student"),
                 check=check_qat)
def qat(run: Run) -> dict[str, Any]:
    """Quantization-aware distillation: the student (fine-tuned from ``student.checkpoint``, or from scratch)
    distilled with int8 fake quantization; ``distilled/best.pt`` holds its float weights for the export."""
    opts = run.cfg.options(QATConfig)
    teacher, teacher_spec = _teacher_and_spec(run)
    role = run.cfg.student
    assert role is not None
    model, spec = run.build_model(role, STUDENT_SEED)
    with fake_quantized(model, opts.momentum) as names:
        run.say(f"[distilled] int8 fake quantization of {len(names)} layers ({', '.join(names[:4])}"
                f"{', ...' if len(names) > 4 else ''})")
        student = train_stages(run, model, spec, FrozenTeacher(teacher), run.data, None, teacher, teacher_spec)
        simulated = predict_logits(student, run.data.test.x).argmax(-1)
    sim_acc = float((simulated == run.data.test.y.to(simulated.device)).float().mean())
    run.say(f"[distilled] test accuracy with int8 simulated: {100 * sim_acc:.2f}%")
    return run.finish({"teacher": teacher, "distilled": student}, run.teacher_predictions(teacher),
                      extra={"qat": {"momentum": opts.momentum, "layers": names,
                                     "simulated_int8_test_acc": sim_acc}})
