"""``--seeds N`` on the benchmark scripts (issue 14): per-seed rows, mean ± sd and each gain's paired bootstrap
interval computed by :func:`distill.metrics.paired_bootstrap` with ``distill run --seeds``' settings, on known
inputs (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from distill.metrics import paired_bootstrap, spread
from distill.recipes.seeds import LEVEL, RESAMPLES

from test_benchmarks_common import bench_path, load_script  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent

# two seeds, five test examples: a right on 4 + 3, b on 3 + 3
A = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=torch.bool)
B = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 1, 1]], dtype=torch.bool)


def rows(accs: list[float]) -> list[dict[str, float]]:
    return [{"test_acc": a, "test_nll": 0.5 + a, "test_ece": 0.1} for a in accs]


def test_aggregate_seeds_gives_mean_sd_per_seed_and_the_paired_interval(bench_path: ModuleType) -> None:  # noqa: F811
    agg = bench_path.aggregate_seeds([0, 1], {"a": rows([0.8, 0.6]), "b": rows([0.6, 0.6])},
                                     {"a": list(A), "b": list(B)}, [("a", "b")])
    s = spread([0.8, 0.6])
    assert agg["seeds"] == [0, 1] and agg["ece_bins"] == 15
    assert agg["models"]["a"]["test_acc"] == {"mean": s.mean, "sd": s.sd, "per_seed": [0.8, 0.6]}
    assert agg["models"]["b"]["test_acc"]["sd"] == 0.0 and "agreement" not in agg["models"]["a"]
    expected = paired_bootstrap(A, B, resamples=RESAMPLES, level=LEVEL, seed=0)
    (c,) = agg["comparisons"]
    assert (c["model"], c["against"], c["difference"]) == ("a", "b", pytest.approx(0.1))
    assert c["interval"] == [expected.low, expected.high] and c["within_noise"] == expected.includes_zero
    assert c["resamples"] == RESAMPLES and c["level"] == LEVEL


def test_the_seeds_tables(bench_path: ModuleType) -> None:  # noqa: F811
    from distill.recipes.seeds import format_seeds_table

    agg = bench_path.aggregate_seeds([3, 4], {"a": rows([0.8, 0.6]), "b": rows([0.6, 0.6])},
                                     {"a": list(A), "b": list(B)}, [("a", "b")])
    assert bench_path.per_seed_table(agg) == ["| model | seed 3 | seed 4 |", "|---|---:|---:|",
                                              "| a | 80.00 | 60.00 |", "| b | 60.00 | 60.00 |"]
    table = format_seeds_table(agg)
    assert "| a | 70.00 ± 14.14% |" in table and "test acc (mean ± sd, 2 seeds)" in table
    assert "| a - b | +10.00 pt |" in table and "within noise (the interval includes 0)" in table


def test_aggregate_seeds_refuses_a_missing_seed(bench_path: ModuleType) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="model 'a': 1 results rows for 2 seeds"):
        bench_path.aggregate_seeds([0, 1], {"a": rows([0.8])}, {}, [])


def test_test_correct_reads_a_runs_predictions(tmp_path: Path, bench_path: ModuleType) -> None:  # noqa: F811
    np.savez(tmp_path / "test_predictions.npz", labels=np.array([0, 1, 2]), distilled=np.array([0, 2, 2]))
    assert bench_path.test_correct(tmp_path, "distilled").tolist() == [True, False, True]
    with pytest.raises(KeyError, match="has no model 'baseline'"):
        bench_path.test_correct(tmp_path, "baseline")


def test_hinton_seeds_report_has_per_seed_errors_and_gap(tmp_path: Path, bench_path: ModuleType) -> None:  # noqa: F811
    script = load_script("hinton_mnist")
    from distill.config import load_config

    cfg = load_config(REPO / "configs" / "digits_kd.yaml")
    errors = [{"teacher": 3, "baseline": 13, "distilled": 5}, {"teacher": 4, "baseline": 8, "distilled": 8}]
    per_seed = [{"models": {t: {"test_errors": e[t], "n_test": 450} for t in e}} for e in errors]
    agg = bench_path.aggregate_seeds([0, 1], {"baseline": rows([0.6, 0.6]), "distilled": rows([0.8, 0.6])},
                                     {"distilled": list(A), "baseline": list(B)}, [("distilled", "baseline")])
    out = tmp_path / "r.md"
    fracs = script.write_seeds_report(out, cfg, agg, per_seed, 12.0, "0 0 0", "1 1 1", tmp_path, "python x")
    assert fracs == [0.8, 0.0]
    text = out.read_text()
    assert "| teacher | 3 | 4 | 3.5 | 67 |" in text and "| baseline | 13 | 8 | 10.5 | 146 |" in text
    assert "| gap closed (baseline − distilled) / (baseline − teacher) | 0.80 | 0.00 | 0.57 | 0.91 |" in text
    assert "| teacher / baseline errors | 0.23 | 0.50 | 0.33 | 0.46 |" in text
    assert "| distilled - baseline | +10.00 pt |" in text and "cnn [64, 128] teacher → mlp [64] student" in text


def test_function_matching_seeds_aggregate(tmp_path: Path, bench_path: ModuleType) -> None:  # noqa: F811
    script = load_script("function_matching")
    assert script.seed_pairs(["fix/rs", "funmatch"], 3, 30) == [
        ("funmatch, 30 ep", "fix/rs, 30 ep"), ("funmatch, 3 ep", "fix/rs, 3 ep"),
        ("fix/rs, 30 ep", "fix/rs, 3 ep"), ("funmatch, 30 ep", "funmatch, 3 ep")]
    labels = np.array([0, 1, 2, 3, 4])
    results = []
    for mode, right in (("fix/rs", B), ("funmatch", A)):
        for e in (3, 30):
            for seed in (0, 1):
                d = tmp_path / f"{mode.replace('/', '_')}_{e}_{seed}"
                d.mkdir()
                pred = np.where(right[seed].numpy(), labels, (labels + 1) % 5)
                np.savez(d / "test_predictions.npz", labels=labels, distilled=pred)
                acc = float(right[seed].float().mean())
                results.append({"mode": mode, "epochs": e, "seed": seed, "run_dir": str(d), "row": {"test_acc": acc},
                                "val_acc": [acc / 2, acc]})
    agg = script.aggregate(results, ["fix/rs", "funmatch"], [0, 1], 3, 30)
    assert list(agg["models"]) == ["fix/rs, 30 ep", "funmatch, 30 ep", "fix/rs, 3 ep", "funmatch, 3 ep"]
    expected = paired_bootstrap(A, B, resamples=RESAMPLES, level=LEVEL, seed=0)
    first = agg["comparisons"][0]
    assert (first["model"], first["against"]) == ("funmatch, 30 ep", "fix/rs, 30 ep")
    assert first["interval"] == [expected.low, expected.high]
    same = agg["comparisons"][2]  # fix/rs 30 vs 3: identical predictions
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0] and same["within_noise"]
    assert script.mean_curves(results)[("funmatch", 30)] == pytest.approx([0.35, 0.7])
    # a failed run leaves its mode and schedule out
    assert "funmatch, 30 ep" not in script.aggregate(results[:-1], ["fix/rs", "funmatch"], [0, 1], 3, 30)["models"]


def test_specialists_seeds_aggregate(bench_path: ModuleType) -> None:  # noqa: F811
    script = load_script("specialists_fmnist")
    per_seed = [{"models": {"generalist": {"test_acc": 0.6}, "generalist+specialists": {"test_acc": 0.8}}},
                {"models": {"generalist": {"test_acc": 0.6}, "generalist+specialists": {"test_acc": 0.6}}}]
    correct = [{"generalist": B[s], "generalist+specialists": A[s]} for s in range(2)]
    agg = script.seeds_aggregate([0, 1], per_seed, correct)
    expected = paired_bootstrap(A, B, resamples=RESAMPLES, level=LEVEL, seed=0)
    (c,) = agg["comparisons"]
    assert (c["model"], c["against"], c["interval"]) == ("generalist+specialists", "generalist",
                                                         [expected.low, expected.high])
    assert agg["models"]["generalist+specialists"]["test_acc"]["per_seed"] == [0.8, 0.6]


def test_ensemble_seeds_summary(bench_path: ModuleType) -> None:  # noqa: F811
    script = load_script("hinton_targets")
    s = [{"member_mean_acc": 0.9, "ensemble_acc": 1.0, "baseline_acc": 0.5, "distilled_acc": 0.75, "gain_kept": None},
         {"member_mean_acc": 0.7, "ensemble_acc": 1.0, "baseline_acc": 0.5, "distilled_acc": 0.625, "gain_kept": 0.0}]
    mean = script.mean_summary(s)
    assert mean == {"member_mean_acc": pytest.approx(0.8), "ensemble_acc": 1.0, "baseline_acc": 0.5,
                    "distilled_acc": pytest.approx(0.6875), "gain_kept": None}
    assert [script.gap_closed(x) for x in s] == [0.5, 0.25]
    assert script.gap_closed({**s[0], "ensemble_acc": 0.5}) is None


def test_json_of_a_seeds_run_is_plain(bench_path: ModuleType) -> None:  # noqa: F811
    agg = bench_path.aggregate_seeds([0, 1], {"a": rows([0.8, 0.6]), "b": rows([0.6, 0.6])},
                                     {"a": list(A), "b": list(B)}, [("a", "b")])
    assert json.loads(json.dumps(agg)) == agg


def test_ensemble_seeds_section_uses_the_baseline_as_reference(bench_path: ModuleType) -> None:  # noqa: F811
    script = load_script("hinton_targets")
    s = [{"member_mean_acc": 0.9, "ensemble_acc": 1.0, "baseline_acc": 0.5, "distilled_acc": 0.75},
         {"member_mean_acc": 0.7, "ensemble_acc": 1.0, "baseline_acc": 0.5, "distilled_acc": 0.625}]
    lines = script.ensemble_seeds_section(s, "digits")
    assert "| (distilled − baseline) / (ensemble − baseline) | per seed 0.50, 0.25; of the means 0.38 | 86% |" in lines
    assert "| the student distilled from the ensemble | 68.75% | 60.8% |" in lines
