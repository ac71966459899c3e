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
    images = sample(pipe, prompts, latents, steps=a.steps, guidance_scale=guidance, sampler=a.sampler)
    fig = plot.image_grid((images * 255 + 0.5).astype(np.uint8), nrow=a.n if a.n > 1 else min(len(prompts), 8),
                          titles=prompts)
    write_atomic(a.out, lambda tmp: fig.savefig(tmp, dpi=100))
    print(f"wrote {a.out} ({len(prompts)} images of {images.shape[1]} px from {a.checkpoint}, {a.steps} {a.sampler} steps, "
          f"CFG {guidance}, {time.time() - t0:.1f} s)")
    return 0


def check_words(words: list[str], what: str) -> None:
    """A CLIP tokenizer knows every English word (byte-level BPE): refuse only empty, spaced or non-ASCII ones."""
    bad = [w for w in words if not isinstance(w, str) or not w.isascii() or w.split() != [w]]
    if bad:
        raise ValueError(f"{what} {bad} must be single non-empty ASCII words (e.g. 'cat'); rename or drop them")


def captions_for(cfg: StyleConfig, ds: dict) -> dict:
    """gdlib.prompts' captions for a style folder on SD (instance / dreambooth / decoupled; decoupled reads the
    attribute table for the folder's style name or id and objects, as gdlib.styledata.build_captions does):
    dict(captions, token, attributes, style_words, inference_prompt)."""
    from .. import prompts as P

    token = P.instance_token(cfg.caption_mode, str(ds.get("sid") or "00"), cfg.token)
    attrs = {"attributes": [], "style_words": []}
    if cfg.caption_mode == "decoupled":
        keys = [k for k in (ds.get("style"), ds.get("sid")) if k]
        attrs = P.attributes_for(P.load_table(cfg.attributes), keys, ds["objects"])
    check_words(list(ds["objects"]) + attrs["attributes"] + attrs["style_words"], "caption words")
    captions = [P.train_caption(cfg.caption_mode, o, token, **attrs) for o in ds["objects"]]
    form = P.inference_prompt(cfg.caption_mode, "{object}", token, style_words=attrs["style_words"])
    return {"captions": captions, "token": token, **attrs, "inference_prompt": form}


def option_given(command: str, argv: list[str], dest: str) -> bool:
    """Whether argv sets option `dest` of `gdlib {command}` (abbreviations included): re-parse with its default unset."""
    from .. import commands

    p = commands.PARSERS[command]()
    p.set_defaults(**{dest: None})
    return getattr(p.parse_args(argv), dest) is not None


def class_guidance(cfg: StyleConfig, argv: list[str]) -> float:
    """--class-guidance if given, else diffusers' SD_GUIDANCE (StyleConfig's default is the ToyWorld model's)."""
    return cfg.class_guidance if option_given("train-style", argv, "class_guidance") else SD_GUIDANCE


def main_train_style(a, cfg: StyleConfig, argv: list[str]) -> int:
    """A few-shot LoRA / DoRA on an SD folder's UNet (any caption mode, optional prior preservation with class images
    the base draws itself, cached beside --out); resumes from OUT's checkpoint; writes a diffusers LoRA file
    (pipe.load_lora_weights reads it) and a card beside it."""
    from .. import prompts as P
    from ..finetune import _ckpt_path
    from ..styledata import load_style_folder
    from .finetune import finetune, generate_class_images, pipeline_fingerprint
    from .loader import load_pipeline
    from .lora import save_diffusers_lora

    if cfg.adapter not in ("lora", "dora"):
        raise ValueError(f"--adapter {cfg.adapter} is not supported on a Stable Diffusion folder (use lora or dora)")
    if cfg.prior_weight > 0 and cfg.num_class_images < 1:
        raise ValueError(f"--prior-weight {cfg.prior_weight} needs --class-images >= 1 (got {cfg.num_class_images})")
    if len(a.style_dir) != 1:
        raise ValueError("one style folder at a time on a Stable Diffusion folder")
    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out should be a .safetensors file name (diffusers' LoRA weight file), got {out}")
    stem = out.name.replace(".safetensors", "")
    pipe = load_pipeline(a.base)
    size = cfg.resolution or image_size(pipe)
    ds = load_style_folder(a.style_dir[0], size)
    caps = captions_for(cfg, ds)
    targets = SD_TARGETS if list(cfg.targets) == list(STYLE_TARGETS) else tuple(cfg.targets)
    fp = pipeline_fingerprint(pipe)
    class_x, class_prompts, prior = None, None, {"weight": 0.0}
    if cfg.prior_weight > 0:  # class images from the base itself, before the adapter exists
        objs = list(cfg.class_objects or ds["objects"])
        check_words(objs, "class objects (--class-objects)")
        class_prompts = [P.class_prompt(objs[i % len(objs)]) for i in range(cfg.num_class_images)]
        guidance = class_guidance(cfg, argv)
        cache = out.with_name(stem + ".class_images")
        class_x, reused = generate_class_images(pipe, class_prompts, cache, cfg.class_steps, guidance, cfg.seed, size,
                                                fp, progress=not a.no_progress)
        prior = {"weight": cfg.prior_weight, "class_images": len(class_prompts), "class_objects": objs,
                 "class_steps": cfg.class_steps, "class_guidance": guidance, "cache": str(cache),
                 "cache_reused": reused, "class_prompt": P.CLASS_TEMPLATE}
    t0, ckpt, alpha = time.time(), _ckpt_path(out), float(cfg.rank if cfg.alpha is None else cfg.alpha)
    res = finetune(pipe, ds["images"], caps["captions"], steps=cfg.steps, kind=cfg.adapter, rank=cfg.rank, alpha=alpha,
                   lr=cfg.lr, batch_size=cfg.batch_size, targets=targets, class_images=class_x,
                   class_caption=class_prompts, prior_weight=cfg.prior_weight, grad_clip=cfg.grad_clip, seed=cfg.seed,
                   ckpt=ckpt, checkpoint_every=cfg.checkpoint_every, progress=not a.no_progress, fingerprint=fp)
    seconds = time.time() - t0
    path = save_diffusers_lora(pipe.unet, out.parent, weight_name=out.name)
    card = {"command": "gdlib train-style " + " ".join(shlex.quote(x) for x in argv),
            "base": {"path": str(a.base), "format": "diffusers Stable Diffusion folder", "fingerprint": fp},
            "data": f"style folder {a.style_dir[0]} (objects {ds['objects']}, {size} px)",
            "caption_mode": cfg.caption_mode, "token": caps["token"], "attributes": caps["attributes"],
            "style_words": caps["style_words"], "captions": caps["captions"],
            "inference_prompt": caps["inference_prompt"], "prior_preservation": prior,
            "adapted_layers": len(res.layers), "steps": res.steps, "resumed": res.resumed_at > 0,
            "resumed_from_step": res.resumed_at, "checkpoint": str(ckpt), "train_minutes": res.train_minutes,
            "metrics": {"fixed_set_loss_before": res.eval_before, "fixed_set_loss_after": res.eval_after,
                        "final_loss_last20": float(np.mean(res.losses[-20:])) if res.losses else None},
            "training": {"adapter": cfg.adapter, "rank": cfg.rank, "alpha": alpha, "targets": list(targets),
                         "lr": cfg.lr, "batch_size": cfg.batch_size, "resolution": size, "grad_clip": cfg.grad_clip,
                         "seed": cfg.seed, "checkpoint_every": cfg.checkpoint_every},
            "load_in_diffusers": f"pipe.load_lora_weights({str(out.parent)!r}, weight_name={out.name!r})",
            "backend": f"python {sys.version.split()[0]}"}
    card_path = out.with_name(stem + ".card.json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    print(f"{cfg.adapter} on {len(res.layers)} layers, {res.steps} steps"
          f"{f' (resumed at {res.resumed_at})' if res.resumed_at else ''} in {seconds:.0f} s; fixed-set loss "
          f"{res.eval_before:.4f} -> {res.eval_after:.4f}")
    print(f"wrote {path} (diffusers: {card['load_in_diffusers']}) and {card_path}")
    print(f"captions: {caps['captions']}")
    print(f"inference prompt: {card['inference_prompt']!r}")
    return 0


def adapter_prompt_form(adapter: str | Path) -> str:
    """The inference prompt form recorded in the card `gdlib train-style` writes beside a LoRA file."""
    card = Path(adapter).with_name(Path(adapter).name.replace(".safetensors", "") + ".card.json")
    if not card.is_file():
        raise FileNotFoundError(f"{card} is missing: the card `gdlib train-style --base FOLDER` writes beside the "
                                "LoRA file says which prompt its style answers to")
    form = json.loads(card.read_text()).get("inference_prompt")
    if not form or "{object}" not in form:
        raise ValueError(f"{card} has no inference_prompt with an {{object}} slot")
    return form


def main_generate(a, cfg, argv: list[str]) -> int:
    """`gdlib generate STYLE_DIR --base FOLDER`: prompt.json (+ a diffusers LoRA / DoRA, + RB-Modulation with the
    VAE-decoder Gram Psi and optional AFA toward STYLE_DIR's images) -> OUT/{NN}/{object}.png."""
    from tqdm.auto import tqdm

    from .. import imageio
    from ..styledata import load_style_folder
    from .guidance import stylize
    from .loader import load_pipeline
    from .lora import load_diffusers_lora

    if cfg.psi != "gram":
        raise ValueError(f"--psi {cfg.psi}: the learned CSD descriptor reads ToyWorld images; on a Stable Diffusion "
                         "folder Psi is the Gram matrices of the VAE decoder's up-block features (--psi gram)")
    pipe = load_pipeline(a.base)
    ds = load_style_folder(a.style_dir, image_size(pipe))
    prompts = imageio.read_prompts(a.prompts) if a.prompts else ds["prompts"]
    if not prompts:
        raise FileNotFoundError(f"no prompts: {a.style_dir}/prompt.json is missing or empty; pass --prompts")
    form = "a painting of a {object}"
    if a.adapter:
        form = adapter_prompt_form(a.adapter)
        load_diffusers_lora(pipe.unet, a.adapter)
    # RecipeConfig's --cfg default is ToyWorld's; a Stable Diffusion folder gets diffusers' unless --cfg is given
    guidance = cfg.guidance_scale if option_given("generate", argv, "guidance_scale") else SD_GUIDANCE
    objects = list(prompts.values())
    latents = np.random.default_rng(cfg.seed).standard_normal((len(objects), *pipe.latent_shape)).astype(np.float32)
    t0, images = time.time(), []
    for i, obj in enumerate(tqdm(objects, desc="generate", disable=getattr(a, "no_progress", False), mininterval=2)):
        images.append(stylize(pipe, form.format(object=obj), ds["images"], steps=cfg.sample_steps,
                              guidance_scale=guidance, config=cfg.rb, control=not a.no_guidance, afa=cfg.afa,
                              seed=cfg.seed + i, latents=latents[i:i + 1]))
    x = np.concatenate(images).transpose(0, 3, 1, 2) * 2.0 - 1.0   # -> library images [N, 3, H, W] in [-1, 1]
    paths = imageio.save_images(Path(a.out) / Path(a.style_dir).name, x.astype(np.float32), objects)
    how = "plain sampling" if a.no_guidance else f"RB-Modulation (VAE-decoder Gram) toward {len(ds['images'])} references"
    print(f"wrote {len(paths)} images to {paths[0].parent} ({time.time() - t0:.0f} s; {how}{' + AFA' if cfg.afa else ''}; "
          f"{cfg.sample_steps} DDIM steps, CFG {guidance}); prompt form: {form!r}")
    return 0
