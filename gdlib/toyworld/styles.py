"""ToyWorld rendering styles: each maps label coverage + object colours to an RGB image.

A style function gets `cov` float32 [3, H, W] (coverage of body, part, detail in [0, 1]), `colors`
float [3, 3] (RGB of body, part, detail in [0, 1]) and a numpy Generator, and returns float [H, W, 3]
in [0, 1]. Only numpy is used so that a 32 px image renders in well under a millisecond.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

StyleFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------- small image operators
def _pad(a: np.ndarray, v: float = 0.0) -> np.ndarray:
    p = np.full((a.shape[0] + 2, a.shape[1] + 2), v, dtype=a.dtype)
    p[1:-1, 1:-1] = a
    return p


def dilate(m: np.ndarray) -> np.ndarray:
    """4-neighbour grey dilation (max of the pixel and its 4 neighbours)."""
    p = _pad(m)
    return np.maximum.reduce([m, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def erode(m: np.ndarray) -> np.ndarray:
    """4-neighbour grey erosion (min of the pixel and its 4 neighbours)."""
    p = _pad(m)
    return np.minimum.reduce([m, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def outline(m: np.ndarray) -> np.ndarray:
    """A line about 2 px wide along the silhouette of coverage m."""
    return _clip(dilate(m) - erode(m), 0.0, 1.0)


def inner_line(m: np.ndarray) -> np.ndarray:
    """A line about 1 px wide just inside the silhouette of m."""
    return _clip(m - erode(m), 0.0, 1.0)


def blur(a: np.ndarray, n: int = 1) -> np.ndarray:
    """Separable [1, 2, 1]/4 blur applied n times (edge padding); works on [H, W] or [H, W, C]."""
    for _ in range(n):
        p = np.concatenate([a[:1], a, a[-1:]], axis=0)
        a = 0.25 * (p[:-2] + p[2:]) + 0.5 * a
        p = np.concatenate([a[:, :1], a, a[:, -1:]], axis=1)
        a = 0.25 * (p[:, :-2] + p[:, 2:]) + 0.5 * a
    return a


def smooth_noise(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a cells x cells random grid, upsampled and blurred."""
    from PIL import Image

    g = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(g.resize((size, size), Image.BICUBIC), dtype=np.float64).clip(0.0, 1.0)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached (y, x) integer coordinate grids."""
    if size not in _GRIDS:
        _GRIDS[size] = tuple(np.mgrid[0:size, 0:size])
    return _GRIDS[size]


def _clip(a, lo: float = 0.0, hi: float = 1.0):
    """np.clip without its Python-level overhead (this code runs on tiny arrays)."""
    return np.minimum(np.maximum(a, lo), hi)


def _fill(cov: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object colour image (premultiplied by coverage) and total coverage m."""
    obj = cov.transpose(1, 2, 0) @ colors
    return obj, _clip(cov.sum(0), 0.0, 1.0)


def _over(bg: np.ndarray, obj: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Composite a premultiplied object over a background."""
    return bg * (1.0 - m[..., None]) + obj


def _solid(size: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float64), (size, size, 3)).copy()


def _lum(c: np.ndarray) -> np.ndarray:
    return c @ np.array([0.299, 0.587, 0.114])


def _saturate(colors: np.ndarray) -> np.ndarray:
    """Push colours to full saturation and brightness (pop-art primaries)."""
    lo, hi = colors.min(1, keepdims=True), colors.max(1, keepdims=True)
    return np.where(hi - lo > 0.08, (colors - lo) / np.maximum(hi - lo, 1e-6), hi)


# ---------------------------------------------------------------- the styles
def flat(cov, colors, rng):
    """Flat vector fill on a pale background, no outline."""
    size = cov.shape[1]
    bg = 0.86 + 0.1 * rng.random(3)
    obj, m = _fill(cov, colors)
    return _over(_solid(size, bg), obj, m)


def ink(cov, colors, rng):
    """Black ink contour drawing on white paper; parts outlined too."""
    size = cov.shape[1]
    m = _clip(cov.sum(0), 0, 1)
    line = _clip(inner_line(m) * 1.2 + 0.7 * inner_line(cov[1]) + 0.9 * cov[2] * (1 - erode(cov[2]) * 0.6), 0, 1)
    paper = 0.96 + 0.02 * rng.random() - 0.015 * rng.random((size, size))
    g = paper * (1 - line) + 0.05 * line
    return np.repeat(g[..., None], 3, axis=2)


def pixel(cov, colors, rng):
    """Chunky pixel art: 2x2 blocks, a 4-level palette, a block-level dark outline."""
    size = cov.shape[1]
    b = max(2, size // 16)
    h = size // b
    c = cov[:, :h * b, :h * b].reshape(3, h, b, h, b).mean((2, 4))
    m = c.sum(0) > 0.45
    lab = c.argmax(0)
    pal = np.round(_saturate(colors) * 0.8 * 3) / 3 + 0.2 * np.round(colors * 3) / 3
    bgs = np.array([[0.35, 0.6, 1.0], [0.55, 0.85, 0.35], [0.7, 0.55, 0.9], [1.0, 0.75, 0.35]])
    img = np.broadcast_to(bgs[rng.integers(len(bgs))], (h, h, 3)).copy()
    img[m] = pal[lab[m]]
    ring = (dilate(m.astype(float)) > 0) & ~m
    img[ring] = 0.1
    out = img.repeat(b, axis=0).repeat(b, axis=1)
    return np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1]), (0, 0)), mode="edge")


def paper(cov, colors, rng):
    """Paper cut-out: pastel card shapes with a drop shadow on cream paper."""
    size = cov.shape[1]
    k = max(1, size // 16)
    obj, m = _fill(cov, 0.75 * colors + 0.25)
    shadow = np.zeros_like(m)
    shadow[k:, k:] = m[:-k, :-k]
    fibres = 0.03 * (rng.random((size, size)) - 0.5) + 0.02 * np.sin(np.arange(size) * 2.1)[None, :]
    bg = np.array([0.93, 0.87, 0.74])[None, None] + fibres[..., None]
    bg = bg * (1 - 0.45 * blur(shadow)[..., None])
    return _over(bg, obj, m)


def neon(cov, colors, rng):
    """Neon tubes: a glowing coloured contour on a near-black wall."""
    size = cov.shape[1]
    tubes = np.array([[0.1, 1.0, 1.0], [1.0, 0.2, 0.9], [0.4, 1.0, 0.2], [1.0, 0.6, 0.1]])
    col = tubes[rng.integers(len(tubes))]
    m = _clip(cov.sum(0), 0, 1)
    line = _clip(inner_line(m) + 0.6 * inner_line(cov[1] + cov[2]), 0, 1)
    glow = blur(line, 2)
    bg = np.array([0.04, 0.02, 0.09])
    img = bg + 1.3 * glow[..., None] * col + line[..., None] * (0.5 * col + 0.5)
    return img


def sketch(cov, colors, rng):
    """Pencil sketch: grey contour with diagonal hatching, cross-hatched parts."""
    size = cov.shape[1]
    y, x = _grid(size)
    m = _clip(cov.sum(0), 0, 1)
    off = rng.integers(4)
    hatch = ((x + y + off) % 4 == 0).astype(float)
    cross = ((x - y + off) % 4 == 0).astype(float)
    dark = _clip(0.55 * hatch * m + 0.55 * cross * (cov[1] + cov[2]) + 0.8 * inner_line(m), 0, 1)
    paper = 0.95 - 0.04 * rng.random((size, size))
    g = paper * (1 - dark) + 0.25 * dark
    return np.repeat(g[..., None], 3, axis=2)


def night(cov, colors, rng):
    """Night palette: a dim, blue-shifted scene under a navy sky with stars."""
    size = cov.shape[1]
    t = np.linspace(0, 1, size)[:, None, None]
    sky = (1 - t) * np.array([0.01, 0.02, 0.1]) + t * np.array([0.08, 0.1, 0.3])
    sky = np.broadcast_to(sky, (size, size, 3)).copy()
    stars = rng.random((size, size)) > 0.985
    sky[stars] = [0.95, 0.95, 0.8]
    dim = 0.35 * colors + np.array([0.06, 0.1, 0.3])
    obj, m = _fill(cov, dim)
    rim = inner_line(m)[..., None] * np.array([0.25, 0.3, 0.45])
    return _over(sky, obj, m) + rim


def dots(cov, colors, rng):
    """Halftone dots: the object as a grid of coloured dots over a pale tint, white paper."""
    size = cov.shape[1]
    y, x = _grid(size)
    p = max(3, size // 10)
    oy, ox = rng.integers(p, size=2)
    cell = ((y + oy) % p < 2) & ((x + ox) % p < 2)
    obj, m = _fill(cov, colors)
    tint = _over(_solid(size, 1.0), 0.25 * obj + 0.75 * m[..., None], m)
    return np.where(cell[..., None] & (m[..., None] > 0.3), _saturate(colors)[cov.argmax(0)] * 0.9, tint)


def pop(cov, colors, rng):
    """Pop art: saturated primaries, a thick black outline, a loud flat background."""
    size = cov.shape[1]
    bgs = np.array([[1.0, 0.85, 0.1], [1.0, 0.45, 0.7], [0.2, 0.8, 0.95]])
    obj, m = _fill(cov, _saturate(colors))
    img = _over(_solid(size, bgs[rng.integers(len(bgs))]), obj, m)
    line = _clip(outline(m) + 0.8 * inner_line(cov[1] + cov[2]), 0, 1)[..., None]
    return img * (1 - line)


def chalk(cov, colors, rng):
    """Chalk on a green board: broken white strokes and sparse pale stipple."""
    size = cov.shape[1]
    board = np.array([0.12, 0.26, 0.18]) + 0.05 * (rng.random((size, size, 1)) - 0.5)
    m = _clip(cov.sum(0), 0, 1)
    stroke = inner_line(m) * (rng.random((size, size)) > 0.2)
    stip = m * (rng.random((size, size)) > 0.6)
    pale = 0.5 * colors[cov.argmax(0)] + 0.5
    img = board * (1 - 0.7 * stip[..., None]) + 0.7 * stip[..., None] * pale
    return img * (1 - stroke[..., None]) + stroke[..., None] * 0.92


def sunset(cov, colors, rng):
    """Sunset silhouette: the object in black against an orange-to-purple sky with a low sun."""
    size = cov.shape[1]
    y, x = _grid(size)
    t = (y / (size - 1))[..., None]
    sky = (1 - t) * np.array([0.45, 0.18, 0.5]) + t * np.array([1.0, 0.6, 0.2])
    sx = (0.13 if rng.random() < 0.5 else 0.87) * size
    sun = ((x - sx) ** 2 + (y - 0.7 * size) ** 2) < (0.12 * size) ** 2
    sky[sun] = [1.0, 0.9, 0.5]
    m = _clip(cov.sum(0), 0, 1)[..., None]
    return sky * (1 - m) + m * np.array([0.06, 0.03, 0.06])


def sepia(cov, colors, rng):
    """Old photograph: sepia tones, film grain and a dark vignette."""
    size = cov.shape[1]
    obj, m = _fill(cov, 0.6 * colors)
    img = _over(_solid(size, 0.85), obj, m)
    g = _lum(img) * (1 - 0.3 * inner_line(m)) + 0.07 * (rng.random((size, size)) - 0.5)
    y, x = _grid(size)
    r2 = ((y - size / 2) ** 2 + (x - size / 2) ** 2) / (size / 2) ** 2
    g = g * (1 - 0.35 * _clip(r2 - 0.3, 0, 1))
    return g[..., None] * np.array([1.0, 0.8, 0.58]) + np.array([0.08, 0.05, 0.0])


def watercolor(cov, colors, rng):
    """Watercolour wash: soft, bleeding, blotchy pigment with darker pooled edges on textured paper."""
    size = cov.shape[1]
    obj, m = _fill(cov, colors)
    col = obj / np.maximum(m, 1e-3)[..., None]
    col = blur(np.where(m[..., None] > 0.05, col, colors[0]), 1)
    soft = blur(m, 1)
    a = soft * (0.45 + 0.55 * smooth_noise(rng, size, 5))
    a = _clip(a + 0.45 * blur(inner_line(m), 1) * soft, 0, 1)[..., None]
    paper = 0.98 - 0.06 * smooth_noise(rng, size, 9)[..., None] * np.array([1.0, 1.0, 1.3])
    pigment = col * (0.9 - 0.25 * a)
    return paper * (1 - a) + a * pigment


def mosaic(cov, colors, rng):
    """Mosaic: small tiles with per-tile colour jitter and light grout lines."""
    size = cov.shape[1]
    t = 4
    y, x = _grid(size)
    n = -(-size // t)
    jit = (rng.uniform(0.82, 1.12, (n, n, 1)) + rng.uniform(-0.05, 0.05, (n, n, 3)))
    jit = jit.repeat(t, axis=0).repeat(t, axis=1)[:size, :size]
    bgs = np.array([[0.92, 0.86, 0.7], [0.7, 0.85, 0.9], [0.95, 0.75, 0.6]])
    obj, m = _fill(cov, 0.85 * _saturate(colors) + 0.15 * colors)
    img = _over(_solid(size, bgs[rng.integers(len(bgs))]), obj, m) * jit
    grout = ((y % t == 0) | (x % t == 0))[..., None]
    return np.where(grout, 0.55 * img + 0.45 * np.array([0.35, 0.33, 0.3]), img)


def blueprint(cov, colors, rng):
    """Blueprint: white technical line drawing on blue paper with a faint grid."""
    size = cov.shape[1]
    y, x = _grid(size)
    g = max(4, size // 4)
    grid = ((y % g == 0) | (x % g == 0)).astype(float)[..., None]
    bg = np.array([0.1, 0.3, 0.65]) * (1 - grid) + grid * np.array([0.22, 0.45, 0.8])
    m = _clip(cov.sum(0), 0, 1)
    line = _clip(inner_line(m) + 0.7 * inner_line(cov[1] + cov[2]), 0, 1)[..., None]
    img = bg * (1 - 0.15 * m[..., None]) + 0.15 * m[..., None]
    return img * (1 - line) + line * 0.97


def stripes(cov, colors, rng):
    """Candy stripes: the object filled with bold diagonal stripes of its colours and white."""
    size = cov.shape[1]
    y, x = _grid(size)
    off = rng.integers(4)
    band = (((x - y + off) // 2) % 2 == 0)[..., None]
    obj, m = _fill(cov, colors)
    light = _over(_solid(size, 0.97), 0.2 * obj + 0.8 * m[..., None], m)
    dark = _over(_solid(size, 0.97), obj, m)
    img = np.where(band, dark, light)
    return img * (1 - 0.6 * inner_line(m)[..., None])


def stitch(cov, colors, rng):
    """Cross-stitch embroidery: coloured x-shaped stitches on a woven linen ground, a back-stitched contour."""
    size = cov.shape[1]
    y, x = _grid(size)
    weave = 0.04 * (((x % 2) ^ (y % 2)).astype(float) - 0.5)
    linen = np.array([0.86, 0.82, 0.72]) + weave[..., None] + 0.02 * (rng.random((size, size, 1)) - 0.5)
    c = 3
    oy, ox = rng.integers(c, size=2)
    u, v = (x + ox) % c, (y + oy) % c
    cross = (u == v) | (u == c - 1 - v)
    m = _clip(cov.sum(0), 0, 1)
    thread = _saturate(colors)[cov.argmax(0)] * 0.85
    on = cross & (m > 0.4)
    img = np.where(on[..., None], thread, linen)
    back = inner_line(m) > 0.5
    return np.where(back[..., None] & ~on[..., None], np.array([0.25, 0.15, 0.12]), img)


def glitch(cov, colors, rng):
    """Digital glitch: red and cyan channels torn apart, shifted scanline bands, on a dark screen."""
    size = cov.shape[1]
    y, _ = _grid(size)
    obj, m = _fill(cov, 0.5 * colors + 0.5)
    img = _over(_solid(size, [0.08, 0.08, 0.1]), obj, m)
    k = max(1, size // 16)
    out = img.copy()
    out[..., 0] = np.roll(img[..., 0], 2 * k, axis=1)
    out[..., 2] = np.roll(img[..., 2], -k, axis=1)
    band_h = max(2, size // 8)
    for b in range(0, size, band_h):
        if rng.random() < 0.4:
            out[b:b + band_h] = np.roll(out[b:b + band_h], int(rng.integers(-3 * k, 3 * k + 1)), axis=1)
    scan = (y % 2 == 0)[..., None]
    return np.where(scan, out * 0.75, out)


def thermal(cov, colors, rng):
    """Thermal camera: a false-colour heat map (blue-purple-orange-yellow), warm object on a cold scene."""
    size = cov.shape[1]
    m = _clip(cov.sum(0), 0, 1)
    heat = 0.25 + 0.6 * blur(m, 2) + 0.25 * blur(cov[1] + 0.5 * cov[2], 1) * m
    heat = _clip(heat + 0.12 * (smooth_noise(rng, size, 4) - 0.5), 0, 1)
    stops = np.array([[0.02, 0.0, 0.25], [0.45, 0.0, 0.55], [0.9, 0.25, 0.1], [1.0, 0.75, 0.05], [1.0, 1.0, 0.8]])
    pos = heat * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return stops[i] * (1 - f) + stops[i + 1] * f


def emboss(cov, colors, rng):
    """Embossed relief: a grey metal plate, the object raised and lit from the upper left (no colour)."""
    size = cov.shape[1]
    h = blur(_clip(cov.sum(0), 0, 1) + 0.5 * cov[1] + 0.3 * cov[2], 1)
    p = np.pad(h, 1, mode="edge")
    light = (p[:-2, 1:-1] - p[2:, 1:-1]) + (p[1:-1, :-2] - p[1:-1, 2:])
    base = 0.55 + 0.04 * rng.random() + 0.02 * (rng.random((size, size)) - 0.5)
    g = _clip(base + 0.12 * h + 0.45 * light, 0, 1)
    return g[..., None] * np.array([1.0, 0.98, 0.95])


STYLE_FNS: dict[str, StyleFn] = {
    "flat": flat, "ink": ink, "pixel": pixel, "paper": paper, "neon": neon, "sketch": sketch,
    "night": night, "dots": dots, "pop": pop, "chalk": chalk, "sunset": sunset, "sepia": sepia,
    "watercolor": watercolor, "mosaic": mosaic, "blueprint": blueprint, "stripes": stripes,
    "stitch": stitch, "glitch": glitch, "thermal": thermal, "emboss": emboss,
}
