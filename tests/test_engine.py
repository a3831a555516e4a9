import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from distill.config import OptimizerConfig, ScheduleConfig, TrainConfig
from distill.engine import NonFiniteLossError, build_optimizer, evaluate, fit, lr_factor, resolve_amp
from distill.engine.optim import fusable
from distill.engine.teacher_forward import cxx_compiler
from distill.models import create_model
from distill.objectives import CrossEntropy, KnowledgeDistillation, Objective
from distill.objectives.base import StepOutputs
from distill.teachers import FrozenTeacher


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=64, optimizer=OptimizerConfig(name="sgd", lr=0.05), log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def mlp(splits, hidden=(32,), seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("mlp", splits.num_classes, splits.in_shape, hidden=hidden, **kw)


# -- schedules and optimizers ----------------------------------------------------------------


def test_lr_factor_warmup_then_cosine_to_floor():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.01)
    f = [lr_factor(s, 100, 10, cfg, base_lr=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert f[10] == pytest.approx(1.0)
    mid = 10 + 45  # half way through the cosine part
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-6)
    assert lr_factor(100, 100, 10, cfg, base_lr=0.1) == pytest.approx(0.1)  # floor = min_lr / lr
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_lr_factor_step_and_multistep():
    step = ScheduleConfig(name="step", step_size=2, gamma=0.5)
    assert [lr_factor(s * 10, 100, 10, step, 1.0) for s in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    multi = ScheduleConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1)
    got = [lr_factor(e * 10, 2400, 10, multi, 0.05) for e in (0, 149, 150, 180, 239)]
    assert got == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    assert lr_factor(7, 100, 10, ScheduleConfig(name="constant"), 1.0) == 1.0


def test_optimizers_and_weight_decay_groups():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    sgd = build_optimizer(model.parameters(), OptimizerConfig(name="sgd", nesterov=True, weight_decay=1e-3))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    decayed = {id(p) for p in sgd.param_groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}  # biases and BN weights are not decayed
    assert sgd.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(model.parameters(), OptimizerConfig(name="adam")), torch.optim.Adam)
    assert isinstance(build_optimizer(model.parameters(), OptimizerConfig(name="adamw")), torch.optim.AdamW)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_fused_update_is_the_per_parameter_loops_to_rounding(name):
    torch.manual_seed(0)
    # no batch norm: the bias before it has a gradient of rounding noise, which Adam scales up to lr-sized steps
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    cfg = OptimizerConfig(name=name, lr=0.05 if name == "sgd" else 1e-2, nesterov=True, weight_decay=1e-3)
    fused_model, loop_model = copy.deepcopy(model), copy.deepcopy(model)
    fused = build_optimizer(fused_model.parameters(), cfg)
    assert all(g["fused"] for g in fused.param_groups)  # CPU float32 parameters: fused
    loop = build_optimizer(loop_model.parameters(), cfg)
    for g in loop.param_groups:  # the same optimizer, as the per-parameter loop
        g["fused"], g["foreach"] = False, False
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(20):
        for m, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), loop_model.parameters()))
    diff = max((a - b).abs().max().item() for a, b in zip(fused_model.parameters(), loop_model.parameters()))
    assert moved > 0.05 and diff < 1e-6


def test_fused_only_where_pytorch_has_the_kernel():
    cpu = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))]
    assert fusable(cpu)
    assert not fusable([])
    assert not fusable([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))])
    assert not fusable([nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    meta = build_optimizer([nn.Parameter(torch.zeros(2, device="meta"))], OptimizerConfig(name="sgd"))
    assert not meta.param_groups[0]["fused"]  # the per-parameter loop


def test_mixed_precision_is_cuda_only():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    with pytest.raises(ValueError, match="train.amp=bf16 needs a CUDA device"):
        resolve_amp("bf16", cpu)


# -- training -----------------------------------------------------------------------------------


def test_fit_learns_digits_and_selects_on_validation(digits_splits, tmp_path):
    records = []
    model = mlp(digits_splits)
    before = evaluate(model, digits_splits.val).accuracy
    res = fit(model, CrossEntropy(), digits_splits, small_cfg(epochs=5), out_dir=tmp_path, log=records.append,
              progress=None)
    assert before < 0.3 and res.best_val["acc"] > 0.9
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert {"train/ce", "train/loss", "val/acc", "val/nll", "lr"} <= set(records[0])
    best_epoch = max(records, key=lambda r: (r["val/acc"], -r["val/nll"]))["epoch"]
    assert res.best_epoch == best_epoch
    # the returned model carries the best weights, which are what best.pt holds
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch
    assert all(torch.equal(v, res.model.state_dict()[k]) for k, v in best["model"].items())


def test_resume_gives_identical_results(digits_splits, tmp_path):
    cfg = small_cfg(epochs=4, augment={"shift": 1})
    kw = dict(seed=3, progress=None)
    straight = fit(mlp(digits_splits, dropout=0.2), CrossEntropy(), digits_splits, cfg, out_dir=tmp_path / "a", **kw)
    part = fit(mlp(digits_splits, dropout=0.2), CrossEntropy(), digits_splits, cfg, out_dir=tmp_path / "b",
               stop_after_epochs=2, **kw)
    assert not part.finished and load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    # a fresh process would build a fresh model: different init, overwritten by the checkpoint
    resumed = fit(mlp(digits_splits, dropout=0.2, seed=99), CrossEntropy(), digits_splits, cfg,
                  out_dir=tmp_path / "b", resume=True, **kw)
    assert resumed.finished and resumed.steps == straight.steps
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]


class _NaNAfter(Objective):
    """Cross-entropy that turns NaN from step ``k`` on."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, out: StepOutputs):
        self.calls += 1
        loss = nn.functional.cross_entropy(out.logits, out.labels)
        return {"ce": loss * float("nan") if self.calls > self.k else loss}


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(digits_splits, tmp_path):
    spe = len(digits_splits.train) // 64
    bad_step = spe + 3  # in the second epoch
    with pytest.raises(NonFiniteLossError) as e:
        fit(mlp(digits_splits), _NaNAfter(bad_step), digits_splits, small_cfg(), out_dir=tmp_path, progress=None)
    assert f"at step {bad_step} (epoch 2)" in str(e.value) and "last.pt" in str(e.value)
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


class _NaNAtStep(Objective):
    """Cross-entropy; at step ``k`` (0-based) either the loss is NaN or, with ``grad=True``, the loss
    is finite but its gradient is NaN, so the step turns the weights NaN unseen by the loss check."""

    def __init__(self, k: int, grad: bool) -> None:
        super().__init__()
        self.k, self.grad, self.calls = k, grad, 0

    def forward(self, out: StepOutputs):
        step, self.calls = self.calls, self.calls + 1
        loss = nn.functional.cross_entropy(out.logits, out.labels)
        if step == self.k and self.grad:
            out.logits.register_hook(lambda g: torch.full_like(g, float("nan")))
        elif step == self.k:
            loss = loss * float("nan")
        return {"ce": loss}


@pytest.mark.parametrize("grad", [True, False], ids=["nan-gradient", "nan-loss"])
def test_divergence_on_the_last_step_of_an_epoch_keeps_the_previous_epochs_checkpoints(digits_splits, tmp_path,
                                                                                         grad):
    from distill.data.tensors import steps_per_epoch

    spe = steps_per_epoch(len(digits_splits.train), 64)
    records = []
    with pytest.raises(NonFiniteLossError) as e:
        fit(mlp(digits_splits), _NaNAtStep(2 * spe - 1, grad), digits_splits, small_cfg(selection="last"),
            out_dir=tmp_path, progress=None, log=records.append)
    assert f"training stopped and the last good checkpoint is {tmp_path / 'last.pt'} (epoch 1)" in str(e.value)
    if grad:
        assert ("[model] epoch 2 ended with non-finite weights (4 tensors: hidden.fc1.weight, hidden.fc1.bias, "
                "classifier.weight, ...) and metrics (val/nll=nan)") in str(e.value)
        assert [r["epoch"] for r in records] == [1, 2] and math.isnan(records[-1]["val/nll"])
    else:
        assert f"at step {2 * spe - 1} (epoch 2)" in str(e.value)
    for name in ("last.pt", "best.pt"):
        kept = load_checkpoint(tmp_path / name)
        assert kept["epoch"] == 1, name
        assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point()), name


class _Dropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("mlp", 10, (1, 8, 8), hidden=(16,), dropout=0.5)

    def forward(self, x):
        return self.net(x)


def test_frozen_teacher_is_deterministic_graph_free_and_untouched(digits_splits):
    model = _Dropout()
    teacher = FrozenTeacher(model)
    model.train()  # even if someone flips it back
    x = digits_splits.train.x[:32]
    a, b = teacher(x).logits, teacher(x).logits
    assert torch.equal(a, b) and not a.requires_grad and a.grad_fn is None
    assert not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = mlp(digits_splits)
    fit(student, KnowledgeDistillation(4.0, 0.5), digits_splits, small_cfg(epochs=1), teacher=teacher, progress=None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_teacher_with_other_class_count_is_refused(digits_splits):
    torch.manual_seed(0)
    other = create_model("mlp", 7, digits_splits.in_shape, hidden=(8,))
    with pytest.raises(ValueError, match="teacher predicts 7 classes but the data .* has 10"):
        fit(mlp(digits_splits), KnowledgeDistillation(), digits_splits, small_cfg(), teacher=FrozenTeacher(other),
            progress=None)
    with pytest.raises(ValueError, match="the student outputs 7 classes but the data .* has 10"):
        fit(other, CrossEntropy(), digits_splits, small_cfg(), progress=None)
    with pytest.raises(ValueError, match="no teacher was given"):
        fit(mlp(digits_splits), KnowledgeDistillation(), digits_splits, small_cfg(), progress=None)


def test_distillation_transfers_the_teacher_function(digits_splits):
    """A student trained only on soft targets (alpha=1, no labels) agrees with its teacher."""
    cfg = small_cfg(epochs=6)
    teacher_model = mlp(digits_splits, hidden=(128,), seed=1)
    fit(teacher_model, CrossEntropy(), digits_splits, cfg, progress=None)
    student = fit(mlp(digits_splits, hidden=(32,), seed=2), KnowledgeDistillation(4.0, 1.0), digits_splits, cfg,
                  teacher=FrozenTeacher(teacher_model), progress=None).model
    t = evaluate(teacher_model, digits_splits.test).predictions
    s = evaluate(student, digits_splits.test).predictions
    assert (t == s).float().mean() > 0.93


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_for_another_architecture_is_explained(tmp_path):
    spec = {"name": "mlp", "kwargs": {"hidden": [16]}, "num_classes": 10, "in_shape": [1, 8, 8]}
    save_checkpoint(tmp_path / "m.pt", {"model": create_model("mlp", 10, (1, 8, 8), hidden=(16,)).state_dict(),
                                        "model_spec": spec})
    other = create_model("mlp", 10, (1, 8, 8), hidden=(32,))
    with pytest.raises(CheckpointError, match=r"holds mlp\(hidden=\[16\]\).*shape mismatches"):
        load_model_weights(other, load_checkpoint(tmp_path / "m.pt"), tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_evaluate_counts_errors_and_nll():
    class Fixed(nn.Module):
        def forward(self, x):
            return x

    from distill.data.tensors import TensorData

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    data = TensorData(logits, torch.tensor([0, 1, 1]))
    ev = evaluate(Fixed(), data)
    assert ev.errors == 1 and ev.accuracy == pytest.approx(2 / 3)
    expected = -(torch.log_softmax(logits, 1)[[0, 1, 2], [0, 1, 1]]).mean()
    assert ev.nll == pytest.approx(float(expected))
    assert math.isfinite(ev.nll)


@pytest.mark.parametrize("selection", ["nll", "last"])
def test_selection_rule_picks_best_pt(digits_splits, tmp_path, selection):
    records = []
    fit(mlp(digits_splits), CrossEntropy(), digits_splits, small_cfg(epochs=4, selection=selection),
        out_dir=tmp_path, log=records.append, progress=None)
    want = 4 if selection == "last" else min(records, key=lambda r: r["val/nll"])["epoch"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == want


def test_gradient_clipping_bounds_the_update(digits_splits):
    model = mlp(digits_splits)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    n = len(digits_splits.train)
    cfg = small_cfg(epochs=1, batch_size=n, clip_grad_norm=1e-3,
                    optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0),
                    schedule=ScheduleConfig(name="constant"))
    fit(model, CrossEntropy(), digits_splits, cfg, progress=None)  # exactly one step
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    step = (after - before).norm()
    assert 0.9e-3 < step <= 1e-3 + 1e-7  # lr * clipped global norm; unclipped it would be far larger


def test_channels_last_conv_training_matches_the_default_layout(digits_splits):
    cfg = small_cfg(epochs=1, optimizer=OptimizerConfig(name="sgd", lr=0.01, weight_decay=0.0))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16)
        fit(model, CrossEntropy(), digits_splits, cfg.model_copy(update={"channels_last": channels_last}),
            progress=None)
        results.append(evaluate(model, digits_splits.val).nll)
    assert results[0] == pytest.approx(results[1], rel=1e-3)


def test_resume_with_changed_settings_is_refused(digits_splits, tmp_path):
    fit(mlp(digits_splits), CrossEntropy(), digits_splits, small_cfg(epochs=2), out_dir=tmp_path,
        stop_after_epochs=1, progress=None)
    with pytest.raises(ValueError, match=r"different settings \(batch_size: 64 -> 32\)"):
        fit(mlp(digits_splits), CrossEntropy(), digits_splits, small_cfg(epochs=2, batch_size=32), out_dir=tmp_path,
            resume=True, progress=None)


def test_resume_with_another_learning_rate_is_refused_unless_allowed(digits_splits, tmp_path):
    """Every train setting that changes the result is compared (log_every is not one of them)."""
    fit(mlp(digits_splits), CrossEntropy(), digits_splits, small_cfg(epochs=2), out_dir=tmp_path,
        stop_after_epochs=1, progress=None)
    changed = small_cfg(epochs=2, optimizer=OptimizerConfig(name="sgd", lr=0.1), log_every=7)
    with pytest.raises(ValueError, match=r"different settings \(train\.optimizer\.lr: 0\.05 -> 0\.1\)\. "):
        fit(mlp(digits_splits), CrossEntropy(), digits_splits, changed, out_dir=tmp_path, resume=True, progress=None)
    lines = []
    res = fit(mlp(digits_splits), CrossEntropy(), digits_splits, changed, out_dir=tmp_path, resume=True,
              allow_changes=True, progress=lines.append)
    assert res.finished and load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert lines[0] == f"[model] resuming {tmp_path / 'last.pt'} with changed settings: train.optimizer.lr: 0.05 -> 0.1"


def test_feature_objective_gets_taps_and_its_connectors_are_trained(digits_splits):
    """An objective that declares features gets them from hooks on both models; the connector it
    builds in setup() is sized by probing and optimized with the student; no hooks are left behind."""
    from distill.connectors import build_connectors
    from distill.objectives import Objective, StepOutputs

    class Hint(Objective):
        needs_teacher = True

        def __init__(self):
            super().__init__({"hint": 1.0})
            self.student_features = {"h": "net.1"}
            self.teacher_features = {"h": "net.1"}
            self.seen = {}

        def setup(self, student, teacher, probe):
            self.connectors = build_connectors(student, teacher, {"h": ("net.1", "net.1")}, probe)

        def forward(self, out: StepOutputs):
            self.seen = {"s": tuple(out.features["h"].shape), "t": tuple(out.teacher.features["h"].shape),
                         "epoch": out.epoch}
            return {"hint": torch.nn.functional.mse_loss(self.connectors["h"](out.features["h"]),
                                                         out.teacher.features["h"])}

    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
            self.classifier = self.net[3]

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    teacher, student = Net(32).eval(), Net(8)
    objective = Hint()
    cfg = TrainConfig(epochs=1, batch_size=64, log_every=1000)
    fit(student, objective, digits_splits, cfg, teacher=FrozenTeacher(teacher), progress=None)
    assert objective.seen["s"] == (64, 8) and objective.seen["t"] == (64, 32)
    assert 0 < objective.seen["epoch"] < 1
    before = build_connectors(student, teacher, {"h": ("net.1", "net.1")}, digits_splits.train.x[:2])
    assert objective.connectors["h"].weight.shape == before["h"].weight.shape == (32, 8)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in student.modules())


def test_feature_objective_refuses_a_teacher_without_features(digits_splits):
    from distill.objectives import Objective
    from distill.teachers import Targets

    class NeedsTeacherFeatures(Objective):
        needs_teacher = True

        def __init__(self):
            super().__init__()
            self.teacher_features = {"h": "0"}

        def forward(self, out):
            return {}

    def cached(x, index=None):
        return Targets(logits=torch.zeros(x.shape[0], 10))

    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="intermediate features"):
        fit(student, NeedsTeacherFeatures(), digits_splits, TrainConfig(epochs=1), teacher=cached, progress=None)


def test_teacher_taps_are_removed_after_fit(digits_splits):
    from distill.objectives import Objective

    class UsesTeacherFeatures(Objective):
        needs_teacher = True

        def __init__(self):
            super().__init__()
            self.teacher_features = {"h": "1"}

        def forward(self, out):
            return {"ce": torch.nn.functional.cross_entropy(out.logits, out.labels)
                    + 0 * out.teacher.features["h"].sum()}

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    fit(student, UsesTeacherFeatures(), digits_splits, TrainConfig(epochs=1, batch_size=256),
        teacher=FrozenTeacher(teacher), progress=None)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in teacher.modules())


# -- speed options ---------------------------------------------------------------------------


def test_data_in_host_memory_trains_exactly_as_on_the_device(digits_splits, tmp_path):
    """train.data_on_device=false: batches gathered on the host (pinned and copied asynchronously
    on CUDA; here the same path without pinning) give bit-identical training."""
    from distill.data.tensors import TensorData

    cfg = small_cfg(epochs=2, augment={"shift": 1})
    on_host = {"data_on_device": False}
    for name, settings in (("device", {}), ("host", on_host)):
        fit(mlp(digits_splits, dropout=0.2), CrossEntropy(), digits_splits, cfg.model_copy(update=settings),
            seed=1, out_dir=tmp_path / name, progress=None)
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("device", "host"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]
    # evaluation streams data that lives elsewhere than the model to the model's device
    model = mlp(digits_splits)
    host = TensorData(digits_splits.test.x.clone(), digits_splits.test.y.clone())
    assert evaluate(model, host).nll == evaluate(model, digits_splits.test).nll


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by TorchInductor
@pytest.mark.skipif(not cxx_compiler(), reason="torch.compile on the CPU needs a C++ compiler (TorchInductor)")
def test_compile_trains_like_eager_and_checkpoints_resume_without_the_wrapper(digits_splits, tmp_path):
    """train.compile=true: the same training (up to float rounding), checkpoints of the plain module
    (no ``_orig_mod.`` prefixes) and a resume that continues them. ~20-30 s: compilation."""
    cfg = small_cfg(epochs=2, log_every=1000, compile=True)
    teacher = FrozenTeacher(mlp(digits_splits, hidden=(64,), seed=1))
    objective = KnowledgeDistillation(4.0, 0.9)
    fit(mlp(digits_splits), objective, digits_splits, cfg, teacher=teacher, out_dir=tmp_path / "compiled",
        stop_after_epochs=1, progress=None)
    resumed = fit(mlp(digits_splits, seed=5), objective, digits_splits, cfg, teacher=teacher,
                  out_dir=tmp_path / "compiled", resume=True, progress=None)
    eager = fit(mlp(digits_splits), objective, digits_splits, cfg.model_copy(update={"compile": False}),
                teacher=teacher, out_dir=tmp_path / "eager", progress=None)
    assert resumed.finished and resumed.steps == eager.steps
    c, e = (load_checkpoint(tmp_path / name / "last.pt") for name in ("compiled", "eager"))
    assert list(c["model"]) == list(e["model"]) == list(resumed.model.state_dict())
    for k in e["model"]:
        torch.testing.assert_close(c["model"][k], e["model"][k], rtol=1e-4, atol=1e-5)
    assert [h["train/loss"] for h in c["history"]] == pytest.approx([h["train/loss"] for h in e["history"]], rel=1e-5)
