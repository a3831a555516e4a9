"""Every method loss of distill.functional: autograd (the teacher is detached), dtypes, gradcheck and error
messages. (Each loss's value against numpy is in its method's test file.)"""

from __future__ import annotations

import pytest
import torch

from distill.functional import (
    ab_loss,
    attention_transfer_loss,
    correlation_congruence_loss,
    crd_nce_loss,
    dist_loss,
    dkd_loss,
    factor_transfer_loss,
    fitnet_loss,
    fsp_loss,
    fsp_matrix,
    hcl_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
    simkd_loss,
    standardized_kd_loss,
    wttm_loss,
    vid_loss,
    zscore_logits,
)

from ._reference import make


LABELS = torch.tensor([0, 2, 1, 4, 3, 2])


RAW_VARIANCE = torch.tensor([0.3, -0.2, 1.0])


# name -> (call(student, teacher), student shape, teacher shape)
PAIR_LOSSES = {
    "dkd_loss": (lambda s, t: dkd_loss(s, t, LABELS), (6, 5), (6, 5)),
    "dist_loss": (lambda s, t: dist_loss(s, t, temperature=4.0), (6, 5), (6, 5)),
    "standardized_kd_loss": (standardized_kd_loss, (6, 5), (6, 5)),
    "wttm_loss": (wttm_loss, (6, 5), (6, 5)),
    "attention_transfer_loss": (attention_transfer_loss, (6, 3, 4, 4), (6, 5, 4, 4)),
    "similarity_preserving_loss": (similarity_preserving_loss, (6, 3, 4, 4), (6, 5, 2, 2)),
    "correlation_congruence_loss": (correlation_congruence_loss, (6, 8), (6, 4)),
    "rkd_loss": (rkd_loss, (6, 8), (6, 4)),
    "pkt_loss": (pkt_loss, (6, 8), (6, 4)),
    "nst_loss": (nst_loss, (6, 3, 4, 4), (6, 5, 4, 4)),
    "fsp_loss": (lambda s, t: fsp_loss([(s, s.flip(1))], [(t, t.flip(1))]), (6, 3, 4, 4), (6, 3, 4, 4)),
    "factor_transfer_loss": (factor_transfer_loss, (6, 3, 4, 4), (6, 3, 4, 4)),
    "vid_loss": (lambda s, t: vid_loss(s, t, RAW_VARIANCE), (6, 3, 4, 4), (6, 3, 4, 4)),
    "ab_loss": (ab_loss, (6, 3, 4, 4), (6, 3, 4, 4)),
    "hcl_loss": (lambda s, t: hcl_loss([s], [t]), (6, 3, 4, 4), (6, 3, 4, 4)),
    "simkd_loss": (simkd_loss, (6, 3, 4, 4), (6, 3, 4, 4)),
    "fitnet_loss": (fitnet_loss, (6, 3, 4, 4), (6, 3, 4, 4)),
}


# losses whose value is 0 when the student equals the teacher (same shapes; WTTM matches a transformed teacher)
MATCHING = [name for name in PAIR_LOSSES if name not in ("vid_loss", "ab_loss", "wttm_loss")]


@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_gradient_reaches_student_not_teacher(name):
    fn, s_shape, t_shape = PAIR_LOSSES[name]
    s = make(s_shape, 10, 2.0).requires_grad_(True)
    t = make(t_shape, 11, 2.0).requires_grad_(True)
    out = fn(s, t)
    out.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(PAIR_LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32(name, dtype):
    fn, s_shape, t_shape = PAIR_LOSSES[name]
    s, t = make(s_shape, 12), make(t_shape, 13)
    out = fn(s.to(dtype), t.to(dtype))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    # float32 math on the rounded inputs
    assert out.item() == pytest.approx(fn(s.to(dtype).float(), t.to(dtype).float()).item(), rel=1e-5, abs=1e-6)
    assert fn(s.double(), t.double()).dtype == torch.float64


@pytest.mark.parametrize("name", MATCHING)
def test_identical_inputs_give_zero(name):
    fn, shape, _ = PAIR_LOSSES[name]
    t = make(shape, 14, 2.0)
    s = t.clone().requires_grad_(True)
    out = fn(s, t)
    # DIST: 1 - rho is of the order of its eps = 1e-8 over the product of the centred norms, times T^2 = 16
    assert abs(out.item()) < (1e-4 if name == "dist_loss" else 1e-6)
    out.backward()
    assert s.grad.abs().max().item() < 1e-4


def test_gradcheck():
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    s, t, y = rand(4, 5).requires_grad_(True), rand(4, 5), torch.tensor([0, 3, 1, 4])
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, 1.0, 8.0, 2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, 1.0, 2.0, 3.0), (s,))
    assert torch.autograd.gradcheck(lambda x: standardized_kd_loss(x, t), (s,))
    e_s, e_t = rand(5, 3).requires_grad_(True), rand(5, 4)
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, e_t), (e_s,))
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, e_t), (e_s,))
    assert torch.autograd.gradcheck(lambda x: correlation_congruence_loss(x, e_t), (e_s,))
    f_s, f_t = rand(2, 3, 4, 4).requires_grad_(True), rand(2, 3, 4, 4)
    alpha = rand(3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, a: vid_loss(x, f_t, a), (f_s, alpha))
    assert torch.autograd.gradcheck(lambda x: nst_loss(x, f_t), (f_s,))
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, f_t), (f_s,))
    assert torch.autograd.gradcheck(lambda x: hcl_loss(x, f_t), (f_s,))
    pos, neg = rand(3).requires_grad_(True), rand(3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, n: crd_nce_loss(p, n, 20, 0.5, normalizer=3.0), (pos, neg))
    assert torch.autograd.gradcheck(lambda p, n: crd_nce_loss(p, n, temperature=0.5, mode="softmax"), (pos, neg))


def test_error_spatial_mismatch_suggests_pooling():
    for fn in (attention_transfer_loss, nst_loss):
        with pytest.raises(ValueError, match=r"f_s spatial size \(8, 8\) and f_t spatial size \(4, 4\) must match"
                           r".*adaptive_avg_pool2d\(x, \(4, 4\)\)"):
            fn(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4))


def test_error_batch_mismatch():
    for fn in (attention_transfer_loss, similarity_preserving_loss, nst_loss):
        with pytest.raises(ValueError, match=r"same batch size.*\(2, 3, 4, 4\) and \(3, 3, 4, 4\)"):
            fn(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    for fn in (rkd_loss, correlation_congruence_loss, pkt_loss):
        with pytest.raises(ValueError, match=r"e_s and e_t must have the same batch size"):
            fn(torch.randn(4, 3), torch.randn(5, 3))


def test_error_shape_mismatch_for_elementwise_losses():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"f_s_mapped shape \(2, 3, 4, 4\) and f_t shape \(2, 5, 4, 4\) must match.*"
                       r"regressor"):
        fitnet_loss(s, t)
    with pytest.raises(ValueError, match=r"f_s_projected shape .* must match .*project"):
        simkd_loss(s, t)
    with pytest.raises(ValueError, match=r"f_s shape .* must match .*connector"):
        ab_loss(s, t)
    with pytest.raises(ValueError, match=r"features_s\[0\] shape .* and features_t\[0\] shape"):
        hcl_loss([s], [t])
    with pytest.raises(ValueError, match=r"same number of values per sample"):
        factor_transfer_loss(s, t)
    with pytest.raises(ValueError, match=r"raw_variance shape \(5,\) must be \(C,\) with C = 3"):
        vid_loss(s, s, torch.zeros(5))


def test_error_logit_methods():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"student has 5 classes, teacher has 6 classes"):
        dkd_loss(s, torch.randn(4, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label 5 is out of range \[0, 5\)"):
        dkd_loss(s, t, torch.tensor([0, 5, 1, 2]))
    with pytest.raises(ValueError, match=r"needs at least 2 classes"):
        dkd_loss(torch.randn(4, 1), torch.randn(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0"):
        dkd_loss(s, t, torch.zeros(4, dtype=torch.long), beta=-1.0)
    with pytest.raises(ValueError, match=r"student_logits must be \(B, C\) logits, got shape \(2, 2, 5\)"):
        dist_loss(torch.randn(2, 2, 5), torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        standardized_kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match=r"zscore_logits needs at least 2 classes"):
        zscore_logits(torch.randn(3, 1))
    with pytest.raises(TypeError, match=r"f_s must be a floating-point tensor"):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.randn(2, 3, 4, 4))


def test_error_relational_and_structured_inputs():
    with pytest.raises(ValueError, match=r"needs a batch of at least 2"):
        rkd_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"order must be an int >= 0"):
        correlation_congruence_loss(torch.randn(3, 2), torch.randn(3, 2), order=1.5)
    with pytest.raises(ValueError, match=r"pair 0: student FSP matrix \(2, 3, 3\) and teacher FSP matrix \(2, 4, 3\)"):
        a = torch.randn(2, 3, 4, 4)
        fsp_loss([(a, a)], [(torch.randn(2, 4, 4, 4), a)])
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of pairs"):
        fsp_loss([], [])
    with pytest.raises(TypeError, match=r"pairs_s\[0\] must be a pair"):
        fsp_loss([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)])
    with pytest.raises(ValueError, match=r"cannot be pooled to a common size"):
        fsp_matrix(torch.randn(2, 3, 8, 4), torch.randn(2, 3, 4, 8))
    pos, neg = torch.rand(4), torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"mode='nce' needs num_data"):
        crd_nce_loss(pos, neg)
    with pytest.raises(ValueError, match=r"mode must be 'nce' or 'softmax'"):
        crd_nce_loss(pos, neg, 10, mode="relax")
    with pytest.raises(ValueError, match=r"negative_scores must be \(B, K\) with K >= 1 and the B = 4"):
        crd_nce_loss(pos, torch.rand(3, 3), 10)
    with pytest.raises(ValueError, match=r"normalizer Z must be a single number > 0"):
        crd_nce_loss(pos, neg, 10, normalizer=-1.0)
