"""ToyWorld: a procedural world of objects x rendering styles, the course's embedded default data.

An image is `render(obj, style, seed)`: the seed fixes the object's pose, size and colour variant
(shared by every style, so one seed shows the same object instance in all styles) and the style's own
randomness (background choice, texture noise). Captions read "a {style} painting of a {object}".
Like a real text-to-image training set, an image's caption is drawn from several templates (with and without
the style word, with the object's category word, short forms): `CAPTION_TEMPLATES`.
Known styles are used for the base model's pretraining; held-out styles are only ever seen as
few-shot sets, whose images share one semantic category so that content leakage is measurable. Held-out styles
are split: *validation* styles, the only ones any choice of defaults may look at, and *test* styles, used only
for reported numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .shapes import OBJECT_SPECS
from .styles import STYLE_FNS

DATA_VERSION = "2"  # bump when any drawing or style changes: trained models record it

CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "banana", "cherry"],
    "animal": ["cat", "fish", "bird"],
    "vehicle": ["car", "boat", "plane"],
    "plant": ["tree", "flower", "cactus"],
    "building": ["house", "castle", "tent"],
}
OBJECTS: list[str] = [o for objs in CATEGORIES.values() for o in objs]
CATEGORY_OF: dict[str, str] = {o: c for c, objs in CATEGORIES.items() for o in objs}
KNOWN_STYLES: list[str] = ["flat", "ink", "pixel", "paper", "neon", "sketch",
                           "night", "dots", "pop", "chalk", "sunset", "sepia"]
# data version 1 had the four validation styles only; the course tuned its defaults on them, so they stay validation
VALIDATION_STYLES: list[str] = ["watercolor", "mosaic", "blueprint", "stripes"]
TEST_STYLES: list[str] = ["stitch", "glitch", "thermal", "emboss"]
HELDOUT_STYLES: list[str] = VALIDATION_STYLES + TEST_STYLES
STYLES: list[str] = KNOWN_STYLES + HELDOUT_STYLES
CAPTION_TEMPLATE = "a {style} painting of a {object}"  # the main template ("style" below)
# every prompt the recipe uses at inference is one of these forms (prompts.py), so the base has read it
CAPTION_TEMPLATES: dict[str, str] = {
    "style": CAPTION_TEMPLATE,
    "styleless": "a painting of a {object}",               # DreamBooth's class prompt
    "short": "painting of {object}",                       # the decoupled inference prompt
    "style_short": "{style} painting of {object}",
    "category": "{category} painting of {object}",         # a decoupled training caption
    "style_category": "{style} {category} painting of {object}",
    "tag": "{object}, {style} style",
}
# how often pretraining draws each template (normalised in caption_template_probs)
TEMPLATE_WEIGHTS: dict[str, float] = {"style": 0.3, "styleless": 0.15, "short": 0.1, "style_short": 0.1,
                                      "category": 0.1, "style_category": 0.1, "tag": 0.15}
DEFAULT_SIZE = 32
_SUPERSAMPLE = 4

assert set(OBJECTS) == set(OBJECT_SPECS) and set(STYLES) == set(STYLE_FNS)


def caption(style: str, obj: str, template: str = "style") -> str:
    """A ToyWorld caption of one image, e.g. 'a pixel painting of a cat' (template: a CAPTION_TEMPLATES key)."""
    _check_style(style)
    _check_object(obj)
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"unknown caption template {template!r}; choose from {list(CAPTION_TEMPLATES)}")
    return CAPTION_TEMPLATES[template].format(style=style, object=obj, category=CATEGORY_OF[obj])


def caption_template_probs() -> np.ndarray:
    """Sampling probabilities of the CAPTION_TEMPLATES (in their order) for pretraining captions."""
    w = np.array([TEMPLATE_WEIGHTS[k] for k in CAPTION_TEMPLATES], np.float64)
    return w / w.sum()


def template_has_style(template: str) -> bool:
    """Whether a caption template names the style (style accuracy is only defined for those)."""
    return "{style}" in CAPTION_TEMPLATES[template]


def vocabulary() -> list[str]:
    """Every word that can appear in a ToyWorld caption (template words, categories, styles, objects), sorted."""
    words = set()
    for t in CAPTION_TEMPLATES.values():
        words |= set(t.replace("{style}", " ").replace("{object}", " ").replace("{category}", " ")
                     .replace(",", " ").split())
    return sorted(words | set(CATEGORIES) | set(STYLES) | set(OBJECTS))


def _check_style(style: str) -> None:
    if style not in STYLE_FNS:
        raise ValueError(f"unknown ToyWorld style {style!r}; choose from {STYLES}")


def _check_object(obj: str) -> None:
    if obj not in OBJECT_SPECS:
        raise ValueError(f"unknown ToyWorld object {obj!r}; choose from {OBJECTS}")


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")


def coverage(obj: str, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one posed instance of obj: label coverage float [3, H, W] and colours float [3, 3] in [0, 1]."""
    from PIL import Image, ImageDraw

    drawer, palettes = OBJECT_SPECS[obj]
    parts = drawer(rng)
    colors = np.asarray(palettes[int(rng.integers(len(palettes)))], np.float64) / 255.0
    colors = np.minimum(np.maximum(colors * rng.uniform(0.85, 1.1) + rng.normal(0.0, 0.03, (3, 3)), 0.0), 1.0)
    scale = rng.uniform(0.7, 0.92)
    theta = rng.uniform(-0.25, 0.25)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    shift = rng.uniform(-0.1, 0.1, 2)
    c, s = np.cos(theta), np.sin(theta)
    big = size * _SUPERSAMPLE
    # one affine map for all parts: flip x, rotate, scale, shift, then to supersampled pixels
    a = np.array([[c * flip, s * flip], [-s, c]]) * (scale * 0.5 * big)
    b = (shift + 1.0) * (0.5 * big)
    pts = np.concatenate([q for _, q in parts]) @ a + b
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    start = 0
    for label, q in parts:
        draw.polygon(pts[start:start + len(q)].ravel().tolist(), fill=label)
        start += len(q)
    counts = np.bincount((_block_index(size) + np.asarray(canvas)).ravel(), minlength=size * size * 4)
    cov = counts.reshape(size, size, 4)[..., 1:].transpose(2, 0, 1) / float(_SUPERSAMPLE ** 2)
    return cov.astype(np.float32), colors


_BLOCKS: dict[int, np.ndarray] = {}


def _block_index(size: int) -> np.ndarray:
    """4 x (output pixel index) of every supersampled pixel, so bincount gives per-label coverage."""
    if size not in _BLOCKS:
        r = np.arange(size * _SUPERSAMPLE) // _SUPERSAMPLE
        _BLOCKS[size] = ((r[:, None] * size + r[None, :]) * 4).astype(np.int64)
    return _BLOCKS[size]


def render(obj: str, style: str, seed: int, size: int = DEFAULT_SIZE) -> np.ndarray:
    """One ToyWorld image as uint8 [H, W, 3]; the same (obj, style, seed, size) gives the same pixels."""
    _check_object(obj)
    _check_style(style)
    _check_size(size)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    oi, si = OBJECTS.index(obj), STYLES.index(style)
    cov, colors = coverage(obj, np.random.default_rng([seed, oi, 1_000_003]), size)
    img = STYLE_FNS[style](cov, colors, np.random.default_rng([seed, oi, si]))
    return (np.minimum(np.maximum(img, 0.0), 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] (or [H, W, 3]) -> float32 [N, 3, H, W] in [-1, 1] (the library convention)."""
    a = np.asarray(images_uint8)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {a.shape}")
    return (a.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)


def make_dataset(styles: Sequence[str] | None = None, objects: Sequence[str] | None = None,
                 n_per_pair: int = 1, seed: int = 0, size: int = DEFAULT_SIZE) -> dict:
    """All (style, object) pairs x n_per_pair images: dict(images float32 [N,3,H,W] in [-1,1],
    captions, object_idx, style_idx), indices into OBJECTS and STYLES; ordered style, object, instance."""
    styles = list(STYLES if styles is None else styles)
    objects = list(OBJECTS if objects is None else objects)
    if not styles or not objects:
        raise ValueError("make_dataset needs at least one style and one object")
    for s in styles:
        _check_style(s)
    for o in objects:
        _check_object(o)
    if int(n_per_pair) < 1:
        raise ValueError(f"n_per_pair must be >= 1, got {n_per_pair}")
    n = len(styles) * len(objects) * int(n_per_pair)
    seeds = np.random.default_rng([int(seed), 77]).integers(0, 2**31 - 1, size=n)
    out = np.empty((n, size, size, 3), np.uint8)
    captions, obj_idx, sty_idx = [], np.empty(n, np.int64), np.empty(n, np.int64)
    i = 0
    for s in styles:
        for o in objects:
            for _ in range(int(n_per_pair)):
                out[i] = render(o, s, int(seeds[i]), size)
                captions.append(CAPTION_TEMPLATE.format(style=s, object=o))
                obj_idx[i], sty_idx[i] = OBJECTS.index(o), STYLES.index(s)
                i += 1
    return dict(images=to_float(out), captions=captions, object_idx=obj_idx, style_idx=sty_idx)


def few_shot_set(style: str, category: str, k: int = 3, seed: int = 0, size: int = DEFAULT_SIZE) -> dict:
    """k images of style whose objects all belong to one semantic category (distinct objects first):
    dict(images float32 [k,3,H,W], objects list[str], captions, category, style)."""
    _check_style(style)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose from {list(CATEGORIES)}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng([int(seed), 31, STYLES.index(style), list(CATEGORIES).index(category)])
    pool = CATEGORIES[category]
    objs = [pool[i % len(pool)] for i in range(int(k))]
    objs = [objs[i] for i in rng.permutation(len(objs))]
    seeds = rng.integers(0, 2**31 - 1, size=int(k))
    imgs = np.stack([render(o, style, int(sd), size) for o, sd in zip(objs, seeds)])
    return dict(images=to_float(imgs), objects=objs, captions=[caption(style, o) for o in objs],
                category=category, style=style)


def grid(styles: Sequence[str] | None = None, objects: Sequence[str] | None = None, seed: int = 0,
         size: int = DEFAULT_SIZE) -> np.ndarray:
    """A style x object table of images, uint8 [len(styles), len(objects), H, W, 3] (same instance per column)."""
    styles = list(STYLES if styles is None else styles)
    objects = list(OBJECTS if objects is None else objects)
    return np.stack([np.stack([render(o, s, seed, size) for o in objects]) for s in styles])
