"""`gdlib sample` and `gdlib train-style` on a Stable Diffusion 1.x / 2.x diffusers folder (`--checkpoint FOLDER` /
`--base FOLDER`): the same commands, routed here when the path is a folder with a model_index.json."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..checkpoint import write_atomic, write_text_atomic
from ..config import STYLE_TARGETS, StyleConfig

SD_GUIDANCE = 7.5                                     # diffusers' StableDiffusionPipeline default
SD_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")     # diffusers' train_dreambooth_lora.py default


def image_size(pipe) -> int:
    """The pixel size the folder's UNet was configured for (latent side x the VAE's downscale)."""
    return int(pipe.latent_shape[1] * pipe.vae_scale_factor)


def main_sample(a) -> int:
    """Prompts -> a PNG grid from an SD folder (DDIM + CFG, gdlib.sd.pipeline.sample)."""
    from .. import plot
    from .loader import load_pipeline
    from .pipeline import sample

    pipe = load_pipeline(a.checkpoint)
    prompts = [q for q in a.prompts for _ in range(a.n)]
    guidance = SD_GUIDANCE if a.guidance is None else a.guidance
    latents = np.random.default_rng(a.seed).standard_normal((len(prompts), *pipe.latent_shape)).astype(np.float32)
    t0 = time.time()
    images = sample(pipe, prompts, latents, steps=a.steps, guidance_scale=guidance)
    fig = plot.image_grid((images * 255 + 0.5).astype(np.uint8), nrow=a.n if a.n > 1 else min(len(prompts), 8),
                          titles=prompts)
    write_atomic(a.out, lambda tmp: fig.savefig(tmp, dpi=100))
    print(f"wrote {a.out} ({len(prompts)} images of {images.shape[1]} px from {a.checkpoint}, {a.steps} DDIM steps, "
          f"CFG {guidance}, {time.time() - t0:.1f} s)")
    return 0


def captions_for(cfg: StyleConfig, objects: list[str]) -> tuple[str, list[str]]:
    """(token, captions) for a style folder on SD: DreamBooth's rare token in 'a {token} painting of a {object}'."""
    if cfg.caption_mode == "decoupled":
        raise ValueError("decoupled captions read ToyWorld's attribute table; on a Stable Diffusion folder use "
                         "--captions instance or --captions dreambooth")
    token = cfg.token or ("sks" if cfg.caption_mode == "dreambooth" else "style_00")
    return token, [f"a {token} painting of a {o}" for o in objects]


def main_train_style(a, cfg: StyleConfig, argv: list[str]) -> int:
    """A few-shot LoRA / DoRA on an SD folder's UNet; writes a diffusers LoRA file (pipe.load_lora_weights reads it)
    and a card beside it."""
    from ..styledata import load_style_folder
    from .finetune import finetune
    from .loader import load_pipeline
    from .lora import save_diffusers_lora

    if cfg.adapter not in ("lora", "dora"):
        raise ValueError(f"--adapter {cfg.adapter} is not supported on a Stable Diffusion folder (use lora or dora)")
    if cfg.prior_weight > 0:
        raise ValueError("prior preservation on a Stable Diffusion folder needs class images: not supported by the "
                         "command line yet (gdlib.sd.finetune.finetune takes class_images); use --prior-weight 0")
    if len(a.style_dir) != 1:
        raise ValueError("one style folder at a time on a Stable Diffusion folder")
    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out should be a .safetensors file name (diffusers' LoRA weight file), got {out}")
    pipe = load_pipeline(a.base)
    size = cfg.resolution or image_size(pipe)
    ds = load_style_folder(a.style_dir[0], size)
    token, captions = captions_for(cfg, ds["objects"])
    targets = SD_TARGETS if list(cfg.targets) == list(STYLE_TARGETS) else tuple(cfg.targets)
    t0 = time.time()
    res = finetune(pipe, ds["images"], captions, steps=cfg.steps, kind=cfg.adapter, rank=cfg.rank,
                   alpha=float(cfg.alpha if cfg.alpha is not None else cfg.rank), lr=cfg.lr,
                   batch_size=cfg.batch_size, targets=targets, grad_clip=cfg.grad_clip, seed=cfg.seed)
    minutes = (time.time() - t0) / 60
    path = save_diffusers_lora(pipe.unet, out.parent, weight_name=out.name)
    card = {"command": "gdlib train-style " + " ".join(shlex.quote(x) for x in argv),
            "base": {"path": str(a.base), "format": "diffusers Stable Diffusion folder"},
            "data": f"style folder {a.style_dir[0]} (objects {ds['objects']}, {size} px)",
            "captions": captions, "inference_prompt": f"a {token} painting of a {{object}}",
            "adapted_layers": len(res.layers), "steps": cfg.steps, "train_minutes": round(minutes, 2),
            "metrics": {"fixed_set_loss_before": res.eval_before, "fixed_set_loss_after": res.eval_after},
            "load_in_diffusers": f"pipe.load_lora_weights({str(out.parent)!r}, weight_name={out.name!r})",
            "backend": f"python {sys.version.split()[0]}"}
    card_path = out.with_name(out.name.replace(".safetensors", "") + ".card.json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    print(f"{cfg.adapter} on {len(res.layers)} layers, {cfg.steps} steps in {minutes * 60:.0f} s; fixed-set loss "
          f"{res.eval_before:.4f} -> {res.eval_after:.4f}")
    print(f"wrote {path} (diffusers: {card['load_in_diffusers']}) and {card_path}")
    print(f"inference prompt: {card['inference_prompt']!r}")
    return 0
