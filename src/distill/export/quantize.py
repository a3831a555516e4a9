"""Post-training int8 quantization of the exported student.

- ONNX, dynamic (``onnxruntime.quantization.quantize_dynamic``): int8 weights, activations quantized
  on the fly per batch; no data needed.
- ONNX, static (``quantize_static``, QDQ format, MinMax calibration): int8 weights and activations,
  the activation ranges measured on a calibration subset of the training split (seeded, so the same
  export gives the same model). Both run after onnxruntime's recommended pre-processing
  (``quant_pre_process``: shape inference and graph optimization).
- PyTorch, dynamic (``torch.ao.quantization.quantize_dynamic``): the ``nn.Linear`` layers in int8
  (convolutions stay fp32: PyTorch's dynamic quantization supports Linear and recurrent layers only);
  saved as TorchScript.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.export._deps import require
from distill.export.formats import quiet

CALIBRATION_BATCH = 32


def calibration_subset(x: Tensor, size: int, seed: int = 0) -> Tensor:
    """``size`` inputs drawn without replacement from ``x`` with ``seed`` (all of ``x`` if it is smaller)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(x.shape[0], generator=g)[: min(size, x.shape[0])]
    return x[index.sort().values]


def _preprocessed(src: Path, tmp: Path) -> Path:
    shape_inference = require("onnxruntime.quantization.shape_inference", "--quantize int8")
    out = tmp / "preprocessed.onnx"
    shape_inference.quant_pre_process(str(src), str(out))
    return out


def onnx_dynamic_int8(src: Path, dst: Path) -> Path:
    """``dst``: ``src`` with int8 weights, activations quantized per batch at run time."""
    q = require("onnxruntime.quantization", "--quantize int8 for ONNX")
    with tempfile.TemporaryDirectory() as tmp, quiet():
        q.quantize_dynamic(str(_preprocessed(src, Path(tmp))), str(dst), weight_type=q.QuantType.QInt8)
    return dst


def onnx_static_int8(src: Path, dst: Path, calibration: Tensor) -> Path:
    """``dst``: ``src`` in QDQ format with int8 weights and activations; activation ranges from the
    ``calibration`` inputs (MinMax), fed in batches of :data:`CALIBRATION_BATCH`."""
    q = require("onnxruntime.quantization", "--quantize int8 for ONNX")
    base: Any = q.CalibrationDataReader

    class Reader(base):  # onnxruntime asks a reader for one input feed after another, None at the end
        def __init__(self, name: str) -> None:
            self.batches: Iterator[dict[str, Any]] = iter(
                [{name: calibration[i : i + CALIBRATION_BATCH].contiguous().numpy()}
                 for i in range(0, calibration.shape[0], CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, quiet():
        model = _preprocessed(src, Path(tmp))
        q.quantize_static(str(model), str(dst), Reader("input"), quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return dst


def pytorch_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its ``nn.Linear`` layers quantized to int8 (dynamic activations)."""
    with quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
