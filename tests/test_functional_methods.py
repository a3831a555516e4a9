"""The method zoo of distill.functional against independent float64 numpy computations.

Each numpy reference is written from the paper's formula (with loops where that is clearer),
not from our torch code. Then: hand-derived values, invariances, autograd (the teacher is
detached; gradcheck), dtypes and error messages.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.functional import (
    ab_loss,
    attention_transfer_loss,
    correlation_congruence_loss,
    crd_nce_loss,
    dist_loss,
    dkd_loss,
    dkd_terms,
    factor_transfer_loss,
    fitnet_loss,
    fsp_loss,
    fsp_matrix,
    hcl_loss,
    kd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    similarity_preserving_loss,
    simkd_loss,
    standardized_kd_loss,
    vid_loss,
    zscore_logits,
)

# --------------------------------------------------------------------------- helpers


def make(shape, seed=0, scale=1.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def make_labels(lead, num_classes, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, lead, generator=g)


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p, q) -> float:
    """sum_c p_c log(p_c / q_c), with 0 log 0 = 0."""
    return float(sum(pc * math.log(pc / qc) for pc, qc in zip(p, q) if pc > 0))


def np_unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def block_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of (B, C, H, W) to (size, size) when H and W are multiples of size."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def close(out: torch.Tensor, ref: float, rel=1e-5, abs=1e-7) -> None:
    assert out.dim() == 0
    assert out.item() == pytest.approx(ref, rel=rel, abs=abs)


# --------------------------------------------------------------------------- DKD


def np_dkd_terms(s, t, y, T):
    C = s.shape[-1]
    s, t, y = s.reshape(-1, C), t.reshape(-1, C), y.reshape(-1)
    tckd, nckd = [], []
    for zs, zt, label in zip(s, t, y):
        ps, pt = np_softmax(zs / T), np_softmax(zt / T)
        tckd.append(np_kl([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]]))
        others = [c for c in range(C) if c != label]
        nckd.append(np_kl(pt[others] / pt[others].sum(), ps[others] / ps[others].sum()))
    return T**2 * np.mean(tckd), T**2 * np.mean(nckd)


@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 6)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_numpy(shape, T):
    s, t = make(shape, 0, 2.0), make(shape, 1, 2.0)
    y = make_labels(shape[:-1], shape[-1])
    tckd, nckd = dkd_terms(s, t, y, T)
    ref_t, ref_n = np_dkd_terms(to_np(s), to_np(t), y.numpy(), T)
    close(tckd, ref_t)
    close(nckd, ref_n)
    close(dkd_loss(s, t, y, alpha=1.5, beta=3.0, temperature=T), 1.5 * ref_t + 3.0 * ref_n)
    assert dkd_loss(s, t, y).item() == pytest.approx(dkd_loss(s, t, y, 1.0, 8.0, 4.0).item(), rel=1e-7)


def test_dkd_decomposes_hintons_loss():
    # Zhao et al. Eq. 2: T^2 KL = TCKD + (1 - p_t,y) NCKD, per sample.
    T = 3.0
    s, t = make((6, 7), 2, 2.0), make((6, 7), 3, 2.0)
    y = make_labels((6,), 7)
    for i in range(6):
        tckd, nckd = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], T)
        p_target = torch.softmax(t[i] / T, -1)[y[i]].item()
        close(kd_loss(s[i : i + 1], t[i : i + 1], T), (tckd + (1 - p_target) * nckd).item())


def test_dkd_one_hot_teacher():
    # Teacher certain of the label and indifferent among the others: b_t = [1, 0] and the
    # non-target distribution is uniform, so (hand-derived)
    #   TCKD = -T^2 log p_s,y   and   NCKD = T^2 (-log(C - 1) - mean_{c != y} log p^_s,c).
    T, C = 4.0, 5
    s = make((4, C), 4, 2.0)
    y = torch.tensor([0, 3, 4, 1])
    t = torch.zeros(4, C)
    t[torch.arange(4), y] = 1e4
    tckd, nckd = dkd_terms(s, t, y, T)
    ref_t, ref_n = [], []
    for zs, label in zip(to_np(s), y.tolist()):
        p = np_softmax(zs / T)
        others = np.delete(p, label)
        ref_t.append(-math.log(p[label]))
        ref_n.append(-math.log(C - 1) - np.log(others / others.sum()).mean())
    close(tckd, T**2 * np.mean(ref_t))
    close(nckd, T**2 * np.mean(ref_n))


def test_dkd_identical_logits_give_zero_and_extreme_logits_stay_finite():
    t = make((5, 6), 5, 3.0)
    y = make_labels((5,), 6)
    tckd, nckd = dkd_terms(t.clone(), t, y)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-6
    s = (make((5, 6), 6) * 1e4).requires_grad_(True)
    out = dkd_loss(s, make((5, 6), 7) * 1e4, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_dkd_mask_equals_selected_positions():
    s, t = make((3, 4, 5), 8, 2.0), make((3, 4, 5), 9, 2.0)
    y = make_labels((3, 4), 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    y_padded = y.masked_fill(~mask, -100)
    out = dkd_loss(s, t, y_padded, mask=mask)
    close(out, dkd_loss(s[mask], t[mask], y[mask]).item())


# --------------------------------------------------------------------------- DIST


def np_pearson(u, v, eps=1e-8):
    u, v = u - u.mean(), v - v.mean()
    return (u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v) + eps)


def np_dist(s, t, beta, gamma, T):
    ys = np.stack([np_softmax(row / T) for row in s])
    yt = np.stack([np_softmax(row / T) for row in t])
    B, C = ys.shape
    inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(B)])
    intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(C)])
    return T**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_matches_numpy(beta, gamma, T):
    s, t = make((7, 5), 0, 2.0), make((7, 5), 1, 2.0)
    close(dist_loss(s, t, beta, gamma, T), np_dist(to_np(s), to_np(t), beta, gamma, T))


def test_dist_invariances():
    s, t = make((6, 8), 2, 2.0), make((6, 8), 3, 2.0)
    ref = dist_loss(s, t, temperature=2.0).item()
    # a per-sample shift of either side's logits leaves the probabilities unchanged
    shift = torch.linspace(-3, 3, 6)[:, None]
    assert dist_loss(s + shift, t - 2 * shift, temperature=2.0).item() == pytest.approx(ref, rel=1e-5)
    # relabelling the classes and reordering the batch (the same for both) changes nothing
    rows, cols = torch.randperm(6), torch.randperm(8)
    assert dist_loss(s[rows][:, cols], t[rows][:, cols], temperature=2.0).item() == pytest.approx(ref, rel=1e-5)
    # identical predictions: both correlations are 1 (up to float32 rounding and the reference's eps)
    assert abs(dist_loss(t.clone(), t).item()) < 1e-5


# --------------------------------------------------------------------------- logit standardization


def np_zscore(z, eps=1e-7):
    return (z - z.mean()) / (z.std(ddof=1) + eps)


def test_zscore_matches_numpy_and_is_affine_invariant():
    z = make((4, 3, 7), 0, 3.0)
    ref = np.apply_along_axis(np_zscore, -1, to_np(z))
    np.testing.assert_allclose(to_np(zscore_logits(z)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(zscore_logits(2.5 * z - 4.0)), ref, rtol=1e-5, atol=1e-5)
    out = zscore_logits(z)
    assert out.mean(-1).abs().max() < 1e-5 and (out.std(-1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_standardized_kd_matches_numpy(T):
    s, t = make((6, 5), 1, 2.0), make((6, 5), 2, 4.0)
    ref = []
    for zs, zt in zip(to_np(s), to_np(t)):
        ref.append(np_kl(np_softmax(np_zscore(zt) / T), np_softmax(np_zscore(zs) / T)))
    close(standardized_kd_loss(s, t, T), T**2 * np.mean(ref))


def test_standardized_kd_invariant_to_shift_and_scale():
    s, t = make((6, 5), 3, 2.0), make((6, 5), 4, 2.0)
    ref = standardized_kd_loss(s, t).item()
    scale = torch.tensor([0.5, 1.0, 3.0, 10.0, 0.1, 2.0])[:, None]  # per sample, > 0
    assert standardized_kd_loss(s, scale * t + 7.0).item() == pytest.approx(ref, rel=1e-5)
    assert standardized_kd_loss(3.0 * s - 1.0, t).item() == pytest.approx(ref, rel=1e-5)
    assert abs(standardized_kd_loss(2.0 * t + 1.0, t).item()) < 1e-6
    # plain KD is not invariant (the test above means something)
    assert kd_loss(s, 3.0 * t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)


def test_standardized_kd_mask_ignores_garbage():
    s, t = make((2, 4, 5), 5, 2.0), make((2, 4, 5), 6, 2.0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    clean = standardized_kd_loss(s, t, mask=mask)
    s2 = s.clone()
    s2[~mask] = float("nan")
    s2.requires_grad_(True)
    dirty = standardized_kd_loss(s2, t, mask=mask)
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-6)
    assert torch.isfinite(s2.grad).all() and (s2.grad[~mask] == 0).all()
    close(clean, standardized_kd_loss(s[mask], t[mask]).item())


# --------------------------------------------------------------------------- attention transfer


def np_attention_transfer(fs, ft, p):
    B, total = fs.shape[0], 0.0
    for b in range(B):
        qs = np_unit((np.abs(fs[b]) ** p).mean(axis=0).ravel())
        qt = np_unit((np.abs(ft[b]) ** p).mean(axis=0).ravel())
        total += ((qs - qt) ** 2).sum()
    return total / (B * qs.size)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_attention_transfer_matches_numpy(p):
    fs, ft = make((3, 4, 5, 6), 0), make((3, 7, 5, 6), 1)  # channel counts may differ
    close(attention_transfer_loss(fs, ft, p), np_attention_transfer(to_np(fs), to_np(ft), p))


# --------------------------------------------------------------------------- similarity preserving


def np_similarity_preserving(fs, ft):
    B = fs.shape[0]
    Fs, Ft = fs.reshape(B, -1), ft.reshape(B, -1)
    Gs = np.stack([np_unit(Fs @ Fs[i]) for i in range(B)])
    Gt = np.stack([np_unit(Ft @ Ft[i]) for i in range(B)])
    return ((Gs - Gt) ** 2).sum() / B**2


def test_similarity_preserving_matches_numpy():
    fs, ft = make((5, 3, 4, 4), 0), make((5, 8, 2, 2), 1)
    close(similarity_preserving_loss(fs, ft), np_similarity_preserving(to_np(fs), to_np(ft)))
    es, et = make((6, 10), 2), make((6, 4), 3)
    close(similarity_preserving_loss(es, et), np_similarity_preserving(to_np(es), to_np(et)))


# --------------------------------------------------------------------------- correlation congruence


def np_cc(es, et, gamma, order):
    def kernel(e):
        e = np.stack([np_unit(row) for row in e])
        B = len(e)
        K = np.zeros((B, B))
        for i in range(B):
            for j in range(B):
                x = e[i] @ e[j]
                K[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * x**p for p in range(order + 1)
                )
        return K

    return ((kernel(es) - kernel(et)) ** 2).mean()


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 0), (0.7, 3)])
def test_correlation_congruence_matches_numpy(gamma, order):
    es, et = make((6, 5), 0), make((6, 9), 1)
    close(correlation_congruence_loss(es, et, gamma, order), np_cc(to_np(es), to_np(et), gamma, order))


def test_correlation_congruence_tends_to_the_gaussian_rbf_kernel():
    # For unit vectors the order-P Taylor series converges to exp(-gamma ||x - y||^2).
    gamma = 0.8
    es, et = make((5, 4), 2), make((5, 6), 3)

    def rbf(e):
        e = np.stack([np_unit(row) for row in e])
        return np.array([[math.exp(-gamma * np.sum((a - b) ** 2)) for b in e] for a in e])

    ref = ((rbf(to_np(es)) - rbf(to_np(et))) ** 2).mean()
    close(correlation_congruence_loss(es.double(), et.double(), gamma, order=30), ref, rel=1e-9)


# --------------------------------------------------------------------------- RKD


def np_rkd_distance_potential(e):
    B = len(e)
    d = np.zeros((B, B))
    for i in range(B):
        for j in range(B):
            if i != j:
                d[i, j] = np.linalg.norm(e[i] - e[j])
    return d / (d.sum() / (B * (B - 1)))


def np_rkd_angle_potential(e):
    B = len(e)
    a = np.zeros((B, B, B))
    for i in range(B):
        for j in range(B):
            for k in range(B):
                if j != i and k != i:
                    a[i, j, k] = np_unit(e[j] - e[i]) @ np_unit(e[k] - e[i])
    return a


def test_rkd_matches_numpy():
    es, et = make((5, 4), 0, 2.0), make((5, 7), 1, 0.5)
    ref_d = huber(np_rkd_distance_potential(to_np(es)) - np_rkd_distance_potential(to_np(et))).mean()
    ref_a = huber(np_rkd_angle_potential(to_np(es)) - np_rkd_angle_potential(to_np(et))).mean()
    close(rkd_distance_loss(es, et), ref_d)
    close(rkd_angle_loss(es, et), ref_a)
    close(rkd_loss(es, et), 25 * ref_d + 50 * ref_a)
    close(rkd_loss(es, et, distance_weight=1.0, angle_weight=0.0), ref_d)


def test_rkd_invariant_to_similarity_transforms_of_the_teacher():
    # distances are normalized by their mean and angles ignore scale, rotation and translation
    es, et = make((6, 3), 2), make((6, 3), 3)
    q, _ = torch.linalg.qr(make((3, 3), 4))
    moved = 5.0 * et @ q + 2.0
    assert rkd_loss(es, moved).item() == pytest.approx(rkd_loss(es, et).item(), rel=1e-4)
    assert rkd_loss(2.0 * et @ q - 1.0, et).item() < 1e-6


# --------------------------------------------------------------------------- PKT


def np_pkt(es, et, eps=1e-7):
    def conditional(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        B = len(e)
        K = np.array([[(1 + e[i] @ e[j]) / 2 for j in range(B)] for i in range(B)])
        return K / K.sum(axis=1, keepdims=True)

    ps, pt = conditional(es), conditional(et)
    B = len(es)
    total = sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(B) for j in range(B))
    return total / B**2


def test_pkt_matches_numpy():
    es, et = make((6, 5), 0), make((6, 3), 1)
    close(pkt_loss(es, et), np_pkt(to_np(es), to_np(et)))
    assert pkt_loss(es, et).item() > 0


# --------------------------------------------------------------------------- NST


def np_nst(fs, ft):
    B = fs.shape[0]
    S = np.stack([[np_unit(ch.ravel()) for ch in sample] for sample in fs])  # (B, Cs, HW)
    T = np.stack([[np_unit(ch.ravel()) for ch in sample] for sample in ft])

    def kernel_mean(X, Y):
        pairs = [(b, i, j) for b in range(B) for i in range(X.shape[1]) for j in range(Y.shape[1])]
        return np.mean([(X[b, i] @ Y[b, j]) ** 2 for b, i, j in pairs])

    return kernel_mean(T, T) + kernel_mean(S, S) - 2 * kernel_mean(S, T)


def test_nst_matches_numpy():
    fs, ft = make((3, 4, 3, 5), 0), make((3, 6, 3, 5), 1)
    close(nst_loss(fs, ft), np_nst(to_np(fs), to_np(ft)), rel=1e-4, abs=1e-6)
    assert nst_loss(fs, ft).item() > 0


# --------------------------------------------------------------------------- FSP


def np_fsp_matrix(a, b):
    B, C1, H, W = a.shape
    C2 = b.shape[1]
    G = np.zeros((B, C1, C2))
    for n in range(B):
        for i in range(C1):
            for j in range(C2):
                G[n, i, j] = np.sum(a[n, i] * b[n, j]) / (H * W)
    return G


def test_fsp_matches_numpy():
    a_s, b_s = make((2, 3, 4, 4), 0), make((2, 5, 4, 4), 1)
    a_t, b_t = make((2, 3, 8, 8), 2), make((2, 5, 4, 4), 3)  # the teacher's first map is pooled 8 -> 4
    np.testing.assert_allclose(to_np(fsp_matrix(a_s, b_s)), np_fsp_matrix(to_np(a_s), to_np(b_s)), rtol=1e-5)
    G_t = np_fsp_matrix(block_pool(to_np(a_t), 4), to_np(b_t))
    np.testing.assert_allclose(to_np(fsp_matrix(a_t, b_t)), G_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(to_np(fsp_matrix(b_t, a_t)), G_t.transpose(0, 2, 1), rtol=1e-5, atol=1e-7)
    G_s = np_fsp_matrix(to_np(a_s), to_np(b_s))
    G_s2 = np_fsp_matrix(to_np(b_s), to_np(a_s))
    G_t2 = np_fsp_matrix(to_np(b_t), block_pool(to_np(a_t), 4))
    ref = ((G_s - G_t) ** 2).mean() + ((G_s2 - G_t2) ** 2).mean()
    close(fsp_loss([(a_s, b_s), (b_s, a_s)], [(a_t, b_t), (b_t, a_t)]), ref)


# --------------------------------------------------------------------------- FT, VID, AB


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_factor_transfer_matches_numpy(p):
    fs, ft = make((3, 2, 4, 4), 0), make((3, 2, 4, 4), 1, 3.0)
    B = 3
    diff = [np_unit(a.ravel()) - np_unit(b.ravel()) for a, b in zip(to_np(fs), to_np(ft))]
    ref = sum(np.sum(np.abs(d) ** p) for d in diff) / (B * diff[0].size)
    close(factor_transfer_loss(fs, ft, p), ref)
    # scale of either factor is irrelevant
    assert factor_transfer_loss(4.0 * fs, ft, p).item() == pytest.approx(ref, rel=1e-5)


def test_vid_matches_numpy():
    mu, ft = make((2, 3, 4, 4), 0), make((2, 3, 4, 4), 1)
    alpha = torch.tensor([-1.0, 0.5, 3.0])
    eps = 1e-5
    m, t, a = to_np(mu), to_np(ft), to_np(alpha)
    terms = []
    for idx in np.ndindex(m.shape):
        var = math.log(1 + math.exp(a[idx[1]])) + eps
        terms.append(0.5 * ((t[idx] - m[idx]) ** 2 / var + math.log(var)))
    close(vid_loss(mu, ft, alpha), np.mean(terms))
    # embeddings (B, D) with one variance per dim
    e_mu, e_t = make((4, 3), 2), make((4, 3), 3)
    var = np.log1p(np.exp(a)) + eps
    ref = np.mean(0.5 * ((to_np(e_t) - to_np(e_mu)) ** 2 / var + np.log(var)))
    close(vid_loss(e_mu, e_t, alpha), ref)


def test_vid_initial_variance_convention():
    # the objective initializes alpha = log(exp(5 - eps) - 1) so that the variance is 5
    eps = 1e-5
    alpha = torch.full((2,), math.log(math.exp(5.0 - eps) - 1.0))
    f = make((3, 2), 4)
    close(vid_loss(f, f, alpha), 0.5 * math.log(5.0), rel=1e-6)


def test_ab_matches_numpy():
    fs, ft = make((3, 2, 3, 3), 0, 1.5), make((3, 2, 3, 3), 1)
    m = 1.0
    total = 0.0
    for idx in np.ndindex(fs.shape):
        s, t = to_np(fs)[idx], to_np(ft)[idx]
        if t > 0 and s <= m:
            total += (s - m) ** 2
        elif t <= 0 and s > -m:
            total += (s + m) ** 2
    close(ab_loss(fs, ft, m), total / 3)
    # a student beyond the margin on the teacher's side of every boundary has zero loss
    beyond = torch.where(ft > 0, ft.abs() + 1.5, -ft.abs() - 1.5)
    assert ab_loss(beyond, ft).item() == 0.0


# --------------------------------------------------------------------------- CRD


def np_crd_nce(pos, neg, N, T, Z=None, eps=1e-7):
    B, K = neg.shape
    P = np.exp(np.concatenate([pos[:, None], neg], axis=1) / T)
    if Z is None:
        Z = N * P.mean()
    P = P / Z
    noise = K / N
    total = 0.0
    for b in range(B):
        total += math.log(P[b, 0] / (P[b, 0] + noise + eps))
        for k in range(1, K + 1):
            total += math.log(noise / (P[b, k] + noise + eps))
    return -total / B


def test_crd_nce_matches_numpy():
    pos = torch.tanh(make((4,), 0)) * 0.9 + 0.05  # cosine similarities
    neg = torch.tanh(make((4, 6), 1)) * 0.5
    N, T = 50, 0.07
    close(crd_nce_loss(pos, neg, N, T), np_crd_nce(to_np(pos), to_np(neg), N, T), rel=1e-4)
    close(crd_nce_loss(pos, neg, N, T, normalizer=123.0), np_crd_nce(to_np(pos), to_np(neg), N, T, Z=123.0), rel=1e-4)
    close(crd_nce_loss(pos, neg, N, 0.5, normalizer=torch.tensor(7.0)), np_crd_nce(to_np(pos), to_np(neg), N, 0.5, 7.0))
    # the batch estimate of Z is what the reference stores after its first batch
    scores = to_np(torch.cat([pos[:, None], neg], 1))
    z_first_batch = N * np.exp(scores / T).mean()
    assert crd_nce_loss(pos, neg, N, T).item() == pytest.approx(
        crd_nce_loss(pos, neg, N, T, normalizer=float(z_first_batch)).item(), rel=1e-5
    )


def test_crd_softmax_mode_is_infonce():
    pos, neg = make((5,), 2) * 0.3, make((5, 7), 3) * 0.3
    T = 0.1
    ref = np.mean([-(p / T) + math.log(np.exp(np.r_[p, n] / T).sum()) for p, n in zip(to_np(pos), to_np(neg))])
    close(crd_nce_loss(pos, neg, temperature=T, mode="softmax"), ref)


def test_crd_gradients_reach_both_scores():
    # nothing is detached: the teacher-side embedding head is trained in CRD
    pos = (torch.rand(4) * 0.5).requires_grad_(True)
    neg = (torch.rand(4, 5) * 0.5 - 0.25).requires_grad_(True)
    crd_nce_loss(pos, neg, 100).backward()
    assert (pos.grad < 0).all()  # a higher positive score lowers the loss
    assert (neg.grad > 0).all()  # a higher negative score raises it


# --------------------------------------------------------------------------- ReviewKD HCL, SimKD, FitNet


def np_hcl_pair(s, t, levels=(4, 2, 1)):
    loss, weight, weight_sum = np.mean((s - t) ** 2), 1.0, 1.0
    for level in levels:
        if level >= s.shape[2]:
            continue
        weight /= 2
        loss += weight * np.mean((block_pool(s, level) - block_pool(t, level)) ** 2)
        weight_sum += weight
    return loss / weight_sum


def test_hcl_matches_numpy():
    pairs = [(make((2, 3, 8, 8), 0), make((2, 3, 8, 8), 1)), (make((2, 4, 2, 2), 2), make((2, 4, 2, 2), 3)),
             (make((2, 5, 1, 1), 4), make((2, 5, 1, 1), 5))]
    refs = [np_hcl_pair(to_np(s), to_np(t)) for s, t in pairs]
    for (s, t), ref in zip(pairs, refs):
        close(hcl_loss(s, t), ref)
    close(hcl_loss([s for s, _ in pairs], [t for _, t in pairs]), sum(refs))
    # hand-derived: 8x8 maps use all levels, weights 1, 1/2, 1/4, 1/8 (sum 15/8)
    s, t = pairs[0]
    mse = [np.mean((to_np(s) - to_np(t)) ** 2)] + [
        np.mean((block_pool(to_np(s), lv) - block_pool(to_np(t), lv)) ** 2) for lv in (4, 2, 1)
    ]
    close(hcl_loss(s, t), (mse[0] + mse[1] / 2 + mse[2] / 4 + mse[3] / 8) / (15 / 8))
    # a 1x1 map is the plain MSE
    s1, t1 = pairs[2]
    close(hcl_loss(s1, t1), np.mean((to_np(s1) - to_np(t1)) ** 2))


@pytest.mark.parametrize("fn", [simkd_loss, fitnet_loss])
def test_mse_losses_match_numpy(fn):
    fs, ft = make((3, 4, 2, 2), 0), make((3, 4, 2, 2), 1)
    close(fn(fs, ft), np.mean((to_np(fs) - to_np(ft)) ** 2))


# --------------------------------------------------------------------------- every loss: autograd, dtypes

LABELS = torch.tensor([0, 2, 1, 4, 3, 2])
RAW_VARIANCE = torch.tensor([0.3, -0.2, 1.0])

# name -> (call(student, teacher), student shape, teacher shape)
PAIR_LOSSES = {
    "dkd_loss": (lambda s, t: dkd_loss(s, t, LABELS), (6, 5), (6, 5)),
    "dist_loss": (lambda s, t: dist_loss(s, t, temperature=4.0), (6, 5), (6, 5)),
    "standardized_kd_loss": (standardized_kd_loss, (6, 5), (6, 5)),
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
# losses whose value is 0 when the student equals the teacher (same shapes)
MATCHING = [name for name in PAIR_LOSSES if name not in ("vid_loss", "ab_loss")]


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


def test_crd_dtypes():
    pos, neg = make((4,), 0).to(torch.bfloat16), make((4, 3), 1).to(torch.bfloat16)
    assert crd_nce_loss(pos, neg, 10).dtype == torch.float32
    assert crd_nce_loss(pos.double(), neg.double(), 10, mode="softmax").dtype == torch.float64


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


# --------------------------------------------------------------------------- errors


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
