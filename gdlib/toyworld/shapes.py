"""ToyWorld objects: silhouettes as labelled polygons in a [-1, 1]^2 frame (y points down).

Every object is a list of (label, points) parts drawn in order, label 1 = body, 2 = secondary part
(stem, leaf, sail, trunk, wing), 3 = small dark/accent detail (eye, wheel, flower centre).
Each object also has a colour palette: one (body, part, detail) RGB triple per variant.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Part = tuple[int, np.ndarray]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20, rot: float = 0.0) -> np.ndarray:
    """Polygon approximating an ellipse, optionally rotated by rot radians."""
    if n not in _UNIT:
        t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        _UNIT[n] = np.stack([np.cos(t), np.sin(t)], axis=1)
    p = _UNIT[n] * (rx, ry)
    if rot:
        c, s = np.cos(rot), np.sin(rot)
        p = p @ np.array([[c, s], [-s, c]])
    return p + (cx, cy)


_UNIT: dict[int, np.ndarray] = {}


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle as a polygon."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def poly(*pts: tuple[float, float]) -> np.ndarray:
    """Polygon from a list of (x, y) points."""
    return np.array(pts, dtype=np.float64)


def thick_line(p0: tuple[float, float], p1: tuple[float, float], w: float) -> np.ndarray:
    """A segment of half-width w as a quadrilateral."""
    a, b = np.array(p0, float), np.array(p1, float)
    d = b - a
    nrm = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * w
    return np.stack([a + nrm, b + nrm, b - nrm, a - nrm])


def _apple(r: np.random.Generator) -> list[Part]:
    w = r.uniform(0.55, 0.65)
    return [(1, ellipse(-0.2, 0.12, w * 0.62, 0.55)), (1, ellipse(0.2, 0.12, w * 0.62, 0.55)),
            (1, ellipse(0.0, 0.3, w * 0.8, 0.4)),
            (2, thick_line((0.0, -0.35), (0.08, -0.68), 0.05)),
            (2, ellipse(0.28, -0.55, 0.2, 0.09, rot=-0.5))]


def _banana(r: np.random.Generator) -> list[Part]:
    t = np.linspace(-1.0, 1.0, 17)
    bend = r.uniform(0.35, 0.5)
    cx, cy = 0.85 * t, -0.15 + bend * (1.0 - t ** 2)
    w = 0.21 * (1.0 - t ** 2) ** 0.6 + 0.03
    upper = np.stack([cx, cy - w], 1)
    lower = np.stack([cx, cy + w], 1)[::-1]
    return [(1, np.concatenate([upper, lower])),
            (2, thick_line((-0.85, -0.15), (-0.97, -0.3), 0.05)),
            (2, ellipse(0.86, -0.15, 0.05, 0.05, n=8))]


def _cherry(r: np.random.Generator) -> list[Part]:
    rr = r.uniform(0.25, 0.3)
    return [(2, thick_line((-0.33, 0.35), (0.02, -0.62), 0.035)),
            (2, thick_line((0.33, 0.4), (0.02, -0.62), 0.035)),
            (2, ellipse(0.22, -0.62, 0.22, 0.08, rot=0.3)),
            (1, ellipse(-0.33, 0.42, rr, rr)), (1, ellipse(0.33, 0.47, rr, rr)),
            (3, ellipse(-0.42, 0.34, 0.06, 0.06, n=8))]


def _cat(r: np.random.Generator) -> list[Part]:
    return [(1, ellipse(0.05, 0.38, 0.42, 0.44)),
            (1, thick_line((0.4, 0.7), (0.8, 0.45), 0.07)), (1, thick_line((0.8, 0.45), (0.78, 0.05), 0.07)),
            (1, ellipse(-0.05, -0.32, 0.32, 0.28)),
            (1, poly((-0.35, -0.4), (-0.32, -0.8), (-0.1, -0.52))),
            (1, poly((0.25, -0.4), (0.22, -0.8), (0.0, -0.52))),
            (3, ellipse(-0.16, -0.34, 0.06, 0.07, n=8)), (3, ellipse(0.08, -0.34, 0.06, 0.07, n=8))]


def _fish(r: np.random.Generator) -> list[Part]:
    h = r.uniform(0.28, 0.36)
    return [(1, poly((0.35, 0.0), (0.88, -0.4), (0.78, 0.0), (0.88, 0.4))),
            (2, poly((-0.2, -h + 0.05), (0.05, -h - 0.22), (0.2, -h + 0.1))),
            (1, ellipse(-0.15, 0.0, 0.6, h)),
            (3, ellipse(-0.5, -0.06, 0.07, 0.07, n=8))]


def _bird(r: np.random.Generator) -> list[Part]:
    return [(1, poly((0.3, 0.05), (0.85, -0.2), (0.8, 0.2))),
            (1, ellipse(0.05, 0.15, 0.48, 0.3, rot=-0.15)),
            (1, ellipse(-0.45, -0.22, 0.23, 0.22)),
            (2, poly((-0.62, -0.28), (-0.92, -0.16), (-0.62, -0.12))),
            (2, poly((-0.1, 0.05), (0.45, -0.05), (0.15, -0.55))),
            (2, thick_line((-0.05, 0.4), (-0.1, 0.7), 0.03)), (2, thick_line((0.15, 0.4), (0.15, 0.7), 0.03)),
            (3, ellipse(-0.5, -0.27, 0.05, 0.05, n=8))]


def _car(r: np.random.Generator) -> list[Part]:
    h = r.uniform(0.3, 0.4)
    return [(1, rect(-0.85, 0.0, 0.85, 0.38)),
            (1, poly((-0.5, 0.02), (-0.3, -h), (0.35, -h), (0.55, 0.02))),
            (2, poly((-0.38, -0.03), (-0.24, -h + 0.07), (0.0, -h + 0.07), (0.0, -0.03))),
            (2, poly((0.07, -0.03), (0.07, -h + 0.07), (0.3, -h + 0.07), (0.42, -0.03))),
            (3, ellipse(-0.48, 0.4, 0.19, 0.19)), (3, ellipse(0.48, 0.4, 0.19, 0.19))]


def _boat(r: np.random.Generator) -> list[Part]:
    s = r.uniform(0.5, 0.65)
    return [(1, poly((-0.9, 0.28), (0.9, 0.28), (0.6, 0.62), (-0.6, 0.62))),
            (3, rect(-0.03, -0.85, 0.03, 0.3)),
            (2, poly((0.07, -0.8), (0.07, 0.18), (0.07 + s, 0.18))),
            (2, poly((-0.07, -0.6), (-0.07, 0.18), (-0.5, 0.18)))]


def _plane(r: np.random.Generator) -> list[Part]:
    sw = r.uniform(0.1, 0.25)
    return [(2, poly((0.05, -0.05), (-0.1 + sw, -0.85), (-0.3 + sw, -0.85), (-0.3, -0.05))),
            (2, poly((0.05, 0.05), (-0.1 + sw, 0.85), (-0.3 + sw, 0.85), (-0.3, 0.05))),
            (2, poly((0.62, 0.0), (0.8, -0.35), (0.7, -0.35), (0.55, 0.0), (0.7, 0.35), (0.8, 0.35))),
            (1, ellipse(0.0, 0.0, 0.9, 0.13)),
            (3, ellipse(-0.68, 0.0, 0.1, 0.06, n=10))]


def _tree(r: np.random.Generator) -> list[Part]:
    c = r.uniform(0.42, 0.52)
    return [(2, poly((-0.1, 0.85), (0.1, 0.85), (0.07, 0.1), (-0.07, 0.1))),
            (1, ellipse(0.0, -0.25, c, c * 0.95)), (1, ellipse(-0.35, 0.02, c * 0.6, c * 0.55)),
            (1, ellipse(0.35, 0.02, c * 0.6, c * 0.55))]


def _flower(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = [(2, thick_line((0.0, -0.3), (0.0, 0.88), 0.045)),
                         (2, ellipse(0.22, 0.45, 0.22, 0.08, rot=-0.5))]
    n = int(r.integers(5, 8))
    for k in range(n):
        a = 2 * np.pi * k / n
        parts.append((1, ellipse(0.3 * np.cos(a), -0.3 + 0.3 * np.sin(a), 0.22, 0.13, n=14, rot=a)))
    parts.append((3, ellipse(0.0, -0.3, 0.15, 0.15, n=12)))
    return parts


def _cactus(r: np.random.Generator) -> list[Part]:
    return [(1, rect(-0.16, -0.75, 0.16, 0.45)), (1, ellipse(0.0, -0.75, 0.16, 0.12, n=12)),
            (1, rect(-0.52, -0.1, -0.1, 0.08)), (1, rect(-0.52, -0.5, -0.36, 0.0)),
            (1, ellipse(-0.44, -0.5, 0.08, 0.07, n=10)),
            (1, rect(0.1, 0.05, 0.5, 0.22)), (1, rect(0.36, -0.3, 0.5, 0.15)),
            (1, ellipse(0.43, -0.3, 0.07, 0.07, n=10)),
            (2, poly((-0.38, 0.42), (0.38, 0.42), (0.28, 0.88), (-0.28, 0.88)))]


def _house(r: np.random.Generator) -> list[Part]:
    return [(1, rect(-0.6, -0.1, 0.6, 0.75)),
            (2, poly((-0.8, -0.05), (0.0, -0.8), (0.8, -0.05))),
            (3, rect(-0.15, 0.3, 0.15, 0.75)),
            (3, rect(-0.48, 0.05, -0.26, 0.27)), (3, rect(0.26, 0.05, 0.48, 0.27))]


def _castle(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = [(1, rect(-0.8, -0.2, 0.8, 0.75))]
    for x in (-0.8, 0.45):
        parts.append((1, rect(x, -0.6, x + 0.35, -0.15)))
        parts.append((1, rect(x, -0.78, x + 0.1, -0.55)))
        parts.append((1, rect(x + 0.25, -0.78, x + 0.35, -0.55)))
    parts += [(1, rect(-0.35, -0.35, -0.2, -0.15)), (1, rect(-0.075, -0.35, 0.075, -0.15)),
              (1, rect(0.2, -0.35, 0.35, -0.15)),
              (3, np.concatenate([ellipse(0.0, 0.4, 0.2, 0.2)[10:], poly((0.2, 0.75), (-0.2, 0.75))]))]
    return parts


def _tent(r: np.random.Generator) -> list[Part]:
    return [(1, poly((0.0, -0.75), (0.9, 0.7), (-0.9, 0.7))),
            (3, poly((0.0, -0.05), (0.3, 0.7), (-0.3, 0.7))),
            (2, thick_line((0.0, -0.75), (0.0, -0.95), 0.03)),
            (2, poly((0.0, -0.95), (0.3, -0.88), (0.0, -0.8)))]


# object -> (drawer, palette variants of (body, part, detail) RGB in 0..255)
OBJECT_SPECS: dict[str, tuple[Callable[[np.random.Generator], list[Part]], list[tuple]]] = {
    "apple": (_apple, [((205, 30, 35), (70, 130, 40), (255, 230, 230)), ((120, 190, 50), (90, 120, 40), (240, 250, 210))]),
    "banana": (_banana, [((245, 215, 50), (110, 80, 30), (90, 70, 20))]),
    "cherry": (_cherry, [((175, 10, 45), (60, 125, 35), (255, 180, 190))]),
    "cat": (_cat, [((225, 140, 50), (0, 0, 0), (40, 160, 60)), ((120, 120, 125), (0, 0, 0), (230, 200, 40)),
                   ((45, 40, 40), (0, 0, 0), (240, 200, 40))]),
    "fish": (_fish, [((250, 130, 30), (250, 200, 60), (20, 20, 20)), ((40, 120, 220), (250, 210, 60), (20, 20, 20))]),
    "bird": (_bird, [((50, 100, 220), (245, 165, 25), (15, 15, 15)), ((210, 40, 40), (240, 170, 30), (15, 15, 15))]),
    "car": (_car, [((215, 35, 35), (170, 215, 245), (30, 30, 30)), ((35, 90, 210), (170, 215, 245), (30, 30, 30)),
                   ((40, 160, 70), (170, 215, 245), (30, 30, 30))]),
    "boat": (_boat, [((135, 80, 40), (245, 245, 235), (90, 60, 30)), ((30, 60, 140), (240, 240, 230), (90, 60, 30))]),
    "plane": (_plane, [((185, 190, 200), (120, 125, 140), (60, 110, 180)), ((235, 235, 240), (200, 40, 40), (60, 110, 180))]),
    "tree": (_tree, [((40, 150, 50), (110, 70, 30), (0, 0, 0)), ((90, 170, 40), (100, 60, 25), (0, 0, 0))]),
    "flower": (_flower, [((235, 80, 150), (60, 140, 40), (250, 210, 40)), ((150, 80, 220), (60, 140, 40), (250, 210, 40)),
                         ((230, 40, 40), (60, 140, 40), (250, 210, 40))]),
    "cactus": (_cactus, [((60, 150, 70), (195, 95, 50), (0, 0, 0))]),
    "house": (_house, [((235, 200, 140), (185, 50, 40), (90, 60, 40)), ((200, 210, 230), (60, 70, 90), (90, 60, 40))]),
    "castle": (_castle, [((160, 160, 165), (0, 0, 0), (70, 50, 35)), ((200, 180, 140), (0, 0, 0), (70, 50, 35))]),
    "tent": (_tent, [((240, 140, 30), (110, 80, 50), (70, 40, 20)), ((50, 150, 90), (110, 80, 50), (25, 50, 30))]),
}
