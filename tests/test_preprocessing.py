"""distill.models.preprocessing: a model's own resize / crop / normalize, on the device, as Pillow does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill.models import Preprocessing, declared_preprocessing, with_preprocessing

Image = pytest.importorskip("PIL.Image")


def _pil_float_resize(channel: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Pillow's resize of one float channel (mode "F": its resampling weights, no 8-bit rounding or clipping)."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size[::-1], resample))


@pytest.mark.parametrize("resample, pil", [("bilinear", 2), ("bicubic", 3), ("nearest", 0)])
@pytest.mark.parametrize("size", [(18, 18), (10, 7), (16, 20)])
def test_resize_is_pillows_resampling(resample: str, pil: int, size: tuple[int, int]) -> None:
    # A smooth image: bicubic never overshoots [0, 1], so Pillow's float mode (which does not clip) is the reference.
    yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    image = (0.25 + 0.5 * yy * xx).astype(np.float32)
    prep = Preprocessing(resize=size, resample=resample)
    ours = prep.apply(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours, _pil_float_resize(image, size, pil), rtol=0, atol=2e-6)


def test_steps_in_order_with_exact_values() -> None:
    x = torch.rand(2, 1, 12, 16, generator=torch.Generator().manual_seed(0))
    prep = Preprocessing(resize=6, crop=(4, 4), resample="bilinear", mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0),
                         scale=255.0, channels=3)
    out = prep.apply(x)
    assert prep.output_size(12, 16) == (4, 4) and out.shape == (2, 3, 4, 4)
    resized = Preprocessing(resize=(6, 8)).apply(x)  # shorter side 6: 12x16 -> 6x8
    crop = resized[..., 1:5, 2:6].expand(-1, 3, -1, -1) * 255.0
    expected = (crop - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.5, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert Preprocessing(resize=6).output_size(16, 12) == (8, 6)  # portrait: the width is the shorter side


def test_nothing_to_do_is_identity() -> None:
    x = torch.rand(3, 3, 5, 5)
    assert torch.equal(Preprocessing(resize=(5, 5), crop=(5, 5)).apply(x), x)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"resample": "lanczos"}, "resample must be one of nearest, bilinear, bicubic"),
    ({"resize": (3,)}, "resize is (height, width)"),
    ({"resize": 0}, "the shorter side (an int >= 1)"),
    ({"mean": (0.5,)}, "give both mean and std"),
    ({"mean": (0.5, 0.5), "std": (1.0,)}, "one value per channel"),
    ({"crop": (2, 0)}, "crop is (height, width)"),
])
def test_invalid_declarations(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Preprocessing(**kwargs)


def test_apply_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"takes images \(N, C, H, W\) in \[0, 1\]; got a tensor of shape \(2, 8\)"):
        Preprocessing().apply(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="the model takes 3-channel images; the data has 2 channels"):
        Preprocessing(channels=3).apply(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="center crop 9x9 is larger than the resized images 8x8"):
        Preprocessing(resize=(8, 8), crop=(9, 9)).apply(torch.zeros(1, 1, 4, 4))


def test_with_preprocessing_wraps_any_module() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    net.num_classes, net.feature_stages = 5, ["1"]
    prep = Preprocessing(resize=(4, 4), mean=(0.5,), std=(0.25,), channels=3)
    model = with_preprocessing(net, prep)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net(prep.apply(x)), rtol=0, atol=0)
    assert declared_preprocessing(model) is prep and declared_preprocessing(net) is None
    assert model.num_classes == 5 and model.feature_stages == ["model.1"]
    assert list(model.state_dict()) == ["model.1.weight", "model.1.bias"]  # nothing of the preprocessing
    with pytest.raises(TypeError, match="needs a distill.models.Preprocessing"):
        with_preprocessing(net, {"resize": 4})  # type: ignore[arg-type]


def test_fit_refuses_normalized_data_for_a_model_with_its_own_preprocessing() -> None:
    from distill import CrossEntropy, FrozenTeacher, KnowledgeDistillation, TrainConfig, fit, load_dataset, make_splits

    raw = load_dataset("digits")
    normalized = make_splits(raw, val_size=0.1)
    own = with_preprocessing(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), Preprocessing(mean=(0.5,), std=(0.5,)))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    train = TrainConfig(epochs=1, batch_size=64)
    with pytest.raises(ValueError, match=r"the student prepares its own inputs \(normalize mean \[0.5\] std \[0.5\]\) "
                                         r"and takes pixels in \[0, 1\], but the data \(digits\) is normalized .*"
                                         r"make_splits\(\.\.\., normalize=False\)"):
        fit(own, CrossEntropy(), normalized, train, progress=None)
    pixels = make_splits(raw, val_size=0.1, normalize=False)
    assert fit(own, CrossEntropy(), pixels, train, progress=None).model is own
    with pytest.raises(ValueError, match="the teacher prepares its own inputs"):
        fit(plain, KnowledgeDistillation(), normalized, train, teacher=FrozenTeacher(own), progress=None)
