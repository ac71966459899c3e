"""ToyWorld <-> challenge layout: export few-shot style sets, render oracle "predictions", and the CLI."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cliutil import Parser, fail
from gdlib import imageio

from . import (CATEGORIES, DATA_VERSION, DEFAULT_SIZE, HELDOUT_STYLES, OBJECTS, STYLES, _check_style,
               few_shot_set, render, to_float)


def export_challenge(out: str | Path, styles: Sequence[str] | None = None, seed: int = 0, per_style: int = 3,
                     size: int = DEFAULT_SIZE, categories: Sequence[str] | None = None,
                     max_prompts: int | None = None) -> dict:
    """Write one folder per style: a few-shot set of one category (images/{object}.png) and prompt.json
    listing every other object (or max_prompts of them, spread over the categories); also {out}/toyworld.json
    (style, category, seed per folder). Returns it."""
    styles = list(HELDOUT_STYLES if styles is None else styles)
    for s in styles:
        _check_style(s)
    k_max = min(len(v) for v in CATEGORIES.values())
    if not 1 <= int(per_style) <= k_max:
        raise ValueError(f"per_style must be between 1 and {k_max}: a few-shot set holds distinct objects of "
                         "one category, because file names are object words")
    if max_prompts is not None and int(max_prompts) < 1:
        raise ValueError(f"max_prompts must be >= 1 (or None: every object the set does not show), got {max_prompts}")
    rng = np.random.default_rng([int(seed), 5])
    if categories is None:
        cats = list(CATEGORIES)
        start = int(rng.integers(len(cats)))
        categories = [cats[(start + i) % len(cats)] for i in range(len(styles))]
    categories = list(categories)
    if len(categories) != len(styles):
        raise ValueError(f"{len(styles)} styles but {len(categories)} categories")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"data_version": DATA_VERSION, "seed": int(seed), "size": int(size), "sets": {}}
    for i, (style, cat) in enumerate(zip(styles, categories)):
        fs = few_shot_set(style, cat, int(per_style), seed=int(seed) * 1000 + i, size=size)
        others = [o for o in OBJECTS if o not in fs["objects"]]
        if max_prompts is not None and int(max_prompts) < len(others):  # evenly spaced: every category stays asked
            others = [others[j] for j in np.linspace(0, len(others) - 1, int(max_prompts)).round().astype(int)]
        sid = f"{i:02d}"
        imageio.save_style_set(out, sid, fs["images"], fs["objects"], {str(j): o for j, o in enumerate(others)})
        manifest["sets"][sid] = {"style": style, "category": cat, "objects": fs["objects"]}
    imageio.write_text_atomic(out / imageio.MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def oracle_predictions(ref: str | Path, out: str | Path, seed: int = 1, shuffle_labels: bool = False,
                       size: int = DEFAULT_SIZE) -> dict[str, list[str]]:
    """Render real ToyWorld images of every prompt in each folder's style (read from toyworld.json) as if a
    model had generated them: {out}/{NN}/{prompt}.png. With shuffle_labels the file names are permuted
    within each folder, so content is right but labels are random (a control for the content metric)."""
    ref = Path(ref)
    man_path = ref / imageio.MANIFEST
    if not man_path.is_file():
        raise FileNotFoundError(f"{man_path} not found: oracle predictions need the style of each folder, "
                                "which `gdlib toyworld export` records there")
    manifest = json.loads(man_path.read_text())
    written = {}
    for k, (sid, meta) in enumerate(sorted(manifest["sets"].items())):
        rng = np.random.default_rng([int(seed), 11, k])  # per folder: shuffling never changes the pictures
        prompts = imageio.read_prompts(ref / sid / "prompt.json")
        words = [w for _, w in sorted(prompts.items(), key=lambda kv: (len(kv[0]), kv[0]))]
        bad = [w for w in words if w not in OBJECTS]
        if bad:
            raise ValueError(f"{ref / sid}/prompt.json asks for {bad}, which ToyWorld cannot draw")
        seeds = rng.integers(0, 2**31 - 1, size=len(words))
        imgs = to_float(np.stack([render(w, meta["style"], int(s), size) for w, s in zip(words, seeds)]))
        names = [words[j] for j in rng.permutation(len(words))] if shuffle_labels else words
        imageio.save_images(Path(out) / sid, imgs, names)
        written[sid] = names
    return written


def save_grid_figure(out: str | Path, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Every style x every object at `size` px in one labelled PNG (held-out styles starred)."""
    from gdlib import plot
    from . import grid

    fig = plot.style_object_grid(grid(seed=seed, size=size), STYLES, OBJECTS, heldout=HELDOUT_STYLES,
                                 title=f"ToyWorld v{DATA_VERSION} at {size} px, seed {seed} (* held out)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=110))
    return out


def main(argv: list[str]) -> int:
    """`gdlib toyworld`: export few-shot sets in the challenge layout, or render oracle predictions."""
    import argparse

    p = Parser(prog="gdlib toyworld", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write {out}/NN/images/{object}.png + prompt.json per style")
    e.add_argument("--out", required=True)
    e.add_argument("--styles", nargs="+", default=None, help=f"default: the held-out styles {HELDOUT_STYLES}; "
                   f"any of {STYLES}")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--per-style", type=int, default=3, help="few-shot images per style (one category)")
    e.add_argument("--size", type=int, default=DEFAULT_SIZE)
    e.add_argument("--max-prompts", type=int, default=None, help="prompts per set (default: every other object)")
    o = sub.add_parser("oracle", help="render real ToyWorld images of every prompt as predictions {out}/NN/{prompt}.png")
    o.add_argument("--ref", required=True, help="a folder written by `gdlib toyworld export`")
    o.add_argument("--out", required=True)
    o.add_argument("--seed", type=int, default=1)
    o.add_argument("--shuffle-labels", action="store_true", help="permute file names (control: chance content)")
    o.add_argument("--size", type=int, default=DEFAULT_SIZE)
    im = sub.add_parser("import", help="copy your own images ({object}.jpg/png, any size) into the challenge layout")
    im.add_argument("--images", required=True, help="folder of images named after their object")
    im.add_argument("--out", required=True, help="challenge root; the set goes to {out}/NN")
    im.add_argument("--id", default=None, help="two-digit set id (default: next free)")
    im.add_argument("--prompts", nargs="+", default=None, help="objects to generate (default: ToyWorld objects)")
    im.add_argument("--size", type=int, default=DEFAULT_SIZE)
    g = sub.add_parser("grid", help="save a style x object picture (one instance per object) as PNG")
    g.add_argument("--out", required=True, help="output .png file")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=DEFAULT_SIZE)
    a = p.parse_args(argv)
    try:
        if a.cmd == "grid":
            save_grid_figure(a.out, a.seed, a.size)
            print(f"wrote {a.out}")
        elif a.cmd == "import":
            d = imageio.import_folder(a.images, a.out, a.id, a.prompts, a.size)
            print(f"wrote {d} ({len(list((d / 'images').glob('*.png')))} images)")
        elif a.cmd == "export":
            m = export_challenge(a.out, a.styles, a.seed, a.per_style, a.size, max_prompts=a.max_prompts)
            for sid, s in m["sets"].items():
                print(f"{a.out}/{sid}: {s['style']:<11} {s['category']:<9} {', '.join(s['objects'])}")
        else:
            w = oracle_predictions(a.ref, a.out, a.seed, a.shuffle_labels, a.size)
            print(f"wrote {sum(len(v) for v in w.values())} images in {len(w)} folders under {a.out}")
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib toyworld", err)
    return 0
