"""Feature methods on vision transformers: a tiny Hugging Face ViT teacher and student (built and saved locally,
nothing downloaded) whose blocks give tokens (B, N, D). The methods that compare maps read the patch tokens as a
map (B, D, h, w) of the patch grid (the class token left out); the relation methods flatten the tokens or take
the classifier's input; tokens that form no grid are refused with the method and the shape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

tf = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from distill.methods._features import token_grid, tokens_to_map  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.objectives import FitNets  # noqa: E402

from methods._objectives import batch, make_method, step  # noqa: E402

MAP_METHODS = ("fitnets", "at", "nst", "vid", "ab", "fsp", "ft", "reviewkd", "simkd")  # tokens read as maps
FLAT_METHODS = ("sp", "rkd", "pkt", "cc", "crd")  # tokens flattened, or the classifier's input


def _vit(directory: Path, hidden: int, patch: int, seed: int) -> Path:
    torch.manual_seed(seed)
    net = tf.ViTForImageClassification(tf.ViTConfig(image_size=16, patch_size=patch, hidden_size=hidden,
                                                    num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=2 * hidden, num_labels=10))
    net.save_pretrained(directory)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vits(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module]:
    """A teacher with 4x4 patches of 16 px (17 tokens of 16) and a student with 2x2 (5 tokens of 8)."""
    root = tmp_path_factory.mktemp("vit")
    teacher = create_model("hf", 10, (1, 8, 8), id=str(_vit(root / "t", 16, 4, 0))).eval()
    torch.manual_seed(1)
    student = create_model("hf", 10, (1, 8, 8), id=str(_vit(root / "s", 8, 8, 1)), pretrained=False)
    return teacher, student


def test_a_vit_declares_its_tokens_and_its_embedding(vits):
    teacher, student = vits
    assert teacher.patch_tokens and student.patch_tokens
    assert teacher.feature_stages == ["net.vit.layers.0", "net.vit.layers.1"]
    assert teacher.embedding_layer == "net.classifier:input"
    assert token_grid(teacher, (17, 16), "FitNets") == (1, 4) and token_grid(student, (5, 8), "FitNets") == (1, 2)
    assert token_grid(teacher, (198, 16), "FitNets") == (2, 14)  # DeiT: class and distillation tokens
    assert token_grid(teacher, (16, 16), "FitNets") == (0, 4)  # no class token (Swin)
    assert token_grid(nn.Linear(2, 2), (17, 16), "FitNets") is None  # a model that does not declare tokens
    assert token_grid(teacher, (16, 4, 4), "FitNets") is None  # a map stays a map


def test_tokens_become_the_map_of_their_patch_grid():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)  # a class token and 3x3 patches of 3
    m = tokens_to_map(x, (1, 3))
    assert m.shape == (2, 3, 3, 3)
    for r in range(3):
        for c in range(3):
            assert torch.equal(m[:, :, r, c], x[:, 1 + 3 * r + c, :])  # row-major patches, the class token left out
    assert tokens_to_map(x, None) is x


def test_tokens_that_form_no_grid_are_refused_naming_the_method_and_shape(vits):
    teacher, _ = vits
    with pytest.raises(ValueError, match=r"^AT: the HFImageClassifier's tokens \(N, D\) = \(12, 16\) are not a square "
                                         r"grid of patches after up to 2 class/distillation tokens"):
        token_grid(teacher, (12, 16), "AT")


def test_tokens_of_a_model_that_does_not_declare_them_are_refused_with_what_to_do():
    class Tokens(nn.Module):  # a transformer-like model that does not say that its blocks give patch tokens
        def __init__(self) -> None:
            super().__init__()
            self.block, self.classifier = nn.Linear(4, 4), nn.Linear(4, 10)
            self.feature_stages = ["block"]

        def forward(self, x):
            return self.classifier(self.block(x.flatten(2).transpose(1, 2)).mean(1))

    x, y = batch()
    with pytest.raises(ValueError, match=r"FitNets compares vectors \(D,\) and feature maps \(C, H, W\); got per-sample "
                                         r"shapes \(16, 4\) \(student\) and \(16, 4\) \(teacher\); if a 2-D shape is a "
                                         r"transformer's tokens \(N, D\), they are read as a map of its patch grid only "
                                         r"for a model that sets patch_tokens = True"):
        step(FitNets(), Tokens(), Tokens(), x.expand(-1, 4, -1, -1)[:, :, :4, :4].contiguous(), y)


def test_fitnets_hint_on_vit_tokens_is_the_regression_of_the_patch_maps(vits):
    teacher, student = vits
    x, y = batch(8)
    x = x.sigmoid()  # pixels in [0, 1]
    fitnets = FitNets(connector="conv1x1")  # a linear map of each patch's token
    terms, out = step(fitnets, student, teacher, x, y)
    assert fitnets.pairs == [("net.vit.layers.0", "net.vit.layers.0")]  # the middle stage of two
    f_s = out.features["s0"][:, 1:, :].transpose(1, 2).reshape(8, 8, 2, 2)  # 2x2 patches of 8
    f_t = F.adaptive_avg_pool2d(out.teacher.features["t0"][:, 1:, :].transpose(1, 2).reshape(8, 16, 4, 4), 2)
    (connector,) = fitnets.connectors
    assert torch.allclose(terms["hint"], F.mse_loss(connector(f_s), f_t), rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", MAP_METHODS + FLAT_METHODS)
def test_the_feature_method_trains_a_vit_student_from_a_vit_teacher(vits, method):
    teacher, student = vits
    x, y = batch(8)
    objective, model = make_method(method, student, teacher, x.sigmoid())
    terms, _ = step(objective, model, teacher, x.sigmoid(), y)
    term = next(name for name in terms if name not in ("ce", "kd"))
    assert torch.isfinite(terms[term]) and terms[term].requires_grad
    model.zero_grad()
    terms[term].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())  # reaches the student
