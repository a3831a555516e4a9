"""Hugging Face image classifiers through the model registry (``model: {name: hf, id: DIR}``): tiny models
built from configs and saved to local directories with their processors; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
os.environ["HF_HUB_OFFLINE"] = "1"

import transformers as tf  # noqa: E402
from _hf_tiny import FAMILIES, save_tiny  # noqa: E402

from distill.cli import main  # noqa: E402
from distill.models import create_model, declared_preprocessing  # noqa: E402
from distill.models.hf import HFImageClassifier  # noqa: E402
from distill.taps import Taps  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


def _image(shape: tuple[int, int], seed: int = 0) -> tuple[object, torch.Tensor]:
    """A random RGB PIL image and the same pixels as the data pipeline gives them: (1, 3, H, W) in [0, 1]."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(20, 28), (28, 20), (16, 16), (33, 40)])
def test_preprocessing_is_the_processors(tiny_dirs: dict[str, Path], family: str, shape: tuple[int, int]) -> None:
    model = create_model("hf", 10, (3, *shape), id=str(tiny_dirs[family]))
    processor = tf.AutoImageProcessor.from_pretrained(tiny_dirs[family])
    image, x = _image(shape)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    ours = model.preprocess(x)
    assert ours.shape == expected.shape
    prep = model.preprocessing
    if prep.output_size(*shape) == shape and prep.crop is None:  # no resize: equal to float precision
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    else:  # the processor resizes 8-bit images (rounded after each of its two passes): within one 8-bit step
        step = 1.1 / 255 / min(prep.std or (1.0,))
        assert float((ours - expected).abs().max()) <= step


def test_processor_configs_read_as_declared(tiny_dirs: dict[str, Path]) -> None:
    described = {f: create_model("hf", 10, (3, 20, 20), id=str(tiny_dirs[f])).preprocessing.describe()
                 for f in FAMILIES}
    assert described == {
        "resnet": "resize the shorter side to 18 (bicubic), center crop 16x16, normalize mean [0.5, 0.5, 0.5] "
                  "std [0.5, 0.5, 0.5]",  # shortest_edge 16 / crop_pct 0.875, then the crop
        "convnext": "resize the shorter side to 18 (bicubic), center crop 16x16, normalize mean [0.485, 0.456, "
                    "0.406] std [0.229, 0.224, 0.225]",
        "vit": "resize 16x16 (bilinear), normalize mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5]",
        "bit": "resize the shorter side to 18 (bicubic), center crop 16x16, normalize mean [0.48145466, "
               "0.4578275, 0.40821073] std [0.26862954, 0.26130258, 0.27577711]",
    }


def test_logits_are_the_hf_models_on_the_processors_output(tiny_dirs: dict[str, Path]) -> None:
    model = create_model("hf", 10, (3, 16, 16), id=str(tiny_dirs["vit"])).eval()
    reference = tf.AutoModelForImageClassification.from_pretrained(tiny_dirs["vit"]).eval()
    image, x = _image((16, 16))
    with torch.no_grad():
        logits = model(x)
        expected = reference(**tf.AutoImageProcessor.from_pretrained(tiny_dirs["vit"])(image, return_tensors="pt"))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 10)
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-5)
    assert isinstance(model, HFImageClassifier) and model.pretrained and model.num_classes == 10
    assert declared_preprocessing(model) is model.preprocessing


def test_grey_images_become_rgb_and_feature_stages_are_tappable(tiny_dirs: dict[str, Path]) -> None:
    model = create_model("hf", 10, (1, 8, 8), id=str(tiny_dirs["resnet"])).eval()
    assert model.preprocessing.channels == 3
    assert model.feature_stages == ["net.resnet.encoder.stages.0", "net.resnet.encoder.stages.1"]
    x = torch.rand(2, 1, 8, 8)
    with Taps(model, [*model.feature_stages, "net.resnet.encoder"]) as taps, torch.no_grad():
        _, features = taps(x)
    assert features["net.resnet.encoder.stages.1"].shape == (2, 16, 2, 2)
    assert torch.equal(features["net.resnet.encoder"], features["net.resnet.encoder.stages.1"])  # ModelOutput


def test_every_load_refuses_remote_code(tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    for cls in (tf.AutoConfig, tf.AutoImageProcessor, tf.AutoModelForImageClassification):
        original = cls.from_pretrained.__func__  # type: ignore[attr-defined]

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):  # noqa: ANN001, ANN202
            calls.append((_name, kwargs.get("trust_remote_code", "unset")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    create_model("hf", 10, (3, 16, 16), id=str(tiny_dirs["vit"]))
    assert {name for name, _ in calls} == {"AutoConfig", "AutoImageProcessor", "AutoModelForImageClassification"}
    assert all(trust is False for _, trust in calls), calls


def test_class_count_mismatch_and_new_head(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"model hf \(id .*convnext\) predicts 10 classes but the data has 4; .*"
                                         r"set new_head: true"):
        create_model("hf", 4, (3, 16, 16), id=str(tiny_dirs["convnext"]))
    saved = tf.AutoModelForImageClassification.from_pretrained(tiny_dirs["convnext"])
    model = create_model("hf", 4, (3, 16, 16), id=str(tiny_dirs["convnext"]), new_head=True)
    assert model.net.classifier.out_features == 4 and not model.pretrained  # a fresh head: trained as a student
    torch.testing.assert_close(model.net.convnext.embeddings.patch_embeddings.weight,
                               saved.convnext.embeddings.patch_embeddings.weight, rtol=0, atol=0)


def test_fresh_weights_and_the_meta_device(tiny_dirs: dict[str, Path]) -> None:
    torch.manual_seed(0)
    a = create_model("hf", 10, (3, 16, 16), id=str(tiny_dirs["vit"]), pretrained=False)
    torch.manual_seed(0)
    b = create_model("hf", 10, (3, 16, 16), id=str(tiny_dirs["vit"]), pretrained=False)
    assert not a.pretrained
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    with torch.device("meta"):  # a run checks its models there: from the config, no weights read
        meta = create_model("hf", 10, (3, 16, 16), id=str(tiny_dirs["resnet"]))
    assert next(meta.parameters()).device.type == "meta"


def test_a_directory_without_a_processor_is_explained(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    tf.AutoModelForImageClassification.from_pretrained(tiny_dirs["vit"]).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="cannot load its config and image processor .* preprocessor_config.json"):
        create_model("hf", 10, (3, 16, 16), id=str(tmp_path))


def _config(tmp_path: Path, teacher: dict, student: dict, method: str, normalize: bool = False) -> Path:
    cfg = {"name": "hf", "recipe": "distill", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
           "data": {"name": "digits", "val_size": 0.1, "train_size": 256, "normalize": normalize},
           "train": {"epochs": 1, "batch_size": 64, "channels_last": False},
           "teacher": {"model": teacher}, "student": {"model": student}, "distill": {"method": method},
           "report": {"latency": False}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_normalized_data_is_refused_with_what_to_set(tmp_path: Path, tiny_dirs: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, {"name": "hf", "id": str(tiny_dirs["resnet"])}, {"name": "mlp"}, "kd", normalize=True)
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "teacher.model (hf) prepares its own inputs (3 channels, resize the shorter side to 18 (bicubic)" in err
    assert "set data.normalize: false (--set data.normalize=false)" in err


def test_a_teacher_with_the_datas_classes_in_another_order_is_refused(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    digits = [str(i) for i in range(10)]
    same = save_tiny("resnet", tmp_path / "same", labels=digits)
    assert create_model("hf", 10, (1, 8, 8), id=str(same)).class_names == tuple(digits)
    reversed_dir = save_tiny("resnet", tmp_path / "reversed", labels=digits[::-1])
    path = _config(tmp_path, {"name": "hf", "id": str(reversed_dir)}, {"name": "mlp"}, "kd")
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "teacher.model (hf) predicts the data's classes in another order (its classes vs the data's: " \
           "0: '9' vs '0', 1: '8' vs '1'," in err


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _eval_accuracy(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> float:
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)["test_acc"]


@pytest.mark.parametrize("teacher_family, student, method", [
    ("resnet", {"name": "resnet8"}, "at"),                       # a feature method: HF teacher, zoo student
    ("convnext", {"name": "hf", "id": "vit", "pretrained": False}, "kd"),  # HF teacher and HF student
])
def test_run_distils_from_a_local_hf_teacher_and_eval_rebuilds(
        tmp_path: Path, tiny_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str],
        teacher_family: str, student: dict, method: str) -> None:
    if student["name"] == "hf":
        student = {**student, "id": str(tiny_dirs[student["id"]])}
    path = _config(tmp_path, {"name": "hf", "id": str(tiny_dirs[teacher_family])}, student, method)
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "distilled" in out and "test acc" in out  # the usual table
    run_dir = tmp_path / "runs" / "hf"
    results = _results(run_dir)
    assert not (run_dir / "teacher").exists()  # a pretrained teacher is used as it is
    ckpt = torch.load(run_dir / "distilled" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_spec"]["name"] == student["name"]
    assert _eval_accuracy(run_dir / "distilled" / "best.pt", capsys) == results["models"]["distilled"]["test_acc"]


def test_resume_of_an_hf_student_is_exact(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from distill import CrossEntropy, TrainConfig, fit, load_dataset, make_splits
    from distill.data.tensors import stratified_split

    data = make_splits(load_dataset("digits"), val_size=0.1, normalize=False)
    _, keep = stratified_split(data.train.y, 128, 0)
    data = dataclasses.replace(data, train=data.train.subset(keep))
    train = TrainConfig(epochs=2, batch_size=32, channels_last=False)

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("hf", 10, data.in_shape, id=str(tiny_dirs["vit"]), pretrained=False)

    whole = fit(student(), CrossEntropy(), data, train, seed=0, out_dir=tmp_path / "whole", progress=None).model
    fit(student(), CrossEntropy(), data, train, seed=0, out_dir=tmp_path / "parts", progress=None, stop_after_epochs=1)
    resumed = fit(student(), CrossEntropy(), data, train, seed=0, out_dir=tmp_path / "parts", progress=None,
                  resume=True).model
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_preprocessing_runs_in_float32_under_autocast(tiny_dirs: dict[str, Path]) -> None:
    model = create_model("hf", 10, (3, 20, 20), id=str(tiny_dirs["resnet"]))
    x = torch.rand(2, 3, 20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.preprocess(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, model.preprocess(x))
