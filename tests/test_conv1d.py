"""The zoo's 1-D models (fcn1d, resnet1d: Wang et al. 2017) and 1-D signals through a config: views and
augmentation along the signal, a feature method between two 1-D models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.models import SIGNAL_MODELS, create_model, list_models
from distill.taps import Taps
from distill.views import Views


def test_registered() -> None:
    assert set(SIGNAL_MODELS) <= set(list_models())


def test_fcn1d_has_wang_et_als_layers() -> None:
    model = create_model("fcn1d", num_classes=5, in_shape=(1, 100))
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in model.modules()
             if isinstance(m, torch.nn.Conv1d)]
    assert convs == [(1, 128, 8), (128, 256, 5), (256, 128, 3)]
    expected = (1 * 128 * 8 + 128 * 256 * 5 + 256 * 128 * 3) + 2 * (128 + 256 + 128) + (128 * 5 + 5)  # convs, BN, fc
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet1d_blocks_and_shortcuts() -> None:
    model = create_model("resnet1d", num_classes=3, in_shape=(2, 1, 50))
    kernels = [m.kernel_size[0] for m in model.blocks[0].modules() if isinstance(m, torch.nn.Conv1d)]
    assert kernels == [8, 5, 3, 1]  # three convs and the 1x1 shortcut (width 2 -> 64)
    assert isinstance(model.blocks[2].shortcut, torch.nn.BatchNorm1d)  # 128 -> 128: BN only
    assert model.feature_stages == ["rows.0", "rows.1", "rows.2"]


@pytest.mark.parametrize("name", SIGNAL_MODELS)
@pytest.mark.parametrize("length", [1, 7, 64])
def test_signals_as_rows_or_sequences_give_the_same_logits(name: str, length: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_shape=(3, 1, length), channels=(4, 8, 8)).eval()
    x = torch.randn(2, 3, length)
    with torch.no_grad(), Taps(model, model.feature_stages) as taps:
        rows, features = taps(x[:, :, None, :])
        assert torch.equal(model(x), rows) and rows.shape == (2, 4)
    assert [tuple(f.shape) for f in features.values()] == [(2, 4, 1, length), (2, 8, 1, length), (2, 8, 1, length)]
    out = model(x)
    out.sum().backward()  # every parameter takes part
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("in_shape", [(3, 32, 32), (8,), (2, 2, 10)])
def test_images_are_refused(in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"fcn1d takes 1-D signals: in_shape \(channels, length\) or \(channels, 1, "):
        create_model("fcn1d", 3, in_shape)
    with pytest.raises(ValueError, match="fcn1d: channels must be 3 positive ints"):
        create_model("fcn1d", 3, (1, 10), channels=(4, 8))


def test_the_mild_crop_of_a_signal_shifts_it_along_its_length() -> None:
    length, padding = 16, 3
    x = (torch.arange(length, dtype=torch.float32) + 1).expand(5, 2, 1, length).contiguous()
    student, teacher = Views(mode="same/rc", image_size=(1, length), padding=padding)(
        x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(student, teacher) and student.shape == x.shape
    for row in student[:, 0, 0]:
        shifts = [s for s in range(-padding, padding + 1)
                  if torch.equal(row, torch.cat([torch.zeros(max(-s, 0)), x[0, 0, 0, max(s, 0):length + min(s, 0)],
                                                 torch.zeros(max(s, 0))]))]
        assert len(shifts) == 1, row  # the whole signal, shifted by a whole number of samples, zeros outside


def _signals(path: Path, seed: int = 0) -> Path:
    """Three classes of noisy 2-channel waves of 32 samples, stored as one-row signals (N, 2, 1, 32)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        t = np.arange(32) / 32
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        wave = 2 * np.pi * (y[:, None] + 1) * 2 * t + phase
        x = np.stack([np.sin(wave) + 0.3 * rng.standard_normal((n, 32)), np.cos(wave)], 1)
        return x[:, :, None, :].astype(np.float32), y

    (xtr, ytr), (xte, yte) = make(96), make(30)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


@pytest.mark.slow
def test_a_feature_method_between_1d_models_with_1d_views_from_a_config(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"name": "signals", "recipe": "distill", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
           "data": {"name": "npz", "path": str(_signals(tmp_path / "signals.npz"))},
           "train": {"epochs": 1, "batch_size": 32, "augment": {"crop_padding": 3}, "channels_last": False},
           "teacher": {"model": {"name": "resnet1d", "channels": [8, 8, 8]}},
           "student": {"model": {"name": "fcn1d", "channels": [4, 8, 4]}},
           "distill": {"method": "fitnets", "views": {"mode": "same/ic"}}, "report": {"latency": False}}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    assert main(["run", str(tmp_path / "run.yaml"), "--quiet"]) == 0
    results = json.loads((tmp_path / "runs" / "signals" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "distilled"}
    assert "test acc" in capsys.readouterr().out
    history = [json.loads(line) for line in (tmp_path / "runs" / "signals" / "metrics.jsonl").read_text().splitlines()]
    distilled = [r for r in history if r.get("model") == "distilled"]
    assert distilled and np.isfinite(distilled[-1]["train/hint"])  # FitNets' feature term was computed
