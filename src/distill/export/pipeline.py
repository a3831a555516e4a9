"""``distill export``: write the student in one format (and int8 variants), run what was written on the
test split, check parity with the PyTorch student, and record everything in ``export.json`` and
``MODEL_CARD.md``."""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill import jsonio
from distill.checkpoint import write_atomic
from distill.data.tensors import DataSplits, TensorData
from distill.export import formats, measure, quantize
from distill.export._deps import ExportError
from distill.export.card import model_card
from distill.export.formats import Artefact
from distill.export.source import Source, fingerprint, load_data, load_source
from distill.models import count_parameters

RECORD_FORMAT = "distill.export/1"
ATOL = 1e-4
"""The fp32 parity tolerance: the largest absolute logit difference allowed from the PyTorch student."""
CALIBRATION_SIZE = 256
QUANTIZE = (None, "int8")


class ParityError(ExportError):
    """An fp32 export does not reproduce the PyTorch student."""


def default_out_dir(source: Source, fmt: str) -> Path:
    """``<checkpoint's folder>/export/<format>``: ``runs/demo/distilled/export/onnx``."""
    return source.checkpoint.parent / "export" / fmt


def export_student(
    path: str | Path,
    fmt: str,
    *,
    out: str | Path | None = None,
    quantize_to: str | None = None,
    atol: float = ATOL,
    latency: bool = True,
    calibration_size: int = CALIBRATION_SIZE,
    data: str | None = None,
    data_path: str | None = None,
    download: bool = False,
    allow_import: bool = False,
) -> dict[str, Any]:
    """Export the student of ``path`` (a run directory or a checkpoint) as ``fmt``; returns the record
    written to ``<out>/export.json`` (``MODEL_CARD.md`` beside it).

    Raises :class:`ParityError` (after writing the record) when an fp32 export's logits differ from
    the student's by more than ``atol`` or its top-1 differs on some test sample.
    """
    _check_request(fmt, quantize_to, atol, calibration_size)
    source = load_source(path, allow_import=allow_import)
    splits = load_data(source, name=data, data_path=data_path, download=download)
    out_dir = Path(out) if out is not None else default_out_dir(source, fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, test = source.model, splits.test
    example = test.x[:2].contiguous()

    reference = Artefact("pytorch fp32", "pytorch", "pytorch", "fp32", None, None, formats.module_predictor(model))
    exported = _fp32_artefact(fmt, source, example, out_dir, allow_import)
    artefacts = [reference, exported]
    hf_dir = formats.save_pretrained(model, source.spec, out_dir)
    calibration: dict[str, Any] | None = None
    skipped: list[str] = []
    if quantize_to == "int8":
        int8, calibration, skipped = _int8_artefacts(fmt, source, splits, exported, example, out_dir,
                                                     calibration_size)
        artefacts += int8
    rows, failure = _measure(artefacts, reference, model, test, atol, latency)

    record = _record(source, splits, fmt, quantize_to, atol, calibration, rows, latency, out_dir)
    record["hf_pretrained"] = str(hf_dir) if hf_dir is not None else None
    record["skipped"] = skipped
    write_atomic(out_dir / "export.json", lambda f: f.write((jsonio.dumps(record, indent=2) + "\n").encode()))
    write_atomic(out_dir / "MODEL_CARD.md", lambda f: f.write(model_card(record).encode()))
    if failure is not None:
        a, row = failure
        raise ParityError(
            f"the {a.format} export ({a.path}) does not reproduce the PyTorch student: first differing test sample "
            f"{row['first_difference']} (max abs logit difference {row['max_abs_diff']:.3g} over the test split, "
            f"tolerance {atol:g}; top-1 agreement {row['agreement']:.4f}); see {out_dir / 'export.json'}"
        )
    return record



def _check_request(fmt: str, quantize_to: str | None, atol: float, calibration_size: int) -> None:
    """Refuse an unknown format or quantization, int8 for a format that has none, and bad numbers."""
    if fmt not in formats.FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(formats.FORMATS)}")
    if quantize_to not in QUANTIZE:
        raise ExportError(f"unknown quantization {quantize_to!r}; the one supported is int8")
    if quantize_to and fmt not in ("onnx", "torchscript"):
        raise ExportError(f"--quantize int8 writes ONNX (onnxruntime) or TorchScript (PyTorch) int8 models, not {fmt}; "
                          "use --format onnx or --format torchscript")
    if not atol >= 0:
        raise ExportError(f"--atol must be a tolerance >= 0 on the logits, got {atol}")
    if calibration_size < 1:
        raise ExportError(f"--calibration-size must be at least 1 training example, got {calibration_size}")


def _fp32_artefact(fmt: str, source: Source, example: Tensor, out_dir: Path, allow_import: bool) -> Artefact:
    """The student written as ``fmt`` in fp32, with a predictor that runs the written file."""
    model = source.model
    if fmt == "safetensors":
        file = formats.save_safetensors(model, source.spec, source.data_record, out_dir)
        loaded = formats.load_student(out_dir, allow_import=allow_import)
        return Artefact("safetensors fp32", fmt, "pytorch", "fp32", None, file, formats.module_predictor(loaded))
    if fmt == "torchscript":
        file = formats.save_torchscript(model, example, source.spec, out_dir)
        return Artefact("torchscript fp32", fmt, "pytorch", "fp32", None, file, formats.torchscript_predictor(file))
    if fmt == "exported-program":
        file = formats.save_exported_program(model, example, source.spec, out_dir)
        return Artefact("exported-program fp32", fmt, "pytorch", "fp32", None, file,
                        formats.exported_program_predictor(file))
    file = formats.save_onnx(model, example, source.spec, out_dir)
    return Artefact("onnxruntime fp32", fmt, "onnxruntime", "fp32", None, file, formats.onnx_predictor(file))


def _int8_artefacts(fmt: str, source: Source, splits: DataSplits, exported: Artefact, example: Tensor, out_dir: Path,
                    calibration_size: int) -> tuple[list[Artefact], dict[str, Any] | None, list[str]]:
    """The int8 models: PyTorch dynamic (TorchScript), and for ONNX onnxruntime's dynamic and static (QDQ,
    calibrated on a seeded subset of the training split); the calibration record and what was skipped."""
    model = source.model
    artefacts: list[Artefact] = []
    skipped: list[str] = []
    calibration: dict[str, Any] | None = None
    int8 = quantize.pytorch_dynamic_int8(model)
    try:
        q_file = formats.save_torchscript(int8, example, source.spec, out_dir, name="student.int8-dynamic.torchscript.pt")
        artefacts.append(Artefact("pytorch int8 dynamic", "torchscript", "pytorch", "int8",
                                  "dynamic (torch.ao: nn.Linear weights int8, activations per batch)", q_file,
                                  formats.torchscript_predictor(q_file)))
    except ExportError as e:
        if fmt == "torchscript":
            raise
        skipped.append(f"pytorch int8 dynamic: {e}")  # the ONNX int8 models are what was asked for
    if fmt == "onnx":
        assert exported.path is not None
        dyn = quantize.onnx_dynamic_int8(exported.path, out_dir / "student.int8-dynamic.onnx")
        artefacts.append(Artefact("onnxruntime int8 dynamic", fmt, "onnxruntime", "int8",
                                  "dynamic (weights int8, activations per batch)", dyn, formats.onnx_predictor(dyn)))
        calib = quantize.calibration_subset(splits.train.x, calibration_size, seed=0)
        static = quantize.onnx_static_int8(exported.path, out_dir / "student.int8-static.onnx", calib)
        calibration = {"split": "train", "examples": int(calib.shape[0]), "seed": 0, "method": "MinMax",
                       "batch_size": quantize.CALIBRATION_BATCH}
        artefacts.append(Artefact("onnxruntime int8 static", fmt, "onnxruntime", "int8",
                                  f"static QDQ (weights and activations int8; MinMax ranges from "
                                  f"{calib.shape[0]} training examples)", static, formats.onnx_predictor(static)))
    return artefacts, calibration, skipped


def _measure(artefacts: list[Artefact], reference: Artefact, model: nn.Module, test: TensorData, atol: float,
             latency: bool) -> tuple[list[dict[str, Any]], tuple[Artefact, dict[str, Any]] | None]:
    """Each artefact's row (quality against the reference, parity for fp32, latency) and the first fp32 artefact
    that fails parity, if any."""
    ref_logits = reference.predict(test.x)
    rows, failure = [], None
    for a in artefacts:
        logits = ref_logits if a is reference else a.predict(test.x)
        row: dict[str, Any] = {"name": a.name, "format": a.format, "runtime": a.runtime, "precision": a.precision,
                               "quantization": a.quantization, "file": a.path.name if a.path else None,
                               "size_bytes": a.size_bytes if a.path else _tensor_bytes(model),
                               **measure.quality(logits, test.y, ref_logits)}
        if a.precision == "fp32":
            row["first_difference"] = measure.first_difference(logits, ref_logits, atol)
            row["parity"] = row["first_difference"] is None
            if not row["parity"] and failure is None:
                failure = (a, row)
        row["latency"] = ({f"batch_{b}": measure.latency(a.predict, test.x, b) for b in measure.LATENCY_BATCHES}
                          if latency else None)
        rows.append(row)
    return rows, failure

def _tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _teacher(source: Source) -> dict[str, Any] | None:
    teacher = source.config.get("teacher")
    if not teacher:
        return None
    row = (source.results.get("models") or {}).get("teacher") or {}
    return {"model": teacher.get("model"), "checkpoint": teacher.get("checkpoint"),
            "test_acc": row.get("test_acc"), "params": row.get("params")}


def _method(source: Source) -> dict[str, Any] | None:
    if not source.config:
        return None
    d = source.config.get("distill") or {}
    return {"recipe": source.config.get("recipe"), "model_in_run": source.tag,
            "distilled": source.tag not in ("teacher", "baseline"),
            "loss": d.get("loss"), "method": d.get("method"), "temperature": d.get("temperature"),
            "alpha": d.get("alpha"), "options": d.get("options") or None,
            "run_test_acc": ((source.results.get("models") or {}).get(source.tag) or {}).get("test_acc")}


def _versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "onnxscript", "safetensors"):
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return found


def _record(source: Source, splits: Any, fmt: str, quantize_to: str | None, atol: float,
            calibration: dict[str, Any] | None, rows: list[dict[str, Any]], latency: bool,
            out_dir: Path) -> dict[str, Any]:
    rec = source.data_record
    return {
        "format": RECORD_FORMAT,
        "export_format": fmt,
        "quantize": quantize_to,
        "out_dir": str(out_dir),
        "checkpoint": str(source.checkpoint),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "student": {"model_spec": source.spec, "params": count_parameters(source.model)},
        "teacher": _teacher(source),
        "method": _method(source),
        "data": {"record": rec, "name": splits.name, "test_examples": len(splits.test),
                 "test_sha256": fingerprint(splits), "calibration": calibration},
        "input": {"name": "input", "shape": ["batch", *source.in_shape], "dtype": "float32",
                  "normalize": {"mean": rec.get("mean"), "std": rec.get("std")}, "output": "logits"},
        "opset": formats.OPSET if fmt == "onnx" else None,
        "parity": {"atol": atol, "passed": all(r.get("parity", True) for r in rows),
                   "checked": [r["name"] for r in rows if "parity" in r and r["name"] != "pytorch fp32"]},
        "ece_bins": measure.ECE_BINS,
        "latency": {"batches": list(measure.LATENCY_BATCHES), "warmup": measure.LATENCY_WARMUP,
                    "reps": measure.LATENCY_REPS, "threads": 1, "device": "cpu"} if latency else None,
        "artefacts": rows,
        "versions": _versions(),
    }


def summary(record: dict[str, Any]) -> str:
    """The record's artefacts as a table (printed by ``distill export``)."""
    head = ["artefact", "file", "size", "test acc", "agree", "max |diff|", "b1 p50 ms", "b64 p50 ms"]
    body = []
    for r in record["artefacts"]:
        lat = r.get("latency") or {}
        body.append([r["name"], r["file"] or "-", f"{r['size_bytes'] / 1024:.1f} KB", f"{100 * r['accuracy']:.2f}%",
                     f"{r['agreement']:.4f}", f"{r['max_abs_diff']:.2e}",
                     f"{lat['batch_1']['p50_ms']:.3f}" if lat else "-", f"{lat['batch_64']['p50_ms']:.3f}" if lat else "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [head, ["-" * w for w in widths], *body]]
    parity = record["parity"]
    verdict = (f"fp32 parity: passed (max abs logit difference <= {parity['atol']:g}, top-1 agreement 1.0 on "
               f"{record['data']['test_examples']} test samples)" if parity["passed"] else "fp32 parity: FAILED")
    notes = [f"skipped {s}" for s in record.get("skipped") or []]
    return "\n".join(lines + notes + [verdict, f"written: {record['out_dir']}/export.json, MODEL_CARD.md"])


__all__ = ["ATOL", "ParityError", "export_student", "summary"]
