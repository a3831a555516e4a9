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
each follows are in its docstring), each defined in its method's module of :mod:`distill.methods`
and re-exported here. Their trainable parts (connectors, VID's variance, FT's
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
      mlkd_terms           = sum_T (T^2 mean_i KL(P_t,i || P_s,i),  ||P_s P_s' - P_t P_t'||^2 / B,
                                    ||P_s' P_s - P_t' P_t||^2 / C),  P = softmax(Z / T), T in 2..6
      ctkd_loss            = T^2 KL(softmax(v / T) || softmax(z / T)), T a tensor with gradients (CTKD's
                             learned temperature, T = t0 + r sigmoid(theta), theta behind a gradient reversal)
      wttm_loss            = mean_i U_i KL(q_t,i || softmax(z_i)),  q_t = p_t^g / U,  U = sum_c p_t,c^g,
                             p_t = softmax(v)   (TTM: without U_i)

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

from distill.methods._functional import kl_divergence_with_temperature, soft_cross_entropy, softmax_with_temperature
from distill.methods.ab import ab_loss
from distill.methods.at import attention_transfer_loss
from distill.methods.cc import correlation_congruence_loss
from distill.methods.crd import crd_nce_loss
from distill.methods.ctkd import ctkd_loss
from distill.methods.dist import dist_loss
from distill.methods.dkd import dkd_loss, dkd_terms
from distill.methods.fitnets import fitnet_loss
from distill.methods.fsp import fsp_loss, fsp_matrix
from distill.methods.ft import factor_transfer_loss
from distill.methods.kd import kd_loss, topk_kd_loss
from distill.methods.logit_matching import logit_matching_loss
from distill.methods.mlkd import mlkd_loss, mlkd_terms
from distill.methods.nst import nst_loss
from distill.methods.pkt import pkt_loss
from distill.methods.reviewkd import hcl_loss
from distill.methods.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from distill.methods.simkd import simkd_loss
from distill.methods.sp import similarity_preserving_loss
from distill.methods.standardized_kd import standardized_kd_loss, zscore_logits
from distill.methods.vid import vid_loss
from distill.methods.wttm import wttm_loss

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
    "mlkd_terms",
    "mlkd_loss",
    "ctkd_loss",
    "wttm_loss",
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
