"""Tests for the model zoo: shapes, gradients, parameter counts and the registry's errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import distill.models as models
from distill.models import (
    UnknownModelError,
    count_parameters,
    create_model,
    list_models,
    register_model,
    registry,
)

TESTS_DIR = Path(__file__).resolve().parent

EXPECTED_MODELS = {
    "mlp", "cnn",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "wrn_28_4", "wrn_28_10",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenetv2", "shufflenetv1", "shufflenetv2",
}

# Parameter counts for num_classes=100, in_shape=(3, 32, 32) as published for the CRD /
# RepDistiller CIFAR-100 benchmark (Tian et al., ICLR 2020, and the papers reusing its
# code, e.g. DKD/ReviewKD tables); rounded to 0.01M there. WRN-28-10: Zagoruyko &
# Komodakis (2016), 36.5M.
PUBLISHED_PARAMS = {
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "resnet56": 0.86e6,
    "resnet20": 0.28e6,
    "resnet110": 1.73e6,
    "wrn_40_2": 2.25e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_1": 0.57e6,
    "wrn_28_10": 36.5e6,
    "vgg13": 9.46e6,
    "vgg8": 3.96e6,
    "mobilenetv2": 0.81e6,
    "shufflenetv1": 0.95e6,
    "shufflenetv2": 1.36e6,
}

# (in_shape, num_classes) every model must handle: CIFAR, MNIST, sklearn digits.
SHAPES = [((3, 32, 32), 100), ((1, 28, 28), 10), ((1, 8, 8), 10)]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny batches gain nothing from intra-op threads, and on a busy 2-core machine the
    thread pool's contention makes some tests 10-100x slower; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_all_expected_models_registered() -> None:
    names = list_models()
    assert names == sorted(names)
    assert EXPECTED_MODELS <= set(names), EXPECTED_MODELS - set(names)


def test_list_models_pattern() -> None:
    assert list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19", "vgg8"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("in_shape,num_classes", SHAPES, ids=["cifar", "mnist", "digits"])
@pytest.mark.parametrize("name", [n for n in list_models()
                                  if n not in models.ECOSYSTEM_MODELS + models.SIGNAL_MODELS])
def test_forward_backward(name: str, in_shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_shape=in_shape)
    assert model.num_classes == num_classes
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == num_classes

    # The classifier is the last op: its hooked output is the model's output.
    seen: list[torch.Tensor] = []
    handle = model.classifier.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, *in_shape)
    model.train()
    out = model(x)
    handle.remove()
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert len(seen) == 1 and seen[0] is out

    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"{name}: no gradient for {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        out_eval = model(x[:1])
    assert out_eval.shape == (1, num_classes)
    assert torch.isfinite(out_eval).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(name: str) -> None:
    n = count_parameters(create_model(name, num_classes=100, in_shape=(3, 32, 32)))
    expected = PUBLISHED_PARAMS[name]
    assert abs(n - expected) / expected < 0.01, f"{name}: {n:,} vs published {expected:,.0f}"


def test_resnet110_exact_count() -> None:
    # stem + 3 stages of 18 blocks + projections + fc, counted by hand.
    assert count_parameters(create_model("resnet110", 100, (3, 32, 32))) == 1_736_564


def test_mlp_hinton_teacher_and_student() -> None:
    teacher = create_model("mlp", 10, (1, 28, 28), hidden=(1200, 1200), dropout=0.5,
                           input_dropout=0.2)
    assert count_parameters(teacher) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert count_parameters(create_model("mlp", 10, (1, 28, 28))) == count_parameters(teacher)
    student = create_model("mlp", 10, (1, 28, 28), hidden=(800, 800))
    assert count_parameters(student) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    # dropout is active in train mode only
    teacher.train()
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(teacher(x), teacher(x))
    teacher.eval()
    assert torch.equal(teacher(x), teacher(x))


def test_mlp_without_hidden_layers_is_linear() -> None:
    model = create_model("mlp", 3, (5,), hidden=())
    assert count_parameters(model) == 5 * 3 + 3
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]


def test_models_accept_other_channel_counts_and_sizes() -> None:
    for name in ("cnn", "resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2"):
        model = create_model(name, 5, (4, 12, 20)).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 4, 12, 20)).shape == (2, 5)


def test_count_parameters_trainable_only() -> None:
    model = create_model("mlp", 2, (3,), hidden=(4,))
    model.hidden.fc1.requires_grad_(False)
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2 + 2
    assert count_parameters(model, trainable_only=True) == 4 * 2 + 2


def test_wrn_kwargs_and_dropout() -> None:
    model = create_model("wrn", 10, (3, 32, 32), depth=16, widen_factor=2)
    assert count_parameters(model) == count_parameters(create_model("wrn_16_2", 10, (3, 32, 32)))
    model = create_model("wrn_16_1", 10, (3, 32, 32), dropout=0.3)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    with pytest.raises(ValueError, match="6n"):
        create_model("wrn", 10, (3, 32, 32), depth=15)


def test_feature_hooks_on_named_modules() -> None:
    model = create_model("resnet8x4", 10, (3, 32, 32)).eval()
    feats: dict[str, torch.Tensor] = {}
    for name in ("layer1", "layer2", "layer3"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: feats.__setitem__(name, o.clone()))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert feats["layer1"].shape == (2, 64, 32, 32)
    assert feats["layer2"].shape == (2, 128, 16, 16)
    assert feats["layer3"].shape == (2, 256, 8, 8)


def test_hooked_activations_are_not_modified_in_place() -> None:
    model = create_model("resnet20", 10, (3, 32, 32)).eval()
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in model.modules():
        if not list(m.children()):  # leaf modules
            m.register_forward_hook(lambda m, i, o: captured.append((o, o.clone())))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert captured and all(torch.equal(o, c) for o, c in captured)


def test_vgg_pools_like_repdistiller() -> None:
    model = create_model("vgg13", 100, (3, 32, 32)).eval()
    sizes: dict[str, int] = {}
    for i in range(5):
        model.get_submodule(f"block{i}").register_forward_hook(
            lambda m, inp, out, i=i: sizes.__setitem__(f"block{i}", out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert sizes == {"block0": 32, "block1": 16, "block2": 8, "block3": 4, "block4": 4}


# --------------------------------------------------------------------------- registry errors


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet21", 10, (3, 32, 32))
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, KeyError)
    msg = str(err)
    assert msg.startswith("unknown model 'resnet21'")
    assert "Did you mean" in msg and "resnet20" in msg
    assert "wrn_40_2" in msg  # all registered names are listed
    assert "package.module:factory" in msg


def test_import_path_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    model = create_model("_user_model:tiny", num_classes=3, in_shape=(2, 4), width=6)
    assert model(torch.randn(5, 2, 4)).shape == (5, 3)
    assert model.classifier.in_features == 6
    with pytest.raises(TypeError, match="widht"):
        create_model("_user_model:tiny", 3, (2, 4), widht=6)
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        create_model("_user_model:not_a_module", 3, (2, 4))
    with pytest.raises(TypeError, match="in_shape"):
        create_model("_user_model:no_in_shape", 3, (2, 4))
    with pytest.raises(TypeError, match="callable"):
        create_model("_user_model:NOT_CALLABLE", 3, (2, 4))
    with pytest.raises(UnknownModelError, match="no attribute"):
        create_model("_user_model:missing", 3, (2, 4))
    with pytest.raises(UnknownModelError, match="cannot import"):
        create_model("no_such_package_xyz.models:net", 3, (2, 4))


def test_import_path_to_builtin_factory() -> None:
    model = create_model("distill.models.mlp:mlp", 4, (6,), hidden=(8,))
    assert count_parameters(model) == 6 * 8 + 8 + 8 * 4 + 4


def test_bad_keyword_names_model_and_accepted_keywords() -> None:
    with pytest.raises(TypeError) as info:
        create_model("mlp", 10, (1, 28, 28), hiden=(10,))
    msg = str(info.value)
    assert "'mlp'" in msg and "'hiden'" in msg
    assert "hidden" in msg and "dropout" in msg and "input_dropout" in msg
    with pytest.raises(TypeError, match=r"resnet20.*'depth'.*\(none\)"):
        create_model("resnet20", 10, (3, 32, 32), depth=32)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_num_classes_must_be_at_least_two(num_classes: int) -> None:
    with pytest.raises(ValueError, match=f"got {num_classes}"):
        create_model("mlp", num_classes, (4,))


def test_num_classes_type() -> None:
    with pytest.raises(TypeError):
        create_model("mlp", 2.0, (4,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        create_model("mlp", True, (4,))  # type: ignore[arg-type]


@pytest.mark.parametrize("in_shape", [(32, 32), (3, 0, 32), (3, 32, 32, 1)])
def test_image_models_reject_bad_in_shape(in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="in_shape"):
        create_model("resnet20", 10, in_shape)


def test_in_shape_must_be_positive_ints() -> None:
    for bad in [(), (3, -1), (2.5,), "abc"]:
        with pytest.raises((ValueError, TypeError), match="in_shape"):
            create_model("mlp", 10, bad)  # type: ignore[arg-type]


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test_only_linear")
    def test_only_linear(num_classes: int, in_shape: tuple[int, ...]) -> nn.Module:
        net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))
        return net

    assert "test_only_linear" in list_models()
    assert create_model("test_only_linear", 3, (2, 2))(torch.randn(1, 2, 2)).shape == (1, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_only_linear")(test_only_linear)
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(test_only_linear)
    with pytest.raises(ValueError):
        register_model("pkg.mod:fn")
    assert models.list_models is list_models


def test_shufflenetv2_unit_half_converts_like_any_module():
    """A ShuffleV2Unit's channel split used to be stored as ``self.half``, an int hiding
    nn.Module.half(): ``unit.half()`` raised "'int' object is not callable" (found by mypy)."""
    from distill.models.shufflenet import ShuffleV2Unit

    unit = ShuffleV2Unit(8).half()
    assert {p.dtype for p in unit.parameters()} == {torch.float16}
    out = unit.float()(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 8, 4, 4)
