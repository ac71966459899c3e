"""A few-shot LoRA / DoRA fine-tune of a loaded Stable Diffusion UNet (DreamBooth-style, Ruiz et al. 2023), on
gdlib.core's training pieces: images -> VAE latents (posterior mean x scaling_factor), captions -> frozen text
embeddings, then AdamW steps on the denoising loss (eps / v target of the folder's schedule) of the adapter only.
Prior preservation (optional): class images with their class caption are added to every batch with weight
`prior_weight` (Ruiz et al. 2023, Eq. 2). Save the result with gdlib.sd.lora (diffusers / peft formats).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from .. import adapters, core  # noqa: E402
from ..kernels import AdamW  # noqa: E402
from .pipeline import encode_prompt  # noqa: E402


@dataclass
class FinetuneResult:
    layers: list[str]
    losses: list[float] = field(default_factory=list)   # the training loss of every step
    eval_before: float = float("nan")                   # loss on a fixed (noise, t) set before / after training
    eval_after: float = float("nan")


def encode_images(pipe, images: np.ndarray) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] -> diffusion latents [N, C, H/f, W/f] (posterior mean x scaling_factor)."""
    with jt.no_grad():
        z = pipe.vae.encode(jt.array(np.asarray(images, np.float32))).mean * pipe.vae.scaling_factor
    return z.numpy()


def _eval_loss(pipe, x0, ctx, fixed) -> float:
    with jt.no_grad():
        x_t, t, target = fixed
        return float(core.denoising_loss(pipe.unet, x_t, t, ctx, target).mean().item())


def finetune(pipe, images: np.ndarray, captions: Sequence[str], steps: int = 20, kind: str = "lora", rank: int = 4,
             alpha: float = 4.0, lr: float = 1e-3, batch_size: int = 2, targets=("to_q", "to_k", "to_v", "to_out.0"),
             class_images: np.ndarray | None = None, class_caption: str | None = None, prior_weight: float = 1.0,
             grad_clip: float = 1.0, seed: int = 0) -> FinetuneResult:
    """Inject a `kind` adapter into pipe.unet (in place) and train it `steps` steps on (images, captions)."""
    if len(images) != len(captions):
        raise ValueError(f"finetune: {len(images)} images but {len(captions)} captions")
    rng = np.random.default_rng(seed)
    x0 = encode_images(pipe, images)
    with jt.no_grad():
        ctx_all = encode_prompt(pipe, list(captions)).detach()
    prior = None
    if class_images is not None:
        if not class_caption:
            raise ValueError("finetune: class_images need a class_caption")
        with jt.no_grad():
            c = encode_prompt(pipe, [class_caption] * len(class_images)).detach()
        prior = (encode_images(pipe, class_images), c)
    names = adapters.inject(pipe.unet, targets=tuple(targets), kind=kind, rank=rank, alpha=alpha, seed=seed)
    opt = AdamW(adapters.trainable_parameters(pipe.unet), lr=lr)
    fixed = core.noised_batch(pipe.schedule, x0, np.random.default_rng(seed + 1))
    result = FinetuneResult(layers=names, eval_before=_eval_loss(pipe, x0, ctx_all, fixed))
    bad = 0
    for step in range(steps):
        idx = rng.choice(len(x0), size=min(batch_size, len(x0)), replace=False)
        ctx = ctx_all[jt.array(idx.astype(np.int32))]
        x_t, t, target = core.noised_batch(pipe.schedule, x0[idx], rng)
        loss = core.denoising_loss(pipe.unet, x_t, t, ctx, target).mean()
        if prior is not None:
            j = rng.choice(len(prior[0]), size=min(batch_size, len(prior[0])), replace=False)
            px_t, pt, ptarget = core.noised_batch(pipe.schedule, prior[0][j], rng)
            pctx = prior[1][jt.array(j.astype(np.int32))]
            loss = loss + prior_weight * core.denoising_loss(pipe.unet, px_t, pt, pctx, ptarget).mean()
        loss_val, norm_val, updated = core.guarded_step(opt, loss, grad_clip)
        bad = 0 if updated else core.count_skipped(bad, loss_val, norm_val, step, lr, None, lambda s: None)
        result.losses.append(loss_val)
    result.eval_after = _eval_loss(pipe, x0, ctx_all, fixed)
    return result
