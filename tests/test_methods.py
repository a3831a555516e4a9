"""The method zoo (distill.objectives.methods): every method as an objective.

For each method: (1) its terms equal an independent computation from the tapped tensors (the
functional loss, already tested, called on features pooled and mapped by hand), with the right
weights; (2) gradients reach every trainable parameter it owns and the student, never the
teacher; (3) it works for two unlike pairs (a CNN teacher with an MLP student, and a wider CNN
teacher with a ResNet student of other channel counts and spatial sizes); (4) a short run of
``distill.fit`` on digits, against the same student trained without a teacher.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import functional as DF
from distill.config import TrainConfig
from distill.engine import evaluate, fit
from distill.models import create_model
from distill.objectives import (
    CRD,
    DIST,
    FSP,
    METHODS,
    NST,
    PKT,
    RKD,
    VID,
    ActivationBoundaries,
    AttentionTransfer,
    CorrelationCongruence,
    CrossEntropy,
    DecoupledKD,
    FactorTransfer,
    FactorTransferParaphraser,
    FitNets,
    KnowledgeDistillation,
    ReviewKD,
    SimilarityPreserving,
    SimKD,
    SimKDStudent,
    StandardizedKD,
    build_method,
    method_options,
)
from distill.objectives.base import StepOutputs
from distill.taps import run_with_taps
from distill.teachers import FrozenTeacher, Targets

DIGITS = (1, 8, 8)


def cnn_teacher_mlp_student() -> tuple[nn.Module, nn.Module]:
    """Features of different rank: teacher maps (16, 4, 4), (32, 2, 2); student vectors (24,), (16,)."""
    return (create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=32),
            create_model("mlp", 10, DIGITS, hidden=[24, 16]))


def wide_cnn_teacher_resnet_student() -> tuple[nn.Module, nn.Module]:
    """Teacher stages (24, 4, 4), (48, 2, 2), (64, 2, 2); student (16, 8, 8), (32, 4, 4), (64, 2, 2)."""
    return (create_model("cnn", 10, DIGITS, channels=(24, 48, 64), hidden=0),
            create_model("resnet8", 10, DIGITS))


PAIRS = {"cnn->mlp": cnn_teacher_mlp_student, "wide cnn->resnet8": wide_cnn_teacher_resnet_student}
ZOO = [name for name in METHODS if name != "ce"]


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *DIGITS, generator=g), torch.arange(n) % 10


def make(name: str, student: nn.Module, teacher: nn.Module, x: torch.Tensor, **options):
    """``(objective, model to train)`` for method ``name``: CRD sized for the batch, FT after its
    paraphraser stage's setup, SimKD with its wrapped student."""
    if name == "crd":
        options = {"num_data": len(x), "nce_k": 12, "feat_dim": 16, **options}
    if name == "ft":
        first = FactorTransferParaphraser()
        first.setup(student, teacher, x[:2])
        options = {"paraphraser": first, **options}
    if name == "simkd":
        student = SimKDStudent(student, teacher, x[:2])
    return build_method(name, **options), student


def step(objective, student: nn.Module, teacher: nn.Module, x, y, *, epoch: float = 100.0):
    """setup, then one step's terms with the features tapped as the engine taps them. The teacher
    runs with gradients enabled, so a term that failed to detach it would reach its parameters."""
    objective.setup(student, teacher, x[:2])
    teacher.eval()
    if objective.teacher_features:
        t_logits, t_features = run_with_taps(teacher, x, objective.teacher_features)
    else:
        t_logits, t_features = teacher(x), None
    if objective.student_features:
        logits, features = run_with_taps(student, x, objective.student_features)
    else:
        logits, features = student(x), {}
    out = StepOutputs(logits=logits, labels=y, index=torch.arange(len(y)), epoch=epoch, features=features,
                      teacher=Targets(logits=t_logits, features=t_features))
    return objective(out), out


def pool(x: torch.Tensor, size) -> torch.Tensor:
    return x if tuple(x.shape[2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def close(a, b) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-6)


# ================================================================ (1) each method's terms, by hand


def test_logit_methods_match_the_functional_losses_with_their_weights():
    z, v, y = torch.randn(8, 10), torch.randn(8, 10), torch.arange(8)
    out = StepOutputs(logits=z, labels=y, index=torch.arange(8), teacher=Targets(logits=v), epoch=5.0)

    dkd = DecoupledKD()  # mdistiller: CE 1, alpha 1, beta 8, T 4, warm-up 20 epochs
    assert dkd.weights == {"ce": 1.0, "tckd": 1.0, "nckd": 8.0}
    terms = dkd(out)
    tckd, nckd = DF.dkd_terms(z, v, y, 4.0)
    assert close(terms["tckd"], 5 / 20 * tckd) and close(terms["nckd"], 5 / 20 * nckd)
    assert close(dkd.total(terms), F.cross_entropy(z, y) + 0.25 * DF.dkd_loss(z, v, y, 1.0, 8.0, 4.0))
    assert close(dkd(StepOutputs(z, y, torch.arange(8), Targets(logits=v), epoch=40.0))["nckd"], nckd)

    dist = DIST(inter_weight=2.0, intra_weight=3.0, temperature=4.0)
    assert close(dist.total(dist(out)), F.cross_entropy(z, y) + DF.dist_loss(z, v, 2.0, 3.0, 4.0))

    std = StandardizedKD()  # the authors': CE 0.1, KD 9, base temperature 2
    terms = std(out)
    expected = 0.1 * F.cross_entropy(z, y) + 9.0 * DF.kd_loss(DF.zscore_logits(z), DF.zscore_logits(v), 2.0)
    assert close(std.total(terms), expected)


def test_fitnets_hints_the_middle_stages_through_a_learned_regressor():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fitnets = FitNets()
    terms, out = step(fitnets, student, teacher, x, y)
    assert fitnets.pairs == [("layer2", "stages.1")]  # RepDistiller's hint_layer=2: the second stage
    assert fitnets.weights == {"ce": 1.0, "kd": 0.0, "hint": 100.0}
    regressor = fitnets.connectors[0]  # student (32, 4, 4) pooled to (2, 2), 3x3 conv + BN to 48 channels
    f_s, f_t = out.features["s0"], out.teacher.features["t0"]
    assert close(terms["hint"], F.mse_loss(regressor(pool(f_s, (2, 2))), f_t))
    assert close(terms["ce"], F.cross_entropy(out.logits, y))

    hint_only = FitNets(hint_only=True)  # the paper's first stage: the hint alone
    terms, _ = step(hint_only, student, teacher, x, y)
    assert set(terms) == {"hint"} and hint_only.weights["hint"] == 1.0


def test_attention_transfer_and_nst_sum_over_every_pair_of_stages_pooled_to_the_smaller_map():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    for objective, loss in ((AttentionTransfer(p=2.0), DF.attention_transfer_loss), (NST(), DF.nst_loss)):
        terms, out = step(objective, student, teacher, x, y)
        assert objective.pairs == [("layer1", "stages.0"), ("layer2", "stages.1"), ("layer3", "stages.2")]
        expected = 0.0
        for i in range(3):
            f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
            size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
            expected = expected + loss(pool(f_s, size), pool(f_t, size))
        name = objective.term_names[0]
        assert close(terms[name], expected)
    assert AttentionTransfer().weights["at"] == 1000.0 and NST().weights["nst"] == 50.0


def test_attention_transfer_maps_an_mlp_students_vector_to_the_teachers_map_shape():
    teacher, student = cnn_teacher_mlp_student()
    x, y = batch()
    at = AttentionTransfer(student_layers=["hidden.relu2"])
    terms, out = step(at, student, teacher, x, y)
    assert at.pairs == [("hidden.relu2", "stages.1")]  # one student layer: paired with the teacher's deepest
    mapped = at.connectors[0](out.features["s0"])
    assert mapped.shape[1:] == (32, 2, 2)
    assert close(terms["at"], DF.attention_transfer_loss(mapped, out.teacher.features["t0"]))
    teacher_vector = AttentionTransfer(teacher_layers=["classifier:input"])
    with pytest.raises(ValueError, match=r"AT compares spatial maps.*'classifier:input'.*\(32,\)"):
        step(teacher_vector, student, teacher, x, y)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_relation_methods_compare_the_batch_relations_of_the_tapped_features(pair):
    teacher, student = PAIRS[pair]()
    x, y = batch()
    sp = SimilarityPreserving()
    terms, out = step(sp, student, teacher, x, y)
    assert sp.pairs[0][1] == teacher.feature_stages[-1]  # RepDistiller's feat[-2]: the last stage
    assert close(terms["sp"], DF.similarity_preserving_loss(out.features["s0"], out.teacher.features["t0"]))

    rkd = RKD()
    terms, out = step(rkd, student, teacher, x, y)
    e_s, e_t = out.features["s0"], out.teacher.features["t0"]
    assert rkd.pairs == [("classifier:input", "classifier:input")]
    assert close(rkd.total(terms), F.cross_entropy(out.logits, y) + DF.rkd_loss(e_s, e_t, 25.0, 50.0))

    pkt = PKT()
    terms, out = step(pkt, student, teacher, x, y)
    assert close(terms["pkt"], DF.pkt_loss(out.features["s0"], out.teacher.features["t0"]))
    assert pkt.weights["pkt"] == 30000.0

    cc = CorrelationCongruence()
    terms, out = step(cc, student, teacher, x, y)
    e_s, e_t = out.features["s0"], out.teacher.features["t0"]
    if e_s.shape[1] == e_t.shape[1]:
        assert isinstance(cc.connectors[0], nn.Identity)
    else:  # the MLP's 24 dims to the teacher's 32 by a learned linear embedding
        assert isinstance(cc.connectors[0], nn.Linear) and cc.connectors[0].out_features == e_t.shape[1]
    assert close(terms["cc"], DF.correlation_congruence_loss(cc.connectors[0](e_s), e_t, 0.4, 2))


def test_vid_owns_regressors_and_a_per_channel_variance_parameter():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    vid = VID()
    terms, out = step(vid, student, teacher, x, y)
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        mu, target = vid.regressors[i](pool(f_s, size)), pool(f_t, size)
        variance = F.softplus(vid.raw_variances[i]) + 1e-5
        assert torch.allclose(variance, torch.full_like(variance, 5.0))  # initialized to sigma^2 = 5
        nll = 0.5 * ((target - mu) ** 2 / variance.view(1, -1, 1, 1) + variance.log().view(1, -1, 1, 1))
        expected = expected + nll.mean()
    assert close(terms["vid"], expected)


def test_vid_variance_reaches_the_optimizer_and_gets_gradients(digits_splits):
    """RepDistiller's VID keeps its variance in a criterion the optimizer may never see; here it is
    a parameter of the objective, so ``fit`` optimizes it."""
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    vid = VID(ce_weight=0.0)
    terms, _ = step(vid, student, teacher, x, y)
    owned = {id(p) for p in vid.parameters()}
    assert all(id(p) in owned for p in vid.raw_variances)
    vid.total(terms).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vid.raw_variances)

    torch.manual_seed(0)
    teacher = create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=0)
    student = create_model("cnn", 10, DIGITS, channels=(8, 16), hidden=0)
    vid = VID()
    fit(student, vid, digits_splits, TrainConfig(epochs=1, batch_size=128), teacher=FrozenTeacher(teacher),
        progress=None)
    assert not torch.allclose(F.softplus(vid.raw_variances[0]) + 1e-5, torch.tensor(5.0))


def test_activation_boundaries_taps_pre_activations_through_connectors():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    ab = ActivationBoundaries()
    terms, out = step(ab, student, teacher, x, y)
    # a ResNet stage ends in its last block's ReLU: tap that ReLU's input; the CNN's first stages end
    # in a max-pool (tapped as they are), its last (a 2x2 map, not pooled) in its ReLU
    assert ab.pairs == [("layer1.0.relu2:input", "stages.0"), ("layer2.0.relu2:input", "stages.1"),
                        ("layer3.0.relu2:input", "stages.2.relu:input")]
    assert float(out.features["s0"].detach().min()) < 0  # a pre-activation
    expected = 0.0
    for i in range(3):
        f_s, f_t = out.features[f"s{i}"], out.teacher.features[f"t{i}"]
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        expected = expected + 2.0 ** (i - 2) * 3 / 1000 * DF.ab_loss(ab.connectors[i](pool(f_s, size)),
                                                                     pool(f_t, size), 1.0)
    assert close(terms["ab"], expected)


def test_fsp_compares_the_flow_matrices_between_consecutive_layers():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fsp = FSP()
    terms, out = step(fsp, student, teacher, x, y)
    # the input of the first stage, then the stages: RepDistiller's (f0, f1), (f1, f2), (f2, f3)
    assert fsp.pairs == [("layer1:input", "stages.0:input"), ("layer1", "stages.0"), ("layer2", "stages.1"),
                         ("layer3", "stages.2")]
    mapped = [fsp.connectors[i](out.features[f"s{i}"]) for i in range(4)]
    assert isinstance(fsp.connectors[3], nn.Identity)  # equal shapes: nothing to learn, as the paper
    teacher_maps = [out.teacher.features[f"t{i}"] for i in range(4)]
    expected = sum(((DF.fsp_matrix(mapped[k], mapped[k + 1])
                     - DF.fsp_matrix(teacher_maps[k], teacher_maps[k + 1])) ** 2).mean() for k in range(3))
    assert close(terms["fsp"], expected)

    teacher, student = cnn_teacher_mlp_student()  # an MLP's first stage is a bare ReLU: no input point
    fsp = FSP()
    step(fsp, student, teacher, x, y)
    assert fsp.pairs == [("hidden.relu1", "stages.0"), ("hidden.relu2", "stages.1")]
    with pytest.raises(ValueError, match="FSP compares the flow between consecutive layers and needs at least two"):
        step(FSP(student_layers=["hidden.relu2"]), student, teacher, x, y)


def test_factor_transfer_trains_a_paraphraser_first_then_a_translator():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    first = FactorTransferParaphraser()
    terms, out = step(first, student, teacher, x, y)
    f_t = out.teacher.features["t0"]
    assert first.teacher_layer == "stages.2" and not first.student_features  # the student is not used
    assert close(terms["reconstruction"], F.mse_loss(first.paraphraser(f_t), f_t))
    assert first.paraphraser.factor_shape == (32, 2, 2)  # rate 0.5 of the teacher's 64 channels

    ft = FactorTransfer(first)
    terms, out = step(ft, student, teacher, x, y)
    assert ft.pairs == [("layer3", "stages.2")] and ft.weights["ft"] == 200.0
    assert not any(p.requires_grad for p in first.paraphraser.parameters())  # frozen in the second stage
    factor_t = first.paraphraser.encode(out.teacher.features["t0"])
    factor_s = ft.translator(out.features["s0"])
    assert close(terms["ft"], DF.factor_transfer_loss(factor_s, factor_t, 1.0))

    with pytest.raises(ValueError, match="needs a trained paraphraser.*FactorTransferParaphraser"):
        step(FactorTransfer(), student, teacher, x, y)


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
    assert close(terms["crd"], expected)
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
        crd, s = make("crd", s, t, x.to(dtype))
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
    assert close(terms["reviewkd"], 5 / 20 * DF.hcl_loss(results, teacher_maps))


def test_simkd_predicts_with_the_teachers_classifier_on_the_projected_feature():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    wrapped = SimKDStudent(student, teacher, x[:2])
    # the teacher's last stage, averaged over space, is its classifier's input: match the maps there
    assert wrapped.teacher_layer == "stages.2" and wrapped.student_layer == "layer3"
    simkd = SimKD()
    terms, out = step(simkd, wrapped, teacher, x, y)
    assert set(terms) == {"simkd"}  # no CE, as the reference
    projected = wrapped.projector(run_with_taps(student, x, ["layer3"])[1]["layer3"])
    assert close(out.logits, F.linear(projected.mean(dim=(2, 3)), teacher.classifier.weight, teacher.classifier.bias))
    assert close(terms["simkd"], F.mse_loss(projected, out.teacher.features["t0"]))
    assert not any(p.requires_grad for p in wrapped.classifier.parameters())

    teacher, student = cnn_teacher_mlp_student()  # the CNN's hidden layer sits between its stages and classifier
    wrapped = SimKDStudent(student, teacher, x[:2])
    assert wrapped.teacher_layer == "classifier:input" and wrapped.target_shape == (32,)
    with pytest.raises(ValueError, match="global average pool of the teacher's 'stages.1' is not the input"):
        SimKDStudent(student, teacher, x[:2], teacher_layer="stages.1")
    with pytest.raises(ValueError, match="SimKD trains a SimKDStudent.*Wrap it first"):
        step(SimKD(), student, teacher, x, y)


# ================================================================ (2) gradients, (3) unlike pairs


def _method_only(name: str) -> dict:
    """Options that leave the method's own terms alone (no CE), so their gradients are what is seen."""
    options = method_options(name)
    if "ce_weight" in options:
        return {"ce_weight": 0.0}
    return {"alpha": 1.0} if "alpha" in options else {}


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_the_objectives_modules_and_the_student_never_the_teacher(name, pair):
    torch.manual_seed(0)
    teacher, student = PAIRS[pair]()
    x, y = batch()
    objective, model = make(name, student, teacher, x, **_method_only(name))
    terms, _ = step(objective, model, teacher, x, y)
    total = objective.total(terms)
    assert terms and torch.isfinite(total)
    total.backward()
    owned = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    missing = [n for n, p in owned if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient reaches {missing}"
    assert all(p.grad is None for p in teacher.parameters()), f"{name}: a gradient reached the teacher"
    first_layer = next(student.parameters())
    if name == "ft_paraphraser":  # the paraphraser's stage does not use the student at all
        assert all(p.grad is None for p in student.parameters())
    else:
        assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    if name == "simkd":
        assert all(p.grad is not None for p in model.projector.parameters())


def test_default_layers_pair_the_last_stages_and_explicit_layers_serve_a_model_without_stages():
    class UserNet(nn.Module):  # no feature_stages, no `classifier`
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1),
                                      nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

        def forward(self, x):
            return self.head(self.body(x))

    teacher = create_model("cnn", 10, DIGITS, channels=(16, 32), hidden=0)
    x, y = batch()
    with pytest.raises(ValueError, match=r"AT: the student \(UserNet\) has no `feature_stages`.*student_layers="):
        step(AttentionTransfer(), UserNet(), teacher, x, y)
    with pytest.raises(ValueError, match=r"RKD: cannot tap the student's layers \['classifier:input'\].*UserNet has no "
                                         r"module 'classifier'"):
        step(RKD(), UserNet(), teacher, x, y)
    at = AttentionTransfer(student_layers=["body.1", "body.3"])
    terms, _ = step(at, UserNet(), teacher, x, y)
    assert at.pairs == [("body.1", "stages.0"), ("body.3", "stages.1")] and torch.isfinite(terms["at"])
    at = AttentionTransfer(student_layers="body.3")  # one student layer: paired with the teacher's deepest
    step(at, UserNet(), teacher, x, y)
    assert at.pairs == [("body.3", "stages.1")]


def test_setup_again_keeps_the_trained_modules():
    teacher, student = wide_cnn_teacher_resnet_student()
    x, y = batch()
    fitnets = FitNets()
    step(fitnets, student, teacher, x, y)
    regressor = fitnets.connectors[0]
    step(fitnets, student, teacher, x, y)
    assert fitnets.connectors[0] is regressor


def test_registry_names_every_method_and_its_options():
    assert set(ZOO) == {"kd", "logit_matching", "dkd", "dist", "standardized_kd", "fitnets", "at", "sp", "cc", "vid",
                        "rkd", "pkt", "ab", "ft_paraphraser", "ft", "fsp", "nst", "crd", "reviewkd", "simkd"}
    assert isinstance(build_method("at", weight=50.0), AttentionTransfer)
    assert build_method("dkd", nckd_weight=2.0).weights["nckd"] == 2.0
    with pytest.raises(ValueError, match=r"unknown distillation method 'fitnet'\. Did you mean 'fitnets'.*The methods "
                                         r"are: ce, kd, "):
        build_method("fitnet")
    with pytest.raises(ValueError, match=r"method 'at' \(AttentionTransfer\) has no option 'wieght'\. Did you mean "
                                         r"'weight'.*Its options: weight=1000\.0, p=2\.0"):
        build_method("at", wieght=1.0)
    with pytest.raises(ValueError, match=r"method 'crd' \(CRD\) needs 'num_data' \(the number of training examples"):
        build_method("crd")


def test_every_zoo_architecture_lists_its_feature_stages():
    from distill.connectors import probe_shapes

    for name in ("mlp", "cnn", "resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"):
        model = create_model(name, 10, (3, 16, 16))
        shapes = probe_shapes(model, torch.randn(2, 3, 16, 16), model.feature_stages)
        assert len(shapes) >= 1, name


# ================================================================ (4) training on digits

EPOCHS = 4
# A 16/32-channel CNN learns from a 32/64-channel CNN teacher. The methods are checked by their wiring
# (paired seeds: the same run with the method's term weighted 0), not by an accuracy margin over a
# baseline: the baseline alone moves by 2 points across seeds, so such a margin passes on a broken term.


@pytest.fixture(scope="module")
def digits_teacher(digits_splits):
    torch.manual_seed(0)
    teacher = create_model("cnn", 10, digits_splits.in_shape, channels=(32, 64), hidden=0)
    fit(teacher, CrossEntropy(), digits_splits, TrainConfig(epochs=6, batch_size=64), progress=None)
    assert evaluate(teacher, digits_splits.test).accuracy > 0.96
    return teacher


def _student(data) -> nn.Module:
    torch.manual_seed(1)
    return create_model("cnn", 10, data.in_shape, channels=(16, 32), hidden=0)


def _train(objective, data, teacher, model=None, epochs: int = EPOCHS, selection: str = "acc"):
    model = model if model is not None else _student(data)
    cfg = TrainConfig(epochs=epochs, batch_size=64, log_every=1000, selection=selection)
    result = fit(model, objective, data, cfg, teacher=FrozenTeacher(teacher), progress=None)
    return evaluate(result.model, data.test).accuracy, result.history


# Weights differ from the defaults only where the reference's is calibrated for CIFAR's 32x32 maps
# (AT, NST: their terms grow as the maps shrink), or to skip a 20-epoch warm-up in a 4-epoch run.
MATCHING = {
    "kd": {}, "dkd": {"warmup_epochs": 0}, "dist": {}, "standardized_kd": {},
    "at": {"weight": 50.0}, "nst": {"weight": 5.0}, "sp": {}, "cc": {}, "vid": {}, "rkd": {}, "pkt": {},
    "reviewkd": {"warmup_epochs": 0}, "crd": {"nce_k": 128, "feat_dim": 64},
}


def _fit(objective, data, teacher, epochs: int = EPOCHS):
    """A paired run: the same student initial weights (``_student``), data order and random streams (fit's seed)."""
    cfg = TrainConfig(epochs=epochs, batch_size=64, log_every=1000, selection="last")
    return fit(_student(data), objective, data, cfg, teacher=FrozenTeacher(teacher), progress=None)


def _matching(name: str, data):
    options = dict(MATCHING[name])
    if name == "crd":
        options["num_data"] = len(data.train)
    return build_method(name, **options)


def _own_terms(name: str, objective) -> list[str]:
    """The method's own loss terms (not the CE/KD terms it adds to them)."""
    return [k for k in objective.weights
            if (k not in ("ce", "kd") or name in ("kd", "standardized_kd")) and objective.weights[k]]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MATCHING))
def test_the_methods_own_term_is_optimized_and_reaches_the_student(name, digits_splits, digits_teacher):
    """Wiring, not a noisy accuracy margin: (1) the logged total is the weighted sum of the logged terms;
    (2) the method's own term decreases; (3) paired seeds: the same run with the method's own terms
    weighted 0 ends with other student weights (the term's gradient reaches the student: a detached
    or unweighted term would leave them bit-identical, as fit is deterministic for a seed)."""
    objective = _matching(name, digits_splits)
    own = _own_terms(name, objective)
    assert own, name
    result = _fit(objective, digits_splits, digits_teacher)
    history = result.history
    for record in history:
        terms = {k[6:]: v for k, v in record.items() if k.startswith("train/") and k != "train/loss"}
        assert set(own) <= set(terms)
        total = sum(objective.weights.get(k, 1.0) * v for k, v in terms.items())
        assert record["train/loss"] == pytest.approx(total, rel=1e-4, abs=1e-6)
    for term in own:
        if name != "crd":  # its term stays near chance here (see test_crd_learns_...)
            first, last = history[0][f"train/{term}"], history[-1][f"train/{term}"]
            assert last < first, f"{name}: its term {term} did not decrease ({first:.4g} -> {last:.4g})"
    if name == "crd":  # the memory is in use
        assert (objective.memory_labels >= 0).all() and math.isfinite(history[-1]["train/crd"])
        assert torch.allclose(objective.memory_student.norm(dim=1), torch.ones(len(digits_splits.train)))
    without = _matching(name, digits_splits)
    for term in own:
        without.weights[term] = 0.0
    untouched = _fit(without, digits_splits, digits_teacher).model
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(result.model.parameters(), untouched.parameters()))
    assert moved > 1e-4, f"{name}: its terms {own} do not reach the student's weights"


@pytest.mark.slow
def test_factor_transfer_in_two_stages(digits_splits, digits_teacher):
    """Stage 1 trains the paraphraser alone (its reconstruction error falls; the student is
    untouched), stage 2 the student with CE and the factor term, whose gradient reaches the student (paired
    with the same run with the term weighted 0)."""
    paraphraser = FactorTransferParaphraser()
    student = _student(digits_splits)
    before = [p.clone() for p in student.parameters()]
    _, history = _train(paraphraser, digits_splits, digits_teacher, model=student, epochs=2, selection="last")
    assert history[-1]["train/reconstruction"] < history[0]["train/reconstruction"]
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    result = _fit(FactorTransfer(paraphraser), digits_splits, digits_teacher)
    assert result.history[-1]["train/ft"] < result.history[0]["train/ft"]
    without = FactorTransfer(paraphraser)
    without.weights["ft"] = 0.0
    untouched = _fit(without, digits_splits, digits_teacher).model
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(result.model.parameters(), untouched.parameters()))
    assert moved > 1e-4


@pytest.mark.parametrize("name", ["fitnets", "ab", "fsp"])
def test_staged_methods_initialize_the_student_then_train_it_on_labels(name, digits_splits, digits_teacher):
    """The references train these in two stages: the method's term alone first (FitNets' hints,
    AB's and FSP's initialization), then the student on labels (KD for FitNets, CE for AB and FSP).
    In a few epochs the benefit of the initialization does not show, so this checks what each
    stage does: stage 1 lowers the method's term and leaves the classifier untouched, and stage 2
    from that initialization trains the student well above chance (10%)."""
    first = {"fitnets": FitNets(hint_only=True), "ab": ActivationBoundaries(ce_weight=0.0),
             "fsp": FSP(ce_weight=0.0)}[name]
    term = first.term_names[0]
    student = _student(digits_splits)
    classifier = student.classifier.weight.clone()
    _, history = _train(first, digits_splits, digits_teacher, model=student, epochs=2, selection="last")
    assert history[-1][f"train/{term}"] < history[0][f"train/{term}"]
    assert set(k for k in history[0] if k.startswith("train/")) == {f"train/{term}", "train/loss"}
    assert torch.equal(student.classifier.weight, classifier)
    second = KnowledgeDistillation() if name == "fitnets" else CrossEntropy()
    accuracy, _ = _train(second, digits_splits, digits_teacher, model=student, epochs=2)
    assert accuracy > 0.6


def test_simkd_student_learns_the_teachers_features(digits_splits, digits_teacher):
    """SimKD has no CE: the student only learns to project its features onto the teacher's, and the
    teacher's classifier reads them. The reference trains 240 epochs; here the feature term falls and
    the wrapped student, deployed as it is, classifies well above chance."""
    student = SimKDStudent(_student(digits_splits), digits_teacher, digits_splits.train.x[:2])
    accuracy, history = _train(SimKD(), digits_splits, digits_teacher, model=student)
    assert history[-1]["train/simkd"] < 0.8 * history[0]["train/simkd"]
    assert accuracy > 0.7
