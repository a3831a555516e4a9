"""ReviewKD (Chen et al. 2021): the HCL loss against numpy, and the objective."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.functional import hcl_loss
from distill.objectives import ReviewKD

from ._objectives import allclose, batch, step, wide_cnn_teacher_resnet_student
from ._reference import block_pool, close, make, to_np


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


def test_reviewkd_fuses_from_the_deepest_level_and_warms_up():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    review = ReviewKD()
    terms, out = step(review, student, teacher, x, y, epoch=5.0)
    assert review.pairs == [("layer1", "stages.0"), ("layer2", "stages.1"), ("layer3", "stages.2.relu:input"),
                            ("classifier:input", "classifier:input")]  # teacher: pre-activations, as mdistiller

    def fusion(module, x, deeper, out_size):  # mdistiller's ABF, written out
        x = module.conv1(x)
        if deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[2:], mode="nearest")
            z = module.att_conv(torch.cat([x, deeper], dim=1))
            x = x * z[:, 0:1] + deeper * z[:, 1:2]
        x = F.interpolate(x, size=out_size, mode="nearest") if tuple(x.shape[2:]) != out_size else x
        return module.conv2(x), x

    student_maps = [out.features[f"s{i}"] for i in range(3)] + [out.features["s3"][:, :, None, None]]
    teacher_maps = [out.teacher.features[f"t{i}"] for i in range(3)] + [out.teacher.features["t3"][:, :, None, None]]
    results, deeper = [None] * 4, None
    for i in (3, 2, 1, 0):
        results[i], deeper = fusion(review.fusions[i], student_maps[i], deeper, tuple(teacher_maps[i].shape[2:]))
    assert review.fusions[3].att_conv is None and review.fusions[0].att_conv is not None
    assert allclose(terms["reviewkd"], 5 / 20 * DF.hcl_loss(results, teacher_maps))
