"""Paired (cluster) bootstrap intervals: point estimate, coverage, pairing, errors."""
from __future__ import annotations

import numpy as np
import pytest

from gdlib import stats


def test_difference_is_the_mean_of_per_style_mean_differences():
    a = {"s1": [0.5, 0.7], "s2": [0.2, 0.4]}
    b = {"s1": [0.4, 0.4], "s2": [0.2, 0.2]}
    r = stats.paired_difference(a, b, n_resamples=2000)
    assert r["diff"] == pytest.approx(np.mean([0.2, 0.1]))
    assert r["lo"] <= r["diff"] <= r["hi"] and r["n_clusters"] == 2 and r["n_cells"] == 4


def test_pairing_removes_the_shared_style_spread():
    rng = np.random.default_rng(1)
    style_level = {f"s{i}": rng.normal(0, 1.0) for i in range(6)}      # large between-style spread
    a = {s: [m + 0.05 + rng.normal(0, 0.01) for _ in range(3)] for s, m in style_level.items()}
    b = {s: [m + rng.normal(0, 0.01) for _ in range(3)] for s, m in style_level.items()}
    r = stats.paired_difference(a, b)
    assert r["excludes_zero"] and 0.03 < r["lo"] < 0.05 < r["hi"] < 0.07
    unpaired_spread = np.std([np.mean(v) for v in a.values()])
    assert r["hi"] - r["lo"] < unpaired_spread / 10


def test_no_effect_gives_an_interval_holding_zero_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        a = {f"s{i}": rng.normal(0, 1, 3) for i in range(20)}
        b = {f"s{i}": rng.normal(0, 1, 3) for i in range(20)}
        r = stats.paired_difference(a, b, n_resamples=1000, seed=t)
        covered += r["lo"] <= 0 <= r["hi"]
    assert 0.85 <= covered / trials <= 0.995


def test_flat_lists_are_one_value_per_cluster_and_format_reads_like_the_readme():
    reps = stats.cluster_bootstrap_means([1.0, 1.0, 1.0], n_resamples=50)
    assert np.allclose(reps, 1.0)
    assert stats.format_interval({"diff": 0.0412, "lo": 0.0121, "hi": 0.0703}) == "+0.041 [+0.012, +0.070]"


@pytest.mark.parametrize("a,b,msg", [
    ({"s1": [1.0]}, {"s2": [1.0]}, "different styles"),
    ({"s1": [1.0, 2.0]}, {"s1": [1.0]}, "seeds"),
    ({"s1": [float("nan")]}, {"s1": [1.0]}, "NaN"),
])
def test_bad_inputs_are_named(a, b, msg):
    with pytest.raises(ValueError, match=msg):
        stats.paired_difference(a, b)


def test_by_cluster_groups_in_order_and_checks_lengths():
    assert stats.by_cluster([1, 0, 1, 1], ["cat", "car", "cat", "car"]) == {"cat": [1.0, 1.0], "car": [0.0, 1.0]}
    with pytest.raises(ValueError, match="cluster labels"):
        stats.by_cluster([1, 2], ["a"])
