"""CRD (Tian et al. 2020): the NCE loss against numpy, the objective and its memory, and learning."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import crd_nce_loss
from distill.objectives import CRD
from distill.objectives.base import StepOutputs
from distill.teachers import Targets

from ._objectives import allclose, batch, cnn_teacher_mlp_student, make_method, step
from ._reference import close, make, to_np


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


def test_crd_dtypes():
    pos, neg = make((4,), 0).to(torch.bfloat16), make((4, 3), 1).to(torch.bfloat16)
    assert crd_nce_loss(pos, neg, 10).dtype == torch.float32
    assert crd_nce_loss(pos.double(), neg.double(), 10, mode="softmax").dtype == torch.float64


def test_crd_scores_both_sides_against_the_memory_and_updates_it():
    teacher, student = cnn_teacher_mlp_student()
    x, y = batch(8)
    crd = CRD(num_data=8, nce_k=4, feat_dim=6, momentum=0.5)
    contrast = torch.tensor([[i, (i + 1) % 8, (i + 2) % 8, (i + 3) % 8, (i + 5) % 8] for i in range(8)])
    crd.sample = lambda index, labels: contrast  # fixed draws, to compute by hand
    crd.setup(student, teacher, x[:2])
    memory_s, memory_t = crd.memory_student.clone(), crd.memory_teacher.clone()
    terms, out = step(crd, student, teacher, x, y)
    g_s = F.normalize(crd.embed_student(out.features["s0"]), dim=1)
    g_t = F.normalize(crd.embed_teacher(out.teacher.features["t0"]), dim=1)
    expected = 0.0
    for anchors, memory in ((g_s, memory_t), (g_t, memory_s)):
        scores = (memory[contrast] * anchors[:, None, :]).sum(-1)  # (B, 1 + K)
        z = 8 * torch.exp(scores / 0.07).mean()  # the reference's Z from the first batch
        expected = expected + DF.crd_nce_loss(scores[:, 0], scores[:, 1:], 8, 0.07, normalizer=z)
    assert allclose(terms["crd"], expected)
    assert crd.weights == {"ce": 1.0, "kd": 0.0, "crd": 0.8}
    assert torch.allclose(crd.memory_student, F.normalize(0.5 * memory_s + 0.5 * g_s.detach(), dim=1))
    assert torch.allclose(crd.memory_teacher, F.normalize(0.5 * memory_t + 0.5 * g_t.detach(), dim=1))
    assert crd.memory_labels.tolist() == y.tolist()


def test_crd_follows_float64_models_and_gives_the_float32_loss():
    """A float64 student and teacher get a float64 memory bank, heads and loss (issue 11 item 16), equal
    to the float32 run on the same tiny problem; an objective moved with .to(float64) works too."""
    teacher, student = cnn_teacher_mlp_student()
    x, y = batch(8)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        t, s = copy.deepcopy(teacher).to(dtype), copy.deepcopy(student).to(dtype)
        torch.manual_seed(0)  # the same memory bank, heads and draws for both dtypes
        crd, s = make_method("crd", s, t, x.to(dtype))
        terms, out = step(crd, s, t, x.to(dtype), y)
        loss = crd.total(terms)
        loss.backward()
        runs[dtype] = (terms["crd"].detach(), crd.memory_teacher.clone(), crd.embed_student.weight.grad)
        tensors = [crd.memory_student, crd.memory_teacher, crd.normalizers, crd.embed_student.weight,
                   crd.embed_teacher.bias, terms["crd"], crd.embed_student.weight.grad]
        assert {v.dtype for v in tensors} == {dtype} and crd.memory_labels.dtype == torch.long
        assert next(s.parameters()).grad.dtype == dtype
    for single, double in zip(runs[torch.float32], runs[torch.float64]):
        torch.testing.assert_close(double.float(), single, rtol=1e-5, atol=1e-5)

    moved = CRD(num_data=8, nce_k=4, feat_dim=6).to(torch.float64)  # the user's own .to(dtype)
    terms, _ = step(moved, copy.deepcopy(student).double(), copy.deepcopy(teacher).double(), x.double(), y)
    assert terms["crd"].dtype == torch.float64 and torch.isfinite(terms["crd"])
    kept = CRD(num_data=8, nce_k=4, feat_dim=6).to(torch.float64)  # float32 models: the bank is not downcast
    terms, _ = step(kept, copy.deepcopy(student), copy.deepcopy(teacher), x, y)
    assert kept.memory_student.dtype == torch.float64 and terms["crd"].dtype == torch.float64


def test_crd_draws_positives_and_negatives_on_the_device_by_class():
    crd = CRD(num_data=40, nce_k=64, mode="exact")
    crd.memory_labels.copy_(torch.arange(40) % 4)
    index, labels = torch.tensor([0, 5, 10]), torch.tensor([0, 1, 2])
    drawn = crd.sample(index, labels)
    assert drawn.shape == (3, 65) and drawn[:, 0].tolist() == [0, 5, 10]  # exact: the example itself
    assert ((crd.memory_labels[drawn[:, 1:]]) != labels[:, None]).all()  # negatives: other classes only
    relax = CRD(num_data=40, nce_k=8, mode="relax")
    relax.memory_labels.copy_(torch.arange(40) % 4)
    positives = torch.cat([relax.sample(index, labels)[:, 0] for _ in range(20)])
    assert (relax.memory_labels[positives] == labels.repeat(20)).all()  # relax: any example of its class
    assert len(set(positives.tolist())) > 3
    with pytest.raises(ValueError, match="mode must be 'exact'.*or 'relax'"):
        CRD(num_data=40, mode="nearest")


def test_crd_learns_to_align_the_two_sides_on_informative_features():
    """CRD's contrastive term falls far below its chance value (about 2 (log(K + 1) + 1)) when the
    features tell the examples apart. (On digits, with tiny networks whose post-ReLU embeddings
    share a large common component, it needs far more than a few epochs: see the run below.)"""
    torch.manual_seed(0)
    n = 128
    f_t = torch.randn(n, 32)
    f_s = f_t + 0.1 * torch.randn(n, 32)
    labels = torch.arange(n) % 10
    crd = CRD(num_data=n, nce_k=32, feat_dim=16, ce_weight=0.0)
    crd.pairs = [("s", "t")]
    crd.build([(32,)], [(32,)])
    optimizer = torch.optim.SGD(crd.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(12):
        for index in torch.randperm(n).split(32):
            out = StepOutputs(logits=torch.zeros(len(index), 10), labels=labels[index], index=index,
                              features={"s0": f_s[index]},
                              teacher=Targets(logits=torch.zeros(len(index), 10), features={"t0": f_t[index]}))
            loss = crd.total(crd(out))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
    chance = 2 * (math.log(33) + 1)
    assert history[0] > 0.8 * chance and sum(history[-4:]) / 4 < chance / 3
