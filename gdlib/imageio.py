"""Image files in the challenge layout: {root}/{NN}/images/{object}.png + {root}/{NN}/prompt.json.

Predictions are written as {out}/{NN}/{prompt}.png (the challenge's output layout); the readers also
accept {out}/{NN}/images/{prompt}.png. Any folder of real images loads through the same code: any size
and mode becomes RGB, resized (shorter side) and centre-cropped to a square, in the library convention
float32 [N, 3, H, W] in [-1, 1]. File stems are object words (letters only).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import write_atomic, write_text_atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WORD_RE = re.compile(r"^[A-Za-z]+$")
MANIFEST = "toyworld.json"


@dataclass
class StyleSet:
    """One style folder: its id (NN), reference images and their object words, and the prompts to generate."""
    sid: str
    images: np.ndarray
    objects: list[str]
    prompts: dict[str, str]
    path: Path
    meta: dict = field(default_factory=dict)


def open_rgb(path: str | Path):
    """Any image file -> (PIL RGB image, notes on what was converted): EXIF orientation applied, 16-bit / CMYK /
    palette / alpha converted (alpha over white). Unreadable files and decompression bombs (more than
    PIL.Image.MAX_IMAGE_PIXELS pixels, refused before decoding) are a ValueError naming the file."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not decode, a bomb
            with Image.open(path) as im:
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                if orientation not in (0, 1):
                    notes.append(f"turned upright (EXIF orientation {orientation})")
                im = ImageOps.exif_transpose(im)          # phone photos: honour the camera's orientation tag
                if im.mode != "RGB":
                    notes.append(f"converted from {im.mode} to RGB")
                return _to_rgb(im), notes
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"refusing image {path}: {e} Shrink it first.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}. "
                         "Remove the file or re-save it as PNG/JPEG.") from e


def load_image(path: str | Path, size: int = 32) -> np.ndarray:
    """Any image file -> float32 [3, size, size] in [-1, 1]: read by open_rgb (EXIF, 16-bit, CMYK, alpha; bombs and
    unreadable files refused naming the file), resized (shorter side) and centre-cropped."""
    from PIL import Image

    im, _ = open_rgb(path)
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError(f"image {path} is empty ({w}x{h})")
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.LANCZOS if s < 1 else Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32)
    return (a.transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


def _to_rgb(im):
    """A PIL image of any mode -> RGB: 16/32-bit integer grey scaled to 8 bits (PIL's own conversion clips it),
    alpha and palette transparency composited over white, CMYK and the rest through PIL."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS),
                  key=lambda p: (p.stem.lower(), p.name))


def load_image_folder(folder: str | Path, size: int = 32) -> dict:
    """A folder of images named {object}.{ext} -> dict(images float32 [N,3,size,size], objects, paths)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (or is not a folder)")
    files = _image_files(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:5]
        raise ValueError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTS)}"
                         + (f"; found only {others}" if others else "; the folder is empty") + ")")
    bad = [p.name for p in files if not WORD_RE.match(p.stem)]
    if bad:
        raise ValueError(f"file names in {folder} must be a single word naming the object (letters only, "
                         f"e.g. 'cat.png'); rename {bad}")
    objects = [p.stem.lower() for p in files]
    dup = sorted({o for o in objects if objects.count(o) > 1})
    if dup:
        raise ValueError(f"several files in {folder} name the same object {dup}; keep one image per object")
    images = np.stack([load_image(p, size) for p in files])
    return dict(images=images, objects=objects, paths=files)


def read_prompts(path: str | Path) -> dict[str, str]:
    """prompt.json ({id: object word}) -> dict, with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: each style folder needs a prompt.json "
                                '({"0": "cat", "1": "car", ...}) listing the objects to generate')
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 JSON") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}" + (" (the file is empty)" if not text.strip() else "")) from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must be a JSON object mapping ids to object words, e.g. {{\"0\": \"cat\"}}, "
                         f"not a {type(d).__name__}")
    bad = [v for v in d.values() if not (isinstance(v, str) and WORD_RE.match(v))]
    if bad:
        raise ValueError(f"{path}: prompts must be single English object words (ASCII letters), e.g. "
                         f"{{\"0\": \"cat\"}}; these are not: {bad[:5]}")
    return {str(k): v.lower() for k, v in d.items()}


def _set_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"challenge folder {root} does not exist")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ValueError(f"{root} holds no style folders; expected {root}/NN/images/*.png + {root}/NN/prompt.json")
    return dirs


def load_challenge(root: str | Path, size: int = 32) -> list[StyleSet]:
    """Read every {root}/{NN}/images/*.png + prompt.json as a StyleSet (meta from toyworld.json if present)."""
    root = Path(root)
    dirs = _set_dirs(root)
    manifest = json.loads((root / MANIFEST).read_text()).get("sets", {}) if (root / MANIFEST).is_file() else {}
    sets = []
    for d in dirs:
        if not (d / "images").is_dir():
            raise FileNotFoundError(f"{d}/images not found: the challenge layout is {root}/NN/images/{{object}}.png")
        f = load_image_folder(d / "images", size)
        sets.append(StyleSet(d.name, f["images"], f["objects"], read_prompts(d / "prompt.json"), d,
                             dict(manifest.get(d.name, {}))))
    return sets


def load_predictions(root: str | Path, size: int = 32) -> dict[str, dict]:
    """Read predictions {root}/{NN}/{word}.png (or {root}/{NN}/images/{word}.png): sid -> load_image_folder dict."""
    root = Path(root)
    out = {}
    for d in _set_dirs(root):
        sub = d / "images" if (d / "images").is_dir() and not _image_files(d) else d
        out[d.name] = load_image_folder(sub, size)
    return out


def image_batch(images, texts, who: str) -> tuple[np.ndarray, list[str]]:
    """(float32 [N, 3, H, W], N texts) from one image or a batch and one text (repeated) or one per image."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    texts = [texts] * len(x) if isinstance(texts, str) else list(texts)
    if len(texts) != len(x):
        raise ValueError(f"{who}: {len(x)} source images but {len(texts)} prompts")
    return x, texts


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    return np.clip((a + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def save_images(folder: str | Path, images: np.ndarray, names: list[str]) -> list[Path]:
    """Write images (library convention) as {folder}/{name}.png; names must be words."""
    from PIL import Image

    folder = Path(folder)
    if len(names) != len(images):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    bad = [n for n in names if not WORD_RE.match(n)]
    if bad:
        raise ValueError(f"image names must be single words (letters only), got {bad}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(to_uint8_hwc(images), names):
        paths.append(folder / f"{name}.png")
        im = Image.fromarray(img)
        write_atomic(paths[-1], lambda tmp: im.save(tmp, format="PNG"))
    return paths


def save_style_set(root: str | Path, sid: str, images: np.ndarray, objects: list[str],
                   prompts: dict[str, str]) -> Path:
    """Write one challenge style folder: {root}/{sid}/images/{object}.png and {root}/{sid}/prompt.json."""
    d = Path(root) / sid
    save_images(d / "images", images, objects)
    write_text_atomic(d / "prompt.json", json.dumps(prompts, indent=1) + "\n")
    return d


def import_folder(folder: str | Path, root: str | Path, sid: str | None = None, prompts: list[str] | None = None,
                  size: int = 32) -> Path:
    """Copy a user's folder of images ({object}.{any ext}, any size/mode) into the challenge layout as
    {root}/{sid}/images/{object}.png at size px, with prompt.json listing `prompts` (default: every ToyWorld
    object not among the images). sid defaults to the next free two-digit id. Returns the style folder."""
    root = Path(root)
    f = load_image_folder(folder, size)
    if prompts is None:
        from gdlib.toyworld import OBJECTS
        prompts = [o for o in OBJECTS if o not in f["objects"]]
    bad = [w for w in prompts if not WORD_RE.match(w)]
    if bad or not prompts:
        raise ValueError(f"prompts must be a non-empty list of single words, got {prompts}")
    if sid is None:
        taken = {p.name for p in root.iterdir()} if root.is_dir() else set()
        sid = next(f"{i:02d}" for i in range(100) if f"{i:02d}" not in taken)
    if (root / sid).exists():
        raise ValueError(f"{root / sid} already exists; choose another id or remove it")
    return save_style_set(root, sid, f["images"], f["objects"], {str(i): w.lower() for i, w in enumerate(prompts)})
