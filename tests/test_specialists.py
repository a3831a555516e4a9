"""Generalist + specialists (Hinton et al. 2015, section 5): mappings, clustering, combination, recipe."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from distill.config import ConfigError, load_config
from distill.data.tensors import TensorData
from distill.models import create_model
from distill.recipes import run_recipe
from distill.objectives import KnowledgeDistillation
from distill.recipes.specialists import resolve_subsets, specialist_objective
from distill.specialists import (
    DustbinTeacher,
    SpecialistEnsemble,
    TappedDustbinTeacher,
    active_specialists,
    combination_objective,
    combine_specialists,
    dustbin_labels,
    dustbin_log_probs,
    dustbin_logit_offset,
    dustbin_map,
    dustbin_maps,
    dustbin_probs,
    find_confusable_subsets,
    init_specialist,
    kmeans,
    specialist_splits,
    specialist_training_set,
    subset_mask,
)

ROOT = Path(__file__).resolve().parents[1]


def _random_case(batch=6, num_classes=7, subsets=((1, 4), (2, 4, 5)), seed=0, dtype=torch.float64):
    """Generalist log-probs, specialists' padded probs over S_m ∪ {dustbin}, maps, all active."""
    g = torch.Generator().manual_seed(seed)
    log_pg = torch.log_softmax(torch.randn(batch, num_classes, generator=g, dtype=dtype), -1)
    maps = dustbin_maps(subsets, num_classes).to(dtype)
    probs = torch.zeros(batch, len(subsets), maps.shape[-1], dtype=dtype)
    for m, s in enumerate(subsets):
        probs[:, m, : len(s) + 1] = torch.softmax(2 * torch.randn(batch, len(s) + 1, generator=g, dtype=dtype), -1)
    active = torch.ones(batch, len(subsets), dtype=torch.bool)
    return log_pg, probs, maps, active


# --------------------------------------------------------------------------- dustbin mapping


def test_dustbin_probs_keep_subset_order_and_put_the_rest_in_the_dustbin():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]])
    out = dustbin_probs(p, [3, 1])
    assert torch.allclose(out, torch.tensor([[0.15, 0.2, 0.1 + 0.3 + 0.25]]))
    rand = torch.softmax(torch.randn(8, 5), -1)
    assert torch.allclose(dustbin_probs(rand, [4, 0, 2]).sum(-1), torch.ones(8))


def test_dustbin_labels_and_maps():
    assert dustbin_labels(torch.tensor([0, 1, 2, 3, 4]), [3, 1], 5).tolist() == [2, 1, 2, 0, 2]
    assert dustbin_map([3, 1], 5).tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]]
    maps = dustbin_maps([[3, 1], [0, 2, 4]], 5)  # padded to 4 slots; the short one's slot 3 is empty
    assert maps.shape == (2, 5, 4)
    assert maps.sum(1).tolist() == [[1, 1, 3, 0], [1, 1, 1, 2]]
    assert torch.equal(maps.sum(-1), torch.ones(2, 5))  # every class goes to exactly one slot
    with pytest.raises(ValueError, match="nothing for the dustbin"):
        dustbin_map([0, 1, 2], 3)
    with pytest.raises(ValueError, match="twice"):
        dustbin_map([1, 1], 3)


def test_dustbin_logit_offset_is_the_log_oversampling_factor():
    natural = torch.tensor([0] * 10 + [1] * 10 + [2] * 80)  # subset {0, 1}: 20 of 100
    training = torch.tensor([0] * 10 + [1] * 10 + [2] * 20)  # dustbin labels: 20 subset, 20 rest
    # the subset is kept whole (20/20), the rest subsampled 20/80: oversampled by a factor 4
    assert dustbin_logit_offset(natural, [0, 1], training) == pytest.approx(math.log(4.0))


# --------------------------------------------------------------------------- clustering


def test_kmeans_recovers_planted_clusters_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0]])
    truth = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 0, 1, 2])
    points = centres[truth] + 0.3 * torch.randn(len(truth), 2, generator=g)
    labels = kmeans(points, 3, seed=1)
    # the same partition, clusters numbered in order of their first member
    assert labels.tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 2, 0]
    assert torch.equal(kmeans(points, 3, seed=1), labels)


def test_clustering_the_covariance_recovers_planted_confusable_groups():
    """A generalist that confuses {1, 4, 7} among themselves and {2, 9}, and is sure of the rest."""
    g = torch.Generator().manual_seed(0)
    num_classes, n = 10, 4000
    partners = {1: [4, 7], 4: [1, 7], 7: [1, 4], 2: [9], 9: [2]}
    y = torch.randint(num_classes, (n,), generator=g)
    probs = torch.full((n, num_classes), 0.02 / (num_classes - 1))
    probs[torch.arange(n), y] = 0.98
    for i, c in enumerate(y.tolist()):
        if c in partners:  # move a random share of the mass to a random partner in the group
            partner = partners[c][int(torch.randint(len(partners[c]), (1,), generator=g))]
            share = float(torch.rand(1, generator=g)) * 0.6
            probs[i, partner] += share * probs[i, c]
            probs[i, c] *= 1 - share
    assert torch.allclose(probs.sum(-1), torch.ones(n))
    found = find_confusable_subsets(probs, 2, seed=0)
    assert sorted(found) == [[1, 4, 7], [2, 9]]
    # asking for more than exist returns only the confusable groups, never a singleton or the rest
    assert sorted(find_confusable_subsets(probs, 4, seed=0)) == [[1, 4, 7], [2, 9]]


# --------------------------------------------------------------------------- training a specialist


def test_specialist_training_set_is_half_subset_half_rest_and_relabeled():
    y = torch.arange(100) % 10
    x = torch.arange(100, dtype=torch.float32).unsqueeze(1)  # x identifies the example
    data = TensorData(x, y)
    out = specialist_training_set(data, [7, 2], 10, seed=3)
    original = y[out.x.squeeze(1).long()]
    assert len(out) == 40  # all 20 of classes {2, 7} and 20 of the 80 others
    assert int((original == 7).sum()) == 10 and int((original == 2).sum()) == 10
    assert torch.equal(out.y, dustbin_labels(original, [7, 2], 10))
    assert int((out.y == 2).sum()) == 20  # the dustbin
    assert out.x.squeeze(1).unique().numel() == 40  # drawn without replacement
    again, other = specialist_training_set(data, [7, 2], 10, seed=3), specialist_training_set(data, [7, 2], 10, seed=4)
    assert torch.equal(again.x, out.x) and not torch.equal(other.x, out.x)


def test_specialist_splits_relabel_every_split(digits_splits):
    own = specialist_splits(digits_splits, [3, 8], seed=0)
    assert own.num_classes == 3 and own.class_names == ("3", "8", "dustbin")
    for split, original in ((own.train, digits_splits.train), (own.val, digits_splits.val)):
        n_subset = int(torch.isin(original.y, torch.tensor([3, 8])).sum())
        assert len(split) == 2 * n_subset and int((split.y < 2).sum()) == n_subset
    assert torch.equal(own.test.y, dustbin_labels(digits_splits.test.y, [3, 8], 10))
    assert torch.equal(own.test.x, digits_splits.test.x) and torch.equal(own.mean, digits_splits.mean)


@pytest.mark.parametrize("name, kwargs", [("mlp", {"hidden": [16]}), ("cnn", {"channels": [4], "hidden": 8})])
def test_specialist_starts_from_the_generalists_subset_logits(name, kwargs):
    torch.manual_seed(0)
    generalist = create_model(name, 10, (1, 8, 8), **kwargs).eval()
    subset = [6, 2, 9]
    specialist = init_specialist(generalist, subset)
    assert all(p.requires_grad for p in specialist.parameters()) and specialist.training
    specialist.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        z_g, z_s = generalist(x), specialist(x)
    assert z_s.shape == (5, 4) and specialist.num_classes == 4 and generalist.classifier.out_features == 10
    # same logits (hence same relative logits and same probabilities within the subset)
    assert torch.allclose(z_s[:, :3], z_g[:, subset], atol=1e-5)
    assert torch.allclose(z_s[:, :3].softmax(-1), z_g[:, subset].softmax(-1), atol=1e-6)
    rest = [c for c in range(10) if c not in subset]
    assert torch.allclose(z_s[:, 3], z_g[:, rest].mean(-1) + math.log(7), atol=1e-5)


def test_specialist_dustbin_row_fitted_on_inputs_matches_the_generalists_outside_mass():
    torch.manual_seed(0)
    generalist = create_model("mlp", 10, (1, 8, 8), hidden=[16]).eval()
    with torch.no_grad():  # larger logits: their log-sum-exp is far from mean + log n
        generalist.classifier.weight.mul_(4.0)
    subset, x = [6, 2, 9], torch.randn(512, 1, 8, 8)
    with torch.no_grad():
        wanted = dustbin_log_probs(torch.log_softmax(generalist(x), -1), subset)
        errors = {}
        for name, inputs in (("taylor", None), ("fitted", x)):
            specialist = init_specialist(generalist, subset, inputs=inputs).eval()
            got = torch.log_softmax(specialist(x), -1)
            assert torch.allclose(specialist(x)[:, :3], generalist(x)[:, subset], atol=1e-5)
            errors[name] = float((got.exp() - wanted.exp()).abs().max(-1).values.mean())
    assert errors["fitted"] < 0.5 * errors["taylor"], errors
    assert errors["fitted"] < 0.05, errors


def test_dustbin_log_probs_and_teacher_merge_before_softening():
    log_p = torch.log_softmax(torch.randn(4, 6), -1)
    assert torch.allclose(dustbin_log_probs(log_p, [4, 1]).exp(), dustbin_probs(log_p.exp(), [4, 1]), atol=1e-6)
    torch.manual_seed(0)
    generalist = create_model("mlp", 10, (1, 8, 8), hidden=[16])
    x = torch.randn(4, 1, 8, 8)
    targets = DustbinTeacher(generalist, [3, 5])(x)
    with torch.no_grad():
        p = torch.softmax(generalist.eval()(x), -1)
    assert targets.logits is not None and targets.logits.shape == (4, 3)
    # the loss softens them at T: softmax(log(p M) / T); at T = 1 that is exactly p M
    assert torch.allclose(torch.softmax(targets.logits, -1), dustbin_probs(p, [3, 5]), atol=1e-6)
    at_t2 = torch.softmax(targets.logits / 2, -1)
    expected = dustbin_probs(p, [3, 5]).sqrt()
    assert torch.allclose(at_t2, expected / expected.sum(-1, keepdim=True), atol=1e-6)


# --------------------------------------------------------------------------- the combination


def test_active_specialists_meet_the_generalists_top_classes():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4]])
    mask = subset_mask([[1, 2], [3], [0, 4]], 5)
    assert active_specialists(probs, mask, 1).tolist() == [[False, False, True], [False, False, True]]
    assert active_specialists(probs, mask, 2).tolist() == [[True, False, True], [False, True, True]]


def test_combination_returns_the_generalist_exactly_when_no_specialist_applies():
    log_pg, probs, maps, active = _random_case(dtype=torch.float32)
    active[:3] = False  # first three examples consult nobody
    out = combine_specialists(log_pg, probs, maps, active, steps=50, lr=0.5)
    assert torch.equal(out[:3], log_pg[:3])
    assert not torch.allclose(out[3:], log_pg[3:])


def test_combination_with_specialists_agreeing_with_the_generalist_leaves_it_unchanged():
    log_pg, _, maps, active = _random_case()
    subsets = ((1, 4), (2, 4, 5))
    probs = torch.zeros_like(_random_case()[1])
    for m, s in enumerate(subsets):
        probs[:, m, : len(s) + 1] = dustbin_probs(log_pg.exp(), s)
    out = combine_specialists(log_pg, probs, maps, active, steps=200, lr=0.5)
    assert torch.allclose(out, log_pg, atol=1e-10)


def test_one_combination_step_is_gradient_descent_on_the_objective():
    """The closed-form gradient inside combine_specialists equals autograd's gradient of J."""
    log_pg, probs, maps, active = _random_case()
    active[0, 1] = False
    z = log_pg.clone().requires_grad_(True)
    objective = combination_objective(torch.log_softmax(z, -1), log_pg.exp(), probs, maps, active).sum()
    (grad,) = torch.autograd.grad(objective, z)
    lr, n_terms = 0.3, 1 + active.sum(-1, keepdim=True)
    expected = torch.log_softmax(log_pg - lr / n_terms * grad, -1)
    assert torch.allclose(combine_specialists(log_pg, probs, maps, active, steps=1, lr=lr), expected, atol=1e-12)


def test_combination_lowers_the_objective_to_a_stationary_point():
    log_pg, probs, maps, active = _random_case()
    active[1] = torch.tensor([True, False])
    p_g = log_pg.exp()
    log_q = combine_specialists(log_pg, probs, maps, active, steps=3000, lr=0.5)
    start = combination_objective(log_pg, p_g, probs, maps, active)
    end = combination_objective(log_q, p_g, probs, maps, active)
    assert (end < start - 1e-3).all()
    assert torch.allclose(log_q.exp().sum(-1), torch.ones(len(log_q), dtype=log_q.dtype))

    def gradient(log_q):
        z = log_q.clone().requires_grad_(True)
        objective = combination_objective(torch.log_softmax(z, -1), p_g, probs, maps, active).sum()
        return torch.autograd.grad(objective, z)[0]

    assert gradient(log_q).abs().max() < 1e-5 * gradient(log_pg).abs().max()


def test_combination_matches_an_independent_scipy_solution():
    """J(q) = KL(p_g || q) + sum_m KL(p_m || q_m), written again in numpy and minimized by BFGS."""
    p_g = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    subsets = [[0, 1], [1, 2, 3]]  # overlapping, of different sizes
    p_m = [np.array([0.2, 0.6, 0.2]), np.array([0.1, 0.5, 0.3, 0.1])]

    def kl(p, q):
        return float(np.sum(p * (np.log(p) - np.log(q))))

    def objective(z):
        q = np.exp(z - z.max())
        q /= q.sum()
        total = kl(p_g, q)
        for s, p in zip(subsets, p_m):
            q_s = np.append(q[s], 1.0 - q[s].sum())
            total += kl(p, q_s)
        return total

    reference = minimize(objective, np.log(p_g), method="BFGS", options={"gtol": 1e-12}).x
    q_ref = np.exp(reference - reference.max())
    q_ref /= q_ref.sum()

    maps = dustbin_maps(subsets, 5).double()
    probs = torch.zeros(1, 2, maps.shape[-1], dtype=torch.float64)
    for m, p in enumerate(p_m):
        probs[0, m, : len(p)] = torch.from_numpy(p)
    log_q = combine_specialists(torch.from_numpy(np.log(p_g))[None], probs, maps, torch.ones(1, 2, dtype=torch.bool),
                                steps=5000, lr=0.5)
    np.testing.assert_allclose(log_q.exp()[0].numpy(), q_ref, atol=1e-6)
    assert np.abs(q_ref - p_g).max() > 0.05  # the specialists do move q


def test_ensemble_consults_only_active_specialists_and_equals_the_generalist_otherwise():
    torch.manual_seed(0)
    generalist = create_model("mlp", 6, (1, 8, 8), hidden=[16]).eval()
    subsets = [[0, 1], [2, 3]]
    specialists = [init_specialist(generalist, s).eval() for s in subsets]
    for s in specialists:  # make the specialists disagree with the generalist
        torch.nn.init.normal_(s.classifier.weight)
    ensemble = SpecialistEnsemble(generalist, specialists, subsets, 6, top_classes=1, steps=50).eval()
    x = torch.randn(64, 1, 8, 8)
    with torch.inference_mode():  # as evaluate() calls it: the combination needs no autograd
        log_q = ensemble(x)
        log_pg = torch.log_softmax(generalist(x), -1)
    consulted = ensemble.consulted(log_pg).any(-1)
    assert 0 < int(consulted.sum()) < 64
    assert torch.equal(log_q[~consulted], log_pg[~consulted])
    assert not torch.allclose(log_q[consulted], log_pg[consulted])
    assert torch.allclose(log_q.exp().sum(-1), torch.ones(64), atol=1e-5)


# --------------------------------------------------------------------------- the recipe


def test_subsets_by_name_with_errors_naming_the_key():
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert resolve_subsets([["t-shirt/top", "Shirt"], [2, "Coat"]], names) == [[0, 6], [2, 4]]
    with pytest.raises(ValueError, match=r"specialists.subsets\[1\]\[0\]: unknown class name 'shrt'; classes are 0 "):
        resolve_subsets([[0, 6], ["shrt", "Coat"]], names)
    with pytest.raises(ValueError, match=r"specialists.subsets\[0\]\[1\]: class 12 is out of range"):
        resolve_subsets([[0, 12]], names)
    with pytest.raises(ValueError, match=r"specialists.subsets\[0\]\[1\]: class 0 'T-shirt/top' is listed twice"):
        resolve_subsets([[0, "T-shirt/top"]], names)


@pytest.mark.slow
def test_recipe_end_to_end_on_digits(tmp_path):
    cfg = load_config(ROOT / "configs" / "specialists_digits.yaml",
                      overrides=["train.epochs=12", "specialists.train.epochs=4", f"output_dir={tmp_path}"])
    results = run_recipe(cfg, run_dir=tmp_path / "run", progress=False)
    rows, info = results["models"], results["summary"]
    assert set(rows) == {"generalist", "generalist+specialists"}
    assert rows["generalist"]["test_acc"] > 0.85
    # Exact bookkeeping instead of a noisy margin: the combined row is the generalist's predictions with the
    # specialists' fixes and breakages (same 450 test images), and the specialists do change some predictions.
    correct = {tag: round(rows[tag]["test_acc"] * 450) for tag in rows}
    assert correct["generalist+specialists"] == correct["generalist"] + info["fixed"] - info["broken"]
    assert sum(r["ensemble_correct"] for r in info["by_covering_specialists"]) == correct["generalist+specialists"]
    assert sum(r["generalist_correct"] for r in info["by_covering_specialists"]) == correct["generalist"]
    assert info["fixed"] + info["broken"] > 0
    assert 1 <= len(info["subsets"]) <= 2 and all(len(s["classes"]) >= 2 for s in info["subsets"])
    assert 0 < info["consulted"] <= 450
    by_covering = info["by_covering_specialists"]
    assert sum(r["test_examples"] for r in by_covering) == 450
    # a specialist covering the true class was consulted only if the true class is in a subset
    assert sum(r["test_examples"] for r in by_covering if r["covering_specialists"]) <= \
        info["test_examples_of_specialist_classes"]
    for s in info["subsets"]:
        assert (tmp_path / "run" / s["tag"] / "best.pt").exists()
        assert s["train_examples"] > 0 and s["best_val_acc"] > 0.5
    assert (tmp_path / "run" / "generalist" / "best.pt").exists() and (tmp_path / "run" / "results.json").exists()

    # given subsets by name, hard labels only, the generalist reused from its checkpoint
    cfg = load_config(ROOT / "configs" / "specialists_digits.yaml",
                      overrides=["specialists.subsets=[['3', '5', '8'], [1, '7']]", "specialists.soft_targets=false",
                                 "specialists.train.epochs=2", "teacher.model=null",
                                 f"teacher.checkpoint={tmp_path / 'run' / 'generalist' / 'best.pt'}"])
    results = run_recipe(cfg, run_dir=tmp_path / "given", progress=False)
    assert [s["classes"] for s in results["summary"]["subsets"]] == [[3, 5, 8], [1, 7]]
    assert results["models"]["generalist"]["test_acc"] == rows["generalist"]["test_acc"]
    assert not (tmp_path / "given" / "generalist").exists()


# --------------------------------------------------------------------------- a method of the registry


def _tiny(*overrides: str):
    return load_config(overrides=["recipe=specialists", "data.name=digits", "train.epochs=1", "train.batch_size=64",
                                  "train.log_every=1000", "report.latency=false", "teacher.model.name=mlp",
                                  "teacher.model.hidden=[32]", "specialists.subsets=[[3, 5]]",
                                  "specialists.train.epochs=1", "specialists.combine_steps=5", *overrides])


def test_specialists_refuse_what_they_cannot_serve():
    def message(*overrides: str) -> str:  # the recipe's registered check, when the config is loaded
        with pytest.raises(ConfigError) as e:
            _tiny(*overrides)
        return str(e.value).split("<top level>: ", 1)[1]

    assert message("distill.stages=[{method: kd}]").startswith(
        "distill.stages: recipe specialists trains each specialist in one fit; name one method in distill.method")
    assert message("distill.method=dkd", "specialists.soft_targets=false").startswith(
        "distill.method: specialists.soft_targets is false, so the specialists train on hard labels only; set "
        "specialists.soft_targets=true to distil them with dkd")
    assert message("distill.method=simkd").startswith(
        "distill.method: simkd predicts with the teacher's classifier, but a specialist predicts its subset and a "
        "dustbin, not the generalist's classes; use another method")
    assert message("distill.method=logit_matching").startswith(
        "distill.method: logit_matching reads the teacher's logits as they are, but a specialist's targets are the "
        "generalist's log-probabilities merged into its subset and a dustbin, defined only up to a shift")
    for method in ("kd", "dkd", "dist", "standardized_kd", "ce", "at", "fitnets", "crd"):
        assert _tiny(f"distill.method={method}").distill.method == method
    kd = specialist_objective(_tiny("distill.method=kd", "specialists.temperature=3", "specialists.alpha=0.25"), 10)
    assert isinstance(kd, KnowledgeDistillation) and (kd.temperature, kd.alpha) == (3.0, 0.25)


def test_a_specialist_learns_with_dkd_and_method_kd_is_the_recipes_soft_targets(tmp_path):
    def specialist_rows(run_dir: Path) -> list[dict]:
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in lines if r.get("model") == "specialist0" and "train/loss" in r]

    run_recipe(_tiny("distill.method=dkd", "distill.options.temperature=3"), run_dir=tmp_path / "dkd",
               progress=False)
    assert {"train/ce", "train/tckd", "train/nckd"} <= set(specialist_rows(tmp_path / "dkd")[-1])
    run_recipe(_tiny(), run_dir=tmp_path / "plain", progress=False)
    run_recipe(_tiny("distill.method=kd"), run_dir=tmp_path / "kd", progress=False)
    plain = torch.load(tmp_path / "plain" / "specialist0" / "best.pt", weights_only=False)["model"]
    kd = torch.load(tmp_path / "kd" / "specialist0" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(plain[k], kd[k]) for k in plain)


def test_a_specialist_learns_with_attention_transfer_from_the_generalists_features(tmp_path):
    cnn = ["teacher.model.name=cnn", "teacher.model.channels=[8, 16]", "teacher.model.hidden=0"]
    run_recipe(_tiny("distill.method=at", "distill.options={weight: 1, kd_weight: 0.5}", *cnn), run_dir=tmp_path,
               progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in lines if r.get("model") == "specialist0" and "train/loss" in r]
    assert {"train/ce", "train/at", "train/kd"} <= set(rows[-1])
    x = torch.randn(4, 1, 8, 8)
    generalist = create_model("cnn", 10, (1, 8, 8), channels=[8, 16], hidden=0)
    tapped = TappedDustbinTeacher(generalist, [3, 5]).with_features({"s1": "stages.1"})
    targets = tapped(x)
    assert targets.features is not None and targets.features["s1"].shape[:2] == (4, 16)
    plain = DustbinTeacher(generalist, [3, 5])(x)
    assert plain.logits is not None and torch.equal(targets.logits, plain.logits)
    assert tapped.model is generalist and not hasattr(DustbinTeacher(generalist, [3, 5]), "model")
