"""The inputs of a few-shot fine-tune: a style folder (or several), the base model it adapts, the captions of its
images (gdlib.prompts' caption modes), and the prior-preservation class images the base model draws itself (cached)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import prompts as P
from . import runtime

jt = runtime.setup_jittor()

from .checkpoint import load_tensors, save_tensors  # noqa: E402
from .config import DEFAULT_BASE, DEFAULT_GUIDANCE, StyleConfig  # noqa: E402
from .pipeline import TextToImage  # noqa: E402


def load_style_folder(style_dir: str | os.PathLike, size: int = 32) -> dict:
    """A challenge style folder ({dir}/images/*.png [+ prompt.json]) or a plain folder of {object}.png images ->
    dict(images, objects, sid, style, prompts, path), with clear errors for inputs a fine-tune cannot use."""
    from . import imageio

    d = Path(style_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"style folder {d} does not exist (expected {d}/images/{{object}}.png)")
    img_dir = d / "images" if (d / "images").is_dir() else d
    files = [p for p in img_dir.iterdir() if not p.name.startswith(".")]
    not_images = sorted(p.name for p in files if p.is_file() and p.suffix.lower() not in imageio.IMAGE_EXTS)
    if not_images:
        raise ValueError(f"{img_dir} holds files that are not images: {not_images}; move them out of the folder "
                         f"(images: {', '.join(imageio.IMAGE_EXTS)})")
    stems = [p.stem for p in files if p.is_file()]
    non_ascii = sorted(s for s in stems if not s.isascii())
    if non_ascii:
        raise ValueError(f"image names in {img_dir} must be English object words the text encoder knows (ASCII "
                         f"letters); rename {non_ascii} (e.g. '猫.png' -> 'cat.png')")
    f = imageio.load_image_folder(img_dir, size)  # duplicate objects, unreadable images, bad names: ValueError
    if len(f["objects"]) < 2:
        raise ValueError(f"{img_dir} holds {len(f['objects'])} image(s); few-shot style fine-tuning needs at least "
                         "2 images of the style (3-5 is typical), each named after its object")
    prompts = imageio.read_prompts(d / "prompt.json") if (d / "prompt.json").is_file() else {}
    style = None
    manifest = d.parent / imageio.MANIFEST
    if manifest.is_file():
        style = json.loads(manifest.read_text()).get("sets", {}).get(d.name, {}).get("style")
    return dict(images=f["images"], objects=f["objects"], sid=d.name, style=style, prompts=prompts, path=str(d))


def load_base(path: str | os.PathLike = DEFAULT_BASE) -> TextToImage:
    """The base model from an exported file (TextToImage.save) or a train-base checkpoint (its EMA weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"base model {path} not found; export one with `gdlib train-base --export gdlib/data/base` "
                                "or pass --base runs/base/ckpt.safetensors")
    tensors, meta = load_tensors(path)
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else ""
    return TextToImage.from_tensors(tensors, meta, str(path), prefix=prefix)


def model_fingerprint(model: TextToImage) -> str:
    """sha256 (16 hex) of the base model's config and every weight: an adapter only fits the base it was trained on."""
    from .adapters import adapted_layers

    if adapted_layers(model.unet):
        raise ValueError("model_fingerprint(): the model already carries an adapter; use a freshly loaded base")
    h = hashlib.sha256(model.config.to_json().encode())
    for k, v in sorted(model.state().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def build_captions(model: TextToImage, objects: Sequence[str], cfg: StyleConfig, keys: Sequence[str],
                   sid: str = "00") -> dict:
    """Training captions, inference template pieces and the new tokens they need (unknown words: ValueError);
    keys look up the attribute table (style name, folder id), sid names the instance token style_{sid}."""
    P._check_mode(cfg.caption_mode)
    token = P.instance_token(cfg.caption_mode, sid, cfg.token)
    P.check_words(model.tokenizer, objects, cfg.new_words, what="object names (image file names)")
    table = P.load_table(cfg.attributes)
    attrs = P.attributes_for(table, keys, objects) if cfg.caption_mode == "decoupled" else \
        {"attributes": [], "style_words": []}
    allowed = set(P.new_words(table)) | set(cfg.new_words) | ({token} if token else set())
    words = list(objects) + attrs["attributes"] + attrs["style_words"] + ([token] if token else [])
    new = P.check_words(model.tokenizer, words, sorted(allowed), what="caption words")
    captions = [P.train_caption(cfg.caption_mode, o, token, **attrs) for o in objects]
    return {"captions": captions, "token": token, "new_tokens": new, "caption_mode": cfg.caption_mode, **attrs}


def concept_info(info: dict, concept: str | int | None = None) -> dict:
    """One concept of a style file's info: by folder id (sid) or index; None: the first (the only one unless the
    file was trained jointly on several folders or merged by `gdlib merge`)."""
    concepts = info.get("concepts") or [info]  # files written before joint training hold one concept at top level
    if concept is None:
        return concepts[0]
    if isinstance(concept, int):
        return concepts[concept]
    for c in concepts:
        if str(c.get("sid")) == str(concept) or c.get("token") == concept:
            return c
    raise ValueError(f"no concept {concept!r} in this style file; it holds "
                     f"{[c.get('sid') for c in concepts]} (tokens {[c.get('token') for c in concepts]})")


def style_prompt(info: dict, obj: str, concept: str | int | None = None) -> str:
    """The inference prompt for object `obj` with a fine-tuned style (info from finetune_style / load_style); for a
    multi-concept file, `concept` (folder id, token or index) picks which style."""
    c = concept_info(info, concept)
    return P.inference_prompt(info["caption_mode"], obj, c.get("token"), style_words=c.get("style_words", []))


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("GDLIB_CACHE", Path.home() / ".cache" / "gdlib")) / "class_images"


def class_images(model: TextToImage, objects: Sequence[str], n: int, steps: int = 20, guidance: float = DEFAULT_GUIDANCE,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None, fingerprint: str | None = None,
                 log: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
    """n class images "a painting of a {object}" (objects round-robin) generated by the base model, cached as
    safetensors under cache_dir keyed by the base fingerprint and the generation settings."""
    from .pipeline import generate

    if n < 1 or not objects:
        raise ValueError(f"class_images: need n >= 1 and at least one object, got n={n}, objects={list(objects)}")
    prompts = [P.class_prompt(objects[i % len(objects)]) for i in range(int(n))]
    fp = fingerprint or model_fingerprint(model)
    key = hashlib.sha256(json.dumps([fp, prompts, steps, guidance, seed]).encode()).hexdigest()[:16]
    path = _cache_dir(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        tensors, meta = load_tensors(path)
        if json.loads(meta.get("prompts", "[]")) == prompts:
            log(f"class images: {n} from cache {path}")
            return tensors["images"], prompts
    t0 = time.time()
    images = generate(model, prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed, strict=True)
    save_tensors(path, {"images": images}, {"prompts": json.dumps(prompts), "base_fingerprint": fp,
                                            "steps": str(steps), "guidance": str(guidance), "seed": str(seed)})
    log(f"class images: generated {n} in {time.time() - t0:.0f} s, cached at {path}")
    return images, prompts


def style_sets(style, size: int) -> list[dict]:
    """One style folder or several (paths or load_style_folder dicts) -> their dicts, checked for joint training."""
    many = isinstance(style, (list, tuple))
    sets = [s if isinstance(s, dict) else load_style_folder(s, size) for s in (style if many else [style])]
    if not sets:
        raise ValueError("finetune_style: no style folder given")
    for ds in sets:
        if ds["images"].shape[-1] != size:
            raise ValueError(f"style images of {ds.get('path', ds.get('sid'))} are {ds['images'].shape[-1]} px but "
                             f"resolution is {size}")
        if len(ds["objects"]) < 2:
            raise ValueError("few-shot style fine-tuning needs at least 2 images per style")
    sids = [str(ds.get("sid") or "00") for ds in sets]
    if len(set(sids)) != len(sids):
        raise ValueError(f"joint training needs style folders with distinct names (ids), got {sids}")
    return sets
