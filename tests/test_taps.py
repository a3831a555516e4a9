"""Taps: intermediate tensors of any nn.Module by module path, captured with forward hooks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.models import create_model
from distill.taps import Tap, Taps, UnknownModuleError, find_module, module_names, run_with_taps


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture
def resnet8():
    torch.manual_seed(0)
    return create_model("resnet8", 10, (3, 32, 32)).eval()


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class TwoHeads(nn.Module):
    """A user's model: nested containers, a tuple-returning module, a shared block, an unused one."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"proj": nn.Linear(6, 8), "act": nn.Tanh()})
        self.rnn = nn.GRU(8, 5, batch_first=True)
        self.shared = nn.Linear(5, 5)
        self.unused = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, 6)
        h = self.encoder["act"](self.encoder["proj"](x))
        seq, _ = self.rnn(h)
        z = self.shared(self.shared(seq[:, -1]))  # the same module twice
        return self.head(z)


# -- capturing the right tensors ---------------------------------------------------------------


def test_module_names_are_named_modules_without_the_root(resnet8):
    names = module_names(resnet8)
    assert names == [n for n, _ in resnet8.named_modules()][1:]
    assert "layer3.0.relu2" in names and "" not in names


def test_output_and_input_taps_equal_a_manual_forward(resnet8, x32):
    logits, feats = run_with_taps(resnet8, x32, ["layer1", "layer3", "layer3.0.relu2:input", "classifier:input"])
    m = resnet8
    with torch.no_grad():
        stem = m.relu(m.bn1(m.conv1(x32)))
        l1 = m.layer1(stem)
        l2 = m.layer2(l1)
        b = m.layer3[0]
        pre = b.bn2(b.conv2(b.relu1(b.bn1(b.conv1(l2))))) + b.shortcut(l2)  # pre-activation of the block
        l3 = F.relu(pre)
        pooled = torch.flatten(F.adaptive_avg_pool2d(l3, 1), 1)
    assert list(feats) == ["layer1", "layer3", "layer3.0.relu2:input", "classifier:input"]
    torch.testing.assert_close(feats["layer1"], l1)
    torch.testing.assert_close(feats["layer3.0.relu2:input"], pre)
    torch.testing.assert_close(feats["layer3"], l3)
    torch.testing.assert_close(feats["classifier:input"], pooled)
    torch.testing.assert_close(logits, m.classifier(pooled))
    assert no_hooks_left(resnet8)


def test_spec_forms_are_equivalent(resnet8, x32):
    assert Tap.parse("layer2") == Tap("layer2") == Tap.parse("layer2:output")
    assert Tap.parse("layer2:input") == Tap("layer2", "input")
    assert str(Tap("layer2", "input")) == "layer2:input"
    _, a = run_with_taps(resnet8, x32, {"pre": Tap("classifier", "input"), "out": "layer2:output"})
    _, b = run_with_taps(resnet8, x32, ["classifier:input", "layer2"])
    assert torch.equal(a["pre"], b["classifier:input"]) and torch.equal(a["out"], b["layer2"])
    _, single = run_with_taps(resnet8, x32, "layer2")
    assert list(single) == ["layer2"]


def test_registry_models_cnn_mlp_wrn(x32):
    torch.manual_seed(0)
    mlp = create_model("mlp", 10, (3, 32, 32), hidden=[16, 12]).eval()
    logits, f = run_with_taps(mlp, x32, ["hidden.relu1", "hidden.fc2", "classifier:input"])
    h1 = F.relu(mlp.hidden.fc1(x32.flatten(1)))
    torch.testing.assert_close(f["hidden.relu1"], h1)
    torch.testing.assert_close(f["hidden.fc2"], mlp.hidden.fc2(h1))
    torch.testing.assert_close(logits, mlp.classifier(f["classifier:input"]))

    cnn = create_model("cnn", 10, (3, 32, 32), channels=[8, 16], hidden=0).eval()
    _, f = run_with_taps(cnn, x32, ["stages.0", "stages.1", "stages.1.conv:input"])
    torch.testing.assert_close(f["stages.0"], cnn.stages[0](x32))
    assert torch.equal(f["stages.1.conv:input"], f["stages.0"])
    assert f["stages.1"].shape == (2, 16, 8, 8)

    wrn = create_model("wrn_16_1", 10, (3, 32, 32)).eval()
    logits, f = run_with_taps(wrn, x32, ["block1", "block2", "block3"])
    assert [tuple(v.shape[1:]) for v in f.values()] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    torch.testing.assert_close(logits, wrn(x32))  # taps do not change the output


def test_user_module_tuple_output_is_its_first_element():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    x = torch.randn(4, 7, 6)
    _, f = run_with_taps(model, x, ["encoder.act", "rnn", "head:input"], repeated="last")
    h = torch.tanh(model.encoder["proj"](x))
    seq, _ = model.rnn(h)
    torch.testing.assert_close(f["encoder.act"], h)
    torch.testing.assert_close(f["rnn"], seq)  # GRU returns (output, h_n): the tap keeps output


def test_non_tensor_output_is_an_error():
    class Dicty(nn.Module):
        def forward(self, x):
            return {"y": x}

    model = nn.Sequential(Dicty(), nn.Identity())
    with pytest.raises(TypeError, match=r"output of module '0'.*dict"):
        run_with_taps(model, torch.zeros(1, 2), ["0"])
    taps = Taps(model, ["1:input"])
    with pytest.raises(TypeError, match="input of module '1'.*without a positional argument"):
        model[1](input=torch.zeros(1))  # called with a keyword only: no first positional input
    taps.remove()


# -- gradients and frozen teachers -------------------------------------------------------------


def test_gradients_flow_from_a_tapped_feature_into_the_student(resnet8, x32):
    resnet8.train()
    with Taps(resnet8, ["layer2"]) as taps:
        _, f = taps(x32)
    f["layer2"].pow(2).mean().backward()
    assert resnet8.conv1.weight.grad is not None and resnet8.conv1.weight.grad.abs().sum() > 0
    assert resnet8.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert resnet8.layer3[0].conv1.weight.grad is None  # downstream of the tap: untouched


def test_teacher_taps_under_inference_mode_feed_a_student_loss(x32):
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10, (3, 32, 32)).eval().requires_grad_(False)
    student = create_model("resnet8", 10, (3, 32, 32))
    teacher_taps = Taps(teacher, ["layer3", "layer3.0.relu2:input"])
    with torch.inference_mode():
        _, t = teacher_taps(x32)
    with torch.no_grad():
        _, expected = run_with_taps(teacher, x32, ["layer3", "layer3.0.relu2:input"])
    for key in t:
        assert not t[key].is_inference() and not t[key].requires_grad
        torch.testing.assert_close(t[key], expected[key])
    _, s = run_with_taps(student, x32, ["layer3"])
    F.mse_loss(s["layer3"], t["layer3"]).backward()  # an inference tensor here would fail
    assert student.conv1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    teacher_taps.remove()
    assert no_hooks_left(teacher)


# -- errors --------------------------------------------------------------------------------------


def test_unknown_path_lists_close_names_and_how_to_list_all(resnet8):
    with pytest.raises(UnknownModuleError) as info:
        Taps(resnet8, ["layer2", "layr3"])
    message = str(info.value)
    assert "no module 'layr3'" in message and "Did you mean: layer3" in message
    assert "module_names(model)" in message
    assert no_hooks_left(resnet8)  # checked before any hook was registered
    with pytest.raises(UnknownModuleError, match="top-level modules are: conv1, bn1"):
        find_module(resnet8, "backbone.stage4")
    assert find_module(resnet8, "layer3.0.conv1") is resnet8.layer3[0].conv1


def test_bad_specs(resnet8):
    with pytest.raises(ValueError, match="unknown kind 'inptu'"):
        Taps(resnet8, ["layer3:inptu"])
    with pytest.raises(ValueError, match="listed twice"):
        Taps(resnet8, ["layer1", "layer1"])
    with pytest.raises(ValueError, match="no taps given"):
        Taps(resnet8, [])
    with pytest.raises(ValueError, match="repeated must be"):
        Taps(resnet8, ["layer1"], repeated="first")
    assert no_hooks_left(resnet8)


def test_a_tap_that_did_not_run_is_an_error(x32):
    model = TwoHeads()
    with pytest.raises(RuntimeError, match=r"'unused'.*not computed in the latest forward"):
        run_with_taps(model, torch.randn(2, 3, 6), ["unused"])
    taps = Taps(model, ["head"])
    with pytest.raises(RuntimeError, match="not computed"):
        taps.features  # noqa: B018 - nothing has run yet
    with pytest.raises(KeyError, match="no tap named 'body'"):
        taps["body"]
    taps.remove()


def test_in_place_change_after_capture_is_detected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(8, 4)
    with pytest.raises(RuntimeError, match="modified in place"):
        run_with_taps(model, x, ["0"])  # the Linear's output is then overwritten by the ReLU
    with pytest.raises(RuntimeError, match="modified in place"):
        run_with_taps(model, x, ["1:input"])
    _, f = run_with_taps(model, x, ["1"])  # the ReLU's own output is what it says
    torch.testing.assert_close(f["1"], F.relu(model[0](x)))
    with torch.inference_mode():  # copied at capture, so the pre-activation survives
        _, f = run_with_taps(model, x, ["0"])
    torch.testing.assert_close(f["0"], model[0](x).detach())


# -- lifetime: clearing, repeats, removal ---------------------------------------------------------


def test_hooks_are_removed_idempotently_and_features_stay_readable(resnet8, x32):
    before = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in resnet8.named_modules()}
    with Taps(resnet8, ["layer1", "layer2:input"]) as taps:
        assert not no_hooks_left(resnet8)
        resnet8(x32)
    assert no_hooks_left(resnet8) and not taps.attached
    assert taps["layer1"].shape == (2, 16, 32, 32)  # the last forward is still there
    taps.remove()  # idempotent
    taps.remove()
    with pytest.raises(RuntimeError, match="removed"):
        taps(x32)
    after = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in resnet8.named_modules()}
    assert before == after
    taps.clear()
    with pytest.raises(RuntimeError, match="not computed"):
        taps["layer1"]


def test_long_lived_taps_hold_the_latest_forward_only(resnet8, x32):
    taps = Taps(resnet8, ["layer3"])
    resnet8(x32)
    first = taps["layer3"]
    resnet8(x32[:1])  # each call of the model starts afresh
    assert taps["layer3"].shape[0] == 1 and first.shape[0] == 2
    _, f = taps(x32)
    f2 = taps.features
    assert f2["layer3"] is f["layer3"] and f2 is not f  # a new dict each time
    taps.remove()


def test_a_module_run_twice_in_one_forward_is_an_error_or_the_last_call():
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(2, 3, 6)
    with pytest.raises(RuntimeError, match="'shared' was computed twice in one forward.*repeated='last'"):
        run_with_taps(model, x, ["shared"])
    assert no_hooks_left(model)
    _, f = run_with_taps(model, x, ["shared", "head:input"], repeated="last")
    assert torch.equal(f["shared"], f["head:input"])  # the second call's output
    _, f = run_with_taps(model, x, {"first": "shared:input", "second": "shared"}, repeated="last")
    seq, _ = model.rnn(torch.tanh(model.encoder["proj"](x)))
    torch.testing.assert_close(f["first"], model.shared(seq[:, -1]))  # input of the 2nd call = output of the 1st


def test_shared_module_under_two_names_is_one_module():
    block = nn.Linear(3, 3)
    model = nn.Sequential(block, nn.ReLU(), block)  # named_modules() lists it once, as "0"
    assert module_names(model) == ["0", "1"]
    assert find_module(model, "2") is block
    with pytest.raises(RuntimeError, match="computed twice"):
        run_with_taps(model, torch.randn(1, 3), ["2"])  # both calls fire the same module's hook
    _, f = run_with_taps(model, torch.randn(1, 3), ["0", "2"], repeated="last")
    assert torch.equal(f["0"], f["2"])


def test_two_taps_on_one_model_are_independent(resnet8, x32):
    a = Taps(resnet8, ["layer1", "layer2"])
    b = Taps(resnet8, {"deep": "layer3", "also_l1": "layer1"})
    resnet8(x32)
    assert torch.equal(a["layer1"], b["also_l1"])
    a.remove()
    resnet8(x32[:1])
    assert b["deep"].shape[0] == 1 and a["layer1"].shape[0] == 2  # a no longer listens
    b.remove()
    assert no_hooks_left(resnet8)
    assert repr(b) == "Taps(CifarResNet: deep=layer3, also_l1=layer1, removed)"
