"""Connectors: student features mapped to the teacher's feature shapes, sized by probing."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.connectors import (
    CONNECTOR_KINDS,
    ConnectorShapeError,
    Resize,
    build_connectors,
    connector_key,
    make_connector,
    probe_shapes,
)
from distill.models import create_model
from distill.taps import run_with_taps


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def check_pairs(student, teacher, pairs, x, kind="auto"):
    """Build connectors; every output has the teacher feature's exact shape; return them."""
    connectors = build_connectors(student, teacher, pairs, x[:2], kind=kind)
    named = pairs if isinstance(pairs, dict) else {s: (s, t) for s, t in pairs}
    _, s = run_with_taps(student, x, {name: p[0] for name, p in named.items()})
    _, t = run_with_taps(teacher, x, {name: p[1] for name, p in named.items()})
    assert sorted(connectors.keys()) == sorted(connector_key(name) for name in named)
    for name in named:
        assert connectors[connector_key(name)](s[name]).shape == t[name].shape, name
    return connectors


# -- probing ---------------------------------------------------------------------------------------


def test_probe_shapes_per_sample_and_modes_restored(x32):
    torch.manual_seed(0)
    model = create_model("resnet8", 10, (3, 32, 32)).train()
    model.layer1.eval()  # a user's frozen part must stay as it was
    bn_before = model.bn1.running_mean.clone()
    shapes = probe_shapes(model, x32, ["layer1", "layer2", "layer3", "classifier:input", "classifier"])
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8),
                      "classifier:input": (64,), "classifier": (10,)}
    assert model.training and model.layer2.training and not model.layer1.training
    assert not model.layer1[0].bn1.training
    assert torch.equal(model.bn1.running_mean, bn_before)  # it ran in eval mode
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_probe_shapes_on_the_meta_device():
    model = create_model("resnet8x4", 10, (3, 32, 32)).to("meta")  # (`with torch.device("meta"):` works too)
    shapes = probe_shapes(model, torch.empty(2, 3, 32, 32, device="meta"), {"a": "layer2", "b": "layer3:input"})
    assert shapes == {"a": (128, 16, 16), "b": (128, 16, 16)}


def test_probe_shapes_needs_a_batch_dimension():
    class Reduce(nn.Module):
        def forward(self, x):
            return x.sum()

    model = nn.Sequential(nn.Linear(3, 3), Reduce())
    with pytest.raises(ValueError, match=r"feature '1' of Sequential has shape \(\).*batch=2"):
        probe_shapes(model, torch.randn(2, 3), ["1"])


# -- the three teacher/student pairs of the brief --------------------------------------------------


def test_cnn_teacher_mlp_student(x32):
    torch.manual_seed(0)
    teacher = create_model("cnn", 10, (3, 32, 32), channels=[16, 32], hidden=64)
    student = create_model("mlp", 10, (3, 32, 32), hidden=[32, 24])
    pairs = {"map": ("hidden.relu1", "stages.1"), "vec": ("hidden.relu2", "relu"), "in": ("hidden.fc1:input", "fc")}
    c = check_pairs(student, teacher, pairs, x32)
    assert isinstance(c["map"].linear, nn.Linear) and c["map"].linear.out_features == 32 * 8 * 8  # flatten_linear
    assert isinstance(c["vec"], nn.Linear) and (c["vec"].in_features, c["vec"].out_features) == (24, 64)
    assert isinstance(c["in"], nn.Linear) and c["in"].in_features == 3 * 32 * 32  # vectors: linear


def test_wide_teacher_narrower_deeper_student_with_other_spatial_sizes(x32):
    torch.manual_seed(0)
    teacher = create_model("cnn", 10, (3, 32, 32), channels=[64, 128], hidden=0)  # 16x16, then 8x8
    student = create_model("wrn_16_1", 10, (3, 32, 32))  # 32x32, 16x16, 8x8
    pairs = [("block1", "stages.0"), ("block2", "stages.1"), ("block3", "stages.1"), ("conv1", "stages.0")]
    c = check_pairs(student, teacher, pairs, x32)
    assert c["block1"].resize.pool and c["block1"].conv.out_channels == 64  # 32x32 -> 16x16, 16 -> 64
    assert isinstance(c["block2"].resize, Resize) and not hasattr(c["block3"], "resize")

    # learned resampling instead, both ways
    up = check_pairs(teacher, student, [("stages.1", "block1")], x32, kind="transposed_conv")  # 8x8 -> 32x32
    assert isinstance(up["stages_1"].conv, nn.ConvTranspose2d) and up["stages_1"].conv.stride == (4, 4)
    down = check_pairs(student, teacher, [("block1", "stages.1")], x32, kind="strided_conv")  # 32x32 -> 8x8
    assert down["block1"].conv.stride == (4, 4) and down["block1"].conv.kernel_size == (7, 7)


def test_resnet8x4_teacher_resnet8_student_every_kind_that_fits(x32):
    torch.manual_seed(0)
    teacher = create_model("resnet8x4", 10, (3, 32, 32))
    student = create_model("resnet8", 10, (3, 32, 32))
    same = {"l1": ("layer1", "layer1"), "l2": ("layer2", "layer2"), "l3": ("layer3.0.relu2:input", "layer3")}
    for kind in ("auto", "conv1x1", "conv1x1_bn", "conv3x3_bn", "strided_conv", "transposed_conv", "flatten_linear"):
        if kind == "flatten_linear":
            pairs = {"vec": ("classifier:input", "classifier:input")}
        else:
            pairs = same
        check_pairs(student, teacher, pairs, x32, kind=kind)
    c = check_pairs(student, teacher, {"down": ("layer1", "layer2"), "up": ("layer3", "layer1")}, x32,
                    kind={"down": "strided_conv"})
    assert c["down"].conv.stride == (2, 2) and c["down"].conv.kernel_size == (3, 3)  # ConvReg's 3x3/2
    assert c["up"].resize.out_size == (32, 32) and not c["up"].resize.pool


# -- the kinds, one by one --------------------------------------------------------------------------


@pytest.mark.parametrize("kind, s, t", [
    ("identity", (8, 4, 4), (8, 4, 4)),
    ("resize", (8, 4, 4), (8, 8, 8)),
    ("resize", (8, 9, 6), (8, 3, 2)),
    ("resize", (8, 4, 8), (8, 8, 4)),
    ("conv1x1", (8, 4, 4), (16, 4, 4)),
    ("conv1x1", (8, 5, 5), (16, 3, 3)),
    ("conv1x1_bn", (8, 4, 4), (16, 8, 8)),
    ("conv3x3_bn", (8, 7, 7), (3, 7, 7)),
    ("strided_conv", (8, 12, 6), (4, 4, 3)),
    ("transposed_conv", (8, 3, 5), (4, 9, 10)),
    ("transposed_conv", (8, 3, 3), (4, 3, 3)),
    ("linear", (12,), (20,)),
    ("linear", (5, 12), (5, 20)),
    ("flatten_linear", (5, 12), (3, 2, 2)),
    ("flatten_linear", (3, 2, 2), (7,)),
])
def test_each_kind_gives_the_teacher_shape_and_is_trainable(kind, s, t):
    torch.manual_seed(0)
    connector = make_connector(s, t, kind).train()
    x = torch.randn(3, *s, requires_grad=True)
    y = connector(x)
    assert y.shape == (3, *t)
    F.mse_loss(y, torch.randn_like(y)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in connector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(m.bias is None for m in connector.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@pytest.mark.parametrize("s, t, expected", [
    ((8, 4, 4), (8, 4, 4), nn.Identity),
    ((12,), (12,), nn.Identity),
    ((8, 4, 4), (8, 2, 2), Resize),
    ((8, 4, 4), (16, 4, 4), nn.Conv2d),
    ((12,), (20,), nn.Linear),
    ((5, 12), (5, 20), nn.Linear),
    ((12,), (3, 2, 2), nn.Unflatten),
    ((3, 2, 2), (12,), nn.Flatten),
])
def test_auto_picks_the_smallest_map(s, t, expected):
    connector = make_connector(s, t)
    assert any(isinstance(m, expected) for m in connector.modules())
    if s == t:
        x = torch.randn(2, *s)
        assert type(connector) is nn.Identity and connector(x) is x


def test_identity_for_equal_teacher_and_student_features(x32):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10, (3, 32, 32)), create_model("resnet14", 10, (3, 32, 32))
    c = build_connectors(student, teacher, [("layer1", "layer1"), ("layer3", "layer3")], x32)
    assert all(type(m) is nn.Identity for m in c.values()) and not list(c.parameters())


def test_initialization_is_kaiming_fan_out():
    torch.manual_seed(0)
    conv = make_connector((64, 8, 8), (256, 8, 8), "conv1x1").conv
    expected_std = (2.0 / 256) ** 0.5  # N(0, 2 / fan_out), fan_out = 256 * 1 * 1
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    bn = make_connector((4, 2, 2), (6, 2, 2), "conv1x1_bn").bn
    assert torch.equal(bn.weight, torch.ones(6)) and torch.equal(bn.bias, torch.zeros(6))


# -- owned by an objective ------------------------------------------------------------------------


def test_an_objective_owning_connectors_trains_them_and_the_student(x32):
    torch.manual_seed(0)
    teacher = create_model("resnet8x4", 10, (3, 32, 32)).eval().requires_grad_(False)
    student = create_model("resnet8", 10, (3, 32, 32))
    pairs = {"layer2.0": ("layer2", "layer2"), "pre3": ("layer3.0.relu2:input", "layer3.0.relu2:input")}
    objective = nn.Module()
    objective.connectors = build_connectors(student, teacher, pairs, x32, kind="conv1x1_bn")
    assert set(objective.state_dict()) >= {"connectors.layer2_0.conv.weight", "connectors.pre3.bn.running_mean"}
    with torch.inference_mode():
        _, t = run_with_taps(teacher, x32, {k: v[1] for k, v in pairs.items()})
    _, s = run_with_taps(student, x32, {k: v[0] for k, v in pairs.items()})
    loss = sum(F.mse_loss(objective.connectors[connector_key(k)](s[k]), t[k]) for k in pairs)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    assert student.conv1.weight.grad.abs().sum() > 0


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, s, t, reason", [
    ("identity", (8, 4, 4), (8, 2, 2), "shapes differ"),
    ("resize", (8, 4, 4), (16, 4, 4), "cannot change the channels"),
    ("conv1x1", (12,), (8, 4, 4), r"maps \(C, H, W\) feature maps"),
    ("strided_conv", (8, 6, 6), (8, 4, 4), "whole multiples"),
    ("strided_conv", (8, 4, 4), (8, 8, 8), "whole multiples"),
    ("transposed_conv", (8, 8, 8), (8, 4, 4), "whole multiples"),
    ("linear", (8, 4, 4), (8, 4, 8), "last dimension of vectors"),
    ("linear", (5, 12), (6, 12), "last dimension"),
    ("auto", (5, 12), (8, 4, 4), "no automatic choice"),
    ("auto", (5, 12), (6, 12), "no automatic choice"),
])
def test_impossible_mappings_name_both_shapes(kind, s, t, reason):
    with pytest.raises(ConnectorShapeError) as info:
        make_connector(s, t, kind)
    message = str(info.value)
    assert f"student features of shape {s}" in message and f"teacher features of shape {t}" in message
    assert re.search(reason, message)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown connector kind 'conv'.*conv1x1"):
        make_connector((8, 4, 4), (8, 4, 4), "conv")
    with pytest.raises(ValueError, match="without the batch dimension"):
        make_connector((), (8,))
    assert set(CONNECTOR_KINDS) >= {"auto", "identity", "conv1x1", "linear"}


def test_build_errors_name_the_pair_and_the_modules(x32):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8x4", 10, (3, 32, 32)), create_model("mlp", 10, (3, 32, 32), hidden=[8])
    with pytest.raises(ConnectorShapeError,
                       match=r"pair 'hint' \(student: output of module 'hidden.relu1', teacher: output of module "
                             r"'layer3'\): connector 'conv1x1' cannot map student features of shape \(8,\)"):
        build_connectors(student, teacher, {"hint": ("hidden.relu1", "layer3")}, x32, kind="conv1x1")
    with pytest.raises(ValueError, match="'a.b' and 'a_b' both become the module key 'a_b'"):
        build_connectors(student, teacher, {"a.b": ("hidden", "layer1"), "a_b": ("hidden", "layer2")}, x32)
    with pytest.raises(ValueError, match="'train' cannot be a module key"):
        build_connectors(student, teacher, {"train": ("hidden", "layer1")}, x32)
    with pytest.raises(ValueError, match="two pairs are named 'hidden'"):
        build_connectors(student, teacher, [("hidden", "layer1"), ("hidden", "layer2")], x32)
    with pytest.raises(ValueError, match="kind names pairs that do not exist: hnt"):
        build_connectors(student, teacher, {"hint": ("hidden", "layer1")}, x32, kind={"hnt": "linear"})
    with pytest.raises(TypeError, match="a pair is"):
        build_connectors(student, teacher, ["hidden"], x32)


def test_connector_key():
    assert connector_key("layer3.0.relu2:input") == "layer3_0_relu2_input"
    assert connector_key("hint") == "hint"
