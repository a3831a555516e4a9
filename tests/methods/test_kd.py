"""KD (Hinton et al. 2015): ``kd_loss`` and its temperature softmax / KL / soft cross-entropy against an
independent float64 numpy reference (values, mask, teacher probabilities, identities, numerics, errors,
autograd), and the KD objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import (
    kd_loss,
    kl_divergence_with_temperature,
    logit_matching_loss,
    soft_cross_entropy,
    softmax_with_temperature,
)
from distill.objectives import KnowledgeDistillation
from distill.teachers import Targets

from ._kd_reference import (
    SHAPES,
    make,
    make_labels,
    np_kd,
    np_kd_grad,
    np_kl_per_pos,
    np_log_softmax,
    np_softmax,
    to_np,
)
from ._objectives import _step


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("alpha", [None, 0.0, 0.3, 0.9, 1.0])
def test_kd_loss_with_labels_matches_numpy(shape, T, alpha):
    s, t = make(shape, 0), make(shape, 1)
    y = make_labels(shape[:-1], shape[-1])
    out = kd_loss(s, t, T, y, alpha)
    ref = np_kd(to_np(s), to_np(t), T, y.numpy(), alpha)
    assert out.dtype == torch.float32 and out.dim() == 0
    assert out.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("alpha", [None, 1.0])
def test_kd_loss_without_labels_matches_numpy(shape, T, alpha):
    s, t = make(shape, 2), make(shape, 3)
    out = kd_loss(s, t, T, alpha=alpha)
    ref = np_kd(to_np(s), to_np(t), T)  # pure distillation: T^2 * KL
    assert out.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # and it is T^2 times the unscaled KL
    kl = kl_divergence_with_temperature(s, t, T)
    assert out.item() == pytest.approx(T**2 * kl.item(), rel=1e-6)


def test_default_alpha():
    s, t = make((6, 4), 0), make((6, 4), 1)
    y = make_labels((6,), 4)
    assert kd_loss(s, t, 2.0, y).item() == pytest.approx(kd_loss(s, t, 2.0, y, 0.9).item(), rel=1e-7)
    assert kd_loss(s, t, 2.0).item() == pytest.approx(kd_loss(s, t, 2.0, alpha=1.0).item(), rel=1e-7)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_kl_matches_numpy(shape, T):
    s, t = make(shape, 4), make(shape, 5)
    out = kl_divergence_with_temperature(s, t, T)
    ref = np_kl_per_pos(to_np(s), T, to_np(t)).mean()
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert out.item() > 0


def test_ce_term_is_standard_cross_entropy():
    # Independent of numpy: alpha=0 is plain cross-entropy at T=1 whatever T is.
    s, t = make((4, 3, 6), 0), make((4, 3, 6), 1)
    y = make_labels((4, 3), 6)
    out = kd_loss(s, t, 7.0, y, alpha=0.0)
    ref = F.cross_entropy(s.reshape(-1, 6), y.reshape(-1))
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_kd_gradient_matches_analytic():
    s, t = make((5, 6), 0), make((5, 6), 1)
    y = make_labels((5,), 6)
    s.requires_grad_(True)
    kd_loss(s, t, 3.0, y, 0.7).backward()
    ref = np_kd_grad(to_np(s), to_np(t), 3.0, y.numpy(), 0.7)
    np.testing.assert_allclose(to_np(s.grad), ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("with_labels", [False, True])
def test_mask_matches_numpy_and_subset(with_labels):
    shape = (3, 5, 4)
    s, t = make(shape, 6), make(shape, 7)
    y = make_labels(shape[:-1], 4) if with_labels else None
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool
    )
    alpha = 0.6 if with_labels else None
    out = kd_loss(s, t, 2.0, y, alpha, mask=mask)
    ref = np_kd(to_np(s), to_np(t), 2.0, None if y is None else y.numpy(), alpha, mask=mask.numpy())
    assert out.item() == pytest.approx(ref, rel=1e-5)
    # Same as computing on the selected positions only, flattened to (N, C).
    sub = kd_loss(s[mask], t[mask], 2.0, None if y is None else y[mask], alpha)
    assert out.item() == pytest.approx(sub.item(), rel=1e-6)
    # Unmasked mean is different (the mask really does something).
    assert kd_loss(s, t, 2.0, y, alpha).item() != pytest.approx(out.item(), rel=1e-3)


def test_masked_out_positions_may_hold_garbage():
    shape = (2, 4, 5)
    s, t = make(shape, 8), make(shape, 9)
    y = make_labels(shape[:-1], 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    clean = kd_loss(s, t, 2.0, y, 0.5, mask=mask)

    s2, t2, y2 = s.clone(), t.clone(), y.clone()
    s2[~mask] = float("nan")
    t2[~mask] = float("inf")
    y2[~mask] = -100  # ignore_index-style padding labels
    s2.requires_grad_(True)
    dirty = kd_loss(s2, t2, 2.0, y2, 0.5, mask=mask)
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-6)
    dirty.backward()
    assert torch.isfinite(s2.grad).all()
    assert (s2.grad[~mask] == 0).all()

    # teacher_probs cache with NaN padding rows
    p2 = softmax_with_temperature(t, 2.0)
    p2[~mask] = float("nan")
    assert kd_loss(s, None, 2.0, y, 0.5, teacher_probs=p2, mask=mask).item() == pytest.approx(
        clean.item(), rel=1e-5
    )


def test_all_masked_out_gives_zero_with_grad():
    s = make((3, 4, 6), 0).requires_grad_(True)
    t = make((3, 4, 6), 1)
    y = make_labels((3, 4), 6)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for fn in (
        lambda: kd_loss(s, t, 2.0, y, 0.5, mask=mask),
        lambda: kl_divergence_with_temperature(s, t, 2.0, mask=mask),
        lambda: logit_matching_loss(s, t, mask=mask),
        lambda: soft_cross_entropy(s, torch.softmax(t, -1), mask=mask),
    ):
        s.grad = None
        out = fn()
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
        assert (s.grad == 0).all()


def test_empty_batch_gives_zero():
    s = torch.zeros(0, 5, requires_grad=True)
    out = kd_loss(s, torch.zeros(0, 5), 2.0, torch.zeros(0, dtype=torch.long), 0.5)
    assert out.item() == 0.0
    out.backward()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_teacher_probs_equal_teacher_logits(shape, T):
    s, t = make(shape, 10), make(shape, 11)
    y = make_labels(shape[:-1], shape[-1])
    p = softmax_with_temperature(t, T)
    a = kd_loss(s, t, T, y, 0.4)
    b = kd_loss(s, None, T, y, 0.4, teacher_probs=p)
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    assert kl_divergence_with_temperature(s, teacher_probs=p, temperature=T).item() == (
        pytest.approx(kl_divergence_with_temperature(s, t, T).item(), rel=1e-5)
    )
    # numpy with the probabilities
    ref = np_kd(to_np(s), None, T, y.numpy(), 0.4, tprobs=to_np(p))
    assert b.item() == pytest.approx(ref, rel=1e-5)


def test_teacher_probs_with_exact_zeros():
    # e.g. a top-k cache: most entries exactly 0.
    s = make((4, 6), 12).requires_grad_(True)
    p = torch.tensor(
        [
            [0.7, 0.3, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.0],
        ]
    )
    y = torch.tensor([0, 2, 1, 4])
    out = kd_loss(s, None, 2.0, y, 0.8, teacher_probs=p)
    assert torch.isfinite(out)
    ref = np_kd(to_np(s), None, 2.0, y.numpy(), 0.8, tprobs=p.numpy())
    assert out.item() == pytest.approx(ref, rel=1e-5)
    out.backward()
    assert torch.isfinite(s.grad).all()
    kl = kl_divergence_with_temperature(s, teacher_probs=p, temperature=2.0)
    assert kl.item() == pytest.approx(np_kl_per_pos(to_np(s), 2.0, tprobs=p.numpy()).mean(), rel=1e-5)


def test_minus_inf_logits_in_both():
    # A forbidden class (-inf logit for both models) contributes exactly 0.
    s, t = make((3, 5), 0), make((3, 5), 1)
    s[:, 4] = float("-inf")
    t[:, 4] = float("-inf")
    s.requires_grad_(True)
    out = kd_loss(s, t, 2.0)
    ref = np_kd(to_np(s[:, :4]), to_np(t[:, :4]), 2.0)
    assert out.item() == pytest.approx(ref, rel=1e-5)
    out.backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("shift", [0.0, "per_row"])
def test_kl_zero_for_equal_or_shifted_logits(shift):
    t = make((6, 9), 13)
    s = t.clone() if shift == 0.0 else t + torch.linspace(-5, 5, 6)[:, None]
    s.requires_grad_(True)
    for T in (1.0, 4.0):
        s.grad = None
        kl = kl_divergence_with_temperature(s, t, T)
        assert abs(kl.item()) < 1e-6
        kl.backward()
        assert s.grad.abs().max().item() < 1e-6
    s.grad = None
    out = kd_loss(s, t, 4.0)
    assert abs(out.item()) < 1e-5
    out.backward()
    assert s.grad.abs().max().item() < 1e-6


def test_t_squared_scaling_of_gradients():
    # For large T, d KL / d z_s = (q^T - p^T) / T / B  with  q^T - p^T = O(1/T),
    # so the unscaled gradient shrinks like 1/T^2; kd_loss's T^2 factor cancels it.
    s, t = make((16, 10), 14, scale=1.0), make((16, 10), 15, scale=1.0)

    def grad_norm(fn, T):
        x = s.clone().requires_grad_(True)
        fn(x, T).backward()
        return x.grad.norm().item()

    def unscaled(x, T):
        return kl_divergence_with_temperature(x, t, T)

    def scaled(x, T):
        return kd_loss(x, t, T)

    ratio = grad_norm(unscaled, 10.0) / grad_norm(unscaled, 20.0)
    assert ratio == pytest.approx(4.0, rel=0.03)
    ratio_scaled = grad_norm(scaled, 10.0) / grad_norm(scaled, 20.0)
    assert ratio_scaled == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("dtype,T,rtol", [(torch.float64, 1000.0, 1e-2), (torch.float32, 100.0, 5e-2)])
def test_hinton_matching_logits_limit(dtype, T, rtol):
    B, N = 4, 10
    zs = make((B, N), 16, scale=1.0, dtype=dtype)
    zt = make((B, N), 17, scale=1.0, dtype=dtype)
    zs = zs - zs.mean(-1, keepdim=True)  # zero-mean logits per row (Hinton §2.1 assumption)
    zt = zt - zt.mean(-1, keepdim=True)
    zs.requires_grad_(True)
    kl = kl_divergence_with_temperature(zs, zt, T)
    kl.backward()
    # Hinton §2.1: for one example, d C / d z_i ~ (z_i - v_i) / (N T^2). The loss here is the
    # mean over the B rows of the batch, so each row's gradient carries an extra factor 1/B.
    expected = (zs.detach() - zt) / (N * T**2) / B
    torch.testing.assert_close(
        zs.grad, expected, rtol=rtol, atol=rtol * 0.1 * expected.abs().max().item()
    )
    # ... and T^2 * KL tends to the logit-matching loss 1/(2N) sum (z_s - z_t)^2.
    if dtype == torch.float64:
        lm = logit_matching_loss(zs, zt)
        assert (T**2 * kl).item() == pytest.approx(lm.item(), rel=rtol)
        assert kd_loss(zs, zt, T).item() == pytest.approx(lm.item(), rel=rtol)


def test_soft_cross_entropy():
    s = make((5, 6), 20)
    p = softmax_with_temperature(make((5, 6), 21))
    ref = -(to_np(p) * np_log_softmax(to_np(s))).sum(-1).mean()
    assert soft_cross_entropy(s, p).item() == pytest.approx(ref, rel=1e-6)
    # one-hot targets == hard-label cross entropy; exact zeros are fine
    y = make_labels((5,), 6)
    onehot = F.one_hot(y, 6).float()
    assert soft_cross_entropy(s, onehot).item() == pytest.approx(
        F.cross_entropy(s, y).item(), rel=1e-6
    )
    # = KL(p || q) + H(p)
    H = -(to_np(p) * np.log(to_np(p))).sum(-1).mean()
    kl = kl_divergence_with_temperature(s, teacher_probs=p)
    assert soft_cross_entropy(s, p).item() == pytest.approx(kl.item() + H, rel=1e-5)


def test_softmax_with_temperature():
    z = make((3, 5), 22, dtype=torch.float16)
    p = softmax_with_temperature(z, 3.0)
    assert p.dtype == torch.float32
    np.testing.assert_allclose(p.numpy(), np_softmax(to_np(z) / 3.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_extreme_logits_and_low_precision(dtype, T):
    shape = (8, 6)
    s = make(shape, 23, scale=1e4).clamp(-6e4, 6e4).to(dtype).requires_grad_(True)
    t = make(shape, 24, scale=1e4).clamp(-6e4, 6e4).to(dtype)
    t.view(-1)[:3] = torch.tensor([1e4, -1e4, 1e4], dtype=dtype)
    y = make_labels(shape[:-1], 6)
    out = kd_loss(s, t, T, y, 0.5)
    assert out.dtype == torch.float32
    assert torch.isfinite(out)
    ref = np_kd(to_np(s), to_np(t), T, y.numpy(), 0.5)  # float64 on the same (rounded) inputs
    assert out.item() == pytest.approx(ref, rel=1e-4)
    out.backward()
    assert s.grad.dtype == dtype
    assert torch.isfinite(s.grad).all()
    ref_g = np_kd_grad(to_np(s), to_np(t), T, y.numpy(), 0.5)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    np.testing.assert_allclose(to_np(s.grad), ref_g, rtol=tol, atol=tol * np.abs(ref_g).max())
    for fn in (kl_divergence_with_temperature, logit_matching_loss):
        v = fn(s, t)
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_low_precision_moderate_logits_agree_with_float32():
    s32, t32 = make((4, 3, 11), 25), make((4, 3, 11), 26)
    y = make_labels((4, 3), 11)
    for dtype in (torch.float16, torch.bfloat16):
        s, t = s32.to(dtype), t32.to(dtype)
        out = kd_loss(s, t, 2.0, y, 0.5)
        assert out.dtype == torch.float32
        # float32 math on the rounded inputs: same as float64 reference on them
        ref = np_kd(to_np(s), to_np(t), 2.0, y.numpy(), 0.5)
        assert out.item() == pytest.approx(ref, rel=1e-5)


def test_float64_stays_float64():
    s, t = make((3, 4), 0, dtype=torch.float64), make((3, 4), 1, dtype=torch.float64)
    assert kd_loss(s, t, 2.0).dtype == torch.float64


def test_error_class_mismatch():
    with pytest.raises(ValueError, match=r"student has 10 classes, teacher has 12 classes") as e:
        kd_loss(torch.randn(4, 10), torch.randn(4, 12))
    assert "(4, 10)" in str(e.value) and "(4, 12)" in str(e.value)
    with pytest.raises(ValueError, match=r"student has 10 classes, teacher has 12 classes"):
        kd_loss(torch.randn(4, 10), teacher_probs=torch.rand(4, 12))
    with pytest.raises(ValueError, match=r"student has 10 classes, teacher has 12 classes"):
        kl_divergence_with_temperature(torch.randn(4, 10), torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"student has 10 classes, teacher has 12 classes"):
        logit_matching_loss(torch.randn(4, 10), torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"student has 10 classes, target has 12 classes"):
        soft_cross_entropy(torch.randn(4, 10), torch.rand(4, 12))


def test_error_leading_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(5, 10\).*must match exactly"):
        kd_loss(torch.randn(4, 10), torch.randn(5, 10))
    with pytest.raises(ValueError, match=r"\(2, 3, 10\).*\(6, 10\)"):
        kd_loss(torch.randn(2, 3, 10), torch.randn(6, 10))


def test_error_teacher_inputs():
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"exactly one of teacher_logits or teacher_probs.*both"):
        kd_loss(s, torch.randn(3, 4), teacher_probs=torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"exactly one of teacher_logits or teacher_probs.*neither"):
        kd_loss(s)
    with pytest.raises(ValueError, match=r"exactly one.*neither"):
        kl_divergence_with_temperature(s)


def test_error_label_out_of_range():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"label 4 is out of range \[0, 4\)"):
        kd_loss(s, t, labels=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"label -100 is out of range \[0, 4\).*mask"):
        kd_loss(s, t, labels=torch.tensor([0, -100, 1]))
    # masked-out labels are not checked
    out = kd_loss(s, t, labels=torch.tensor([0, -100, 1]), mask=torch.tensor([True, False, True]))
    assert torch.isfinite(out)


def test_error_labels_shape_and_dtype():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"labels shape \(3, 4\).*leading shape \(3,\)"):
        kd_loss(s, t, labels=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"integer.*float32"):
        kd_loss(s, t, labels=torch.zeros(3))


def test_error_alpha():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"alpha weighs the hard-label.*pass labels or leave alpha unset"):
        kd_loss(s, t, alpha=0.5)
    assert torch.isfinite(kd_loss(s, t, alpha=1.0))
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            kd_loss(s, t, labels=y, alpha=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_error_temperature(bad):
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    for fn in (
        lambda: kd_loss(s, t, bad),
        lambda: kl_divergence_with_temperature(s, t, bad),
        lambda: softmax_with_temperature(s, bad),
    ):
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got"):
            fn()


def test_error_mask():
    s, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"mask shape \(4,\) must equal the leading shape \(4, 3\)"):
        kd_loss(s, t, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask shape \(4, 3, 5\)"):
        logit_matching_loss(s, t, mask=torch.ones(4, 3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"torch.bool.*int64"):
        kd_loss(s, t, mask=torch.ones(4, 3, dtype=torch.long))


def test_error_non_float_logits():
    with pytest.raises(TypeError, match=r"student_logits must be a floating-point tensor"):
        kd_loss(torch.zeros(3, 4, dtype=torch.long), torch.randn(3, 4))


def test_no_gradient_into_teacher():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    p = torch.softmax(torch.randn(4, 5), -1).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3])
    losses = [
        kd_loss(s, t, 2.0, y, 0.5),
        kd_loss(s, None, 2.0, y, 0.5, teacher_probs=p),
        kl_divergence_with_temperature(s, t, 3.0),
        logit_matching_loss(s, t),
        soft_cross_entropy(s, p),
    ]
    sum(losses).backward()
    assert t.grad is None and p.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_gradcheck_kd_loss():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 2, 5, dtype=torch.float64, generator=g).requires_grad_(True)
    t = torch.randn(3, 2, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 5, (3, 2), generator=g)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    p = torch.softmax(t / 2.5, -1)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.5, y, 0.6), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.5, y, 0.6, mask=mask), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, None, 2.5, teacher_probs=p), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 1.0, y, 0.0), (s,))
    assert torch.autograd.gradcheck(lambda x: logit_matching_loss(x, t, mask=mask), (s,))
    assert torch.autograd.gradcheck(lambda x: soft_cross_entropy(x, p, mask=mask), (s,))


def test_kd_objective_total_equals_the_functional_kd_loss():
    t = torch.randn(6, 5)
    out = _step(Targets(logits=t))
    obj = KnowledgeDistillation(temperature=3.0, alpha=0.7)
    terms = obj(out)
    assert set(terms) == {"kd", "ce"}
    expected = DF.kd_loss(out.logits, t, 3.0, labels=out.labels, alpha=0.7)
    assert torch.allclose(obj.total(terms), expected, atol=1e-6)
    assert torch.allclose(terms["ce"], F.cross_entropy(out.logits, out.labels))


def test_kd_objective_with_teacher_probabilities_matches_logits():
    t = torch.randn(6, 5)
    obj = KnowledgeDistillation(temperature=2.0, alpha=1.0)
    from_logits = obj(_step(Targets(logits=t)))
    from_probs = obj(_step(Targets(probs=torch.softmax(t / 2.0, -1))))
    assert set(from_logits) == {"kd"}  # alpha = 1: labels unused, no ce term
    assert torch.allclose(from_logits["kd"], from_probs["kd"], atol=1e-6)
