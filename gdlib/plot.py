"""Figures for the notebooks: image grids, curves, trajectories. Each returns the matplotlib Figure."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def to_uint8(images) -> np.ndarray:
    """[N, 3, H, W] (or [3, H, W]) float in [-1, 1] (numpy or jt.Var) -> [N, H, W, 3] uint8."""
    a = images.numpy() if hasattr(images, "numpy") and not isinstance(images, np.ndarray) else np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"to_uint8: expected [N, 3, H, W] images, got shape {a.shape}")
    a = np.clip((a.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    a = a.transpose(0, 2, 3, 1)
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def image_grid(images, nrow: int | None = None, titles: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None, scale: float = 1.0, suptitle: str | None = None,
               empty: Sequence[int] = ()):
    """Show images ([N, 3, H, W] in [-1, 1], or [N, H, W, 3] uint8) in a grid with optional titles; the cells whose
    index is in `empty` stay blank (e.g. a short row of references)."""
    import matplotlib.pyplot as plt

    arr = np.asarray(images) if not hasattr(images, "numpy") else images.numpy()
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    n = arr.shape[0]
    ncol = nrow if nrow else min(n, 8)
    rows = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(rows, ncol, figsize=(1.3 * ncol * scale, 1.4 * rows * scale), squeeze=False)
    skip = set(int(i) for i in empty)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n and i not in skip:
            ax.imshow(arr[i], interpolation="nearest")
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=7)
    if row_labels is not None:
        for r, lab in enumerate(row_labels[:rows]):
            axes[r, 0].axis("on")
            axes[r, 0].set_xticks([]); axes[r, 0].set_yticks([])
            for s in axes[r, 0].spines.values():
                s.set_visible(False)
            axes[r, 0].set_ylabel(lab, fontsize=7, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def denoising_strip(states: Sequence[np.ndarray], x0_hats: Sequence[np.ndarray], ts: Sequence[int],
                    n_cols: int = 8, suptitle: str | None = None, row_labels: Sequence[str] = ("x_t", "x0_hat")):
    """The reverse process of one image as two rows: the state x_t (top) and the Tweedie estimate x0_hat (bottom) at
    up to n_cols evenly spaced steps (images [3, H, W] in [-1, 1]; the last column is the final step). Any two
    per-step image sequences work (e.g. x0_hat and RB-Modulation's controlled z*, with row_labels)."""
    if not (len(states) == len(x0_hats) == len(ts)) or not len(ts):
        raise ValueError(f"denoising_strip: need as many states, x0_hats and timesteps (got {len(states)}, "
                         f"{len(x0_hats)}, {len(ts)})")
    idx = np.unique(np.linspace(0, len(ts) - 1, min(n_cols, len(ts))).round().astype(int))
    top = np.stack([np.clip(np.asarray(states[i]), -1, 1) for i in idx])
    bottom = np.stack([np.asarray(x0_hats[i]) for i in idx])
    return image_grid(np.concatenate([top, bottom]), nrow=len(idx), titles=[f"t={int(ts[i])}" for i in idx],
                      row_labels=list(row_labels), suptitle=suptitle)


def curves(xs: dict[str, Sequence[float]], ys: dict[str, Sequence[float]], xlabel: str, ylabel: str,
           title: str | None = None, logx: bool = False, logy: bool = False, markers: bool = True):
    """Line plot of several named series (xs[name] against ys[name])."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ys:
        ax.plot(xs[name], ys[name], marker="o" if markers else None, ms=3, label=name)
    ax.set_xlabel(xlabel); ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bars(values: dict[str, float], ylabel: str, title: str | None = None, logy: bool = False,
         fmt: str = "{:.3g}"):
    """Bar chart of named values, each bar labelled with its number."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(values), 3.2))
    names, vals = list(values), [values[k] for k in values]
    rects = ax.bar(names, vals, color="#4c72b0")
    for r, v in zip(rects, vals):
        ax.annotate(fmt.format(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def style_object_grid(grid, styles: Sequence[str], objects: Sequence[str], scale: float = 1.0,
                      heldout: Sequence[str] = (), title: str | None = None):
    """A styles x objects table of images (uint8 [S, O, H, W, 3]) as one labelled picture; held-out styles starred."""
    import matplotlib.pyplot as plt

    g = np.asarray(grid)
    if g.ndim != 5 or g.shape[:2] != (len(styles), len(objects)):
        raise ValueError(f"style_object_grid: expected [{len(styles)}, {len(objects)}, H, W, 3], got {g.shape}")
    s, o, h, w, _ = g.shape
    pad = max(1, h // 16)
    canvas = np.full((s * (h + pad) - pad, o * (w + pad) - pad, 3), 255, np.uint8)
    for i in range(s):
        for j in range(o):
            canvas[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = g[i, j]
    fig, ax = plt.subplots(figsize=(0.45 * o * scale + 1.2, 0.45 * s * scale + 0.8))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(o)])
    ax.set_xticklabels(objects, rotation=60, fontsize=7)
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(s)])
    ax.set_yticklabels([f"{n} *" if n in heldout else n for n in styles], fontsize=7)
    ax.tick_params(length=0)
    for sp in ax.spines.values():
        sp.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def points_2d(clouds: dict, paths=None, title: str | None = None, ax=None, lim: float = 1.6, s: float = 2.0):
    """Scatter named 2-D point clouds ([N, 2] each) and optional trajectories ([steps + 1, P, 2]) on one axis."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
    for name, pts in clouds.items():
        p = np.asarray(pts.numpy() if hasattr(pts, "numpy") and not isinstance(pts, np.ndarray) else pts)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"points_2d: cloud {name!r} must be [N, 2], got {p.shape}")
        ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.5, label=name)
    if paths is not None:
        P = np.asarray(paths)
        if P.ndim != 3 or P.shape[2] != 2:
            raise ValueError(f"points_2d: paths must be [steps + 1, P, 2], got {P.shape}")
        for j in range(P.shape[1]):
            ax.plot(P[:, j, 0], P[:, j, 1], lw=0.7, color="k", alpha=0.6)
            ax.plot(P[-1, j, 0], P[-1, j, 1], "o", ms=2.5, color="k")
    ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right", markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def sampler_panel(result: dict):
    """Left: exact vs sampled points with trajectories; right: Tweedie estimates x0_hat along the same paths."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.2, 3.6))
    lab = f"{result['sampler']} ({result['nfe']} NFE, eta={result['eta']:g})"
    points_2d({"exact": result["exact"], lab: result["samples"]}, paths=result["paths"], ax=a1,
              title=f"{lab}\nsliced W2 to exact = {result['swd']:.4f}")
    xh = np.asarray(result["x0_hats"])
    points_2d({"exact": result["exact"]}, paths=xh, ax=a2, title="Tweedie x0_hat at every step")
    fig.tight_layout()
    return fig


def tweedie_arrows(x_t, x0_hat, exact, title: str | None = None, ax=None, lim: float = 1.6):
    """Arrows from noisy points x_t to their Tweedie estimates E[x0|x_t], over exact data samples."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.4, 3.4))
    x_t, x0_hat, exact = (np.asarray(v) for v in (x_t, x0_hat, exact))
    if x_t.shape != x0_hat.shape or x_t.ndim != 2 or x_t.shape[1] != 2:
        raise ValueError(f"tweedie_arrows: x_t and x0_hat must both be [N, 2], got {x_t.shape}, {x0_hat.shape}")
    ax.scatter(exact[:, 0], exact[:, 1], s=2, alpha=0.3, color="gray", label="data")
    ax.scatter(x_t[:, 0], x_t[:, 1], s=6, color="tab:blue", label="x_t")
    ax.quiver(x_t[:, 0], x_t[:, 1], x0_hat[:, 0] - x_t[:, 0], x0_hat[:, 1] - x_t[:, 1], angles="xy",
              scale_units="xy", scale=1, width=0.004, color="tab:red", alpha=0.8)
    ax.scatter(x0_hat[:, 0], x0_hat[:, 1], s=6, color="tab:red", label="E[x0|x_t]")
    ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def dm_dd_scatter(points: dict[str, dict], slopes: dict[str, tuple[float, float]] | None = None,
                  title: str | None = None):
    """DoRA paper's figure: dD (x) vs dM (y) per method, points coloured by step, fitted lines (Liu et al. 2024, Fig. 2).

    points: {method: gdlib.adapters.dm_dd_points(...)}; slopes: {method: (a, b)} from gdlib.adapters.fit_slope.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(3.6 * len(points), 3.2), squeeze=False)
    for ax, (method, p) in zip(axes[0], points.items()):
        sc = ax.scatter(p["dD"], p["dM"], c=p["step"], cmap="viridis", s=14)
        if slopes and method in slopes:
            a, b = slopes[method]
            xs = np.linspace(float(np.min(p["dD"])), float(np.max(p["dD"])), 20)
            ax.plot(xs, a * xs + b, "r-", lw=1.2, label=f"slope {a:+.3g}")
            ax.legend(fontsize=8)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("ΔD (direction)")
        ax.set_ylabel("ΔM (magnitude)")
        fig.colorbar(sc, ax=ax, label="step")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tradeoff(x: Sequence[float], y: Sequence[float], labels: Sequence[str], xlabel: str, ylabel: str,
             title: str | None = None, series: str | None = None, ax=None):
    """A trade-off curve: points (x_k, y_k) joined in order, each annotated with labels[k]."""
    import matplotlib.pyplot as plt

    if not (len(x) == len(y) == len(labels)):
        raise ValueError(f"tradeoff: x, y and labels must be equally long, got {len(x)}, {len(y)}, {len(labels)}")
    fig = ax.figure if ax is not None else plt.subplots(figsize=(5, 3.6))[0]
    ax = ax if ax is not None else fig.axes[0]
    ax.plot(x, y, marker="o", ms=4, label=series)
    for xi, yi, lab in zip(x, y, labels):
        ax.annotate(str(lab), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel); ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def grouped_bars(rows: dict[str, dict[str, float]], metrics: Sequence[str], title: str | None = None,
                 ylabel: str = "score", fmt: str = "{:.2f}"):
    """Grouped bar chart: one group per metric, one bar per row name (e.g. ablation variants), labelled."""
    import matplotlib.pyplot as plt

    names = list(rows)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(metrics), 3.4))
    for i, name in enumerate(names):
        xs = np.arange(len(metrics)) + (i - (len(names) - 1) / 2) * width
        vals = [rows[name][m] for m in metrics]
        rects = ax.bar(xs, vals, width, label=name)
        for r, v in zip(rects, vals):
            ax.annotate(fmt.format(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                        fontsize=6)
    ax.set_xticks(np.arange(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
