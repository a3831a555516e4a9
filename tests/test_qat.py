"""recipe qat (issue 15 item 6): int8 fake quantization during distillation, leaving plain checkpoints."""

import json

import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.models import create_model
from distill.recipes.qat import ActivationRange, fake_quantize_weight, fake_quantized


def test_weights_are_rounded_to_symmetric_int8_with_gradients_straight_through():
    w = torch.tensor([-1.27, 0.5, 0.004, 1.0], requires_grad=True)
    q = fake_quantize_weight(w)
    assert torch.allclose(q, torch.tensor([-127, 50, 0, 100]) * 0.01, atol=1e-7)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones(4))


def test_activations_are_rounded_in_their_moving_average_range():
    r = ActivationRange(momentum=0.5)
    r(torch.tensor([0.0, 2.55]), training=True)
    r(torch.tensor([-2.55, 0.0]), training=True)  # range: (0, 2.55) then halfway to (-2.55, 0) -> (-1.275, 1.275)
    assert torch.allclose(r.range, torch.tensor([-1.275, 1.275]))
    x = torch.tensor([-5.0, 0.0, 0.3, 5.0])
    scale = 2.55 / 255
    assert torch.allclose(r(x, training=False), torch.tensor([-1.28, 0.0, 0.3, 1.27]), atol=scale / 2 + 1e-6)
    assert torch.allclose(r.range, torch.tensor([-1.275, 1.275]))  # evaluation does not move the range


@pytest.mark.parametrize("name, kw", [("mlp", {"hidden": [16]}), ("cnn", {"channels": [4, 8], "hidden": 16})])
def test_fake_quantization_changes_the_computation_not_the_checkpoint(name, kw):
    torch.manual_seed(0)
    model = create_model(name, 10, (1, 8, 8), **kw)
    x = torch.randn(32, 1, 8, 8)
    keys = list(model.state_dict())
    plain = model(x).detach()
    with fake_quantized(model) as layers:
        assert layers == [n for n, m in model.named_modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear)]
        assert list(model.state_dict()) == keys and len(list(model.buffers())) == len(list(create_model(
            name, 10, (1, 8, 8), **kw).buffers()))
        simulated = model(x)
        simulated.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        assert not torch.equal(simulated.detach(), plain) and (simulated.detach() - plain).abs().max() < 0.5
    assert torch.equal(model(x).detach(), plain)  # float again


@pytest.mark.parametrize("override, message", [
    ("distill.cache.path=t.npz", "distill.cache.path: recipe qat distils from a live teacher; unset the cache"),
    ("distill.views.mode=fix/rs", "distill.views / distill.transfer: recipe qat trains on the run's own training "
                                  "split; unset them"),
])
def test_qat_refuses_what_it_does_not_do(override, message):
    from distill.config import builtin_config

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, ["recipe=qat", override], base=builtin_config("demo"))


@pytest.mark.slow
def test_a_qat_run_writes_a_plain_student_that_exports(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    quick = ["--set", "train.epochs=2", "--set", "student.train.epochs=2", "--quiet", "--output-dir", str(tmp_path)]
    assert main(["demo", "--set", "recipe=qat", "--name", "q", *quick]) == 0
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "distilled"}
    assert results["qat"]["layers"] == ["hidden.fc1", "classifier"] and 0 <= results["qat"]["simulated_int8_test_acc"] <= 1
    ckpt = torch.load(tmp_path / "q" / "distilled" / "best.pt", weights_only=True)
    assert list(ckpt["model"]) == list(create_model("mlp", 10, (1, 8, 8), hidden=[64]).state_dict())
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--quantize", "int8", "--no-latency"]) == 0
    assert "fp32 parity: passed" in capsys.readouterr().out
