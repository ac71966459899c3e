"""A user's image folder -> a clean challenge style folder, with a report of what was kept and dropped and why.

The Kolors LoRA baseline of the Jittor challenge prepared its few-shot data with data-juicer (DiffSynth-Studio): a
minimum-size filter (>= 1024 px), an aspect-ratio filter (0.5-2.0), and metadata files for the trainer; the Guided
DoRA entry also had to rename files whose names carried the style (`pixel_art`). `prepare_folder` does the same job
with the libraries the course already uses (PIL, NumPy), for a folder of any images:

  1. read every file (EXIF orientation honoured, 16-bit / CMYK / palette / alpha converted: gdlib.imageio's rules);
     unreadable files are dropped with the reader's message;
  2. drop images smaller than `min_size` on their shorter side, and panoramas / strips outside [min_aspect, max_aspect];
  3. drop near-duplicates: a 64-bit difference hash (dHash: is each pixel brighter than its right neighbour, on a
     9x8 grey thumbnail) within `max_hash_distance` bits of an image already kept (files are visited shortest name
     first, so the original "cat.png" stays and "cat (copy).jpg" goes);
  4. name each image after its object: the file name's words minus style words (`style_words`, plus "style", "art",
     numbers); with several words left, the last one (English puts the noun last: "red_car" -> car); one image per
     object (the challenge layout names images by their object);
  5. write `OUT/images/{object}.png` resized (shorter side) and centre-cropped to `size`, `OUT/metadata.jsonl`
     (`{"file_name": "images/cat.png", "text": "cat"}` per line) and `OUT/metadata.csv`, optionally
     `OUT/prompt.json`, and the report `OUT/prepare_report.json` + `.md`.
Nothing here imports Jittor.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .checkpoint import write_atomic, write_text_atomic
from .imageio import IMAGE_EXTS

COMMON_STYLE_WORDS = ("style", "art", "styled", "painting", "image", "img", "photo", "picture", "copy", "final")


@dataclass
class PrepareConfig:
    """Knobs of `gdlib prepare` (defaults suited to the course's 32 px model; the seed used >= 1024 px for SDXL)."""
    size: int = 32                         # output side in pixels (the model's resolution)
    min_size: int = 32                     # drop images whose shorter side is smaller (they would be upscaled)
    min_aspect: float = 0.5                # width / height bounds, as the seed's data-juicer config
    max_aspect: float = 2.0
    max_hash_distance: int = 6             # dHash bits within which two images count as near-duplicates
    style_words: list[str] = field(default_factory=list)   # words to strip from file names (e.g. pixel, watercolor)


def dhash(image, hash_size: int = 8) -> int:
    """Difference hash of a PIL image: 64 bits, each 'pixel brighter than its right neighbour' on a grey thumbnail."""
    from PIL import Image

    g = np.asarray(image.convert("L").resize((hash_size + 1, hash_size), Image.BILINEAR), dtype=np.int32)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return bin(a ^ b).count("1")


def object_word(stem: str, style_words: Sequence[str] = ()) -> tuple[str | None, str]:
    """(object word or None, note) from a file name: accents folded, split on non-letters, style words and numbers
    dropped, the last remaining word kept."""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z]+", ascii_stem)
    drop = {w.lower() for w in style_words} | set(COMMON_STYLE_WORDS)
    kept = [w for w in words if w not in drop]
    if not kept:
        if not words:
            return None, f"no English letters in the name {stem!r}: rename it to the object it shows (e.g. cat.png)"
        return None, f"the name {stem!r} holds only style words {words}: rename it to the object it shows"
    obj = kept[-1]
    note = "" if kept == [stem.lower()] else f"name {stem!r} -> {obj!r}"
    return obj, note


@dataclass
class Decision:
    source: str
    kept: bool
    output: str | None = None
    object: str | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def prepare_folder(src: str | Path, out: str | Path, config: PrepareConfig | None = None,
                   prompts: Sequence[str] = (), progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Run the preparation (module docstring) from folder `src` into style folder `out`; returns the report dict."""
    from tqdm.auto import tqdm

    cfg = config or PrepareConfig()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist (or is not a folder)")
    if out.resolve() == src.resolve():
        raise ValueError("--out must be a new folder, not the source folder (sources are never modified)")
    if (out / "images").is_dir() and any((out / "images").iterdir()):
        raise ValueError(f"{out}/images already holds files; choose an empty --out folder (nothing is overwritten)")
    if cfg.size < 8 or cfg.min_size < 1 or not 0 < cfg.min_aspect <= 1 <= cfg.max_aspect:
        raise ValueError(f"bad settings: size >= 8, min_size >= 1 and min_aspect <= 1 <= max_aspect are needed, got "
                         f"{asdict(cfg)}")
    bad_prompts = [p for p in prompts if not re.fullmatch(r"[a-z]+", p)]
    if bad_prompts:
        raise ValueError(f"--prompts must be single lower-case object words, got {bad_prompts}")
    # shortest names first, so of two near-duplicates "cat.png" is kept and "cat (copy).jpg" dropped
    files = sorted((p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (len(p.stem), p.name))
    decisions: list[Decision] = []
    kept_hashes: list[tuple[int, str]] = []
    kept_objects: dict[str, str] = {}
    images: list[tuple[Decision, object]] = []
    for path in tqdm(files, desc="prepare", disable=not progress, unit="file"):
        d = Decision(source=path.name, kept=False)
        decisions.append(d)
        if path.suffix.lower() not in IMAGE_EXTS:
            d.reason = f"not an image file type ({path.suffix or 'no extension'}; images: {', '.join(IMAGE_EXTS)})"
            continue
        try:
            im, notes = _read(path)
        except ValueError as err:
            d.reason = str(err)
            continue
        d.notes += notes
        w, h = im.size
        if min(w, h) < cfg.min_size:
            d.reason = f"too small: {w}x{h}, shorter side below {cfg.min_size} px"
            continue
        aspect = w / h
        if not cfg.min_aspect <= aspect <= cfg.max_aspect:
            d.reason = f"aspect ratio {aspect:.2f} ({w}x{h}) outside [{cfg.min_aspect}, {cfg.max_aspect}]: a panorama or strip"
            continue
        hsh = dhash(im)
        near = [(hamming(hsh, k), name) for k, name in kept_hashes]
        near = [x for x in near if x[0] <= cfg.max_hash_distance]
        if near:
            dist, name = min(near)
            d.reason = f"near-duplicate of {name} ({dist} of 64 hash bits differ)"
            continue
        obj, note = object_word(path.stem, cfg.style_words)
        if obj is None:
            d.reason = note
            continue
        if note:
            d.notes.append(note)
        if obj in kept_objects:
            d.reason = f"another image already shows {obj!r} ({kept_objects[obj]}); one image per object"
            continue
        d.kept, d.object, d.output = True, obj, f"images/{obj}.png"
        kept_hashes.append((hsh, path.name))
        kept_objects[obj] = path.name
        images.append((d, im))
    kept = [d for d in decisions if d.kept]
    if not kept:
        why = "; ".join(f"{d.source}: {d.reason}" for d in decisions[:4]) or "the folder is empty"
        raise ValueError(f"nothing in {src} passed the filters ({len(files)} files; {why}"
                         f"{' ...' if len(decisions) > 4 else ''}); relax --min-size / --min-aspect / --max-aspect")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for d, im in images:
        _write_png(out / d.output, _square(im, cfg.size))
    write_text_atomic(out / "metadata.jsonl", "".join(json.dumps({"file_name": d.output, "text": d.object}) + "\n"
                                                  for d in kept))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file_name", "text"])
    writer.writerows([d.output, d.object] for d in kept)
    write_text_atomic(out / "metadata.csv", buf.getvalue())
    if prompts:
        asked = [p for p in prompts if p not in kept_objects]
        write_text_atomic(out / "prompt.json", json.dumps({str(i): p for i, p in enumerate(asked)}, indent=1) + "\n")
    report = {"source": str(src), "out": str(out), "config": asdict(cfg), "n_files": len(files),
              "kept": [asdict(d) for d in kept], "dropped": [asdict(d) for d in decisions if not d.kept]}
    write_text_atomic(out / "prepare_report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "prepare_report.md", report_markdown(report))
    log(report_text(report))
    return report


def _read(path: Path):
    """gdlib.imageio.open_rgb, with its error text shortened to the reason (the report names the file)."""
    from .imageio import open_rgb

    try:
        return open_rgb(path)
    except ValueError as err:
        msg = str(err)
        raise ValueError("refused: " + msg.split(": ", 1)[1] if msg.startswith("refusing") else
                         "unreadable (" + msg.split(": ", 1)[1] + ")") from None


def _square(im, size: int):
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.LANCZOS if s < 1 else Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _write_png(path: Path, im) -> None:
    write_atomic(path, lambda tmp: im.save(tmp, format="PNG"))


def report_text(report: dict) -> str:
    """The terminal summary: counts, then one line per dropped file with its reason."""
    kept, dropped = report["kept"], report["dropped"]
    lines = [f"kept {len(kept)} of {report['n_files']} files -> {report['out']}/images: "
             + ", ".join(f"{d['object']} ({d['source']})" for d in kept)]
    for d in kept:
        if d["notes"]:
            lines.append(f"  {d['source']}: " + "; ".join(d["notes"]))
    if dropped:
        lines.append(f"dropped {len(dropped)}:")
        lines += [f"  {d['source']}: {d['reason']}" for d in dropped]
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    """The report as Markdown tables (kept, dropped)."""
    rows = ["# gdlib prepare report", "", f"Source `{report['source']}` -> `{report['out']}`; settings "
            f"`{json.dumps(report['config'])}`.", "", "| kept | object | written | notes |", "| --- | --- | --- | --- |"]
    rows += [f"| {d['source']} | {d['object']} | {d['output']} | {'; '.join(d['notes'])} |" for d in report["kept"]]
    rows += ["", "| dropped | reason |", "| --- | --- |"]
    rows += [f"| {d['source']} | {d['reason']} |" for d in report["dropped"]]
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    """`gdlib prepare SRC --out STYLE_DIR`: filter, de-duplicate, name and resize a folder of images into a
    challenge style folder, with metadata.jsonl / metadata.csv and a report of what was kept and dropped."""
    from .cliutil import Parser, fail

    d = PrepareConfig()
    p = Parser(prog="gdlib prepare", description=main.__doc__)
    p.add_argument("src", help="folder of your images (any size and format; names should say the object)")
    p.add_argument("--out", required=True, help="new style folder to write (OUT/images/{object}.png + metadata)")
    p.add_argument("--size", type=int, default=d.size, help="output side in pixels (the model's resolution)")
    p.add_argument("--min-size", type=int, default=d.min_size, help="drop images whose shorter side is smaller")
    p.add_argument("--min-aspect", type=float, default=d.min_aspect, help="lowest width/height kept")
    p.add_argument("--max-aspect", type=float, default=d.max_aspect, help="highest width/height kept")
    p.add_argument("--max-hash-distance", type=int, default=d.max_hash_distance,
                   help="dHash bits within which two images are near-duplicates (0: exact duplicates only)")
    p.add_argument("--style-words", default="", help="comma-separated words to strip from file names, e.g. pixel,art")
    p.add_argument("--prompts", default="", help="comma-separated objects to generate later: writes OUT/prompt.json")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = PrepareConfig(size=a.size, min_size=a.min_size, min_aspect=a.min_aspect, max_aspect=a.max_aspect,
                        max_hash_distance=a.max_hash_distance,
                        style_words=[w.strip().lower() for w in a.style_words.split(",") if w.strip()])
    try:
        prepare_folder(a.src, a.out, cfg, [w.strip().lower() for w in a.prompts.split(",") if w.strip()],
                       progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib prepare", err)
    return 0
