r"""Pure distillation losses on tensors (stateless, in the style of ``torch.nn.functional``).

Reference: G. Hinton, O. Vinyals, J. Dean (2015), "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531.

Notation. ``z`` are the student's logits, ``v`` the teacher's, ``T > 0`` the
temperature, ``C`` the number of classes (always the **last** dim), ``y`` the
hard labels. Every other dim is a *position*: ``(B, C)`` for classification,
``(B, L, C)`` for sequences, or any leading shape. All losses are reduced to a
scalar by averaging over positions (over the masked-in positions when ``mask``
is given).

* Softened distribution::

      p_i^T = softmax(z / T)_i = exp(z_i / T) / sum_j exp(z_j / T)

* Distillation loss (Hinton et al. 2015, section 2)::

      KL(p_t^T || p_s^T) = sum_c p_t,c^T * (log p_t,c^T - log p_s,c^T)
      kd_loss = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y)

  The ``T^2`` keeps the magnitude of the soft-target gradients roughly
  independent of ``T`` (they scale as ``1/T^2``), so ``alpha`` means the same
  thing at every temperature.

* Logit matching (Caruana et al. 2006; Hinton's high-temperature limit)::

      logit_matching_loss = 1/(2C) * sum_c (z_c - v_c)^2

  For per-position zero-mean logits, ``T^2 * KL(p_t^T || p_s^T)`` tends to exactly
  this quantity as ``T -> infinity``.

* Top-k distillation (a compact cache of the teacher): the teacher keeps its k largest
  probabilities at T; every other class is pooled into one tail bucket, and the KL is taken
  between the (k + 1)-bucket distributions of teacher and student::

      tail_t = 1 - sum_{i in K} p_t,i^T        tail_s = sum_{c not in K} p_s,c^T
      topk_kd_loss = T^2 * [ sum_{i in K} p_t,i (log p_t,i - log p_s,i) + tail_t (log tail_t - log tail_s) ]

  With k = C it is exactly the full distillation term.

* Soft cross-entropy::

      soft_cross_entropy = -sum_c p_c * log softmax(z)_c

Method zoo: one function per published loss (paper, defaults and the reference implementation
each follows are in its docstring). Their trainable parts (connectors, VID's variance, FT's
paraphraser/translator, CRD's embeddings and memory, ReviewKD's fusion, SimKD's projector) are
the objectives'; these functions take their outputs. Each reduces as its reference
implementation does (stated per function), so the published loss weights carry over. ``f`` are
feature maps ``(B, C, H, W)``, ``e`` embeddings ``(B, D)``, ``p = softmax(z / T)``, ``y`` the
label, ``mean`` over all elements.

* Logits::

      dkd_loss             = alpha * T^2 KL([p_t,y, 1 - p_t,y] || [p_s,y, 1 - p_s,y])        (TCKD)
                           + beta  * T^2 KL(p_t,c|c!=y || p_s,c|c!=y)                         (NCKD)
      dist_loss            = T^2 [beta (1 - mean_i pearson_c(p_s,ic, p_t,ic))
                                  + gamma (1 - mean_c pearson_i(p_s,ic, p_t,ic))]
      zscore_logits        = (z - mean_c z) / (std_c z + eps)
      standardized_kd_loss = T^2 KL(softmax(zscore(v) / T) || softmax(zscore(z) / T))

* Features and relations::

      attention_transfer_loss     = mean (Q_s - Q_t)^2,  Q = l2normalize(vec(mean_c |f_c|^p))
      similarity_preserving_loss  = ||rownorm(F_s F_s^T) - rownorm(F_t F_t^T)||_F^2 / B^2
      correlation_congruence_loss = mean (K_s - K_t)^2,  K_ij = sum_{p<=P} e^{-2g} (2g)^p / p! cos(e_i, e_j)^p
      rkd_loss                    = 25 mean huber(psiD_s - psiD_t) + 50 mean huber(psiA_s - psiA_t),
                                    psiD_ij = ||e_i - e_j|| / mean_{i!=j} ||e_i - e_j||,
                                    psiA_ijk = cos of the angle at e_i between e_j and e_k
      pkt_loss                    = mean_ij p^t_j|i log((p^t_j|i + eps) / (p^s_j|i + eps)),
                                    p_j|i = K_ij / sum_k K_ik,  K = (1 + cos) / 2
      nst_loss                    = MMD^2 of the channels' normalized spatial maps, kernel (x.y)^2
      fsp_loss                    = sum_pairs mean (G_s - G_t)^2,  G_ij = sum_hw a_i b_j / HW
      factor_transfer_loss        = mean |F_s / ||F_s|| - F_t / ||F_t|| |^p
      vid_loss                    = mean 1/2 [(t - mu)^2 / s2_c + log s2_c],  s2_c = softplus(alpha_c) + eps
      ab_loss                     = sum [(s + m)^2 1[s > -m, t <= 0] + (s - m)^2 1[s <= m, t > 0]] / B
      crd_nce_loss                = -1/B sum [log D(P_pos) + sum_k log(1 - D(P_k))],
                                    D(P) = P / (P + K/N),  P = exp(s / T) / Z
      hcl_loss                    = [mse + sum_k 2^-k mse(pool_l_k)] / (1 + sum_k 2^-k), summed over pairs
      simkd_loss = fitnet_loss    = mean (f_s - f_t)^2

Numerics. Inputs are cast to float32 first (float64 inputs stay float64, so
``torch.autograd.gradcheck`` works); half / bfloat16 inputs therefore give a
float32 loss. Log-probabilities always come from ``log_softmax`` (never
``log(softmax)``), so logits of magnitude 1e4 are fine. Terms ``p * log(...)``
with ``p == 0`` are exactly 0 (no ``0 * -inf = NaN``). Teacher inputs are
detached: no gradient ever flows into the teacher. (``crd_nce_loss`` takes similarity
scores, not teacher outputs, and detaches nothing: CRD trains the teacher-side embedding.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods._functional import (
    _cast_pair,
    _check_equal_shapes,
    _check_number,
    _check_same_batch,
    _check_spatial,
    _check_temperature,
    _check_tensor,
    _compute_dtype,
    _features,
    _mse,
    _shape,
    kl_divergence_with_temperature,
    soft_cross_entropy,
    softmax_with_temperature,
)
from distill.methods.dist import dist_loss
from distill.methods.dkd import dkd_loss, dkd_terms
from distill.methods.kd import kd_loss, topk_kd_loss
from distill.methods.logit_matching import logit_matching_loss
from distill.methods.standardized_kd import standardized_kd_loss, zscore_logits

__all__ = [
    "softmax_with_temperature",
    "kd_loss",
    "kl_divergence_with_temperature",
    "logit_matching_loss",
    "soft_cross_entropy",
    "topk_kd_loss",
    # method zoo
    "dkd_loss",
    "dkd_terms",
    "dist_loss",
    "zscore_logits",
    "standardized_kd_loss",
    "attention_transfer_loss",
    "similarity_preserving_loss",
    "correlation_congruence_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "pkt_loss",
    "nst_loss",
    "fsp_matrix",
    "fsp_loss",
    "factor_transfer_loss",
    "vid_loss",
    "ab_loss",
    "crd_nce_loss",
    "hcl_loss",
    "simkd_loss",
    "fitnet_loss",
]


# --------------------------------------------------------------------------- feature methods


def _attention_map(f: Tensor, p: float) -> Tensor:
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    r"""Attention transfer (activation-based), for one pair of feature maps.

    S. Zagoruyko, N. Komodakis (2017), "Paying More Attention to Attention", ICLR.

    .. math::

        Q = \frac{\mathrm{vec}(\frac1C \sum_c |f_c|^p)}{\|\mathrm{vec}(\frac1C \sum_c |f_c|^p)\|_2},\qquad
        \mathcal{L} = \frac{1}{B\,HW} \sum_{b} \|Q_s^{(b)} - Q_t^{(b)}\|_2^2

    i.e. the mean squared difference of the L2-normalized spatial attention maps, as the
    authors' code and RepDistiller compute it (the paper's ``beta/2 * ||.||_2`` with
    ``beta = 1000`` becomes a weight: RepDistiller uses 1000). ``p = 2`` as in the paper. For
    odd ``p`` this uses the paper's ``|f|^p``, where RepDistiller's ``f.pow(p)`` keeps the sign.
    Channel counts may differ; **spatial sizes must match** (RepDistiller pools the larger map
    to the smaller; do that before calling). For several pairs of layers, sum the results.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    return (_attention_map(s, p) - _attention_map(t, p)).square().mean()


def _row_normalized_gram(f: Tensor) -> Tensor:
    return F.normalize(f @ f.T, dim=1)


def similarity_preserving_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Similarity-preserving KD: match the batch's pairwise-similarity matrices.

    F. Tung, G. Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV.
    With ``F`` the ``(B, D)`` flattened features, ``G = row_normalize(F F^T)`` (each row scaled
    to unit L2 norm):

    .. math::

        \mathcal{L} = \frac{1}{B^2}\,\|G_s - G_t\|_F^2

    Feature sizes of student and teacher may differ (only the batch must match). RepDistiller
    weighs it by 3000.

    Args:
        f_s, f_t: ``(B, ...)`` features (maps are flattened per sample); ``f_t`` is detached.
    """
    s, t = _features(f_s, f_t, "f_s", "f_t", "(B, ...) features")
    batch = s.shape[0]
    return (_row_normalized_gram(s) - _row_normalized_gram(t)).square().sum() / batch**2


def _cc_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    e = F.normalize(e, dim=1)
    cosine = e @ e.T
    coefficients = [math.exp(-2 * gamma) * (2 * gamma) ** k / math.factorial(k) for k in range(order + 1)]
    return sum(c * cosine**k for k, c in enumerate(coefficients))


def correlation_congruence_loss(e_s: Tensor, e_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    r"""Correlation congruence (CC): match the batch's kernel (correlation) matrices.

    B. Peng, X. Jin, J. Liu, D. Li, Y. Wu, Y. Liu, S. Zhou, Z. Zhang (2019), "Correlation
    Congruence for Knowledge Distillation", ICCV. The correlation of two embeddings is the
    Gaussian RBF kernel, approximated by its order-``P`` Taylor series. For L2-normalized
    embeddings ``||x - y||^2 = 2 - 2 x.y``, so

    .. math::

        k(x, y) = e^{-\gamma \|x - y\|^2} = e^{-2\gamma} e^{2\gamma\, x\cdot y}
                \approx \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!} (x\cdot y)^p,
        \qquad
        \mathcal{L} = \frac{1}{B^2} \|K_s - K_t\|_F^2

    with ``K_ij = k(e_i, e_j)`` over the batch. Defaults ``gamma = 0.4, P = 2`` are those of the
    widely used implementation in AberHu's Knowledge-Distillation-Zoo (the paper gives the
    expansion). Note: RepDistiller's ``Correlation`` class ships a different, simplified loss
    (``mean_i sum_d |s - t|_i,d |s - t|_{i+1},d``, "code emailed by the author"), weighted 0.02;
    this function is the paper's kernel form.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
        gamma: the RBF kernel's ``gamma`` (>= 0). order: ``P``, an int >= 0.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    gamma = _check_number(gamma, "gamma")
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be an int >= 0 (the Taylor order P), got {order!r}")
    return (_cc_correlation(s, gamma, order) - _cc_correlation(t, gamma, order)).square().mean()


def _rkd_inputs(e_s: object, e_t: object) -> tuple[Tensor, Tensor]:
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    if s.shape[0] < 2:
        raise ValueError(
            f"RKD relates samples to each other and needs a batch of at least 2, got e_s shape {_shape(e_s)}"
        )
    return s, t


def _normalized_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over pairs i != j; 0 on the diagonal.

    As RepDistiller: squared distances are clamped at 1e-12 before the square root (so two equal
    embeddings are at distance 1e-6, and the square root has a finite gradient)."""
    squared = e.square().sum(dim=1)
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    batch = e.shape[0]
    d = d.masked_fill(torch.eye(batch, dtype=torch.bool, device=e.device), 0.0)
    return d / (d.sum() / (batch * (batch - 1)))


def _angles(e: Tensor) -> Tensor:
    """``[i, j, k]`` = cosine of the angle at ``e_i`` between ``e_j`` and ``e_k`` (0 when j or k is i)."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [i, j] = (e_j - e_i) / ||e_j - e_i||
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD distance-wise loss (Park et al. 2019), unweighted.

    With ``psi_D(i, j) = ||e_i - e_j||_2 / mu`` and ``mu`` the mean distance over pairs
    ``i != j`` of the batch: ``mean over all B^2 pairs of huber(psi_D^s - psi_D^t)``, where
    ``huber(x) = x^2/2 if |x| < 1 else |x| - 1/2`` (``F.smooth_l1_loss``). The diagonal is 0 on
    both sides. Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    r"""RKD angle-wise loss (Park et al. 2019), unweighted.

    With ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>`` (the cosine of
    the angle at ``e_i``; 0 when ``j = i`` or ``k = i``, as in RepDistiller): ``mean over all B^3
    triplets of huber(psi_A^s - psi_A^t)`` (``F.smooth_l1_loss``). Memory is ``O(B^2 D + B^3)``.
    Needs ``B >= 2``; ``e_t`` is detached. See :func:`rkd_loss`.
    """
    s, t = _rkd_inputs(e_s, e_t)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(e_s: Tensor, e_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    r"""Relational KD: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    W. Park, D. Kim, Y. Lu, M. Cho (2019), "Relational Knowledge Distillation", CVPR. Weights
    25 and 50 are the paper's (and RepDistiller's, mdistiller's). A term with weight 0 is not
    computed.

    Args:
        e_s, e_t: ``(B, D_s)`` and ``(B, D_t)`` embeddings (maps are flattened per sample), ``B >= 2``;
            ``e_t`` is detached.
    """
    distance_weight = _check_number(distance_weight, "distance_weight")
    angle_weight = _check_number(angle_weight, "angle_weight")
    s, t = _rkd_inputs(e_s, e_t)
    loss = s.new_zeros(())
    if distance_weight > 0:
        loss = loss + distance_weight * F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
    if angle_weight > 0:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


def _pkt_conditional(e: Tensor, eps: float) -> Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.T + 1.0) / 2.0  # cosine similarity moved to [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Probabilistic knowledge transfer (PKT): match conditional distributions over the batch.

    N. Passalis, A. Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV. The kernel is the cosine similarity mapped to ``[0, 1]``, turned into
    conditional probabilities row-wise:

    .. math::

        K_{ij} = \frac{1 + \cos(e_i, e_j)}{2},\qquad p_{j|i} = \frac{K_{ij}}{\sum_k K_{ik}},\qquad
        \mathcal{L} = \frac{1}{B^2} \sum_{i,j} p^t_{j|i} \log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    i.e. the KL of each row, summed, divided by ``B^2`` (the mean over the matrix), and
    ``cos(a, b) = a.b / ((||a|| + eps)(||b|| + eps))``, exactly as the authors' code (used by
    RepDistiller with weight 30000). The diagonal ``i = j`` is included, as there.

    Args:
        e_s, e_t: ``(B, D_s)``, ``(B, D_t)`` embeddings (flattened per sample); ``e_t`` detached.
    """
    s, t = _features(e_s, e_t, "e_s", "e_t", "(B, D) embeddings")
    p_s, p_t = _pkt_conditional(s, eps), _pkt_conditional(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _poly2_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).square().mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Neuron selectivity transfer: MMD between the channels' spatial activation patterns.

    Z. Huang, N. Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219. Each channel ``i`` gives a sample ``f_i`` = its ``HW`` spatial
    activations, L2-normalized; with the polynomial kernel ``k(x, y) = (x.y + c)^d``, ``d = 2, c = 0``:

    .. math::

        \mathcal{L} = \overline{k(t_i, t_{i'})} + \overline{k(s_j, s_{j'})} - 2\,\overline{k(s_j, t_i)}

    the squared MMD, where each bar is the mean over the batch and all channel pairs (as
    RepDistiller's ``full_loss``; the teacher-teacher term is a constant that makes equal inputs
    give 0). Channel counts may differ; spatial sizes must match. RepDistiller weighs it by 50.

    Args:
        f_s, f_t: ``(B, C, H, W)`` (or ``(B, C, *spatial)``) feature maps; ``f_t`` is detached.
    """
    s = _check_tensor(f_s, "f_s", "a feature map (B, C, H, W)", 3)
    t = _check_tensor(f_t, "f_t", "a feature map (B, C, H, W)", 3)
    _check_same_batch(s, t, "f_s", "f_t")
    _check_spatial(s, t, "f_s", "f_t")
    s, t = _cast_pair(s, t)
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return _poly2_kernel_mean(t, t) + _poly2_kernel_mean(s, s) - 2 * _poly2_kernel_mean(s, t)


def fsp_matrix(f_a: Tensor, f_b: Tensor) -> Tensor:
    r"""The FSP ("flow of solution procedure") matrix of two layers: ``(B, C_a, C_b)``.

    J. Yim, D. Joo, J. Bae, J. Kim (2017), "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR:

    .. math::

        G_{ij} = \frac{1}{HW} \sum_{h,w} a_{i,h,w}\, b_{j,h,w}

    If the spatial sizes differ, the larger map is average-pooled to the smaller
    (``F.adaptive_avg_pool2d``), as RepDistiller does; a map larger in one dim and smaller in the
    other is an error. Nothing is detached here (use :func:`fsp_loss`). Result float32
    (float64 for float64 ``f_a``).
    """
    a = _check_tensor(f_a, "f_a", "a feature map (B, C, H, W)", 4, 4)
    b = _check_tensor(f_b, "f_b", "a feature map (B, C, H, W)", 4, 4)
    _check_same_batch(a, b, "f_a", "f_b")
    dtype = _compute_dtype(a)
    a, b = a.to(dtype), b.to(dtype)
    size_a, size_b = tuple(a.shape[2:]), tuple(b.shape[2:])
    if size_a != size_b:
        if size_a[0] >= size_b[0] and size_a[1] >= size_b[1]:
            a = F.adaptive_avg_pool2d(a, size_b)
        elif size_b[0] >= size_a[0] and size_b[1] >= size_a[1]:
            b = F.adaptive_avg_pool2d(b, size_a)
        else:
            raise ValueError(
                f"fsp_matrix: f_a spatial size {size_a} and f_b spatial size {size_b} cannot be pooled to a "
                f"common size (one is larger in H, the other in W); pool them yourself first"
            )
    return a.flatten(2) @ b.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def _fsp_pair(pair: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (f_a, f_b) of feature maps, got {type(pair).__name__}")
    return pair[0], pair[1]


def fsp_loss(
    pairs_s: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
    pairs_t: list[tuple[Tensor, Tensor]] | tuple[tuple[Tensor, Tensor], ...],
) -> Tensor:
    r"""FSP loss (Yim et al. 2017): ``sum over pairs of mean((G_s - G_t)^2)``.

    ``G`` is :func:`fsp_matrix` of each pair of layers (e.g. the input and output of a stage).
    Per pair the squared difference is averaged over ``(B, C_a, C_b)``, and the pairs are summed,
    as RepDistiller does (the paper: ``1/N sum_x sum_i lambda_i ||G_i^t - G_i^s||_2^2`` with equal
    ``lambda_i``: the same up to a constant per pair). The teacher's maps are detached. Student
    and teacher layers of a pair must have the same channel counts (FSP has no connector).

    Args:
        pairs_s: sequence of ``(f_a, f_b)`` student feature-map pairs, each ``(B, C, H, W)``.
        pairs_t: the teacher's pairs, same length and channel counts.
    """
    if not isinstance(pairs_s, (list, tuple)) or not isinstance(pairs_t, (list, tuple)):
        raise TypeError(
            f"pairs_s and pairs_t must be lists of (f_a, f_b) pairs, got {type(pairs_s).__name__} "
            f"and {type(pairs_t).__name__}"
        )
    if len(pairs_s) != len(pairs_t) or not pairs_s:
        raise ValueError(
            f"pairs_s and pairs_t must hold the same number (>= 1) of pairs, got {len(pairs_s)} and {len(pairs_t)}"
        )
    total: Tensor | None = None
    for i, (pair_s, pair_t) in enumerate(zip(pairs_s, pairs_t)):
        g_s = fsp_matrix(*_fsp_pair(pair_s, f"pairs_s[{i}]"))
        a_t, b_t = _fsp_pair(pair_t, f"pairs_t[{i}]")
        g_t = fsp_matrix(a_t.detach(), b_t.detach()).to(g_s.dtype)
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"pair {i}: student FSP matrix {_shape(g_s)} and teacher FSP matrix {_shape(g_t)} differ; "
                f"FSP needs the same batch and channel counts (B, C_a, C_b) in student and teacher"
            )
        term = (g_s - g_t).square().mean()
        total = term if total is None else total + term
    assert total is not None
    return total


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, p: float = 1.0) -> Tensor:
    r"""Factor transfer (FT): distance between L2-normalized factors.

    J. Kim, S. Park, N. Kwak (2018), "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS. ``factor_t`` is the teacher's paraphraser output, ``factor_s`` the
    student's translator output (both trained modules are the objective's):

    .. math::

        \mathcal{L} = \frac{1}{B D} \sum_{b,d} \Big|\frac{F_s^{(b)}}{\|F_s^{(b)}\|_2}
                      - \frac{F_t^{(b)}}{\|F_t^{(b)}\|_2}\Big|_d^{\,p}

    with ``F`` flattened per sample to ``D`` values; ``p = 1`` as in the paper. This is the
    authors' code (``nn.L1Loss`` on ``F.normalize(x.view(B, -1))``, weight 500 there): the mean
    over elements, not the paper's per-sample norm sum (a constant factor). RepDistiller's
    ``FactorTransfer`` instead compares channel-mean-squared ("attention") maps of the factors;
    this function follows the paper and the authors.

    Args:
        factor_s, factor_t: ``(B, ...)`` factors with the same number of values per sample;
            ``factor_t`` is detached.
        p: the exponent (> 0).
    """
    s = _check_tensor(factor_s, "factor_s", "(B, ...) factors", 2)
    t = _check_tensor(factor_t, "factor_t", "(B, ...) factors", 2)
    _check_same_batch(s, t, "factor_s", "factor_t")
    if s[0].numel() != t[0].numel():
        raise ValueError(
            f"factor_s shape {_shape(s)} and factor_t shape {_shape(t)} must have the same number of values per "
            f"sample (the translator's output matches the paraphraser's factor)"
        )
    p = _check_number(p, "p", positive=True)
    s, t = _cast_pair(s, t)
    diff = F.normalize(s.flatten(1), dim=1) - F.normalize(t.flatten(1), dim=1)
    return diff.abs().pow(p).mean()


def vid_loss(f_s_mapped: Tensor, f_t: Tensor, raw_variance: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Variational information distillation (VID): Gaussian negative log-likelihood of the teacher.

    S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai (2019), "Variational Information
    Distillation for Knowledge Transfer", CVPR. The student predicts the mean ``mu`` of a Gaussian
    over the teacher's features (``f_s_mapped``, the output of the objective's regressor); the
    variance is one learned value per channel, parameterized by a raw parameter ``alpha_c``:

    .. math::

        \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon,\qquad
        \mathcal{L} = \mathrm{mean}_{b,c,h,w}\ \frac12\Big(\frac{(t_{b,c,h,w} - \mu_{b,c,h,w})^2}{\sigma_c^2}
                      + \log \sigma_c^2\Big)

    (the constant ``log(2 pi)/2`` dropped). The mean over all elements is the authors' code
    (used by RepDistiller and mdistiller with weight 1); ``eps = 1e-5`` as there. The objective
    initializes ``alpha_c`` so that ``sigma_c^2 = 5`` (``alpha = log(exp(5 - eps) - 1)``).

    Args:
        f_s_mapped: ``(B, C, ...)`` predicted mean (gradients flow here).
        f_t: the teacher's features, same shape (detached).
        raw_variance: ``(C,)`` the raw parameter ``alpha`` (gradients flow here): **not** a log
            variance; the variance is ``softplus(alpha) + eps``.
    """
    mu = _check_tensor(f_s_mapped, "f_s_mapped", "(B, C, ...) predicted means", 2)
    t = _check_tensor(f_t, "f_t", "(B, C, ...) teacher features", 2)
    _check_equal_shapes(mu, t, "f_s_mapped", "f_t", " (regress the student's features to the teacher's shape first)")
    alpha = _check_tensor(raw_variance, "raw_variance", "(C,) one raw variance parameter per channel", 1, 1)
    if alpha.shape[0] != mu.shape[1]:
        raise ValueError(
            f"raw_variance shape {_shape(alpha)} must be (C,) with C = {mu.shape[1]} channels of f_t shape {_shape(t)}"
        )
    mu, t = _cast_pair(mu, t)
    variance = F.softplus(alpha.to(mu.dtype)) + eps
    variance = variance.view(1, -1, *([1] * (mu.dim() - 2)))
    return 0.5 * ((t - mu).square() / variance + variance.log()).mean()


def ab_loss(f_s: Tensor, f_t: Tensor, margin: float = 1.0) -> Tensor:
    r"""Activation-boundary (AB) loss: the squared-hinge approximation, for one layer.

    B. Heo, M. Lee, S. Yun, J. Y. Choi (2019), "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI. The student learns which neurons the teacher
    activates (sign of the pre-ReLU response), with margin ``m``:

    .. math::

        \mathcal{L} = \frac1B \sum \Big[(s + m)^2\,\mathbb 1[s > -m]\,\mathbb 1[t \le 0]
                      + (s - m)^2\,\mathbb 1[s \le m]\,\mathbb 1[t > 0]\Big]

    summed over all neurons (channels and positions) and averaged over the batch. Both inputs
    are **pre-activation** responses: tap the *input* of the ReLU (the student's through the
    objective's connector). RepDistiller additionally scales layer ``i`` of ``n`` by
    ``2^(i - n + 1)`` and everything by ``3/1000``; those weights are the objective's. Margin 1
    as in the paper and the authors' code.

    Args:
        f_s: ``(B, ...)`` student pre-ReLU responses (after the connector).
        f_t: the teacher's, same shape (detached; only its sign is used).
    """
    s = _check_tensor(f_s, "f_s", "(B, ...) pre-activation features", 1)
    t = _check_tensor(f_t, "f_t", "(B, ...) pre-activation features", 1)
    _check_equal_shapes(s, t, "f_s", "f_t", " (map the student's features with a connector first)")
    margin = _check_number(margin, "margin")
    s, t = _cast_pair(s, t)
    teacher_on = t > 0
    loss = torch.where(teacher_on, (s - margin).square() * (s <= margin), (s + margin).square() * (s > -margin))
    return loss.sum() / s.shape[0]


def crd_nce_loss(
    positive_scores: Tensor,
    negative_scores: Tensor,
    num_data: int | None = None,
    temperature: float = 0.07,
    *,
    normalizer: float | Tensor | None = None,
    mode: str = "nce",
    eps: float = 1e-7,
) -> Tensor:
    r"""Contrastive representation distillation (CRD): the contrastive loss of one anchor side.

    Y. Tian, D. Krishnan, P. Isola (2020), "Contrastive Representation Distillation", ICLR.
    Inputs are similarity scores ``s = <g(x), m>`` of unit-norm embeddings: for each anchor, one
    positive (the other network's memory entry for the same sample) and ``K`` negatives.

    ``mode="nce"`` (the paper's Eq. 18, as RepDistiller's ``ContrastLoss``): with
    ``P = exp(s / T) / Z`` and noise ``P_n = 1 / N`` (``N = num_data``, the dataset size),

    .. math::

        \mathcal{L} = -\frac1B \sum_b \Big[\log\frac{P_{b,0}}{P_{b,0} + K P_n + \epsilon}
                      + \sum_{k=1}^{K} \log\frac{K P_n}{P_{b,k} + K P_n + \epsilon}\Big]

    ``Z`` is the reference's Monte-Carlo estimate of the partition function,
    ``Z = N * mean(exp(s / T))`` over all ``B (K + 1)`` scores of the **first** batch, then held
    fixed for the whole run. Pass that constant as ``normalizer`` to reproduce the reference; with
    ``normalizer=None`` it is estimated (detached) from this batch.

    ``mode="softmax"``: InfoNCE, ``CE([s_0, s_1, ..., s_K] / T, target 0)`` averaged over
    anchors (CMC's ``NCESoftmaxLoss``); ``Z`` and ``N`` do not enter.

    CRD sums this loss for both anchor sides (student embedding against the teacher memory and
    vice versa). Nothing is detached here: the teacher-side embedding head is trained too; the
    memory bank, its momentum update and negative sampling (``K = 16384``, and the dataset's
    "exact"/"relax" choice of positives) are the objective's job. ``T = 0.07`` and
    ``eps = 1e-7`` are the reference's; RepDistiller weighs the sum by 0.8.

    Args:
        positive_scores: ``(B,)`` scores of the positive pairs.
        negative_scores: ``(B, K)`` scores of the negative pairs, ``K >= 1``.
        num_data: ``N``, the number of training samples (required for ``mode="nce"``).
        temperature: ``T > 0``.
        normalizer: ``Z > 0`` (``mode="nce"`` only).
        mode: ``"nce"`` or ``"softmax"``.
    """
    pos = _check_tensor(positive_scores, "positive_scores", "(B,) scores of the positive pairs", 1, 1)
    neg = _check_tensor(negative_scores, "negative_scores", "(B, K) scores of the negative pairs", 2, 2)
    if neg.shape[0] != pos.shape[0] or neg.shape[1] < 1:
        raise ValueError(
            f"negative_scores must be (B, K) with K >= 1 and the B = {pos.shape[0]} of positive_scores "
            f"shape {_shape(pos)}, got shape {_shape(neg)}"
        )
    temperature = _check_temperature(temperature)
    dtype = _compute_dtype(pos)
    scores = torch.cat([pos.to(dtype)[:, None], neg.to(dtype)], dim=1) / temperature  # (B, 1 + K), positive first
    if mode == "softmax":
        return -F.log_softmax(scores, dim=1)[:, 0].mean()
    if mode != "nce":
        raise ValueError(f"mode must be 'nce' or 'softmax', got {mode!r}")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"mode='nce' needs num_data, the number of training samples (an int >= 1), got {num_data!r}")
    if normalizer is None:
        # log Z = log N + log mean exp(s / T), estimated from this batch and treated as a constant
        log_z = math.log(num_data) + torch.logsumexp(scores.detach().flatten(), dim=0) - math.log(scores.numel())
    else:
        z = torch.as_tensor(normalizer, dtype=dtype, device=scores.device).detach()
        if z.numel() != 1 or not bool(z > 0):
            raise ValueError(f"normalizer Z must be a single number > 0, got {normalizer!r}")
        log_z = z.log().reshape(())
    num_negatives = neg.shape[1]
    noise = num_negatives / num_data  # K * P_n
    log_p = scores - log_z  # log P = s / T - log Z
    log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, math.log(noise + eps)))  # log(P + K Pn + eps)
    log_d_positive = log_p[:, 0] - log_denominator[:, 0]
    log_d_negative = math.log(noise) - log_denominator[:, 1:]
    return -(log_d_positive.sum() + log_d_negative.sum()) / pos.shape[0]


def hcl_loss(
    features_s: Tensor | list[Tensor] | tuple[Tensor, ...],
    features_t: Tensor | list[Tensor] | tuple[Tensor, ...],
    levels: tuple[int, ...] = (4, 2, 1),
) -> Tensor:
    r"""ReviewKD's hierarchical context loss (HCL), summed over pairs of feature maps.

    P. Chen, S. Liu, H. Zhao, J. Jia (2021), "Distilling Knowledge via Knowledge Review", CVPR.
    For one pair, the MSE at full resolution and after average-pooling both maps to each
    ``l x l`` of ``levels``, with weights halving at each level, normalized by their sum:

    .. math::

        \mathcal{L} = \frac{\mathrm{MSE}(s, t) + \sum_k 2^{-k}\,\mathrm{MSE}(\mathrm{pool}_{l_k}(s),
                      \mathrm{pool}_{l_k}(t))}{1 + \sum_k 2^{-k}}

    where levels with ``l >= min(H, W)`` are skipped and ``k`` counts only the levels kept (for
    square maps this is the reference rule ``l >= h``; a ``1 x 1`` map gives the plain MSE).
    MSE is the mean over elements; pairs are summed, as in the reference (ReviewKD's code and
    mdistiller, weight 1 with a 20-epoch warm-up done by the objective). The student maps are the
    outputs of ReviewKD's fusion modules (the objective's).

    Args:
        features_s, features_t: a ``(B, C, H, W)`` map or a sequence of them, pairwise the same
            shape; the teacher's are detached.
        levels: pooled sizes, positive ints, in the order their weights halve.
    """
    list_s = [features_s] if isinstance(features_s, Tensor) else features_s
    list_t = [features_t] if isinstance(features_t, Tensor) else features_t
    if not isinstance(list_s, (list, tuple)) or not isinstance(list_t, (list, tuple)):
        raise TypeError("features_s and features_t must be (B, C, H, W) tensors or lists of them")
    if len(list_s) != len(list_t) or not list_s:
        raise ValueError(
            f"features_s and features_t must hold the same number (>= 1) of maps, got {len(list_s)} and {len(list_t)}"
        )
    if any(isinstance(level, bool) or not isinstance(level, int) or level < 1 for level in levels):
        raise ValueError(f"levels must be positive ints (pooled sizes), got {levels!r}")
    total: Tensor | None = None
    for i, (f_s, f_t) in enumerate(zip(list_s, list_t)):
        s = _check_tensor(f_s, f"features_s[{i}]", "a feature map (B, C, H, W)", 4, 4)
        t = _check_tensor(f_t, f"features_t[{i}]", "a feature map (B, C, H, W)", 4, 4)
        _check_equal_shapes(s, t, f"features_s[{i}]", f"features_t[{i}]")
        s, t = _cast_pair(s, t)
        loss, weight, weight_sum = F.mse_loss(s, t), 1.0, 1.0
        for level in levels:
            if level >= min(s.shape[2], s.shape[3]):
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            weight_sum += weight
        term = loss / weight_sum
        total = term if total is None else total + term
    assert total is not None
    return total


def simkd_loss(f_s_projected: Tensor, f_t: Tensor) -> Tensor:
    r"""SimKD's feature loss: ``mean((f_s_projected - f_t)^2)``, the mean over all elements.

    D. Chen, J.-P. Mei, H. Zhang, C. Wang, Y. Feng, C. Chen (2022), "Knowledge Distillation with
    the Reused Teacher Classifier", CVPR. ``f_s_projected`` is the student's final feature map
    after the objective's projector, ``f_t`` the teacher's final feature map (same shape;
    detached). Matches the reference (``nn.MSELoss``, weight 1, no cross-entropy); predicting with
    the reused teacher classifier is the objective's job.
    """
    hint = " (project the student's features to the teacher's shape first)"
    return _mse(f_s_projected, f_t, "f_s_projected", "f_t", hint)


def fitnet_loss(f_s_mapped: Tensor, f_t: Tensor) -> Tensor:
    r"""FitNets hint loss: ``mean((f_s_mapped - f_t)^2)``, the mean over all elements.

    A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio (2015), "FitNets: Hints
    for Thin Deep Nets", ICLR. The paper writes ``1/2 ||u_h - r(v_g)||^2`` (a sum over the
    elements of each sample); this is the normalization of the reference implementations
    (RepDistiller's ``HintLoss`` = ``nn.MSELoss()``, mdistiller's ``F.mse_loss``): the mean over
    all elements, without the 1/2, so that their published weight (100 on CIFAR-100) carries
    over unchanged and the loss does not grow with the size of the hint layer. It is
    ``2 / (numel / B)`` times the paper's per-sample value averaged over the batch.

    Args:
        f_s_mapped: the student's guided-layer features after the objective's regressor.
        f_t: the teacher's hint-layer features, same shape (detached).
    """
    return _mse(f_s_mapped, f_t, "f_s_mapped", "f_t", " (map the student's features with a regressor first)")
