"""A frozen teacher's batch norms folded into its convolutions (distill.engine.fold): the same logits, only where
exact, never on the user's teacher, and the setting's three values."""

import pytest
import torch
from torch import nn

from distill.config import OptimizerConfig, TrainConfig
from distill.engine import fit
from distill.engine.fold import (FoldedTeacher, analyse, fold_batchnorm, fold_teacher, foldable_pairs,
                                 relus_in_place, restore_relus)
from distill.models import create_model
from distill.objectives import FitNets, KnowledgeDistillation
from distill.teachers import FrozenTeacher


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=64, optimizer=OptimizerConfig(name="sgd", lr=0.01), log_every=1000,
                channels_last=False)
    return TrainConfig(**{**base, **kw})


def with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with running statistics and affine parameters far from the identity (a fresh model's are
    mean 0, variance 1, scale 1, shift 0, which fold into nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def folded(model: nn.Module, x: torch.Tensor, setting="auto", **kw):
    args = dict(tapped=False, trained=set(), world_size=1)
    return fold_teacher(FrozenTeacher(model), setting, x[:2], **{**args, **kw})


@pytest.mark.parametrize("name, kw, shape", [("resnet8", {}, (3, 16, 16)),
                                             ("cnn", {"channels": (16, 32), "hidden": 32}, (1, 28, 28))])
def test_folded_logits_equal_the_teachers_to_float32_rounding(name, kw, shape):
    torch.manual_seed(0)
    model = with_statistics(create_model(name, 10, shape, **kw))
    x = torch.randn(32, *shape)
    teacher, fold = folded(model, x)
    assert isinstance(teacher, FoldedTeacher) and fold.folded == batch_norms(model) > 0 and fold.decided_by == "auto"
    assert batch_norms(teacher.model) == 0
    with torch.inference_mode():
        plain, fast = model(x), teacher(x).logits
        exact = model.double()(x.double())
    model.float()
    # Both are float32 evaluations of one function: folding rounds each scaled weight W γ/sqrt(σ²+ε) once and drops
    # a rounding per activation, so its error against the float64 value is of the same order as the unfolded one's.
    err_plain, err_fast = (plain.double() - exact).abs().max(), (fast.double() - exact).abs().max()
    assert 0 < err_fast <= 2 * err_plain
    torch.testing.assert_close(fast, plain)  # float32's default tolerance


class Flags(nn.Module):
    """Notes the TF32 settings each forward runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
        return x.flatten(1)


def test_the_folded_outputs_are_compared_in_full_float32_and_the_settings_restored():
    # On CUDA, TF32 (cuDNN's default for convolutions) makes both forwards approximate to ~1e-3: the comparison
    # runs with it off; the analysis forward before it and the run after it keep the user's settings.
    torch.manual_seed(0)
    flags = Flags()
    model = with_statistics(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), flags))
    before = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        teacher, fold = folded(model, torch.randn(2, 1, 6, 6))
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])
    assert isinstance(teacher, FoldedTeacher) and fold.folded == 1
    # the analysis, then the teacher and the folded copy (whose Flags module is a deep copy)
    assert flags.seen == [(True, "high"), (False, "highest")]
    assert teacher.model[2].seen == [(True, "high"), (False, "highest")]


def test_the_users_teacher_and_its_weights_do_not_change(digits_splits):
    torch.manual_seed(0)
    teacher = with_statistics(create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    storage = [t.data_ptr() for t in (*teacher.parameters(), *teacher.buffers())]
    torch.manual_seed(1)
    student = create_model("cnn", 10, digits_splits.in_shape, channels=(4, 8), hidden=16)
    result = fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(channels_last=True),
                 teacher=FrozenTeacher(teacher), progress=None)
    assert result.history[0]["teacher_batchnorm"] == {"folded": 2, "decided_by": "auto", "relu_inplace": 3}
    assert all(not m.inplace for m in teacher.modules() if isinstance(m, nn.ReLU))  # the copy's run in place
    after = teacher.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert [t.data_ptr() for t in (*teacher.parameters(), *teacher.buffers())] == storage  # never converted
    assert all(t.is_contiguous() for t in after.values()) and batch_norms(teacher) == 2


def test_fit_folds_by_default_logs_it_and_trains_as_unfolded_to_float_tolerance(digits_splits):
    losses, lines = {}, []
    for setting in ("auto", True, False):
        torch.manual_seed(0)
        teacher = with_statistics(create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16))
        torch.manual_seed(1)
        student = create_model("cnn", 10, digits_splits.in_shape, channels=(4, 8), hidden=16)
        result = fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits,
                     cfg(epochs=2, fold_teacher_batchnorm=setting), teacher=FrozenTeacher(teacher),
                     progress=lines.append)
        losses[setting] = [r["train/loss"] for r in result.history]
        expected = {"auto": {"folded": 2, "decided_by": "auto", "relu_inplace": 3},
                    True: {"folded": 2, "decided_by": "true", "relu_inplace": 3},
                    False: {"folded": 0, "decided_by": "false"}}[setting]
        assert [r["teacher_batchnorm"] for r in result.history] == [expected, expected]
    assert losses["auto"] == losses[True]  # the same folded forward
    assert losses["auto"] != losses[False]  # the same function, summed in another order ...
    torch.testing.assert_close(losses["auto"], losses[False], rtol=1e-5, atol=0)  # ... to float rounding
    assert [line for line in lines if "teacher batch norm" in line] == [
        "[model] teacher batch norm: 2 folded into the convolutions before them, 3 ReLUs in place "
        "(train.fold_teacher_batchnorm: auto)",
        "[model] teacher batch norm: 2 folded into the convolutions before them, 3 ReLUs in place "
        "(train.fold_teacher_batchnorm: true)",
        "[model] teacher batch norm: not folded (train.fold_teacher_batchnorm: false)"]


def test_a_tapped_teacher_is_not_folded(digits_splits):
    torch.manual_seed(0)
    teacher = with_statistics(create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16))
    torch.manual_seed(1)
    student = create_model("cnn", 10, digits_splits.in_shape, channels=(4, 8), hidden=16)
    method = FitNets(student_layers="stages.1", teacher_layers="stages.1.bn")  # a batch norm's output
    result = fit(student, method, digits_splits, cfg(), teacher=FrozenTeacher(teacher), progress=None)
    assert result.history[0]["teacher_batchnorm"] == {
        "folded": 0, "decided_by": "auto; its features are tapped, and a feature can be a batch norm's input or output"}
    with pytest.raises(ValueError, match="train.fold_teacher_batchnorm: true, but the teacher's batch norms cannot be "
                                         "folded: its features are tapped"):
        fit(student, method, digits_splits, cfg(fold_teacher_batchnorm=True), teacher=FrozenTeacher(teacher),
            progress=None)


def test_not_folded_when_trained_under_torchrun_hooked_or_resumed_unfolded():
    torch.manual_seed(0)
    model = with_statistics(create_model("resnet8", 10, (3, 16, 16)))
    x = torch.randn(2, 3, 16, 16)
    trained = {id(next(model.parameters()))}
    assert folded(model, x, trained=trained)[1].decided_by == "auto; its parameters are trained in this run"
    assert folded(model, x, world_size=2)[1].decided_by == "auto; data parallel (torchrun); set it to true to fold there"
    assert folded(model, x, world_size=2, setting=True)[1].folded == batch_norms(model)
    assert folded(model, x, saved={"folded": 0})[1].decided_by == ("auto; the run being resumed was trained with "
                                                                    "it unfolded")
    assert folded(model, x, saved={"folded": 9, "decided_by": "auto"})[1].folded == batch_norms(model)
    handle = model.bn1.register_forward_hook(lambda *a: None)
    assert folded(model, x)[1].decided_by == "auto; hooks are attached to its modules"
    handle.remove()
    with pytest.raises(ValueError, match="train.fold_teacher_batchnorm: true, but .*: its parameters are trained"):
        folded(model, x, setting=True, trained=trained)
    plain = FrozenTeacher(create_model("mlp", 10, (1, 8, 8)))  # no batch norm: nothing to choose
    assert fold_teacher(plain, "auto", torch.randn(2, 1, 8, 8), tapped=False, trained=set(), world_size=1) == (
        plain, None)


class Shared(nn.Module):
    """conv_a -> bn_a (foldable); conv_b's output read by bn_b and added after it (not foldable: a second use);
    conv_c's output kept on the module (not foldable: read after the forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn_a(self.conv_a(x))
        b = self.conv_b(a)
        c = self.bn_b(b) + b
        self.kept = self.conv_c(c)
        return self.bn_c(self.kept).mean((2, 3))


def test_only_a_convolution_whose_output_nothing_else_uses_is_folded():
    torch.manual_seed(0)
    model = with_statistics(Shared())
    x = torch.randn(8, 3, 8, 8)
    assert foldable_pairs(model, x) == [("conv_a", "bn_a")]
    teacher, fold = folded(model, x)
    assert fold.folded == 1 and isinstance(teacher.model.bn_b, nn.BatchNorm2d)
    with torch.inference_mode():
        torch.testing.assert_close(teacher(x).logits, model(x))


def test_a_teacher_changed_in_place_is_folded_again():
    torch.manual_seed(0)
    model = with_statistics(create_model("resnet8", 10, (3, 16, 16)))
    x = torch.randn(4, 3, 16, 16)
    teacher, _ = folded(model, x)
    first = teacher.model
    with torch.no_grad():
        model.bn1.running_mean.add_(1.0)
    with torch.inference_mode():
        torch.testing.assert_close(teacher(x).logits, model(x))
    assert teacher.model is not first


def test_the_setting():
    assert TrainConfig().fold_teacher_batchnorm == "auto"
    assert TrainConfig.model_validate({"fold_teacher_batchnorm": False}).fold_teacher_batchnorm is False
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"fold_teacher_batchnorm": "always"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_folding_is_accepted_under_tf32(digits_splits):
    # cuDNN runs float32 convolutions in TF32 by default: the check compares in full float32 and folds
    torch.manual_seed(0)
    model = with_statistics(create_model("cnn", 10, digits_splits.in_shape, channels=(32, 64), hidden=16)).cuda()
    assert torch.backends.cudnn.allow_tf32
    teacher, fold = folded(model, digits_splits.train.x[:64].cuda())
    assert isinstance(teacher, FoldedTeacher) and fold.record() == {"folded": 2, "decided_by": "auto",
                                                                    "relu_inplace": 3}
    assert torch.backends.cudnn.allow_tf32


class Activations(nn.Module):
    """ReLUs that may and may not run in place: ``r_ok`` reads a batch norm's output nothing else reads; ``r_in``
    the model's input; ``r_view`` a view; ``r_reused`` a tensor read again after it; ``r_twice`` runs twice;
    ``r_out`` a tensor the forward returns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.r_ok, self.r_in, self.r_view, self.r_reused, self.r_twice, self.r_out = (nn.ReLU() for _ in range(6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.r_ok(self.bn(self.conv(x)))
        b = self.r_in(x).mean() + self.r_view((a - 0.5)[:, :2]).mean()
        c = a - 0.3
        d = self.r_reused(c) + c
        e = self.r_twice(self.r_twice(d - 1.0) - 0.2)
        f = e * 2.0
        return self.r_out(f).mean((2, 3)) + b, f.mean((2, 3))


def test_only_a_relu_whose_input_nothing_else_reads_runs_in_place():
    torch.manual_seed(0)
    model = with_statistics(Activations())
    x = torch.randn(8, 3, 8, 8)
    pairs, relus = analyse(model, x)
    assert pairs == [("conv", "bn")] and relus == ["r_ok"]
    copy = fold_batchnorm(model, pairs, relus)
    assert copy.r_ok.inplace and not model.r_ok.inplace and not copy.r_reused.inplace
    before = x.clone()
    with torch.inference_mode():
        got, want = copy(x), model(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(got, want)


def test_relus_in_place_are_dropped_where_the_copy_would_compute_something_else(monkeypatch):
    # an analysis that wrongly allows every ReLU in place: the bit-for-bit check of the copy's outputs and input
    # catches it and the teacher is folded without them
    import distill.engine.fold as fold

    torch.manual_seed(0)
    one = nn.Sequential(with_statistics(Activations()), Pick())
    x = torch.randn(8, 3, 8, 8)
    monkeypatch.setattr(fold, "analyse", lambda m, x: ([("0.conv", "0.bn")], ["0.r_in", "0.r_reused"]))
    teacher, fold_choice = fold_teacher(FrozenTeacher(one), "auto", x, tapped=False, trained=set(), world_size=1)
    assert isinstance(teacher, FoldedTeacher) and fold_choice.folded == 1 and fold_choice.relu_inplace == 0
    monkeypatch.setattr(fold, "analyse", lambda m, x: ([("0.conv", "0.bn")], ["0.r_ok"]))
    teacher, fold_choice = fold_teacher(FrozenTeacher(one), "auto", x, tapped=False, trained=set(), world_size=1)
    assert fold_choice.relu_inplace == 1 and teacher.model[0].r_ok.inplace


class Pick(nn.Module):
    def forward(self, out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return out[0] + out[1]


def test_the_students_relus_run_in_place_during_fit_exactly_and_are_restored(digits_splits, monkeypatch):
    import distill.engine.setup as setup
    from distill.engine import Callback

    class Seen(Callback):
        def __init__(self, model: nn.Module) -> None:
            self.model, self.inplace = model, []

        def on_step(self, step: int) -> None:
            self.inplace.append(sum(m.inplace for m in self.model.modules() if isinstance(m, nn.ReLU)))

    def run() -> tuple[dict[str, torch.Tensor], list[int]]:
        torch.manual_seed(0)
        teacher = with_statistics(create_model("cnn", 10, digits_splits.in_shape, channels=(8, 16), hidden=16))
        torch.manual_seed(1)
        student = create_model("cnn", 10, digits_splits.in_shape, channels=(4, 8), hidden=16)
        seen = Seen(student)
        fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg(max_steps=6), teacher=FrozenTeacher(teacher),
            progress=None, callbacks=[seen])
        assert not any(m.inplace for m in student.modules() if isinstance(m, nn.ReLU))  # as the user gave it
        return student.state_dict(), seen.inplace

    weights, inplace = run()
    assert inplace == [3] * 6  # both stages' ReLUs and the hidden layer's
    monkeypatch.setattr(setup, "relus_in_place", lambda model, x: [])
    unchanged, none = run()
    assert none == [0] * 6
    assert all(torch.equal(weights[k], unchanged[k]) for k in weights)  # bit for bit


def test_relus_in_place_only_where_the_analysis_allows_and_no_hooks_are_attached():
    torch.manual_seed(0)
    model = with_statistics(Activations()).train()  # watched in eval mode (no running statistics move), left training
    x = torch.randn(8, 3, 8, 8)
    stats = model.bn.running_mean.clone()
    set_ = relus_in_place(model, x)
    assert torch.equal(model.bn.running_mean, stats)
    assert set_ == [model.r_ok] and model.r_ok.inplace and model.training
    restore_relus(set_)
    assert not model.r_ok.inplace
    handle = model.r_reused.register_forward_hook(lambda m, i, o: None)
    assert relus_in_place(model, x) == [] and not model.r_ok.inplace
    handle.remove()


def test_no_relu_in_place_over_a_tensor_a_backward_needs():
    # a sigmoid's backward reads its output: that ReLU in place would break the training step's backward
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    assert relus_in_place(model, x) == []  # both refused with the one that fails (they are decided together)
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    ok = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert relus_in_place(ok, x) == [ok[1]]
    out = ok(x)
    out.sum().backward()  # trains with it in place


def test_no_relu_in_place_for_a_student_too_large_to_copy_for_the_check(monkeypatch):
    import distill.engine.fold as fold

    ok = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    monkeypatch.setattr(fold, "RELU_CHECK_MAX_PARAMETERS", 57)  # the model has 58
    assert relus_in_place(ok, torch.randn(5, 4)) == []
    monkeypatch.setattr(fold, "RELU_CHECK_MAX_PARAMETERS", 58)
    assert relus_in_place(ok, torch.randn(5, 4)) == [ok[1]]
