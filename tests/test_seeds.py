"""Issue 14 item 1: calibration in every table, results over several seeds, gains with paired bootstrap intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from distill.cli import main
from distill.metrics import ECE_BINS, expected_calibration_error, paired_bootstrap, spread
from distill.report import format_table


def test_ece_of_a_hand_made_example():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.55 (wrong): with 15 bins 0.9 falls in bin 13
    # ((13/15, 14/15]) and 0.6, 0.55 in bin 8 ((8/15, 9/15]); ECE = (|1 - 1.8| + |1 - 1.15|) / 4 = 0.2375
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(0.2375, abs=1e-6)
    # one bin: |mean accuracy - mean confidence| = |0.5 - 0.7375|
    assert expected_calibration_error(probs.log(), labels, bins=1) == pytest.approx(0.2375, abs=1e-6)
    # two bins: (0.5, 1] holds all four again
    assert expected_calibration_error(probs.log(), labels, bins=2) == pytest.approx(0.2375, abs=1e-6)
    # 10 bins: 0.9 in (0.8, 0.9], 0.6 in (0.5, 0.6] with 0.55: the same sums, the same ECE; a perfectly
    # calibrated set: each bin's accuracy equals its confidence
    assert expected_calibration_error(torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log(), torch.tensor([0, 1])) == 0.0


def test_ece_matches_an_independent_numpy_computation():
    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(500, 7), torch.randint(0, 7, (500,))
    p = torch.softmax(logits, -1).numpy()
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == labels.numpy()[inside]).mean() - conf[inside].mean())
    assert expected_calibration_error(logits, labels) == pytest.approx(ece, abs=1e-6)


def test_spread_is_the_mean_and_the_sample_sd():
    s = spread([0.9, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.sd == pytest.approx(0.02)
    assert spread([0.5]).sd is None and str(spread([0.5])) == "0.5000"


def test_paired_bootstrap_exact_cases():
    ones, zeros = torch.ones(3, 50, dtype=torch.bool), torch.zeros(3, 50, dtype=torch.bool)
    same = paired_bootstrap(ones, ones)
    assert (same.difference, same.low, same.high, same.includes_zero) == (0.0, 0.0, 0.0, True)
    better = paired_bootstrap(ones, zeros)
    assert (better.difference, better.low, better.high, better.includes_zero) == (1.0, 1.0, 1.0, False)
    with pytest.raises(ValueError, match=r"\(seeds, examples\) of one shape, got \(3, 50\) and \(2, 50\)"):
        paired_bootstrap(ones, ones[:2])


def test_paired_bootstrap_width_matches_the_standard_error_of_a_paired_difference():
    """One seed: the interval of mean(d) for paired differences d_i has half-width 1.96 sd(d) / sqrt(n). The
    bootstrap's quantiles from 2000 resamples scatter by a few percent (measured over resampling seeds 0-9:
    within 5% of the analytic value), so 10% is the margin."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 4000, generator=g) < 0.8
    b = torch.rand(1, 4000, generator=g) < 0.7
    interval = paired_bootstrap(a, b, resamples=2000, seed=0)
    d = (a.double() - b.double()).flatten()
    half = 1.96 * float(d.std()) / math.sqrt(d.numel())
    assert interval.difference == pytest.approx(float(d.mean()))
    assert (interval.high - interval.low) / 2 == pytest.approx(half, rel=0.10)
    assert interval.low < interval.difference < interval.high and not interval.includes_zero
    # pairing matters: against a copy of itself that differs on 40 of the 4000 examples a model's interval is far
    # narrower than against an independent model of similar accuracy (the shared variance cancels)
    near = a.clone()
    near[0, :40] = ~near[0, :40]
    assert paired_bootstrap(a, near).high - paired_bootstrap(a, near).low < interval.high - interval.low


def test_every_results_table_shows_the_ece_with_its_bins():
    row = {"model": "m", "params": 10, "test_acc": 0.5, "test_errors": 1, "n_test": 2, "agreement": None,
           "test_nll": 0.7, "test_ece": 0.125, "latency_ms_per_1000": None, "size_bytes": None}
    table = format_table([row])
    assert f"ECE ({ECE_BINS} bins)" in table.splitlines()[0] and "0.1250" in table.splitlines()[2]


def test_seeds_are_refused_for_a_recipe_that_is_not_one_experiment(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"recipe": "tune", "teacher": {"model": {"name": "mlp"}},
                                    "student": {"model": {"name": "mlp"}}}))
    assert main(["run", str(path), "--output-dir", str(tmp_path), "--seeds", "2"]) == 1
    assert "--seeds does not apply to recipe 'tune'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/seed*"))


def _tiny_seed_run(tmp_path, *extra):
    cfg = {"name": "s", "recipe": "compare", "device": "cpu", "data": {"name": "digits", "train_size": 300},
           "train": {"epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.02}}, "report": {"latency": False},
           "teacher": {"model": {"name": "mlp", "hidden": [32]}}, "student": {"model": {"name": "mlp", "hidden": [8]}},
           "distill": {"temperature": 4.0, "alpha": 0.9}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["run", str(path), "--output-dir", str(tmp_path), "--quiet", "--seeds", "2", *extra])


def test_seeds_run_each_seed_and_aggregate_exactly_what_each_recorded(tmp_path, capsys):
    assert _tiny_seed_run(tmp_path) == 0
    out = capsys.readouterr().out
    top = tmp_path / "s"
    results = json.loads((top / "results.json").read_text())
    per_seed = [json.loads((top / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert results["seeds"] == [0, 1] and results["ece_bins"] == ECE_BINS
    for s in (0, 1):  # each seed a complete run with its own seed
        assert yaml.safe_load((top / f"seed{s}" / "config.yaml").read_text())["seed"] == s
    for tag in ("teacher", "baseline", "distilled"):
        accs = [r["models"][tag]["test_acc"] for r in per_seed]
        entry = results["models"][tag]["test_acc"]
        assert entry["per_seed"] == accs and entry["mean"] == pytest.approx(sum(accs) / 2)
        assert entry["sd"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
        assert results["models"][tag]["test_ece"]["per_seed"] == [r["models"][tag]["test_ece"] for r in per_seed]
    [gain] = results["comparisons"]
    assert (gain["model"], gain["against"], gain["level"]) == ("distilled", "baseline", 0.95)
    # the difference from the recorded predictions equals the difference of the recorded accuracies
    expected = sum(r["models"]["distilled"]["test_acc"] - r["models"]["baseline"]["test_acc"] for r in per_seed) / 2
    assert gain["difference"] == pytest.approx(expected, abs=1e-12)
    low, high = gain["interval"]
    assert low <= gain["difference"] <= high and gain["within_noise"] == (low <= 0 <= high)
    assert "| distilled - baseline |" in out and "test acc (mean ± sd, 2 seeds)" in out
    assert (top / "report.md").read_text().startswith("# s: 2 seeds (0, 1)")
    with np.load(top / "seed1" / "test_predictions.npz") as f:
        assert sorted(f.files) == ["baseline", "distilled", "labels", "teacher"]
