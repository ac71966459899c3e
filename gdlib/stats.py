"""Paired bootstrap confidence intervals for comparisons of variants measured on the same units.

An ablation measures every variant on the same (style set, seed) cells, so a difference between two variants is
judged on the per-cell differences (pairing removes the between-style spread that both variants share). The cells
are not independent: the seeds of one style share its references. The bootstrap therefore resamples in two levels
(Davison & Hinkley 1997, Sec. 3.8, "cluster" resampling): styles with replacement, then seeds with replacement
within each drawn style. With one seed per style it is the ordinary paired bootstrap over styles.
Pure NumPy: no Jittor import, so reports and tests load it instantly.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000


def _as_cells(diffs: Mapping[str, Sequence[float]] | Sequence[float]) -> list[np.ndarray]:
    """{cluster: [per-seed values]} or a flat list (one value per cluster) -> list of 1-D arrays."""
    if isinstance(diffs, Mapping):
        cells = [np.asarray(v, np.float64).ravel() for v in diffs.values()]
    else:
        cells = [np.asarray([v], np.float64) for v in np.asarray(diffs, np.float64).ravel()]
    if not cells or any(c.size == 0 for c in cells):
        raise ValueError("bootstrap: every cluster needs at least one value")
    if not all(np.isfinite(c).all() for c in cells):
        raise ValueError("bootstrap: the values hold NaN or inf")
    return cells


def cluster_bootstrap_means(diffs: Mapping[str, Sequence[float]] | Sequence[float], n_resamples: int = DEFAULT_RESAMPLES,
                            seed: int = 0) -> np.ndarray:
    """n_resamples bootstrap replicates of the grand mean of diffs (clusters, then values within each cluster)."""
    cells = _as_cells(diffs)
    rng = np.random.default_rng(seed)
    k = len(cells)
    picks = rng.integers(0, k, size=(n_resamples, k))
    # per drawn cluster, the mean of a with-replacement resample of its values
    means = np.empty((n_resamples, k))
    for c, vals in enumerate(cells):
        idx = rng.integers(0, vals.size, size=(n_resamples, vals.size))
        means[:, c] = vals[idx].mean(axis=1)
    return np.take_along_axis(means, picks, axis=1).mean(axis=1)


def paired_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], level: float = 0.95,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Mean of a - b over paired cells and its percentile bootstrap interval: dict(diff, lo, hi, level, n_clusters,
    n_cells, excludes_zero). a and b map a cluster (style) to per-seed values in the same seed order."""
    if set(a) != set(b):
        raise ValueError(f"paired_difference: the two variants were measured on different styles "
                         f"({sorted(set(a) ^ set(b))})")
    diffs = {}
    for key in a:
        va, vb = np.asarray(a[key], np.float64).ravel(), np.asarray(b[key], np.float64).ravel()
        if va.shape != vb.shape:
            raise ValueError(f"paired_difference: style {key!r} has {va.size} vs {vb.size} seeds; pairs need both")
        diffs[key] = va - vb
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    reps = cluster_bootstrap_means(diffs, n_resamples, seed)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    diff = float(np.mean([d.mean() for d in diffs.values()]))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "level": level, "n_clusters": len(diffs),
            "n_cells": int(sum(d.size for d in diffs.values())), "excludes_zero": bool(lo > 0 or hi < 0)}


def by_cluster(values: Sequence[float], clusters: Sequence[str]) -> dict[str, list[float]]:
    """Group per-unit values by their cluster label (e.g. per-image outcomes by the object asked), in first-seen order."""
    if len(values) != len(clusters):
        raise ValueError(f"by_cluster: {len(values)} values but {len(clusters)} cluster labels")
    out: dict[str, list[float]] = {}
    for v, c in zip(values, clusters):
        out.setdefault(str(c), []).append(float(v))
    return out


def format_interval(r: Mapping[str, float], digits: int = 3) -> str:
    """'+0.041 [+0.012, +0.070]' from paired_difference's result."""
    return f"{r['diff']:+.{digits}f} [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]"
