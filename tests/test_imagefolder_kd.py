"""configs/imagefolder_kd.yaml: KD from a Hugging Face teacher directory to a smaller student on a folder of
images (one sub-folder per class); a tiny generated folder and a tiny teacher, nothing downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from distill.cli import main

Image = pytest.importorskip("PIL.Image")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "imagefolder_kd.yaml"


def _folder(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    """``root/class<c>/<i>.png``: 20x24 RGB noise with channel c saturated (so the classes differ)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_the_config_resolves_for_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(CONFIG), "--set", f"data.path={tmp_path}", "--set", "teacher.model.id=my_teacher",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in ("name: imagefolder", f"path: {tmp_path}", "normalize: false", "name: hf", "id: my_teacher",
                 "name: resnet8x4", "method: kd"):
        assert line in out, line


@pytest.mark.slow
def test_kd_from_a_local_hf_teacher_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from _hf_tiny import save_tiny

    images = _folder(tmp_path / "images")
    teacher = save_tiny("resnet", tmp_path / "teacher", num_labels=3)
    assert main(["run", str(CONFIG), "--quiet", "--output-dir", str(tmp_path / "runs"),
                 "--set", f"data.path={images}", "--set", f"teacher.model.id={teacher}", "--set", "device=cpu",
                 "--set", "data.image_size=20", "--set", "data.num_workers=0", "--set", "train.epochs=1",
                 "--set", "train.augment.crop_padding=2", "--set", "report.latency=false",
                 "--set", "student.model={name: cnn, channels: [8, 16], hidden: 16}"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "distilled" in out and "test acc" in out  # the usual results table
    results = json.loads((tmp_path / "runs" / "imagefolder_kd" / "results.json").read_text())
    assert results["data"]["name"] == "imagefolder" and results["data"]["num_classes"] == 3
    assert set(results["models"]) == {"teacher", "baseline", "distilled"}
    assert not (tmp_path / "runs" / "imagefolder_kd" / "teacher").exists()  # the pretrained teacher, untrained
