"""Ship the student: export it (safetensors, ONNX, TorchScript, ExportedProgram), quantize it to int8,
check that what was written computes what the student computes, and report what the user gets.

    distill export runs/demo --format onnx --quantize int8

    >>> from distill.export import export_student, load_student
    >>> record = export_student("runs/demo", "safetensors", latency=False)
    >>> student = load_student(record["out_dir"])      # no pickle: a spec and safetensors weights

The optional packages (safetensors, onnx, onnxscript, onnxruntime) are the ``export`` extra; a format
that needs a missing one says which to install. Only the command line imports this package.
"""

from __future__ import annotations

from distill.export._deps import ExportError, MissingDependencyError
from distill.export.formats import FORMATS, load_student
from distill.export.pipeline import ATOL, ParityError, export_student, summary
from distill.export.source import resolve_checkpoint

__all__ = [
    "ATOL",
    "FORMATS",
    "ExportError",
    "MissingDependencyError",
    "ParityError",
    "export_student",
    "load_student",
    "resolve_checkpoint",
    "summary",
]
