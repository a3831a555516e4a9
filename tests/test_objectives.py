import pytest
import torch
import torch.nn.functional as F

from distill import functional as DF
from distill.objectives import CrossEntropy, KnowledgeDistillation, LogitMatching, build_objective
from distill.objectives.base import StepOutputs
from distill.teachers import Targets


def _step(teacher: Targets | None = None):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (6,), generator=g)
    return StepOutputs(logits=logits, labels=labels, index=torch.arange(6), teacher=teacher)


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


def test_logit_matching_and_ce_objectives():
    t = torch.randn(6, 5)
    out = _step(Targets(logits=t))
    terms = LogitMatching(alpha=0.5)(out)
    assert torch.allclose(terms["logit_matching"], 0.5 * ((out.logits - t) ** 2).mean())
    assert CrossEntropy()(out)["ce"].item() == pytest.approx(F.cross_entropy(out.logits, out.labels).item())
    with pytest.raises(ValueError, match="teacher logits"):
        LogitMatching()(_step(Targets(probs=torch.softmax(t, -1))))


def test_build_objective_names_the_choices():
    assert isinstance(build_objective("kd"), KnowledgeDistillation)
    with pytest.raises(ValueError, match="distill.loss: unknown loss 'fitnet'"):
        build_objective("fitnet")
