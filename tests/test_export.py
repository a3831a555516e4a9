"""distill export (issue 15): every format round-trips with parity, int8 stays close, bad input is a clear error."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.checkpoint import save_checkpoint
from distill.cli import main
from distill.models import create_model

pytest.importorskip("safetensors")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import distill  # noqa: E402
from distill.export import ATOL, ExportError, ParityError, export_student, load_student, measure  # noqa: E402
from distill.export import formats as export_formats  # noqa: E402

SPECS = {"mlp": {"hidden": [32]}, "cnn": {"channels": [8, 16], "hidden": 32}}


def _train(splits, name: str) -> torch.nn.Module:
    """A tiny digits model: 4 epochs of Adam (lr 0.01, batch 64) from seed 0."""
    torch.manual_seed(0)
    model = create_model(name, 10, (1, 8, 8), **SPECS[name])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for idx in torch.randperm(len(splits.train), generator=g).split(64):
            loss = F.cross_entropy(model(splits.train.x[idx]), splits.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _data_record(splits) -> dict:
    return {"name": "digits", "mean": splits.mean.tolist(), "std": splits.std.tolist(), "num_classes": 10,
            "class_names": list(splits.class_names), "split_seed": 0}


def _write_run(run, splits, model, name, tags=("distilled",), finished=True):
    """A run directory as `distill run` leaves it: config.yaml, results.json, <tag>/best.pt."""
    run.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "kwargs": SPECS[name], "num_classes": 10, "in_shape": [1, 8, 8]}
    for tag in tags:
        save_checkpoint(run / tag / "best.pt", {"model": model.state_dict(), "model_spec": spec,
                                                "data": _data_record(splits), "epoch": 4})
    config = {"name": run.name, "recipe": "compare", "data": {"name": "digits", "path": None},
              "teacher": {"model": {"name": "cnn", "channels": [64, 128], "hidden": 256}, "checkpoint": None},
              "distill": {"loss": "kd", "temperature": 4.0, "alpha": 0.9, "method": None, "options": {}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if finished:
        (run / "results.json").write_text(json.dumps({"models": {"teacher": {"test_acc": 0.95, "params": 110282},
                                                                 "distilled": {"test_acc": 0.5}}}))
    return run


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def run_dir(request, digits_splits, tmp_path_factory):
    name = request.param
    model = _train(digits_splits, name)
    return _write_run(tmp_path_factory.mktemp(f"run_{name}") / "demo", digits_splits, model, name), model


def _fp32_row(record, name):
    return next(r for r in record["artefacts"] if r["name"] == name)


@pytest.mark.parametrize("fmt, artefact", [
    ("safetensors", "safetensors fp32"),
    ("torchscript", "torchscript fp32"),
    pytest.param("exported-program", "exported-program fp32", marks=pytest.mark.slow),
    pytest.param("onnx", "onnxruntime fp32", marks=pytest.mark.slow),
])
def test_every_format_round_trips_with_parity(run_dir, fmt, artefact, tmp_path):
    run, model = run_dir
    record = export_student(run, fmt, out=tmp_path, latency=False)
    reference, row = _fp32_row(record, "pytorch fp32"), _fp32_row(record, artefact)
    assert record["parity"] == {"atol": ATOL, "passed": True, "checked": [artefact]}
    assert row["max_abs_diff"] <= 1e-4 and row["agreement"] == 1.0 and row["first_difference"] is None
    assert (row["accuracy"], row["errors"]) == (reference["accuracy"], reference["errors"])
    assert (tmp_path / row["file"]).stat().st_size == row["size_bytes"]
    assert json.loads((tmp_path / "export.json").read_text())["artefacts"][1]["name"] == artefact
    assert record["checkpoint"] == str(run / "distilled" / "best.pt")
    assert not (tmp_path / f"{row['file']}.data").exists()  # one self-contained file


def test_onnx_has_a_dynamic_batch_axis_and_opset_18(run_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    run, model = run_dir
    export_student(run, "onnx", out=tmp_path, latency=False)
    proto = onnx.load(str(tmp_path / "student.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic: any batch size
    assert not any(node.metadata_props for node in proto.graph.node)  # the exporter's debugging notes are removed
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert got.shape == (n, 10) and (got - model(x).detach()).abs().max() <= 1e-4


test_onnx_has_a_dynamic_batch_axis_and_opset_18 = pytest.mark.slow(test_onnx_has_a_dynamic_batch_axis_and_opset_18)


def test_load_student_gives_identical_logits(run_dir, digits_splits, tmp_path):
    run, model = run_dir
    export_student(run, "safetensors", out=tmp_path, latency=False)
    x = digits_splits.test.x
    want = model(x).detach()
    for path in (tmp_path, tmp_path / "student.json", tmp_path / "student.safetensors"):
        loaded = distill.load_student(path)
        assert not loaded.training and torch.equal(loaded(x).detach(), want)
    spec = json.loads((tmp_path / "student.json").read_text())
    assert spec["model_spec"] == torch.load(run / "distilled" / "best.pt", weights_only=True)["model_spec"]
    assert spec["input_normalization"] == {"mean": digits_splits.mean.tolist(), "std": digits_splits.std.tolist()}


def test_the_record_and_model_card_describe_the_run(run_dir, tmp_path):
    run, _ = run_dir
    record = export_student(run, "safetensors", out=tmp_path, latency=False)
    assert record["teacher"] == {"model": {"name": "cnn", "channels": [64, 128], "hidden": 256}, "checkpoint": None,
                                 "test_acc": 0.95, "params": 110282}
    assert {k: record["method"][k] for k in ("recipe", "model_in_run", "distilled", "loss", "temperature", "alpha")} == \
        {"recipe": "compare", "model_in_run": "distilled", "distilled": True, "loss": "kd", "temperature": 4.0,
         "alpha": 0.9}
    assert record["data"]["record"]["name"] == "digits" and record["data"]["test_examples"] == 450
    assert len(record["data"]["test_sha256"]) == 64 and record["ece_bins"] == 15 and record["latency"] is None
    card = (tmp_path / "MODEL_CARD.md").read_text()
    for line in ("- Teacher: `cnn`(channels=[64, 128], hidden=256); test accuracy 95.00%.",
                 "- Method: recipe `compare`, model `distilled`: loss kd, temperature 4.0, alpha 0.9.",
                 "ECE with 15 equal-width confidence bins", "Not measured (--no-latency)."):
        assert line in card


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_int8_agrees_with_fp32(run_dir, fmt, tmp_path):
    """Measured on these two digits models (450 test images, onnxruntime 1.32, torch 2.13 CPU): every int8
    model disagrees with fp32 on at most 2 images (agreement >= 0.9956) and its accuracy is within 1 image of
    fp32's. The bounds leave 2 images more for other CPUs' int8 kernels: agreement >= 1 - 4/450, accuracy
    within 3/450."""
    run, _ = run_dir
    record = export_student(run, fmt, out=tmp_path, quantize_to="int8", latency=True)
    names = {r["name"]: r for r in record["artefacts"]}
    int8 = ["pytorch int8 dynamic"] + (["onnxruntime int8 dynamic", "onnxruntime int8 static"] if fmt == "onnx" else [])
    assert [n for n in names if names[n]["precision"] == "int8"] == int8
    fp32 = names["pytorch fp32"]
    for n in int8:
        row = names[n]
        assert 0.0 <= row["agreement"] <= 1.0 and row["agreement"] >= 1 - 4 / 450, (n, row["agreement"])
        assert abs(row["accuracy"] - fp32["accuracy"]) <= 3 / 450, (n, row["accuracy"], fp32["accuracy"])
        assert (tmp_path / row["file"]).is_file() and "parity" not in row
        assert set(row["latency"]) == {"batch_1", "batch_64"}
        assert 0 < row["latency"]["batch_1"]["p50_ms"] <= row["latency"]["batch_1"]["p95_ms"]
    if fmt == "onnx":
        assert names["onnxruntime int8 dynamic"]["size_bytes"] < names["onnxruntime fp32"]["size_bytes"]
        assert record["data"]["calibration"] == {"split": "train", "examples": 256, "seed": 0, "method": "MinMax",
                                                 "batch_size": 32}


@pytest.mark.slow
def test_an_untraceable_pytorch_int8_model_is_skipped_when_onnx_int8_was_asked_for(run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    real = export_formats.save_torchscript

    def refuse_int8(model, example, spec, out, name=None):
        if name is not None:
            raise ExportError("the torchscript export of x failed (no)")
        return real(model, example, spec, out, name)

    monkeypatch.setattr(export_formats, "save_torchscript", refuse_int8)
    record = export_student(run, "onnx", out=tmp_path, quantize_to="int8", latency=False)
    assert record["skipped"] == ["pytorch int8 dynamic: the torchscript export of x failed (no)"]
    assert [r["name"] for r in record["artefacts"]] == ["pytorch fp32", "onnxruntime fp32", "onnxruntime int8 dynamic",
                                                         "onnxruntime int8 static"]
    assert "Not written:\n- pytorch int8 dynamic: the torchscript" in (tmp_path / "MODEL_CARD.md").read_text()
    with pytest.raises(ExportError, match="the torchscript export of x failed"):
        export_student(run, "torchscript", out=tmp_path / "ts", quantize_to="int8", latency=False)


# -- measurements ------------------------------------------------------------------------------------
def test_ece_is_guo_et_al_with_15_bins():
    """Two samples: confidence 0.9 correct (bin 14), 0.6 wrong (bin 9): ECE = 0.5*0.1 + 0.5*0.6."""
    logits = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64).log()
    assert measure.expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.35, abs=1e-12)
    assert measure.expected_calibration_error(logits, torch.tensor([0, 0])) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)


def test_latency_is_p50_and_p95_of_20_timed_calls(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock) / 1000)
    calls = []
    got = measure.latency(lambda x: calls.append(x.shape[0]), torch.zeros(3, 2), batch=5)
    assert calls == [5] * 23  # 3 warm-up calls, 20 timed
    assert got == {"p50_ms": pytest.approx(1.0), "p95_ms": pytest.approx(1.0)}


def test_first_difference_names_the_first_sample_off_by_more_than_atol():
    ref = torch.zeros(6, 3)
    ref[:, 0] = 1
    got = ref.clone()
    got[4, 1] += 2e-4
    got[5, 1] += 5
    assert measure.first_difference(got, ref, 1e-4) == 4 and measure.first_difference(got, ref, 1e-3) == 5
    assert measure.first_difference(ref, ref, 0.0) is None


# -- bad input -----------------------------------------------------------------------------------------
def test_a_parity_failure_names_the_format_and_the_first_differing_sample(run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    real = export_formats.torchscript_predictor

    def off_at_sample_3(path):
        predict = real(path)

        def wrong(x):
            logits = predict(x).clone()
            logits[3] += 1e-3
            return logits

        return wrong

    monkeypatch.setattr(export_formats, "torchscript_predictor", off_at_sample_3)
    with pytest.raises(ParityError, match=r"^the torchscript export \(.*student.torchscript.pt\) does not reproduce "
                       r"the PyTorch student: first differing test sample 3 \(max abs logit difference 0.001 over "
                       r"the test split, tolerance 0.0001; top-1 agreement 1.0000\)"):
        export_student(run, "torchscript", out=tmp_path, latency=False)
    assert json.loads((tmp_path / "export.json").read_text())["parity"]["passed"] is False


def test_a_run_dir_resolves_to_its_student(digits_splits, tmp_path):
    model = create_model("mlp", 10, (1, 8, 8), **SPECS["mlp"]).eval()
    from distill.export import resolve_checkpoint

    one = _write_run(tmp_path / "one", digits_splits, model, "mlp", tags=("baseline",))
    assert resolve_checkpoint(one) == (one / "baseline" / "best.pt", one)
    both = _write_run(tmp_path / "both", digits_splits, model, "mlp", tags=("teacher", "distilled", "baseline"))
    assert resolve_checkpoint(both) == (both / "distilled" / "best.pt", both)
    assert resolve_checkpoint(both / "baseline") == (both / "baseline" / "best.pt", (both).resolve())


@pytest.mark.parametrize("case, message", [
    ("several", "the run in {run} holds several models (baseline, teacher) and none is 'distilled'; export one by "
                "its checkpoint, e.g. distill export {run}/baseline/best.pt"),
    ("unfinished", "the run in {run} has not finished (no results.json; it has distilled): finish it with distill run "
                   "CONFIG --name run --resume, or export a checkpoint by its path, e.g. distill export "
                   "{run}/distilled/best.pt"),
    ("empty", "{run} holds no finished checkpoint (no */best.pt): train it first (distill run CONFIG), or give a "
              "checkpoint file"),
    ("missing", "{run} does not exist; give a run directory (runs/demo) or a checkpoint (runs/demo/distilled/best.pt)"),
    ("quantize", "--quantize int8 writes ONNX (onnxruntime) or TorchScript (PyTorch) int8 models, not safetensors; "
                 "use --format onnx or --format torchscript"),
    ("atol", "--atol must be a tolerance >= 0 on the logits, got -1.0"),
    ("calibration", "--calibration-size must be at least 1 training example, got 0"),
])
def test_bad_runs_are_clear_errors(case, message, digits_splits, tmp_path, capsys):
    run = tmp_path / "run"
    model = create_model("mlp", 10, (1, 8, 8), **SPECS["mlp"]).eval()
    if case == "several":
        _write_run(run, digits_splits, model, "mlp", tags=("teacher", "baseline"))
    elif case == "unfinished":
        _write_run(run, digits_splits, model, "mlp", finished=False)
    elif case == "empty":
        run.mkdir()
    elif case == "quantize":
        _write_run(run, digits_splits, model, "mlp")
    flags = {"quantize": ["--quantize", "int8"], "atol": ["--atol", "-1"], "calibration": ["--calibration-size", "0"]}
    extra = flags.get(case, [])
    assert main(["export", str(run), "--format", "safetensors", "--no-latency", *extra]) == 1
    assert capsys.readouterr().err == f"error: {message.format(run=run)}\n(set DISTILL_DEBUG=1 to see the traceback)\n"


@pytest.mark.parametrize("module, fmt, purpose", [
    ("onnxscript", "onnx", "--format onnx (torch's ONNX exporter)"),
    ("onnx", "onnx", "--format onnx"),
    ("safetensors", "safetensors", "--format safetensors"),
])
def test_a_missing_optional_package_says_which_extra_to_install(module, fmt, purpose, run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ExportError) as info:
        export_student(run, fmt, out=tmp_path, latency=False)
    assert str(info.value).startswith(f"{purpose} needs the package {module!r}, which is not installed (")
    assert str(info.value).endswith('install the export extra: pip install -c constraints.txt -e ".[export]"')


@torch.library.custom_op("distill_test_export::opaque", mutates_args=())
def _opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_opaque.register_fake
def _(x):
    return torch.empty_like(x)


class _Opaque(torch.nn.Module):
    """An MLP whose input goes through an operator no exporter knows how to translate to ONNX."""

    def __init__(self, num_classes: int, in_shape) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classifier = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(torch.ops.distill_test_export.opaque(x.flatten(1)))


@pytest.mark.slow
def test_an_unsupported_operator_says_which_format_failed_and_what_to_try(digits_splits, tmp_path):
    from distill.models import register_model
    from distill.models.registry import list_models

    if "test_export_opaque" not in list_models():
        register_model("test_export_opaque")(lambda num_classes, in_shape: _Opaque(num_classes, in_shape))
    model = _Opaque(10, (1, 8, 8))
    spec = {"name": "test_export_opaque", "kwargs": {}, "num_classes": 10, "in_shape": [1, 8, 8]}
    ckpt = save_checkpoint(tmp_path / "opaque" / "best.pt", {"model": model.state_dict(), "model_spec": spec,
                                                             "data": _data_record(digits_splits)})
    with pytest.raises(ExportError, match=r"^the onnx export of test_export_opaque failed \(.*\); the model uses an "
                       r"operator or Python code the onnx exporter does not support. Try another format \(--format "
                       r"safetensors, torchscript, exported-program; safetensors stores the weights, not the graph, "
                       r"and always works\), or replace the operation in the model$"):
        export_student(ckpt, "onnx", out=tmp_path / "out", latency=False)


def test_distill_export_prints_the_table(run_dir, tmp_path, capsys):
    run, _ = run_dir
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path), "--no-latency"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["artefact", "file", "size", "test", "acc", "agree", "max", "|diff|", "b1", "p50", "ms",
                              "b64", "p50", "ms"]
    assert out[2].startswith("pytorch fp32") and out[3].startswith("torchscript fp32  student.torchscript.pt")
    assert out[-2] == "fp32 parity: passed (max abs logit difference <= 0.0001, top-1 agreement 1.0 on 450 test samples)"
    assert out[-1] == f"written: {tmp_path}/export.json, MODEL_CARD.md"


def _readme_export_commands() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Export\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()


def test_the_readme_export_section_shows_the_commands_of_the_issue():
    assert _readme_export_commands() == ['pip install -c constraints.txt -e ".[export]"', "distill demo",
                                         "distill export runs/demo --format onnx --quantize int8"]


@pytest.mark.slow
def test_the_readme_export_section_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's commands (the demo with fewer epochs, to be quick; the export exactly as written)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    _, demo, export = _readme_export_commands()
    assert main([*shlex.split(demo)[1:], "--set", "train.epochs=2", "--set", "student.train.epochs=3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(shlex.split(export)[1:]) == 0
    out = capsys.readouterr().out
    assert "fp32 parity: passed (max abs logit difference <= 0.0001, top-1 agreement 1.0 on 450 test samples)" in out
    record = json.loads((tmp_path / "runs/demo/distilled/export/onnx/export.json").read_text())
    assert record["parity"]["passed"] and _fp32_row(record, "onnxruntime fp32")["agreement"] == 1.0
    assert 0.0 <= _fp32_row(record, "onnxruntime int8 static")["agreement"] <= 1.0
    assert (tmp_path / "runs/demo/distilled/export/onnx/MODEL_CARD.md").is_file()
    student = distill.load_student  # the README's Python call, on a safetensors export of the same run
    assert main(["export", "runs/demo", "--format", "safetensors", "--no-latency"]) == 0
    assert not student("runs/demo/distilled/export/safetensors").training


@pytest.mark.slow
def test_a_hugging_face_student_is_also_saved_with_save_pretrained(digits_splits, tmp_path):
    """An hf student (a tiny ResNet from tests/_hf_tiny.py, on digits' 1x8x8 grey images) gets `hf/`: the
    network and its image processor, loadable by transformers and by distill's `hf` model."""
    tf = pytest.importorskip("transformers")
    from _hf_tiny import save_tiny

    source = save_tiny("resnet", tmp_path / "tiny", size=8)
    spec = {"name": "hf", "kwargs": {"id": str(source)}, "num_classes": 10, "in_shape": [1, 8, 8]}
    model = create_model("hf", 10, (1, 8, 8), id=str(source)).eval()
    record = {"name": "digits", "mean": [0.0], "std": [1.0], "num_classes": 10, "split_seed": 0}  # unnormalized
    ckpt = save_checkpoint(tmp_path / "hf_student" / "best.pt", {"model": model.state_dict(), "model_spec": spec,
                                                                 "data": record})
    out = tmp_path / "out"
    got = export_student(ckpt, "safetensors", out=out, latency=False)
    assert got["hf_pretrained"] == str(out / "hf") and got["parity"]["passed"]
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    want = model(x).detach()
    net = tf.AutoModelForImageClassification.from_pretrained(out / "hf")
    assert torch.equal(net(pixel_values=model.preprocess(x)).logits.detach(), want)
    assert torch.equal(create_model("hf", 10, (1, 8, 8), id=str(out / "hf")).eval()(x).detach(), want)
    assert "- Hugging Face format: `" in (out / "MODEL_CARD.md").read_text()
