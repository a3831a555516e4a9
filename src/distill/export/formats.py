"""The export formats: each writes the student to a file and gives back a predictor that runs that
file (not the PyTorch module it came from), so that parity is measured on what was written.

- ``safetensors``: the weights (no pickle) and ``student.json``, the model spec (registry name and
  options, as checkpoints record it); :func:`load_student` rebuilds the model from the pair.
- ``onnx``: opset 18 through ``torch.onnx.export(dynamo=True)`` (needs onnxscript), dynamic batch axis,
  input ``input`` (N, *in_shape) float32, output ``logits`` (N, classes); run with onnxruntime.
- ``torchscript``: ``torch.jit.trace`` on two real inputs (the model's input shape is fixed by its spec).
- ``exported-program``: ``torch.export.export`` with a dynamic batch dimension, saved as ``.pt2``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.export._deps import ExportError, require
from distill.models import create_model
from distill.models.registry import UnknownModelError

FORMATS = ("safetensors", "onnx", "torchscript", "exported-program")
OPSET = 18
"""ONNX opset of the exporter's own translation (torch 2.13 writes 18; asking for 17 makes it convert
down afterwards, which fails for Reduce ops and leaves the model at 18 anyway)."""
SPEC_FORMAT = "distill.student/1"
FILES = {"safetensors": "student.safetensors", "onnx": "student.onnx", "torchscript": "student.torchscript.pt",
         "exported-program": "student.pt2"}
SPEC_FILE = "student.json"
PREDICT_CHUNK = 256
EXTERNAL_DATA_BYTES = 1_500_000_000

Predict = Callable[[Tensor], Tensor]
"""Normalized inputs (N, *in_shape), float32 on the CPU -> logits (N, classes), float32 on the CPU."""


@dataclass
class Artefact:
    """One exported model: how it is run and what it was made from."""

    name: str  # e.g. "onnxruntime fp32"
    format: str  # one of FORMATS, or "pytorch" for the in-memory student
    runtime: str  # "pytorch" or "onnxruntime"
    precision: str  # "fp32" or "int8"
    quantization: str | None
    path: Path | None
    predict: Predict

    @property
    def size_bytes(self) -> int | None:
        """The file's size, with an ONNX file's external data (``<file>.data``) if it has any."""
        if self.path is None:
            return None
        sidecar = self.path.with_name(self.path.name + ".data")
        return self.path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and quantizers' progress lines, deprecation warnings and log chatter
    (torch.onnx, onnxscript, onnxruntime's quantization tools log on the root logger); errors still raise."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def exporter_failed(fmt: str, spec: dict[str, Any], error: Exception) -> ExportError:
    """The error for an exporter that refused the model (an unsupported operator, data-dependent code)."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    others = ", ".join(f for f in FORMATS if f != fmt)
    return ExportError(
        f"the {fmt} export of {spec.get('name')} failed ({type(error).__name__}: {first}); the model uses an "
        f"operator or Python code the {fmt} exporter does not support. Try another format (--format {others}; "
        "safetensors stores the weights, not the graph, and always works), or replace the operation in the model"
    )


def chunked(fn: Callable[[Tensor], Tensor]) -> Predict:
    """``fn`` applied to chunks of :data:`PREDICT_CHUNK` inputs, without a graph, concatenated."""

    def predict(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return torch.cat([fn(x[i : i + PREDICT_CHUNK]).float() for i in range(0, x.shape[0], PREDICT_CHUNK)])

    return predict


def module_predictor(model: nn.Module) -> Predict:
    model.eval()
    return chunked(model)


# -- safetensors + spec ------------------------------------------------------------------------------
def save_safetensors(model: nn.Module, spec: dict[str, Any], data_record: dict[str, Any], out: Path) -> Path:
    """``out/student.safetensors`` (the weights; the spec also in its metadata) and ``out/student.json``."""
    st = require("safetensors.torch", "--format safetensors")
    path = out / FILES["safetensors"]
    meta = {"format": SPEC_FORMAT, "model_spec": json.dumps(spec)}
    st.save_model(model, str(path), metadata=meta)
    normalization = {k: data_record[k] for k in ("mean", "std") if k in data_record}
    record = {"format": SPEC_FORMAT, "weights": path.name, "model_spec": spec, "input_normalization": normalization,
              "class_names": data_record.get("class_names"), "data": data_record.get("name")}
    (out / SPEC_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_student(path: str | Path, *, allow_import: bool = False) -> nn.Module:
    """The student saved by ``distill export --format safetensors``, rebuilt and in eval mode.

    ``path`` is the export folder, its ``student.json`` or its ``student.safetensors``. The model is
    built from the recorded spec with :func:`distill.models.create_model` (registered models only,
    unless ``allow_import``) and its weights are read with safetensors: no pickle is involved. Its
    inputs are normalized as ``student.json``'s ``input_normalization`` says (``(x - mean) / std``).
    """
    st = require("safetensors.torch", "distill.load_student")
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if path.suffix == ".json":
        if not path.is_file():
            raise ExportError(f"{path} does not exist; export the student first: distill export RUN --format safetensors")
        record = json.loads(path.read_text())
        weights = path.parent / record.get("weights", FILES["safetensors"])
        spec = record.get("model_spec")
    else:
        weights = path
        if not weights.is_file():
            raise ExportError(f"{weights} does not exist")
        safetensors = require("safetensors", "distill.load_student")
        with safetensors.safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        spec = json.loads(meta["model_spec"]) if "model_spec" in meta else None
    if not spec or not spec.get("name"):
        raise ExportError(f"{path} does not record a model spec (registry name and options); it was not written "
                          "by distill export --format safetensors")
    try:
        model = create_model(spec["name"], spec["num_classes"], tuple(spec["in_shape"]), allow_import=allow_import,
                             **(spec.get("kwargs") or {}))
    except UnknownModelError as e:
        raise ExportError(f"{path}: {e}") from None
    missing, unexpected = st.load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise ExportError(f"{weights} does not fit {spec['name']}: {len(missing)} missing keys, "
                          f"{len(unexpected)} unexpected keys (e.g. {(list(missing) + list(unexpected))[0]})")
    return model.eval()


def save_pretrained(model: nn.Module, spec: dict[str, Any], out: Path) -> Path | None:
    """For a Hugging Face student (``model: {name: hf}``): ``out/hf/``, its network written with
    ``save_pretrained`` and its image processor beside it, so that ``transformers``' Auto classes load it
    (``AutoModelForImageClassification.from_pretrained``) and so does distill (``model: {name: hf, id: DIR}``).
    None for any other student."""
    net: Any = getattr(model, "net", None)
    if spec.get("name") != "hf" or net is None or not hasattr(net, "save_pretrained"):
        return None
    tf = require("transformers", "saving a Hugging Face student")
    where = out / "hf"
    net.save_pretrained(str(where))
    kw = spec.get("kwargs") or {}
    processor = tf.AutoImageProcessor.from_pretrained(kw["id"], revision=kw.get("revision"), trust_remote_code=False)
    processor.save_pretrained(str(where))
    return where


# -- graph formats -----------------------------------------------------------------------------------
def _batch_dim() -> Any:
    return torch.export.Dim("batch")


def export_program(model: nn.Module, example: Tensor, spec: dict[str, Any]) -> Any:
    """``torch.export.export`` of ``model`` with a dynamic batch dimension."""
    try:
        with quiet():
            return torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},), strict=False)
    except Exception as e:  # the exporter's own errors are many classes (UserError, Unsupported, ...)
        raise exporter_failed("exported-program", spec, e) from e


def save_exported_program(model: nn.Module, example: Tensor, spec: dict[str, Any], out: Path) -> Path:
    path = out / FILES["exported-program"]
    torch.export.save(export_program(model, example, spec), str(path))
    return path


def exported_program_predictor(path: Path) -> Predict:
    with quiet():
        module = torch.export.load(str(path)).module()
    return chunked(module)


def save_torchscript(model: nn.Module, example: Tensor, spec: dict[str, Any], out: Path,
                     name: str | None = None) -> Path:
    path = out / (name or FILES["torchscript"])
    try:
        with quiet():
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as e:
        raise exporter_failed("torchscript", spec, e) from e
    return path


def torchscript_predictor(path: Path) -> Predict:
    with quiet():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return chunked(module)


def save_onnx(model: nn.Module, example: Tensor, spec: dict[str, Any], out: Path) -> Path:
    """``out/student.onnx``: opset :data:`OPSET`, input ``input`` with a dynamic batch axis, output ``logits``."""
    require("onnx", "--format onnx")
    require("onnxscript", "--format onnx (torch's ONNX exporter)")
    path = out / FILES["onnx"]
    # one self-contained file, unless the weights pass protobuf's 2 GB limit (then <file>.data beside it)
    external = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > EXTERNAL_DATA_BYTES
    try:
        with quiet():
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=["input"], output_names=["logits"], external_data=external,
                              dynamic_shapes=({0: _batch_dim()},), verbose=False)
    except Exception as e:
        raise exporter_failed("onnx", spec, e) from e
    if not external:
        strip_node_metadata(path)
    return path


def strip_node_metadata(path: Path) -> None:
    """Remove the exporter's per-node debugging metadata (the source module path, class hierarchy, FX node and
    rewrite rules of each node): the graph and weights are unchanged. For a 1.7K-parameter CNN it was 15 KB
    of a 26 KB file."""
    onnx = require("onnx", "--format onnx")
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, str(path))


def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session on one thread (the latency is then the model's, not the machine's load)."""
    ort = require("onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(path: Path) -> Predict:
    session = ort_session(path)
    name = session.get_inputs()[0].name
    return chunked(lambda x: torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0]))
