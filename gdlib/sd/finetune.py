"""A few-shot LoRA / DoRA fine-tune of a loaded Stable Diffusion UNet (DreamBooth-style, Ruiz et al. 2023), on
gdlib.core's training pieces: images -> VAE latents (posterior mean x scaling_factor), captions -> frozen text
embeddings, then AdamW steps on the denoising loss (eps / v target of the folder's schedule) of the adapter only.
Prior preservation (optional): class images drawn by the base pipeline itself (generate_class_images, cached as
PNGs) with their class captions join every batch with weight `prior_weight` (Ruiz et al. 2023, Eq. 2). With a
checkpoint file the run resumes where it stopped (the same batches, noise and adapter as an uninterrupted run: the
random draws of step k come from default_rng([seed, k])). Save the result with gdlib.sd.lora (diffusers / peft).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from .. import adapters, core  # noqa: E402
from ..kernels import AdamW  # noqa: E402
from .pipeline import encode_prompt  # noqa: E402

CLASS_FORMAT = "gdlib-sd-class-images/1"
CLASS_INDEX = "class_images.json"


@dataclass
class FinetuneResult:
    layers: list[str]
    losses: list[float] = field(default_factory=list)   # the training loss of every step (over resumes)
    eval_before: float = float("nan")                   # loss on a fixed (noise, t) set before / after training
    eval_after: float = float("nan")
    prior_losses: list = field(default_factory=list)    # the class images' loss of every step (None without prior)
    steps: int = 0                                      # steps done, over resumes
    resumed_at: int = 0                                 # the step a checkpoint resumed from (0: a fresh run)
    train_minutes: float = 0.0                          # training time, over resumes


def encode_images(pipe, images: np.ndarray) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] -> diffusion latents [N, C, H/f, W/f] (posterior mean x scaling_factor)."""
    with jt.no_grad():
        z = pipe.vae.encode(jt.array(np.asarray(images, np.float32))).mean * pipe.vae.scaling_factor
    return z.numpy()


def pipeline_fingerprint(pipe) -> str:
    """sha256 (16 hex) of the scheduler config and every weight of the text encoder, UNet and VAE: a checkpoint or a
    class-image cache only fits the base it was made with."""
    if adapters.adapted_layers(pipe.unet):
        raise ValueError("pipeline_fingerprint(): the UNet already carries an adapter; use a freshly loaded pipeline")
    h = hashlib.sha256(json.dumps(pipe.scheduler_config, sort_keys=True, default=str).encode())
    for part in ("text_encoder", "unet", "vae"):
        for k, v in sorted(getattr(pipe, part).state_dict().items()):
            h.update(f"{part}.{k}{tuple(v.shape)}".encode())
            h.update(np.ascontiguousarray(v.numpy(), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _digest(x: np.ndarray) -> str:
    a = np.ascontiguousarray(x, dtype=np.float32)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def generate_class_images(pipe, prompts: Sequence[str], folder: str | os.PathLike, steps: int = 20,
                          guidance: float = 7.5, seed: int = 0, size: int | None = None,
                          fingerprint: str | None = None, batch: int = 4,
                          progress: bool = False, log: Callable[[str], None] = print) -> tuple[np.ndarray, bool]:
    """Prior-preservation images of `prompts` drawn by the base pipeline itself (DDIM + CFG, Ruiz et al. 2023,
    Sec. 4.2), cached in `folder` (PNGs + class_images.json, written to a temporary folder and renamed into place)
    and reused while the base fingerprint, prompts, steps, guidance and seed match. Returns (images [N, 3, size,
    size] in [-1, 1] as read back from the PNGs, reused)."""
    from tqdm.auto import tqdm

    from .. import imageio
    from .pipeline import sample

    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate_class_images: no prompts (need at least one class image)")
    if adapters.adapted_layers(pipe.unet):
        raise ValueError("generate_class_images: the UNet already carries an adapter; class images come from the base "
                         "model, so draw them before injecting one")
    folder = Path(folder)
    size = int(size or pipe.latent_shape[1] * pipe.vae_scale_factor)
    want = {"format": CLASS_FORMAT, "base_fingerprint": fingerprint or pipeline_fingerprint(pipe), "prompts": prompts,
            "steps": int(steps), "guidance": float(guidance), "seed": int(seed)}
    index = folder / CLASS_INDEX
    have = None
    if index.is_file():
        try:
            have = json.loads(index.read_text(encoding="utf-8"))
        except ValueError:
            have = None
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists but is not a class-image cache (no {CLASS_INDEX}); move it away or choose "
                         "another --out")
    files = (have or {}).get("files") or []
    if have and all(have.get(k) == v for k, v in want.items()) and len(files) == len(prompts) \
            and all((folder / f).is_file() for f in files):
        log(f"reusing {len(prompts)} class images from {folder}")
        return np.stack([imageio.load_image(folder / f, size) for f in files]), True
    t0 = time.time()
    latents = np.random.default_rng(seed).standard_normal((len(prompts), *pipe.latent_shape)).astype(np.float32)
    files = [f"{i:04d}.png" for i in range(len(prompts))]
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from PIL import Image

        bar = tqdm(total=len(prompts), desc="class images", disable=not progress, mininterval=2)
        for i in range(0, len(prompts), batch):
            x = sample(pipe, prompts[i:i + batch], latents[i:i + batch], steps=steps, guidance_scale=guidance)
            for name, a in zip(files[i:i + batch], imageio.to_uint8_hwc(x.transpose(0, 3, 1, 2) * 2.0 - 1.0)):
                Image.fromarray(a).save(tmp / name, format="PNG")
            bar.update(len(x))
        bar.close()
        (tmp / CLASS_INDEX).write_text(json.dumps({**want, "base": str(pipe.folder), "files": files}, indent=1) + "\n",
                                       encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"class images: generated {len(prompts)} in {time.time() - t0:.0f} s ({steps} DDIM steps, CFG {guidance}), "
        f"cached in {folder}")
    return np.stack([imageio.load_image(folder / f, size) for f in files]), False


def _eval_loss(pipe, x0, ctx, fixed) -> float:
    with jt.no_grad():
        x_t, t, target = fixed
        return float(core.denoising_loss(pipe.unet, x_t, t, ctx, target).mean().item())


def finetune(pipe, images: np.ndarray, captions: Sequence[str], steps: int = 20, kind: str = "lora", rank: int = 4,
             alpha: float = 4.0, lr: float = 1e-3, batch_size: int = 2, targets=("to_q", "to_k", "to_v", "to_out.0"),
             class_images: np.ndarray | None = None, class_caption: str | Sequence[str] | None = None,
             prior_weight: float = 1.0, grad_clip: float = 1.0, seed: int = 0, ckpt: str | os.PathLike | None = None,
             checkpoint_every: int = 50, progress: bool = False, log: Callable[[str], None] = print,
             fingerprint: str | None = None) -> FinetuneResult:
    """Inject a `kind` adapter into pipe.unet (in place) and train it to `steps` steps on (images, captions), plus
    prior_weight x the loss of class_images with their class caption(s) (one, or one per image; Ruiz et al. 2023,
    Eq. 2). With `ckpt`, resume from it when it exists (refused if base, options, captions or images differ) and
    write it every `checkpoint_every` steps and at the end; `fingerprint` is pipeline_fingerprint(pipe) if known."""
    from tqdm.auto import tqdm

    if len(images) != len(captions):
        raise ValueError(f"finetune: {len(images)} images but {len(captions)} captions")
    if steps < 0 or batch_size < 1 or lr <= 0 or prior_weight < 0:
        raise ValueError("finetune: steps must be >= 0, batch_size >= 1, lr > 0 and prior_weight >= 0")
    x0 = encode_images(pipe, images)
    with jt.no_grad():
        ctx_all = encode_prompt(pipe, list(captions)).detach()
    prior, class_caps = None, []
    if class_images is not None:
        if not class_caption:
            raise ValueError("finetune: class_images need a class_caption (one, or one per class image)")
        class_caps = [class_caption] * len(class_images) if isinstance(class_caption, str) else list(class_caption)
        if len(class_caps) != len(class_images):
            raise ValueError(f"finetune: {len(class_images)} class images but {len(class_caps)} class captions")
        with jt.no_grad():
            c = encode_prompt(pipe, class_caps).detach()
        prior = (encode_images(pipe, class_images), c)
    run = None
    if ckpt is not None:  # what a resume must match (the step budget may grow)
        run = {"base": fingerprint or pipeline_fingerprint(pipe),
               "config": {"kind": kind, "rank": int(rank), "alpha": float(alpha), "lr": float(lr),
                          "batch_size": int(batch_size), "targets": list(targets), "grad_clip": float(grad_clip),
                          "seed": int(seed), "prior_weight": float(prior_weight) if prior is not None else 0.0},
               "captions": list(captions), "images": _digest(images), "class_captions": class_caps,
               "class_images": _digest(class_images) if prior is not None else None}
    names = adapters.inject(pipe.unet, targets=tuple(targets), kind=kind, rank=rank, alpha=alpha, seed=seed)
    params = adapters.trainable_parameters(pipe.unet)
    opt = AdamW(params, lr=lr)
    fixed = core.noised_batch(pipe.schedule, x0, np.random.default_rng(seed + 1))
    result = FinetuneResult(layers=names, eval_before=_eval_loss(pipe, x0, ctx_all, fixed))
    state = {"step": 0, "elapsed": 0.0, "history": {"loss": [], "prior_loss": []}}
    if ckpt is not None and Path(ckpt).is_file():
        tensors, state, _ = core.load_run(ckpt, opt, run)
        for i, p in enumerate(params):
            p.update(jt.array(tensors[f"param.{i}"]))
        result.resumed_at = state["step"]
        log(f"resumed from {ckpt} at step {state['step']}")

    def checkpoint() -> None:
        core.save_run(ckpt, {f"param.{i}": p.numpy() for i, p in enumerate(params)}, opt, state, run)

    hist, B = state["history"], int(batch_size)
    bar = tqdm(total=steps, initial=min(state["step"], steps), disable=not progress, desc="train-style",
               mininterval=2)
    t0, elapsed0, bad = time.time(), state["elapsed"], 0
    while state["step"] < steps:
        step = state["step"]
        rng = np.random.default_rng([seed, step])  # per step: a resumed run draws the same batches and noise
        idx = rng.choice(len(x0), size=min(B, len(x0)), replace=False)
        xb, ctx, n_inst = x0[idx], ctx_all[jt.array(idx.astype(np.int32))], len(idx)
        if prior is not None:
            j = rng.choice(len(prior[0]), size=min(B, len(prior[0])), replace=False)
            xb = np.concatenate([xb, prior[0][j]])
            ctx = jt.concat([ctx, prior[1][jt.array(j.astype(np.int32))]], dim=0)
        x_t, t, target = core.noised_batch(pipe.schedule, xb, rng)
        per_sample = core.denoising_loss(pipe.unet, x_t, t, ctx, target)
        loss = per_sample[:n_inst].mean()
        prior_loss = per_sample[n_inst:].mean() if prior is not None else None
        if prior_loss is not None:
            loss = loss + prior_weight * prior_loss
        loss_val, norm_val, updated = core.guarded_step(opt, loss, grad_clip)
        if not updated:  # weights untouched; a run of them is an error
            bad = core.count_skipped(bad, loss_val, norm_val, step, lr, ckpt, log)
            continue
        bad = 0
        state["step"] = step + 1
        state["elapsed"] = elapsed0 + time.time() - t0
        hist["loss"].append(loss_val)
        hist["prior_loss"].append(float(prior_loss.item()) if prior_loss is not None else None)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(hist['loss'][-20:]):.4f}")
        if ckpt is not None and checkpoint_every and state["step"] % checkpoint_every == 0 and state["step"] < steps:
            checkpoint()
    bar.close()
    if ckpt is not None:
        checkpoint()
    result.losses, result.prior_losses = list(hist["loss"]), list(hist["prior_loss"])
    result.steps, result.train_minutes = state["step"], round(state["elapsed"] / 60, 2)
    result.eval_after = _eval_loss(pipe, x0, ctx_all, fixed)
    return result
