"""Weight decomposition W = m * V / ||V|| and the DoRA paper's magnitude/direction analysis (Liu et al. 2024, Sec. 2)."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def _np(w) -> np.ndarray:
    """A float64 numpy copy of a numpy array or jt.Var."""
    return np.asarray(w.numpy() if hasattr(w, "numpy") else w, dtype=np.float64)


def magnitude_direction(weight) -> tuple[np.ndarray, np.ndarray]:
    """(m [out], V) with m_n = ||W_n|| per output unit and V = W / m, so W = m * V (Eq. 2 of Liu et al. 2024)."""
    w = _np(weight)
    if w.ndim < 2:
        raise ValueError(f"magnitude_direction(): need a Linear [out, in] or Conv [out, in, kh, kw] weight, got shape {w.shape}")
    m = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
    if np.any(m == 0):
        raise ValueError("magnitude_direction(): a row of the weight is all zeros; its direction is undefined")
    return m, w / m.reshape([-1] + [1] * (w.ndim - 1))


def delta_m_delta_d(weight_t, weight_0, relative: bool = False) -> tuple[float, float]:
    """dM = mean_n | ||W_t,n|| - ||W0_n|| |, dD = mean_n (1 - cos(W_t,n, W0_n)) (Eq. 7 of Liu et al. 2024);
    relative=True divides dM by mean_n ||W0_n||, so layers of different scale can share one fitted line."""
    wt, w0 = _np(weight_t), _np(weight_0)
    if wt.shape != w0.shape:
        raise ValueError(f"delta_m_delta_d(): shapes differ: {wt.shape} vs {w0.shape}")
    mt, vt = magnitude_direction(wt)
    m0, v0 = magnitude_direction(w0)
    k = wt.shape[0]
    cos = (vt.reshape(k, -1) * v0.reshape(k, -1)).sum(1)
    dm = float(np.abs(mt - m0).mean())
    return (dm / float(m0.mean()) if relative else dm), float((1.0 - cos).mean())


def fit_slope(delta_d: Iterable[float], delta_m: Iterable[float]) -> tuple[float, float]:
    """Least-squares line dM = a * dD + b over (layer, checkpoint) points; returns (a, b). Needs 2+ distinct dD."""
    x, y = np.asarray(list(delta_d), np.float64), np.asarray(list(delta_m), np.float64)
    if x.size < 2 or x.size != y.size or np.ptp(x) == 0:
        raise ValueError(f"fit_slope(): need at least 2 points with distinct dD, got {x.size} points")
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def layer_weights(model, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Effective weights by layer name: W' of adapted layers (merged or not), plain weights of Linear/Conv2d."""
    from .. import runtime
    from .layers import AdapterLayer
    jt = runtime.setup_jittor()
    modules = model.named_modules()
    wrappers = [n for n, m in modules if isinstance(m, AdapterLayer)]
    wanted = set(names) if names is not None else None
    out = {}
    for name, m in modules:
        if (wanted is not None and name not in wanted) or any(name.startswith(w + ".") for w in wrappers):
            continue
        if isinstance(m, AdapterLayer):
            with jt.no_grad():
                out[name] = _np(m.effective_weight())
        elif isinstance(m, (jt.nn.Linear, jt.nn.Conv2d)):
            out[name] = _np(m.weight)
    if wanted is not None and set(out) != wanted:
        raise ValueError(f"layer_weights(): no Linear/Conv2d/adapter named {sorted(wanted - set(out))}")
    return out


def dm_dd_points(snapshots: dict[int, dict[str, np.ndarray]], weights_0: dict[str, np.ndarray],
                 relative: bool = False) -> dict[str, np.ndarray]:
    """The paper's scatter data: one (step, layer, dM, dD) row per checkpoint and layer, as column arrays.

    snapshots: {step: {layer: W_t}} (e.g. layer_weights(model) at each checkpoint); weights_0: {layer: W0};
    relative: dM as a fraction of the layer's mean row norm (delta_m_delta_d).
    """
    steps, layers, dms, dds = [], [], [], []
    for step in sorted(snapshots):
        for name in sorted(snapshots[step]):
            if name not in weights_0:
                raise ValueError(f"dm_dd_points(): no pretrained weight for layer {name!r}")
            dm, dd = delta_m_delta_d(snapshots[step][name], weights_0[name], relative)
            steps.append(step)
            layers.append(name)
            dms.append(dm)
            dds.append(dd)
    if not steps:
        raise ValueError("dm_dd_points(): no snapshots given")
    return {"step": np.asarray(steps), "layer": np.asarray(layers), "dM": np.asarray(dms), "dD": np.asarray(dds)}
