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
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import prompts as P
from . import runtime

jt = runtime.setup_jittor()

from .config import ADAPTER_KINDS, CUSTOM_TARGETS, DEFAULT_BASE, DEFAULT_GUIDANCE, STYLE_TARGETS, StyleConfig  # noqa: E402,F401
from .core import count_skipped, denoising_loss, guarded_step, load_run, min_snr_weights, noised_batch, save_run  # noqa: E402
from .pipeline import TextToImage  # noqa: E402
# the inputs (gdlib.styledata) and the style files (gdlib.stylefile), re-exported: gdlib.finetune is the course's entry
from .styledata import (build_captions, class_images, concept_info, load_base, load_style_folder,  # noqa: E402,F401
                        model_fingerprint, style_prompt, style_sets)
from .stylefile import STYLE_KEY, custom_layers, load_style, read_style, save_style, style_tensors  # noqa: E402,F401


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


# --------------------------------------------------------------------------------------------- training
def _ckpt_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".ckpt.safetensors")


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
    sets = style_sets(style, size)
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
