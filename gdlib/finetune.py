"""Few-shot style fine-tuning: DreamBooth with prior preservation (Ruiz et al. 2023, Eq. 2) and prompt decoupling.

    loss = E ||eps_hat(x_t, t, c_inst) - eps||^2 + lambda_prior E ||eps_hat(x'_t, t', c_class) - eps'||^2

on a challenge-format style folder (images/{object}.png), with a LoRA / DoRA adapter (gdlib.adapters) or full
fine-tuning of the UNet, new tokens ("sks", "style_07", attribute words) whose embeddings are trained, and
optionally the whole text encoder. Class images x' come from the base model itself and are cached. The result is
one safetensors file: the UNet adapter under peft's keys (readable by gdlib.adapters.load_adapter), trained token
rows or text-encoder weights, and metadata (captions, inference template, base fingerprint, model card).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cliutil import config_kwargs, fail  # noqa: E402
from .config import (ADAPTER_KINDS, CUSTOM_TARGETS, DEFAULT_BASE, DEFAULT_GUIDANCE, STYLE_TARGETS,  # noqa: E402,F401
                     StyleConfig)
from . import prompts as P
from . import runtime

jt = runtime.setup_jittor()

from .checkpoint import load_tensors, save_tensors, write_text_atomic  # noqa: E402
from .core import count_skipped, denoising_loss, guarded_step, load_run, min_snr_weights, noised_batch, save_run  # noqa: E402
from .pipeline import TextToImage  # noqa: E402

STYLE_KEY = "gdlib_style"


# --------------------------------------------------------------------------------------------- inputs
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


# --------------------------------------------------------------------------------------------- captions
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


# --------------------------------------------------------------------------------------------- prior images
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


# --------------------------------------------------------------------------------------------- trainable parts
def _prepare(model: TextToImage, cfg: StyleConfig, new_tokens: Sequence[str]) -> dict:
    """Add tokens, inject the adapter (or unfreeze the UNet), choose the trainable Vars and the token-row mask."""
    from . import adapters

    if cfg.adapter not in ADAPTER_KINDS:
        raise ValueError(f"adapter={cfg.adapter!r}: use one of {ADAPTER_KINDS}")
    emb = model.text_encoder.token_embedding.weight
    known = [i for i, w in enumerate(model.tokenizer.words) if not w.startswith("<")]
    ids = model.tokenizer.add_tokens(list(new_tokens))
    if ids:  # a new word starts as the average known word (textual-inversion style init)
        w = emb.numpy()
        w[ids] = w[known].mean(0, keepdims=True)
        emb.update(jt.array(w))
    for p in model.parameters():
        p.stop_grad()
    if cfg.adapter == "full":
        params = list(model.unet.parameters())
        for p in params:
            p.start_grad()
    elif cfg.adapter == "custom":
        params = [m.weight for _, m in custom_layers(model)]
        for p in params:
            p.start_grad()
    else:
        adapters.inject(model.unet, targets=list(cfg.targets), kind=cfg.adapter, rank=cfg.rank,
                        alpha=float(cfg.rank if cfg.alpha is None else cfg.alpha), seed=cfg.seed)
        params = adapters.trainable_parameters(model.unet)
    row_mask = None
    if cfg.train_text_encoder:
        te = list(model.text_encoder.parameters())
        for p in te:
            p.start_grad()
        params = params + te
    elif cfg.train_tokens and ids:
        emb.start_grad()
        params = params + [emb]
        m = np.zeros((emb.shape[0], 1), np.float32)
        m[ids] = 1.0
        row_mask = (jt.array(m), emb.numpy().copy())
    return {"params": params, "token_ids": ids, "row_mask": row_mask}


def _keep_frozen_rows(model: TextToImage, row_mask) -> None:
    """Only the new tokens' embedding rows train: put every other row back (AdamW's decay included)."""
    if row_mask is None:
        return
    mask, w0 = row_mask
    emb = model.text_encoder.token_embedding.weight
    emb.update((emb * mask + jt.array(w0) * (1.0 - mask)).detach())


def custom_layers(model: TextToImage) -> list[tuple[str, Any]]:
    """The (name, Linear) pairs Custom Diffusion trains: every cross-attention key and value projection."""
    found = [(n, m) for n, m in model.unet.named_modules() if any(n.endswith(t) for t in CUSTOM_TARGETS)]
    if not found:
        raise ValueError(f"adapter 'custom': the UNet has no {CUSTOM_TARGETS} layers")
    return found


# --------------------------------------------------------------------------------------------- files
def style_tensors(model: TextToImage, info: dict) -> dict[str, np.ndarray]:
    """What a style file stores: the UNet adapter (peft keys) or UNet weights, token rows or text-encoder weights."""
    from .adapters import adapter_state_dict
    from .checkpoint import module_state

    if info["adapter"] == "full":
        out = module_state(model.unet, "unet.")
    elif info["adapter"] == "custom":
        out = {f"unet.{n}.weight": m.weight.numpy().copy() for n, m in custom_layers(model)}
    else:
        out = adapter_state_dict(model.unet)
    if info["train_text_encoder"]:
        out.update(module_state(model.text_encoder, "text_encoder."))
    else:
        emb = model.text_encoder.token_embedding.weight.numpy()
        for w in info["new_tokens"]:
            out[f"token_embedding.{w}"] = emb[model.tokenizer.ids[w]].copy()
    return out


def save_style(path: str | os.PathLike, model: TextToImage, info: dict) -> Path:
    """One .safetensors file; for lora/dora its metadata is also a gdlib adapter file (adapters.read_adapter)."""
    from .adapters import adapter_config, base_fingerprint
    from .adapters.io import FORMAT

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the style file must end in .safetensors, got {path.name!r}")
    meta = {STYLE_KEY: json.dumps(info)}
    if info["adapter"] in ("full", "custom"):
        meta["format"] = f"gdlib-style-{info['adapter']}/1"
    else:
        meta.update({"format": FORMAT, "config": json.dumps(adapter_config(model.unet)),
                     "base_fingerprint": json.dumps(base_fingerprint(model.unet)), "base_id": info["base_fingerprint"]})
    return save_tensors(path, style_tensors(model, info), meta)


def read_style(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, style info) of a style file, with a clear error for other files."""
    tensors, meta = load_tensors(path)
    if STYLE_KEY not in meta:
        raise ValueError(f"{path} is not a gdlib style file (no {STYLE_KEY!r} metadata); write one with "
                         "`gdlib train-style` or gdlib.finetune.finetune_style")
    return tensors, json.loads(meta[STYLE_KEY])


def load_style(model: TextToImage, path: str | os.PathLike, strict_base: bool = True) -> dict:
    """Apply a style file to a freshly loaded base model in place (tokens, adapter/weights); return its info.
    A file trained on another base model is a ValueError (strict_base=False: a warning)."""
    import warnings

    from .adapters import load_adapter
    from .checkpoint import load_module_state

    tensors, info = read_style(path)
    fp = model_fingerprint(model)
    if fp != info["base_fingerprint"]:
        msg = (f"{path} was fine-tuned on another base model (fingerprint {info['base_fingerprint']}, "
               f"base {info.get('base_path')!r}); this model's fingerprint is {fp}. Load the base it was trained on")
        if strict_base:
            raise ValueError(msg + " (or pass strict_base=False to apply it anyway)")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    ids = model.tokenizer.add_tokens(info["new_tokens"])
    if info["adapter"] == "full":
        load_module_state(model.unet, tensors, "unet.")
    elif info["adapter"] == "custom":
        layers = dict(custom_layers(model))
        for key, value in tensors.items():
            if key.startswith("unet."):
                layers[key[len("unet."):-len(".weight")]].weight.update(jt.array(value))
    else:
        load_adapter(model.unet, path, strict_base=strict_base)
    if info["train_text_encoder"]:
        load_module_state(model.text_encoder, tensors, "text_encoder.")
    elif ids:
        emb = model.text_encoder.token_embedding.weight
        w = emb.numpy()
        for i, word in zip(ids, info["new_tokens"]):
            w[i] = tensors[f"token_embedding.{word}"]
        emb.update(jt.array(w))
    for p in model.parameters():
        p.stop_grad()
    return info


# --------------------------------------------------------------------------------------------- training
def _ckpt_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".ckpt.safetensors")


def _style_sets(style, size: int) -> list[dict]:
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


def finetune_style(style: str | os.PathLike | dict | Sequence, out: str | os.PathLike | None = None,
                   config: StyleConfig | None = None, model: TextToImage | None = None,
                   base: str | os.PathLike = DEFAULT_BASE, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Fine-tune one style (a folder, or a dict from load_style_folder) on the base model; with `out`, write the
    style file there and resume from its checkpoint. Returns dict(model, info, history, path).

    A list of folders trains them jointly (Custom Diffusion's multi-concept training, Kumari et al. 2023, Sec. 3.2):
    caption mode 'instance', each folder's captions with its own token style_{sid}; info["concepts"] lists them
    (style_prompt(info, obj, concept=sid)). The model is changed in place (pass a fresh copy, or let `base` load)."""
    from tqdm.auto import tqdm

    cfg = config or StyleConfig()
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.prior_weight < 0:
        raise ValueError("steps must be >= 0, batch_size >= 1, lr > 0 and prior_weight >= 0")
    if cfg.adapter not in ADAPTER_KINDS:
        raise ValueError(f"adapter={cfg.adapter!r}: use one of {ADAPTER_KINDS}")
    base_path = None
    if model is None:
        model, base_path = load_base(base), str(base)
    size = cfg.resolution or model.config.unet.image_size
    sets = _style_sets(style, size)
    if len(sets) > 1 and (cfg.caption_mode != "instance" or cfg.token is not None):
        raise ValueError("joint training of several style folders needs caption mode 'instance' and no fixed "
                         "--token: each folder gets its own token style_{folder id}")
    fp = model_fingerprint(model)
    concepts, captions, new_tokens = [], [], []
    for ds in sets:
        keys = [k for k in (ds.get("style"), ds.get("sid")) if k]
        caps = build_captions(model, ds["objects"], cfg, keys, str(ds.get("sid") or "00"))
        concepts.append({"sid": ds.get("sid"), "style": ds.get("style"), "token": caps["token"],
                         "objects": ds["objects"], "attributes": caps["attributes"],
                         "style_words": caps["style_words"]})
        captions += caps["captions"]
        new_tokens += [w for w in caps["new_tokens"] if w not in new_tokens]
    objects = [o for ds in sets for o in ds["objects"]]
    x_inst = np.concatenate([ds["images"] for ds in sets]).astype(np.float32)
    class_x, class_caps = None, []
    if cfg.prior_weight > 0:
        objs = cfg.class_objects
        if objs is None:
            from .toyworld import OBJECTS
            objs = [o for o in OBJECTS if o in model.tokenizer.ids]
        P.check_words(model.tokenizer, objs, what="class objects")
        class_x, class_caps = class_images(model, objs, cfg.num_class_images, cfg.class_steps, cfg.class_guidance,
                                           cfg.seed, cache_dir, fp, log)
    parts = _prepare(model, cfg, new_tokens)
    params = parts["params"]
    first = concepts[0]
    info = {"adapter": cfg.adapter, "caption_mode": cfg.caption_mode, "token": first["token"],
            "attributes": first["attributes"], "style_words": first["style_words"], "new_tokens": new_tokens,
            "train_text_encoder": cfg.train_text_encoder, "captions": captions, "objects": objects,
            "sid": first["sid"], "style": first["style"], "concepts": concepts, "base_fingerprint": fp,
            "base_path": base_path, "config": asdict(cfg)}
    opt = jt.optim.AdamW(params, cfg.lr, weight_decay=0.0)
    run = {"base": fp, "config": {k: v for k, v in asdict(cfg).items() if k not in ("steps", "checkpoint_every")},
           "captions": captions, "objects": objects, "images": hashlib.sha256(x_inst.tobytes()).hexdigest()[:16]}
    state = {"step": 0, "elapsed": 0.0, "history": {"step": [], "loss": [], "prior_loss": []}}
    out = Path(out) if out is not None else None
    ckpt = _ckpt_path(out) if out is not None else None
    if ckpt is not None and ckpt.is_file():
        tensors, state, _ = load_run(ckpt, opt, run)
        for i, p in enumerate(params):
            p.update(jt.array(tensors[f"param.{i}"]))
        _keep_frozen_rows(model, parts["row_mask"])
        log(f"resumed from {ckpt} at step {state['step']}")
    ids_inst = model.tokenizer.encode(captions, strict=True)
    ids_cls = model.tokenizer.encode(class_caps, strict=True) if class_caps else None
    text_trains = cfg.train_text_encoder or parts["row_mask"] is not None
    B = cfg.batch_size
    bar = tqdm(total=cfg.steps, initial=min(state["step"], cfg.steps), disable=not progress, desc="train-style",
               mininterval=2)
    t0, elapsed0, hist = time.time(), state["elapsed"], state["history"]
    bad_steps = 0

    def checkpoint() -> None:
        save_run(ckpt, {f"param.{i}": p.numpy() for i, p in enumerate(params)}, opt, state, run)

    while state["step"] < cfg.steps:
        step = state["step"]
        rng = np.random.default_rng([cfg.seed, step])  # per step: a resumed run draws the same batches
        idx = rng.integers(0, len(x_inst), B)
        x0, ids = x_inst[idx], ids_inst[idx]
        if cfg.flip:
            x0 = np.where(rng.random(B)[:, None, None, None] < 0.5, x0[..., ::-1], x0)
        n_cls = 0
        if class_x is not None:
            jdx = rng.integers(0, len(class_x), B)
            x0, ids, n_cls = np.concatenate([x0, class_x[jdx]]), np.concatenate([ids, ids_cls[jdx]]), B
        x_t, t, target = noised_batch(model.schedule, x0, rng)
        w = min_snr_weights(model.schedule.alphas_cumprod[t], cfg.min_snr_gamma, model.config.prediction_type)
        context = model.text_encoder(ids.astype(np.int32))
        if not text_trains:
            context = context.stop_grad()
        per_sample = denoising_loss(model.unet, x_t, t, context, target, w)
        inst_loss = per_sample[:B].mean()
        loss = inst_loss
        if n_cls:
            prior_loss = per_sample[B:].mean()
            loss = inst_loss + cfg.prior_weight * prior_loss
        total_val, norm_val, updated = guarded_step(opt, loss, cfg.grad_clip)
        if not updated:  # weights untouched; a run of them is an error
            bad_steps = count_skipped(bad_steps, total_val, norm_val, step, cfg.lr, ckpt, log)
            continue
        bad_steps = 0
        _keep_frozen_rows(model, parts["row_mask"])
        loss_val = float(inst_loss.item())
        state["step"] = step + 1
        state["elapsed"] = elapsed0 + time.time() - t0
        hist["step"].append(state["step"])
        hist["loss"].append(loss_val)
        hist["prior_loss"].append(float(prior_loss.item()) if n_cls else None)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(hist['loss'][-20:]):.4f}")
        if ckpt is not None and cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 \
                and state["step"] < cfg.steps:
            checkpoint()
    bar.close()
    for p in model.parameters():
        p.stop_grad()
    info.update(steps=state["step"], train_minutes=round(state["elapsed"] / 60, 2),
                final_loss=float(np.mean(hist["loss"][-20:])) if hist["loss"] else None)
    path = None
    if out is not None:
        checkpoint()
        path = save_style(out, model, info)
        log(f"wrote {path} after {state['step']} steps ({state['elapsed'] / 60:.1f} min)")
    return {"model": model, "info": info, "history": hist, "path": path}


# --------------------------------------------------------------------------------------------- scoring
def generate_style(model: TextToImage, info: dict, objects: Sequence[str], n_per_object: int = 1, steps: int = 20,
                   guidance: float = DEFAULT_GUIDANCE, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Images of `objects` in the fine-tuned style (inference prompts of info's caption mode)."""
    from .pipeline import generate

    asked = [o for o in objects for _ in range(int(n_per_object))]
    return generate(model, [style_prompt(info, o) for o in asked], steps, guidance, seed=seed, strict=True), asked


def score_style(model: TextToImage, info: dict, ref_images: np.ndarray, objects: Sequence[str],
                n_per_object: int = 1, steps: int = 20, guidance: float = DEFAULT_GUIDANCE, seed: int = 0, ev: Any = None) -> dict:
    """gdlib.metrics.score_set on generated images of `objects` against the few-shot references: content accuracy,
    leakage (share drawn as one of the references' objects), style similarity, challenge-shaped score."""
    from .metrics import score_set

    if ev is None:
        from .models.evaluators import load_evaluators
        ev = load_evaluators()
    images, asked = generate_style(model, info, objects, n_per_object, steps, guidance, seed)
    out = score_set(ev, images, asked, ref_images, info["objects"])
    out["images"], out["asked"] = images, asked
    return out


# --------------------------------------------------------------------------------------------- CLI
def main_train_style(argv: list[str]) -> int:
    """`gdlib train-style STYLE_DIR --out FILE`: fine-tune, write the style file, print the inference prompt."""
    from . import commands

    a = commands.parse("train-style", argv)
    try:
        cfg = StyleConfig(**config_kwargs(a, commands.STYLE_OPTIONS))
        cfg.new_words = [w.lower() for w in cfg.new_words]
        if not cfg.targets:
            raise ValueError("--targets needs at least one module name, e.g. to_q,to_k,to_v,to_out,conv1,conv2")
        style = a.style_dir[0] if len(a.style_dir) == 1 else a.style_dir
        res = finetune_style(style, a.out, cfg, base=a.base, cache_dir=a.cache_dir, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib train-style", err)
    info = res["info"]
    import shlex
    import sys

    from .toyworld import DATA_VERSION
    card = {"command": "gdlib train-style " + " ".join(shlex.quote(x) for x in argv),
            "data": "; ".join(f"style folder {d} (style {c['style'] or 'unknown'}, objects {c['objects']})"
                              for d, c in zip(a.style_dir, info["concepts"]))
                    + f"; ToyWorld data version {DATA_VERSION} if it is a ToyWorld export",
            "base": {"path": a.base, "fingerprint": info["base_fingerprint"]},
            "captions": info["captions"], "inference_prompt": [style_prompt(info, "{object}", i) for i in range(len(info["concepts"]))],
            "steps": info["steps"], "train_minutes": info["train_minutes"],
            "metrics": {"final_loss_last20": info["final_loss"]}, "config": info["config"],
            "backend": f"{runtime.info()['backend']}, python {sys.version.split()[0]}"}
    card_path = Path(a.out).with_name(Path(a.out).name.replace(".safetensors", "") + ".card.json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    print(f"model card: {card_path}")
    print(f"captions: {info['captions']}")
    for i, c in enumerate(info["concepts"]):
        print(f"inference prompt{' of ' + str(c['sid']) if len(info['concepts']) > 1 else ''}: "
              f"{style_prompt(info, '{object}', i)!r}")
    return 0
