"""Issue 16: the KD objective's one-node path (distill.methods.kd._KDTerms) gives kd_loss's and F.cross_entropy's
values exactly and autograd's gradient to float rounding, and is taken only where it is that loss; the cached
0-dim scalars (distill.scalars) give the same numbers as Python numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.functional import kd_loss
from distill.methods.base import Objective, StepOutputs
from distill.methods.kd import KnowledgeDistillation, _KDTerms
from distill.scalars import scalar
from distill.teachers import Targets, TopK

S = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
V = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
Y = torch.tensor([2, 0])


def reference(s, v, y, temperature, alpha=0.9):
    """The documented definition: kd_loss at alpha 1 and F.cross_entropy, weighted by plain autograd."""
    s = s.detach().clone().requires_grad_()
    kd, ce = kd_loss(s, v, temperature), F.cross_entropy(s, y)
    (alpha * kd + (1 - alpha) * ce).backward()
    return kd.detach(), ce.detach(), s.grad


def fused(s, v, y, temperature, alpha=0.9):
    s = s.detach().clone().requires_grad_()
    kd, ce = _KDTerms.apply(s, v, y, temperature)
    (alpha * kd + (1 - alpha) * ce).backward()
    return kd.detach(), ce.detach(), s.grad


def terms(objective, s, v=V, y=Y, **targets):
    return objective(StepOutputs(logits=s, labels=y, index=torch.arange(s.shape[0]),
                                 teacher=Targets(logits=v, **targets)))


def test_the_values_are_kd_loss_and_cross_entropy_exactly_on_a_tiny_batch():
    kd, ce, grad = fused(S, V, Y, 2.0)
    want_kd, want_ce, want_grad = reference(S, V, Y, 2.0)
    assert torch.equal(kd, want_kd) and torch.equal(ce, want_ce)
    assert kd.item() == 1.3151209354400635 and ce.item() == 0.5058683156967163
    p, log_q = F.softmax(V / 2, -1).double(), F.log_softmax(S.double() / 2, -1)
    assert kd.item() == pytest.approx(4 * (p * (p.log() - log_q)).sum(-1).mean().item(), rel=1e-6)
    assert ce.item() == pytest.approx(-(F.log_softmax(S.double(), -1)[[0, 1], [2, 0]]).mean().item(), rel=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-8)


def test_the_gradient_is_the_analytic_one():
    # d kd / ds = T (softmax(s / T) - p_t) / B and d ce / ds = (softmax(s) - onehot(y)) / B, weighted
    _, _, grad = fused(S, V, Y, 2.0, alpha=0.75)
    onehot = F.one_hot(Y, 3).float()
    want = 0.75 * 2.0 * (F.softmax(S / 2, -1) - F.softmax(V / 2, -1)) / 2 + 0.25 * (F.softmax(S, -1) - onehot) / 2
    torch.testing.assert_close(grad, want, rtol=1e-6, atol=1e-7)  # entries of about 0.1, float32 rounding


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0])
@pytest.mark.parametrize("with_labels", [True, False])
def test_gradcheck_in_float64(temperature, with_labels):
    g = torch.Generator().manual_seed(3)
    s = (3 * torch.randn(4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    v = 3 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2]) if with_labels else None
    assert torch.autograd.gradcheck(lambda s: _KDTerms.apply(s, v, y, temperature), (s,))


@pytest.mark.parametrize("shape,temperature", [((128, 10), 4.0), ((64, 100), 4.0), ((7, 3), 1.0), ((5, 13), 2.7)])
def test_the_same_as_the_reference_on_random_batches(shape, temperature):
    g = torch.Generator().manual_seed(0)
    s, v = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    y = torch.randint(0, shape[1], shape[:1], generator=g)
    kd, ce, grad = fused(s, v, y, temperature)
    want_kd, want_ce, want_grad = reference(s, v, y, temperature)
    assert torch.equal(kd, want_kd) and torch.equal(ce, want_ce)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-9)


def test_ignored_labels_and_teacher_classes_at_minus_infinity_as_the_reference():
    y = torch.tensor([-100, 1])  # F.cross_entropy's ignore_index: the mean over the other rows
    v = torch.tensor([[3.0, -math.inf, 0.0], [0.0, 0.0, 2.0]])  # a class the teacher rules out: p = 0, 0 log 0 = 0
    kd, ce, grad = fused(S, v, y, 2.0)
    want_kd, want_ce, want_grad = reference(S, v, y, 2.0)
    assert torch.equal(kd, want_kd) and torch.equal(ce, want_ce) and torch.isfinite(grad).all()
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-8)


def test_the_objective_takes_the_fused_path_with_the_same_terms_and_total():
    objective = KnowledgeDistillation(2.0, 0.9)
    s = S.clone().requires_grad_()
    got = terms(objective, s)
    assert set(got) == {"kd", "ce"} and type(got["kd"].grad_fn).__name__ == "_KDTermsBackward"
    assert torch.equal(got["kd"], kd_loss(S, V, 2.0)) and torch.equal(got["ce"], F.cross_entropy(S, Y))
    total = objective.total(got)
    assert torch.equal(total, 0.9 * got["kd"] + (1 - 0.9) * got["ce"])
    total.backward()
    torch.testing.assert_close(s.grad, reference(S, V, Y, 2.0)[2], rtol=1e-6, atol=1e-8)
    only_kd = terms(KnowledgeDistillation(2.0, 1.0), S.clone().requires_grad_())  # alpha 1: no ce term
    assert set(only_kd) == {"kd"} and torch.equal(only_kd["kd"], kd_loss(S, V, 2.0))
    assert type(only_kd["kd"].grad_fn).__name__ == "_KDTermsBackward"


@pytest.mark.parametrize("case", ["float64", "probs", "topk", "standardize", "int32 labels", "3-d", "int T"])
def test_anything_else_takes_the_plain_functions(case):
    objective = KnowledgeDistillation(2.0, 0.9, standardize=case == "standardize")
    s, v, y, extra = S.clone(), V, Y, {}
    if case == "float64":
        s, v = s.double(), v.double()
    elif case == "probs":
        v, extra = None, {"probs": F.softmax(V / 2, -1)}
    elif case == "topk":
        v, extra = None, {"topk": TopK(indices=torch.tensor([[0], [2]]), log_probs=torch.tensor([[-0.1], [-0.2]]),
                                       num_classes=3, temperature=2.0)}
    elif case == "int32 labels":
        y = Y.int()
    elif case == "3-d":
        s, v, y = s.unsqueeze(1), v.unsqueeze(1), y.unsqueeze(1)
    s.requires_grad_()
    if case in ("3-d", "int32 labels"):  # F.cross_entropy's own errors (it reads (B, 1, C) as (B, classes, positions))
        with pytest.raises(RuntimeError, match=r"Expected target size \[2, 3\]|expected target dtype to be Long"):
            terms(objective, s, v, y, **extra)
        return
    if case == "int T":
        objective.temperature = 2  # an int is a temperature too: the fused path, the same values
        got = terms(objective, s, v, y, **extra)
        assert type(got["kd"].grad_fn).__name__ == "_KDTermsBackward"
        assert torch.equal(got["kd"], kd_loss(S, V, 2))
        return
    got = terms(objective, s, v, y, **extra)
    assert "_KDTerms" not in type(got["kd"].grad_fn).__name__


def test_scalar_is_a_cached_0d_tensor_that_gives_the_same_numbers_as_the_python_number():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        x = (5 * torch.randn(1000, generator=g)).to(dtype)
        for value in (0.9, 0.1, 4.0, 2.7, 1 / 3, 128, 1e-3):
            w = scalar(value, x)
            assert isinstance(w, torch.Tensor) and w.dim() == 0 and w.dtype == dtype and w is scalar(value, x)
            assert torch.equal(x * w, x * value) and torch.equal(x / w, x / value) and torch.equal(w * x, value * x)
    zero, negative_zero = scalar(0.0, x), scalar(-0.0, x)
    assert math.copysign(1, zero.item()) == 1 and math.copysign(1, negative_zero.item()) == -1
    for other in (torch.arange(3), torch.ones(3, dtype=torch.float16), torch.ones(3, dtype=torch.bfloat16)):
        assert scalar(0.9, other) == 0.9 and not isinstance(scalar(0.9, other), torch.Tensor)  # the number itself
    half = (5 * torch.randn(1000, generator=g)).half()  # why: half arithmetic takes the number unrounded
    assert not torch.equal(half * torch.tensor(0.9, dtype=torch.float16), half * 0.9)


def test_scalar_made_under_inference_mode_can_be_saved_for_a_later_backward():
    x = torch.ones(3)
    with torch.inference_mode():
        w = scalar(0.123456, x)
    assert not w.is_inference()
    p = torch.ones(3, requires_grad=True)
    (w * p).sum().backward()
    assert torch.equal(p.grad, torch.full((3,), 0.123456))


def test_objective_total_is_the_same_weighted_sum():
    class Two(Objective):
        def forward(self, out):
            return {"a": out.logits.sum(), "b": out.logits.pow(2).sum()}

    objective = Two({"a": 0.3, "b": 1.0})
    s = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    got = objective(StepOutputs(logits=s, labels=Y, index=Y))
    assert torch.equal(objective.total(got), 0.3 * got["a"] + got["b"])
