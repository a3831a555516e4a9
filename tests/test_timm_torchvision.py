"""timm and torchvision adapters (model: {name: timm | torchvision, id: ...}). Neither library is installable on
every machine (a torchvision build must match torch's): these tests skip with the reason where it is missing.
Nothing is downloaded: fresh weights (pretrained: false); the preprocessing comes from the libraries' own
configs, which need no download."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.models import create_model, declared_preprocessing

Image = pytest.importorskip("PIL.Image")


def _image(shape: tuple[int, int]) -> tuple[object, torch.Tensor]:
    pixels = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def _within_one_step(ours: torch.Tensor, expected: torch.Tensor, std: tuple[float, ...]) -> None:
    """The libraries resize 8-bit images (rounded after each pass): ours agrees to one 8-bit step."""
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) <= 1.1 / 255 / min(std)


@pytest.mark.parametrize("shape", [(250, 300), (301, 257)])
def test_timm_model_and_its_eval_transform(shape: tuple[int, int]) -> None:
    timm = pytest.importorskip("timm", reason="timm is not installed (optional extra: .[timm])")
    model = create_model("timm", 7, (3, *shape), id="resnet18", pretrained=False, new_head=True)
    reference = timm.create_model("resnet18", pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    image, x = _image(shape)
    _within_one_step(model.preprocess(x), transform(image)[None], model.preprocessing.std)
    assert model(x).shape == (1, 7) and not model.pretrained and declared_preprocessing(model) is not None
    assert model.feature_stages[-1] == "net.layer4"
    with pytest.raises(ValueError, match=r"model timm \(id resnet18\) predicts 1000 classes but the data has 7"), \
            torch.device("meta"):  # pretrained, checked as a run checks it: no weights read
        create_model("timm", 7, (3, 32, 32), id="resnet18")


@pytest.mark.parametrize("shape", [(250, 300), (301, 257)])
def test_torchvision_model_and_its_weights_transforms(shape: tuple[int, int]) -> None:
    models = pytest.importorskip("torchvision.models", reason="torchvision is not installed (optional extra: "
                                                              ".[torchvision])")
    model = create_model("torchvision", 7, (3, *shape), id="resnet18", pretrained=False, new_head=True)
    transform = models.get_model_weights("resnet18").DEFAULT.transforms()
    image, x = _image(shape)
    _within_one_step(model.preprocess(x), transform(image)[None], model.preprocessing.std)
    assert model(x).shape == (1, 7) and not model.pretrained
    assert model.feature_stages == ["net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    with pytest.raises(ValueError, match=r"model torchvision \(id resnet18\) predicts 1000 classes but the data "
                                         r"has 7"), torch.device("meta"):
        create_model("torchvision", 7, (3, 32, 32), id="resnet18")


def test_missing_libraries_name_their_extra() -> None:
    for name, module in (("timm", "timm"), ("torchvision", "torchvision")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(ImportError, match=rf'model {name} needs the {module} package .*"\.\[{name}\]"'):
                create_model(name, 10, (3, 32, 32), id="resnet18")
