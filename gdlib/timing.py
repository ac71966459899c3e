"""Timing helpers for notebooks and benches (never for test thresholds)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _sync(out: Any) -> None:
    """Force a lazily evaluated Jittor result (or a tuple/list of them) to compute."""
    if isinstance(out, (list, tuple)):
        for o in out:
            _sync(o)
    elif hasattr(out, "sync"):
        out.sync()


def cold_warm(fn: Callable[[], Any], repeats: int = 5) -> dict[str, float]:
    """Time the first call (Jittor compiles or loads its kernels) and the median of later calls, in seconds."""
    t0 = time.perf_counter()
    _sync(fn())
    cold = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sync(fn())
        ts.append(time.perf_counter() - t0)
    return {"cold": cold, "warm": statistics.median(ts)}


def interleaved(runs: list[tuple[str, Callable[[], Any]]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each named closure in alternating rounds (after `warmup` untimed calls each), so that load from
    other processes on a shared machine hits every variant alike; returns the seconds of each round."""
    for _ in range(warmup):
        for _, fn in runs:
            _sync(fn())
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(repeats):
        for name, fn in runs:
            t0 = time.perf_counter()
            _sync(fn())
            times[name].append(time.perf_counter() - t0)
    return times


def paired(f_a: Callable[[], Any], f_b: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """(median time of f_a, median time of f_b, median of the per-round ratios a / b), after one untimed call each.

    The two run in alternation with the order swapped every round, so a change in machine load between the start and
    the end of the run hits both alike, and the ratio of one round compares times taken seconds apart. The closures
    must finish their work before returning (Jittor: jt.sync_all())."""
    f_a(), f_b()
    ta, tb = [], []
    for r in range(repeats):
        for f, ts in ((f_a, ta), (f_b, tb)) if r % 2 == 0 else ((f_b, tb), (f_a, ta)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb), statistics.median([a / b for a, b in zip(ta, tb)])
