"""configs/imagenet/: ResNet-34 -> ResNet-18 with KD, DKD and DIST, and Beyer et al.'s function matching, each checked
offline: ``--dry-run`` with the configs' hub ids (nothing is built or downloaded), and a tiny run on a generated image
folder (train/ and val/) with the hub ids replaced by tiny local Hugging Face models."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill.cli import main

Image = pytest.importorskip("PIL.Image")
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "imagenet"
# config file -> (method, the loss terms its training logs, lines of its dry run)
EXPECTED: dict[str, tuple[str, set[str], tuple[str, ...]]] = {
    "r34_r18_kd.yaml": ("kd", {"ce", "kd"}, (
        "id: microsoft/resnet-34", "id: microsoft/resnet-18", "pretrained: false", "milestones:", "- 30", "- 60",
        "- 90", "lr: 0.1", "weight_decay: 0.0001", "epochs: 100", "batch_size: 256", "mode: same/ic",
        "temperature: 1.0", "alpha: 0.5")),
    "r34_r18_dkd.yaml": ("dkd", {"ce", "tckd", "nckd"}, (
        "id: microsoft/resnet-34", "id: microsoft/resnet-18", "milestones:", "lr: 0.1", "epochs: 100",
        "tckd_weight: 1.0", "nckd_weight: 0.5", "temperature: 1.0", "warmup_epochs: 1")),
    "r34_r18_dist.yaml": ("dist", {"ce", "inter", "intra"}, (
        "id: microsoft/resnet-34", "id: microsoft/resnet-18", "milestones:", "lr: 0.1", "epochs: 100",
        "inter_weight: 1.0", "intra_weight: 1.0", "temperature: 1.0")),
    "funmatch_bit_r50.yaml": ("kd", {"kd"}, (
        "id: google/bit-50", "id: microsoft/resnet-50", "name: adamw", "lr: 0.03", "name: cosine",
        "warmup_epochs: 16.0", "clip_grad_norm: 1.0", "epochs: 1200", "batch_size: 4096", "mode: funmatch",
        "mixup_alpha: 1.0", "- 0.05", "alpha: 1.0")),
    "funmatch_r152x2_r50.yaml": ("kd", {"kd"}, (
        "name: timm", "id: resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", "id: microsoft/resnet-50", "name: adamw",
        "lr: 0.03", "name: cosine", "warmup_epochs: 16.0", "clip_grad_norm: 1.0", "epochs: 1200", "batch_size: 4096",
        "mode: funmatch", "mixup_alpha: 1.0", "- 0.05", "alpha: 1.0")),
}


def test_every_config_is_tested() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_dry_run_resolves_offline_without_building_a_model(config: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"--dry-run loaded {args}")

    if importlib.util.find_spec("transformers") is not None:  # building a model (or reading its hub config) fails
        import transformers as tf

        for cls in (tf.AutoConfig, tf.AutoImageProcessor, tf.AutoModelForImageClassification):
            monkeypatch.setattr(cls, "from_pretrained", refuse)
    assert main(["run", str(CONFIGS / config), "--dry-run", "--set", f"data.path={tmp_path}"]) == 0
    out = capsys.readouterr().out
    method, _, lines = EXPECTED[config]
    for line in ("recipe: distill", "name: imagefolder", f"path: {tmp_path}", "normalize: false", "image_size: 224",
                 "stream: true", "name: hf", f"method: {method}", *lines):
        assert line in out, line


def _folder(root: Path, classes: int = 3) -> Path:
    """``root/{train,val}/n0<c>/<i>.png``: 16x16 RGB noise with channel c saturated; 6 training and 2 val images
    per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for c in range(classes):
            (root / split / f"n0{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                pixels[..., c] = 255
                Image.fromarray(pixels).save(root / split / f"n0{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from _hf_tiny import save_tiny

    root = tmp_path_factory.mktemp("imagenet")
    return {"images": _folder(root / "images"), "resnet_teacher": save_tiny("resnet", root / "r34", num_labels=3),
            "resnet_student": save_tiny("resnet", root / "r18", num_labels=3, seed=1),
            "bit": save_tiny("bit", root / "bit", num_labels=3)}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_a_tiny_run_of_each_config(config: str, tiny: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tiny["bit"] if config.startswith("funmatch") else tiny["resnet_teacher"]  # google/bit-50's family
    student = tiny["resnet_student"]
    assert main(["run", str(CONFIGS / config), "--quiet", "--output-dir", str(tmp_path / "runs"),
                 "--set", f"data.path={tiny['images']}", "--set", "teacher.model.name=hf",  # timm's: a tiny HF BiT
                 "--set", f"teacher.model.id={teacher}",
                 "--set", f"student.model.id={student}", "--set", "device=cpu", "--set", "data.image_size=16",
                 "--set", "data.num_workers=0", "--set", "data.val_size=3", "--set", "train.max_steps=2",
                 "--set", "train.batch_size=8", "--set", "report.latency=false"]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "distilled" in out and "test acc" in out  # the usual results table
    run = tmp_path / "runs" / f"imagenet_{config.removesuffix('.yaml')}"
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["name"] == "imagefolder" and results["data"]["num_classes"] == 3
    assert set(results["models"]) == {"teacher", "distilled"} and results["models"]["distilled"]["n_test"] == 6
    assert not (run / "teacher").exists()  # the pretrained teacher, used as it is
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("model") == "distilled" and "train/loss" in r]
    assert trained and trained[-1]["step"] == 2
    _, terms, _ = EXPECTED[config]
    logged = {key.removeprefix("train/") for key in trained[-1] if key.startswith("train/")} - {"loss"}
    assert logged == terms
