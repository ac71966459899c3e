# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · From ToyWorld to Stable Diffusion
#
# Notebooks 01–08 ran the recipe on ToyWorld, a world small enough to train on a laptop. The challenge's entry ran it
# on **Stable Diffusion 2.1**. This notebook runs the same pieces — a text encoder, a UNet with cross-attention,
# DDIM with classifier-free guidance, a few-shot LoRA / DoRA fine-tune — on a **diffusers Stable Diffusion folder**,
# with `gdlib.sd` (Jittor ports of diffusers' models under diffusers' names).
#
# **What you will learn**
# 1. What is inside a diffusers folder (`model_index.json`, one sub-folder per component, configs and safetensors)
#    and how `gdlib.sd.loader` maps it onto Jittor modules (same parameter names, fp16 read as fp32).
# 2. How big each part is: parameter counts per component, of the folder you load and of SD 1.5 / SD 2.1.
# 3. Sampling with DDIM + classifier-free guidance through `gdlib.sd.pipeline.sample`.
# 4. A few-shot LoRA / DoRA fine-tune with `gdlib.sd.finetune`, saved with `gdlib.sd.lora` in the file format
#    diffusers reads — and, when diffusers is installed, loaded into a diffusers pipeline and compared number for number.
# 5. RB-Modulation and AFA on the folder: the seed team's Psi (Gram matrices of the VAE decoder's features) on
#    latents, and the adapter read back into gdlib with `gdlib.sd.lora.load_diffusers_lora`.
# 6. What a real checkpoint costs on disk and in memory, computed from its configs.
#
# **Which folder.** Set the environment variable `GDLIB_SD_FOLDER` to a local SD 1.x / 2.x diffusers folder
# (safetensors) before starting Jupyter and everything below runs on it. Unset (as in the test suite), the notebook
# writes a **tiny Stable Diffusion folder with random weights** (`gdlib.sd.tiny`, about 0.4 M parameters, 32 px
# images, no torch needed) and runs on that: every step is the real code path, but the pictures are noise.
# The knobs are in the first code cell.

# %%
# Setup: imports, seed, knobs.
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from gdlib import runtime
jt = runtime.setup_jittor()          # always through gdlib: it wires the CPU/oneDNN runtime first
from gdlib import plot
from gdlib.sd import loader as L
from gdlib.sd import lora
from gdlib.sd import pipeline as P
from gdlib.sd import tiny
from gdlib.sd.finetune import finetune

SEED = 0
SD_FOLDER = os.environ.get("GDLIB_SD_FOLDER")   # a local SD 1.x / 2.x diffusers folder; unset: a tiny random one
TINY_LATENT = 16                  # the tiny folder's latent size (its images are 2x: 32 px)
SAMPLE_STEPS = 10                 # DDIM steps (25-50 on a real folder)
GUIDANCE = 5.0                    # classifier-free guidance scale w (SD's usual 7.5 on a real folder)
PROMPTS = ["a watercolor painting of a cat", "a pixel painting of a castle",
           "an ink sketch of two birds", "a photo of a tree"]
FT_STEPS = 12                     # fine-tuning steps (a few hundred for a real style)
FT_KIND, FT_RANK = "dora", 4      # "lora" or "dora", and the rank (alpha = rank: scale 1)
FT_LR = 1e-2                      # 1e-4 is the usual DreamBooth-LoRA rate on a real SD folder
FT_IMAGES = os.environ.get("GDLIB_SD_IMAGES")   # a folder of your style images; unset: three synthetic patterns
FT_CAPTION = "a painting in the style of neon lights"

np.random.seed(SEED)
jt.set_global_seed(SEED)
WORK = Path(tempfile.mkdtemp(prefix="gdlib_nb09_"))
TINY = SD_FOLDER is None
if TINY:
    FOLDER = tiny.write_tiny_folder(WORK / "tiny-sd", sample_size=TINY_LATENT, seed=SEED)
    print(f"GDLIB_SD_FOLDER is not set: wrote a tiny Stable Diffusion folder with RANDOM weights to {FOLDER}.\n"
          "Every step below runs the real code, but the images will be noise: these weights were never trained.\n"
          "With a real SD 1.5 / 2.1 folder (GDLIB_SD_FOLDER=/path/to/folder) the same cells draw the prompts at\n"
          "512 / 768 px and the fine-tune learns a style from your images (see the README, 'Stable Diffusion folders').")
else:
    FOLDER = Path(SD_FOLDER)
    print(f"using the Stable Diffusion folder {FOLDER}")
print("backend:", runtime.info()["backend"])

# %% [markdown]
# ## 1. What is in a diffusers folder, and how gdlib maps it
#
# `StableDiffusionPipeline.save_pretrained` writes one folder per component and a `model_index.json` that names, for
# each, the library and class that reads it. `gdlib.sd.loader.load_pipeline` reads the same files — **safetensors
# only** (never pickles) with `safetensors.numpy`, so no torch is needed — and checks every config field: a field that
# asks for a feature the ports lack (SDXL's second text encoder, another block type, ...) raises an error naming it.

# %%
index = json.loads((FOLDER / "model_index.json").read_text())
print("model_index.json:")
for k, v in index.items():
    print(f"  {k:24s} {v}")

# %% [markdown]
# Each network's `config.json` holds the sizes the weights must have. A few fields decide most of the architecture:

# %%
def read_cfg(name):
    f = "scheduler_config.json" if name == "scheduler" else "config.json"
    return json.loads((FOLDER / name / f).read_text())


cfg = {name: read_cfg(name) for name in ("unet", "vae", "text_encoder", "scheduler")}
show = {"unet": ["block_out_channels", "layers_per_block", "attention_head_dim", "cross_attention_dim",
                 "use_linear_projection", "sample_size"],
        "vae": ["block_out_channels", "layers_per_block", "latent_channels", "scaling_factor"],
        "text_encoder": ["hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "vocab_size"],
        "scheduler": ["_class_name", "beta_schedule", "prediction_type", "steps_offset", "timestep_spacing"]}
for name, keys in show.items():
    print(f"{name:13s}", ", ".join(f"{k}={cfg[name].get(k, '(default)')}" for k in keys))

# %% [markdown]
# The weights: diffusers and transformers store each parameter under its module path
# (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`). gdlib's Jittor modules are built with the
# same names, so loading is a dictionary lookup; the only renames are transformers' `text_model.` prefix (dropped) and
# the VAE's pre-2023 attention names (`query` -> `to_q`, ...). Hub folders often ship fp16 weights (the `.fp16`
# variant, half the disk); gdlib reads them and converts every tensor to **float32** (Jittor on a CPU computes in
# float32). Below, only the file headers are read (names, dtypes, shapes) — cheap even for a 3 GB UNet.

# %%
from safetensors import safe_open

STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def weight_files(name):
    d, stem = FOLDER / name, STEMS[name]
    for f in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (d / f).is_file():
            return [d / f]
    return sorted(p for p in d.glob(f"{stem}*.safetensors"))   # shards


headers, file_dtype = {}, {}
for name in STEMS:
    dtypes, shapes = {}, {}
    for f in weight_files(name):
        with safe_open(str(f), "np") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                shapes[k], dtype = tuple(sl.get_shape()), sl.get_dtype()
                file_dtype[k] = dtype
                dtypes[dtype] = dtypes.get(dtype, 0) + 1
    headers[name] = shapes
    print(f"{name:13s} {', '.join(p.name for p in weight_files(name))}: {len(shapes)} tensors, dtypes {dtypes}")

t0 = time.time()
pipe = L.load_pipeline(FOLDER)
print(f"\nload_pipeline: {time.time() - t0:.1f} s; latent {pipe.latent_shape}, VAE downscale {pipe.vae_scale_factor}, "
      f"prediction type {pipe.schedule.prediction_type}")
name = next(k for k in pipe.unet.state_dict() if k.endswith("attn1.to_q.weight"))
print(f"one name on both sides: {name}; file {file_dtype[name]} -> gdlib {pipe.unet.state_dict()[name].dtype}")
assert all(str(v.dtype) == "float32" for v in pipe.unet.state_dict().values())

# %% [markdown]
# ## 2. The parts compared
#
# Parameter counts per component, of the loaded models (Jittor) and of the files (header shapes): they agree name for
# name, apart from buffers a file may carry (the text encoder's `position_ids`).

# %%
def count(module):
    return sum(int(np.prod(v.shape)) for v in module.state_dict().values())


parts = {"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae": pipe.vae}
counts = {k: count(m) for k, m in parts.items()}
in_files = {k: sum(int(np.prod(s)) for n, s in headers[k].items() if not n.endswith("position_ids")) for k in parts}
total = sum(counts.values())
print(f"{'component':13s}{'parameters':>14s}{'share':>8s}{'fp32 MB':>10s}")
for k, n in counts.items():
    print(f"{k:13s}{n:14,d}{n / total:8.1%}{4 * n / 2**20:10.1f}")
print(f"{'total':13s}{total:14,d}{1:8.0%}{4 * total / 2**20:10.1f}")
assert counts == in_files, (counts, in_files)

# %% [markdown]
# On a real SD folder the UNet holds about three quarters of the parameters; the VAE is small but runs at full image
# resolution, so it is not cheap to run. ToyWorld's base UNet (notebook 02) has about 4 M parameters — SD's is about
# 200 times larger, and its latents are 64x64 (SD 1.5) or 96x96 (SD 2.1) instead of 32x32 pixels.

# %% [markdown]
# ## 3. Sampling: DDIM + classifier-free guidance
#
# `gdlib.sd.pipeline.sample` follows diffusers' `StableDiffusionPipeline` step by step: encode the prompts and the
# empty negative prompt, run the UNet on `[uncond; cond]` in one batch, combine
# `eps_u + w (eps_c - eps_u)` (notebook 02), take a DDIM step of the folder's schedule (notebook 01), and decode the
# final latents with the VAE (`z / scaling_factor`). Below: the same starting latents without guidance (w = 1, one
# UNet call per step) and with `GUIDANCE`.

# %%
def to_uint8(images):
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


latents = np.random.default_rng(SEED).standard_normal((len(PROMPTS),) + pipe.latent_shape).astype(np.float32)
t0 = time.time()
plain = P.sample(pipe, PROMPTS, latents, steps=SAMPLE_STEPS, guidance_scale=1.0)
guided = P.sample(pipe, PROMPTS, latents, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE)
print(f"{2 * len(PROMPTS)} images of {guided.shape[1]} px, {SAMPLE_STEPS} DDIM steps: {time.time() - t0:.1f} s")
assert guided.shape == (len(PROMPTS), pipe.vae_scale_factor * latents.shape[2],
                        pipe.vae_scale_factor * latents.shape[3], 3)
assert np.isfinite(guided).all() and guided.min() >= 0 and guided.max() <= 1
assert not np.allclose(plain, guided)             # guidance changes the images
assert not np.allclose(guided[0], guided[1])      # so do the prompts
plot.image_grid(np.concatenate([to_uint8(plain), to_uint8(guided)]), nrow=len(PROMPTS),
                titles=[p[:22] for p in PROMPTS] + [""] * len(PROMPTS),
                suptitle=f"top: w = 1 (no guidance); bottom: w = {GUIDANCE}" + (" — random weights: noise" if TINY else ""))
plt.show()

# %% [markdown]
# ## 4. A few-shot LoRA / DoRA fine-tune, saved for diffusers
#
# `gdlib.sd.finetune.finetune` is the DreamBooth-style recipe of notebooks 03–04 on the SD UNet: the images are
# encoded once by the VAE (posterior mean x scaling factor), the captions once by the frozen text encoder, and only
# the adapter on the attention projections (`to_q`, `to_k`, `to_v`, `to_out.0`) trains, with AdamW on the denoising
# loss of the folder's prediction type. It reports the loss on a fixed set of (noise, t) pairs before and after.

# %%
H = pipe.vae_scale_factor * pipe.latent_shape[1]
if FT_IMAGES:
    from PIL import Image
    files = sorted(p for p in Path(FT_IMAGES).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    ims = [np.asarray(Image.open(p).convert("RGB").resize((H, H), Image.BICUBIC), np.float32) / 127.5 - 1
           for p in files]
    ft_images = np.stack(ims).transpose(0, 3, 1, 2)
else:   # three diagonal neon-like stripe patterns: something a tiny random UNet can fit in a few steps
    yy, xx = np.mgrid[0:H, 0:H] / (H - 1)
    ft_images = np.stack([np.stack([np.sin(8 * (xx + yy) + k), np.cos(6 * xx - k), 2 * xx * yy - 1])
                          for k in range(3)]).astype(np.float32).clip(-1, 1)
t0 = time.time()
res = finetune(pipe, ft_images, [FT_CAPTION] * len(ft_images), steps=FT_STEPS, kind=FT_KIND, rank=FT_RANK,
               alpha=FT_RANK, lr=FT_LR, seed=SEED)
print(f"{FT_KIND} rank {FT_RANK} on {len(res.layers)} layers, {FT_STEPS} steps on {len(ft_images)} images: "
      f"{time.time() - t0:.1f} s; fixed-set loss {res.eval_before:.4f} -> {res.eval_after:.4f}")
assert res.eval_after < res.eval_before
plt.figure(figsize=(4, 2.2))
plt.plot(res.losses, label="training loss (random batch and t)")
plt.axhline(res.eval_before, ls=":", c="gray", label="fixed set, before")
plt.axhline(res.eval_after, ls="--", c="k", label="fixed set, after")
plt.xlabel("step"); plt.legend(fontsize=7); plt.show()

# %% [markdown]
# `gdlib.sd.lora.save_diffusers_lora` writes what `StableDiffusionPipeline.save_lora_weights` writes:
# `pytorch_lora_weights.safetensors` with `unet.{module}.lora_A / lora_B` (and DoRA's `lora_magnitude_vector`) and the
# adapter's config (rank, alpha, DoRA on) in the file's metadata, so `pipe.load_lora_weights(folder)` rebuilds the same
# adapter in PyTorch. If diffusers is installed (the `parity` extra), we load it there and draw the same images.

# %%
path = lora.save_diffusers_lora(pipe.unet, WORK / "adapter")
with safe_open(str(path), "np") as h:
    keys, meta = list(h.keys()), h.metadata()
print(f"{path.name}: {len(keys)} tensors, {path.stat().st_size / 1024:.1f} KB; "
      f"config: r={json.loads(meta[lora.METADATA_KEY])['unet.r']}, "
      f"use_dora={json.loads(meta[lora.METADATA_KEY])['unet.use_dora']}")
tuned = P.sample(pipe, PROMPTS, latents, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE)
assert not np.allclose(tuned, guided)            # the adapter changes the images

try:
    import diffusers
    import torch
except ImportError as e:
    diffusers = None
    print(f"diffusers/torch not importable ({e.name}): the diffusers comparison is skipped. "
          "Install the parity extra (pip install -e '.[parity]') to run it.")
if diffusers is not None:
    variant = None if (FOLDER / "unet" / "diffusion_pytorch_model.safetensors").is_file() or \
        list((FOLDER / "unet").glob("diffusion_pytorch_model-*.safetensors")) else "fp16"
    dpipe = diffusers.StableDiffusionPipeline.from_pretrained(FOLDER, safety_checker=None, variant=variant)
    dpipe.scheduler = diffusers.DDIMScheduler.from_config(dpipe.scheduler.config)   # the sampler gdlib runs
    dpipe.set_progress_bar_config(disable=True)
    dpipe.load_lora_weights(str(path.parent))
    with torch.no_grad():
        ref = dpipe(prompt=PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=SAMPLE_STEPS,
                    guidance_scale=GUIDANCE, output_type="np").images
    diff = float(np.abs(ref - tuned).max())
    print(f"diffusers {diffusers.__version__} with the saved {FT_KIND} vs gdlib: max |difference| = {diff:.2e} "
          "(images in [0, 1])")
    assert diff < 1e-3
    del dpipe
plot.image_grid(np.concatenate([to_uint8(guided), to_uint8(tuned)]), nrow=len(PROMPTS),
                suptitle=f"top: base; bottom: with the {FT_KIND} (same latents, w = {GUIDANCE})")
plt.show()

# %% [markdown]
# ## 5. The recipe's guidance on the folder: RB-Modulation and AFA
#
# Notebook 05's RB-Modulation works on any sampler that exposes the Tweedie estimate $\hat x_0$; here $\hat x_0$ is a
# **latent**, so the style descriptor must read latents. The challenge entry's choice on SD 2.1 was the **Gram
# matrices of the VAE decoder's up-block feature maps** while decoding $\hat x_0$:
# $\Psi(z) = [\,\mathrm{unit}(\mathrm{vec}\,G_l(F_l(z / s)))\,]_l / \sqrt{L}$ with $G = F F^\top / (HW)$ and $F_l$ the output
# of up block $l$ (`gdlib.sd.guidance.DecoderGram`). Every controlled step runs `num_iter` forward and backward
# passes through those decoder blocks — not through the UNet — and then takes the DDIM step with the same
# $\hat\epsilon$ (notebook 05, the official code). AFA wraps the UNet's self-attention (`attn1`) exactly as on
# ToyWorld: the reference latent, noised to the same $t$, lends its keys and values.
#
# First the adapter goes back the other way: `gdlib.sd.lora.load_diffusers_lora` reads the file just written (or one
# diffusers wrote) into a fresh pipeline, and the images must be the ones drawn with the trained adapter.

# %%
from gdlib import guidance as G
from gdlib.config import RBConfig
from gdlib.sd import guidance as SG

fresh = L.load_pipeline(FOLDER)
names = lora.load_diffusers_lora(fresh.unet, path)
reloaded = P.sample(fresh, PROMPTS, latents, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE)
print(f"load_diffusers_lora: {len(names)} adapted layers; max |reloaded - trained images| = "
      f"{np.abs(reloaded - tuned).max():.1e}")
assert np.abs(reloaded - tuned).max() < 1e-4

RB = RBConfig(lam_style=10.0, eta=0.2, num_iter=3, tau=None)   # notebook 05's knobs; tau=None: every step
refs = ft_images[:2]                                           # the style references: the fine-tuning images
psi = SG.DecoderGram(pipe.vae)
z_ref = SG.reference_latents(pipe, refs)
print("Psi reads up blocks", psi.blocks, "with", [int(m.shape[1]) for m in psi.features(z_ref[:1])], "channels")
t0 = time.time()
P.sample(pipe, PROMPTS, latents, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE)
t_plain, t0 = time.time() - t0, time.time()
styled, hist = SG.stylize(pipe, PROMPTS, refs, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, config=RB,
                          latents=latents, return_history=True)
t_rb = time.time() - t0
both = SG.stylize(pipe, PROMPTS, refs, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, config=RB, afa=True,
                  latents=latents)
active = [h for h in hist if h["active"]]
print(f"RB-Modulation: {len(active)} controlled steps, {t_rb:.1f} s for {len(PROMPTS)} images; plain CFG + DDIM on "
      f"the same latents {t_plain:.1f} s (x{t_rb / t_plain:.1f})")
for h in active[:3] + active[-2:]:
    print(f"  step {h['i']:2d} (t = {h['t']:4d}): style loss 1 - cos {h['style_before']:.4f} -> {h['style_after']:.4f}")
assert all(h["style_after"] < h["style_before"] for h in active)   # the control lowers its own objective every step


def style_distance(images) -> float:
    """Mean 1 - cos(Psi(encode(image)), Psi(references)) of images [N, H, W, 3] in [0, 1]."""
    z = SG.reference_latents(pipe, images.transpose(0, 3, 1, 2) * 2 - 1)
    with jt.no_grad():
        return float(G.cosine_style_loss(psi(z), G.reference_embedding(psi, z_ref)).item())


d = {name: style_distance(x) for name, x in (("plain", guided), ("RB", styled), ("RB + AFA", both))}
print("style distance of the final images to the references:", {k: round(v, 4) for k, v in d.items()})
plot.image_grid(np.concatenate([to_uint8(guided), to_uint8(styled), to_uint8(both)]), nrow=len(PROMPTS),
                suptitle="rows: plain CFG, + RB-Modulation (VAE-decoder Gram), + AFA" + (" — random weights" if TINY else ""))
plt.show()

# %% [markdown]
# What the numbers say, and what they do not. The assert checks the mechanism: at every controlled step the Adam
# steps lower $1-\cos$ between $\Psi(z)$ and the references' $\Psi$. Whether the *final* images end up closer in
# style (the last printed line) depends on the weights: on the tiny folder the decoder is random, so $\Psi$ is a
# random-feature Gram (like notebook 05's `gram` descriptor) and the pictures are noise. On a real folder the same
# cells steer SD toward the references' textures; notebook 06's lesson — choose `lam_style`, `eta` and `tau` on
# validation styles, report on test styles, with intervals — applies unchanged, and was not done here for SD.
# On the command line: `gdlib generate STYLE_DIR --base FOLDER --adapter X.safetensors --out OUT [--afa]`.

# %% [markdown]
# ## 6. What it costs on a real checkpoint
#
# The SD 2.1 and SD 1.5 component configs (the sizes published in their diffusers folders) are enough to know their
# size: Jittor builds the modules **lazily** — a parameter is a shape and an initialiser until something reads it —
# so the full-size models below are counted without allocating their weights.

# %%
from gdlib.sd.text_encoder import CLIPTextConfig, CLIPTextModel
from gdlib.sd.unet import UNet2DConditionModel, UNetConfig
from gdlib.sd.vae import AutoencoderKL, VAEConfig

SD_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)        # both versions
SD_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
REAL = {
    "SD 1.5": (UNetConfig(**SD_UNET, attention_head_dim=8, cross_attention_dim=768, sample_size=64),
               CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
    # OpenCLIP ViT-H text tower; diffusers' folder keeps 23 of its 24 layers (SD 2.x uses the penultimate one)
    "SD 2.1": (UNetConfig(**SD_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, sample_size=96,
                          use_linear_projection=True),
               CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                              hidden_act="gelu")),
}
sizes = {}
for label, (ucfg, tcfg) in REAL.items():
    mods = {"text_encoder": CLIPTextModel(tcfg), "unet": UNet2DConditionModel(ucfg), "vae": AutoencoderKL(SD_VAE)}
    sizes[label] = {k: count(m) for k, m in mods.items()}
    del mods
jt.gc()
print(f"{'':8s}{'text encoder':>14s}{'UNet':>14s}{'VAE':>13s}{'total':>15s}{'fp16 disk':>11s}{'fp32 RAM':>10s}")
for label, s in sizes.items():
    n = sum(s.values())
    print(f"{label:8s}{s['text_encoder']:14,d}{s['unet']:14,d}{s['vae']:13,d}{n:15,d}"
          f"{2 * n / 1e9:9.2f}GB{4 * n / 1e9:8.2f}GB")
n21 = sum(sizes["SD 2.1"].values())
assert sizes["SD 2.1"]["unet"] > 0.6 * n21        # the UNet dominates

# %% [markdown]
# How to read it for SD 2.1:
# - **disk**: the fp16 weights are `2 bytes x parameters` (the table's fp16 column); an fp32 folder is twice that.
#   Hub folders often hold both variants, and also pickled `.bin` / `.ckpt` copies that gdlib does not read.
# - **memory**: gdlib holds every weight in float32 (`4 bytes x parameters`, the last column), and while a component
#   loads its file's arrays are in memory too, so plan for roughly the fp32 size plus the largest component's file.
#   Sampling adds activations at 96x96 latents (768 px images); fine-tuning adds the activations kept for the
#   backward pass (it grows with batch and resolution: not measured here) but only a small optimizer state, since
#   just the adapter trains.
# - **time**: `python bench/sd.py --size sd15` times SD 1.5's real architecture (random weights) in gdlib and in
#   diffusers/PyTorch on the same CPU: one CFG UNet call at 512 px, a VAE decode, and the implied minutes per image
#   (the README, section *Stable Diffusion folders*, lists what it measured on the course's 2-core machine: minutes
#   per image on a CPU, gdlib several times slower than PyTorch at that size). A GPU was not available to measure.
#
# README.md, section *Stable Diffusion folders*, says where such folders come from and what is not supported yet.

# %% [markdown]
# ## Summary
#
# - A diffusers SD folder is `model_index.json` plus one sub-folder per component, each a config and safetensors;
#   `gdlib.sd.loader.load_pipeline` maps it onto Jittor modules with the same parameter names, fp16 read as fp32.
# - The UNet holds most of the parameters; SD 2.1's three networks come to the totals in section 6.
# - Sampling is the ToyWorld recipe at scale: CFG on one batched UNet call, DDIM on the folder's schedule, VAE decode.
# - The few-shot LoRA / DoRA fine-tune lowers the fixed-set loss, and the adapter gdlib saves loads into diffusers
#   with `load_lora_weights` and gives the same images (checked above when diffusers is installed).
# - RB-Modulation carries over with a latent-space Psi (VAE-decoder Grams): each controlled step lowers its style
#   loss; AFA is the same wrapper as on ToyWorld. Its knobs were chosen on ToyWorld, not on SD.
# - Without `GDLIB_SD_FOLDER` all of this ran on random weights: the code path is real, the pictures are not.
#
# ## Exercises
#
# 1. Set `FT_KIND = "lora"` and compare the fixed-set loss after the same steps with DoRA's.
#    Is one seed enough to tell them apart (notebook 06's paired intervals)?
# 2. Change `TINY_LATENT` to 32 and time section 3 again: how does sampling time grow with the latent side?
# 3. In section 6, count SD 2.1's UNet with `layers_per_block=1`: which blocks lose parameters?
# 4. In section 5, pass `blocks=[0]` to `SG.stylize` (Psi from the first, coarsest up block only): how do the
#    per-step style losses and the time change?
# 5. With a real folder: fine-tune on five of your images with decoupled captions (notebook 04) and sample
#    `"a painting of a {object} in the style of ..."` for objects not in your images.
