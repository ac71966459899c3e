"""Every default of the library in one place, as dataclasses: a fine-tune (StyleConfig), pretraining (TrainConfig),
RB-Modulation (RBConfig), the recipe (RecipeConfig), and the shipped files. No Jittor here: the command line
(gdlib.commands) derives its options from these fields (help text in each field's metadata), so
`gdlib <cmd> --help` answers without loading Jittor, and a default changed here changes the CLI with it."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models.config import ModelConfig

DATA_DIR = Path(__file__).resolve().parent / "data"

# Classifier-free guidance scale used by default: the best of a sweep on the shipped base model (gdlib/data/base model
# card; notebook 02 re-measures it). This small model degrades at the usual 4-7.5 (colours saturate and clip).
DEFAULT_GUIDANCE = 1.5

# the shipped base checkpoint; GDLIB_BASE_CHECKPOINT points elsewhere (e.g. a run's exported weights)
DEFAULT_BASE = Path(os.environ.get("GDLIB_BASE_CHECKPOINT") or DATA_DIR / "base" / "base.safetensors")
DEFAULT_EDITOR = DATA_DIR / "editor" / "editor.safetensors"  # the shipped DiT editor (notebook 08)

# peft's usual LoRA placement: the attention projections
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out")
# where a style adapter sits: the attention projections AND the residual blocks' 3x3 convolutions. Attention alone
# learns little style on this UNet (notebook 03 measures both placements); `gdlib sweep` compares them on the
# validation styles (gdlib/data/sweep/README.md).
STYLE_TARGETS = DEFAULT_TARGETS + ("conv1", "conv2")
# Custom Diffusion (Kumari et al. 2023): only the cross-attention key and value projections, full weights (diffusers'
# train_custom_diffusion.py --freeze_model crossattn_kv), plus the new token's embedding
CUSTOM_TARGETS = ("attn2.to_k", "attn2.to_v")
ADAPTER_KINDS = ("lora", "dora", "full", "custom")
CAPTION_MODES = ("instance", "dreambooth", "decoupled")


def opt(default: Any = None, help: str = "", flag: str | None = None, factory=None, **argparse_kw: Any):
    """A config field that is also a command-line option: its help text, and optionally its flag (default
    --field-name) and extra argparse keywords (choices, type for Optional fields)."""
    meta = {"help": help, "flag": flag, "argparse": argparse_kw}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class StyleConfig:
    """Knobs of one few-shot style fine-tune (`gdlib train-style`)."""
    adapter: str = opt("dora", "lora | dora | full (every UNet weight) | custom (cross-attention K/V, Custom "
                       "Diffusion)", choices=ADAPTER_KINDS)
    rank: int = opt(4, "adapter rank r")
    alpha: float | None = opt(None, "adapter scale numerator (s = alpha / r); default: rank", type=float)
    targets: list[str] = opt(help="module names to adapt (comma list)", factory=lambda: list(STYLE_TARGETS))
    steps: int = opt(150, "optimizer steps")
    lr: float = opt(2e-3, "learning rate (adapters; full fine-tuning wants ~10x less)")
    batch_size: int = opt(4, "images per step", flag="--batch")
    resolution: int | None = opt(None, "training size in px; default: the base model's image size", type=int)
    caption_mode: str = opt("decoupled", "instance | dreambooth | decoupled (gdlib.prompts)", flag="--captions",
                            choices=CAPTION_MODES)
    token: str | None = opt(None, "identifier word; default: the mode's (style_NN for instance, sks for dreambooth)")
    attributes: str | None = opt(None, "attribute table JSON; default: gdlib/data/attributes.json")
    new_words: list[str] = opt(help="extra unknown words allowed as new tokens (comma list)", factory=list)
    prior_weight: float = opt(0.0, "prior-preservation weight lambda_prior (0: off)")
    num_class_images: int = opt(30, "class images for prior preservation", flag="--class-images")
    class_objects: list[str] | None = opt(None, "objects of the class images (comma list); default: every ToyWorld "
                                          "object the tokenizer knows")
    class_steps: int = opt(20, "DDIM steps for the class images")
    class_guidance: float = opt(DEFAULT_GUIDANCE, "CFG scale for the class images")
    train_tokens: bool = opt(True, "train the new tokens' embeddings", flag="--no-train-tokens")
    train_text_encoder: bool = opt(False, "also fine-tune the whole text encoder (DreamBooth's option)")
    min_snr_gamma: float = opt(5.0, "Min-SNR gamma of the loss weights (0: off)", flag="--min-snr")
    grad_clip: float = opt(1.0, "gradient-norm clip (0: off)")
    flip: bool = opt(True, "random horizontal flips of the few-shot images", flag="--no-flip")
    seed: int = opt(0, "seed of the batches, noise and adapter init")
    checkpoint_every: int = opt(50, "steps between resumable checkpoints (0: only at the end)")


@dataclass
class RBConfig:
    """RB-Modulation knobs. Defaults: chosen by `gdlib sweep` on the validation styles (gdlib/data/sweep/README.md)
    for the course's 20-step DDIM recipe; the official demo's are lam_style = lam_align = 1, eta 0.1, num_iter 3,
    tau = every step (on Stable Cascade's latents)."""
    lam_style: float = opt(10.0, "RB-Modulation style-loss weight (sweep: best of 0.1, 0.3, 1, 3, 10, the largest "
                           "tried)", flag="--style-weight")
    lam_align: float = opt(1.0, "weight of the mean-squared alignment term")
    lam_content: float = opt(0.0, "weight of the content term")
    num_iter: int = opt(3, "Adam steps per reverse step (sweep: 3 beat 6)")
    eta: float = opt(0.2, "Adam step size at the first step, decayed linearly eta (1 - i / N) (sweep: 0.05, 0.1, 0.2)")
    tau: int | None = opt(10, "control the reverse steps i < tau (sweep: 10 of 20 tied with all 20)", type=int)

    def __post_init__(self) -> None:
        for k in ("lam_style", "lam_align", "lam_content", "eta"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"RBConfig.{k} must be a finite number >= 0, got {v!r}")
        if int(self.num_iter) != self.num_iter or self.num_iter < 0:
            raise ValueError(f"RBConfig.num_iter must be an integer >= 0, got {self.num_iter!r}")
        if self.tau is not None and (int(self.tau) != self.tau or self.tau < 0):
            raise ValueError(f"RBConfig.tau must be None (all steps) or an integer >= 0, got {self.tau!r}")


@dataclass
class RecipeConfig:
    """Knobs shared by every variant of the recipe: fine-tuning budget and adapter placement (defaults: StyleConfig's),
    sampling, RB-Modulation (defaults: RBConfig's). Every variant gets the same placement, so DoRA vs LoRA compares
    adapters."""
    targets: tuple[str, ...] = opt(help="module names every variant adapts (comma list)",
                                   factory=lambda: tuple(STYLE_TARGETS))
    steps: int = opt(StyleConfig.steps, "fine-tuning steps per style")
    rank: int = opt(StyleConfig.rank, "adapter rank")
    lr: float = opt(StyleConfig.lr, "fine-tuning learning rate")
    batch_size: int = opt(StyleConfig.batch_size, "images per fine-tuning step", flag="--batch")
    prior_weight: float = opt(StyleConfig.prior_weight, "prior-preservation weight (0: off)")
    attributes: str | None = opt(None, "attribute table for decoupled captions; default: the shipped one")
    sample_steps: int = opt(20, "DDIM steps")
    guidance_scale: float = opt(DEFAULT_GUIDANCE, "classifier-free guidance scale (`gdlib generate` on a Stable "
                                  "Diffusion folder: 7.5, diffusers' default, unless given)", flag="--cfg")
    rb: RBConfig = field(default_factory=RBConfig)
    psi: str = opt("gram", "style descriptor for the guidance", choices=("gram", "csd"))
    afa: bool = opt(False, "also aggregate the references' attention features")
    seed: int = opt(0, "fine-tune and sampling seed")


@dataclass
class TrainConfig:
    """Knobs of pretraining (`gdlib train-base`); the budget is whichever of steps / minutes runs out first (summed
    over resumes)."""
    out_dir: str = opt("runs/base", "run directory (checkpoint, sample grids)", flag="--out")
    steps: int = opt(100_000, "step budget (total over resumes)")
    minutes: float = opt(85.0, "training wall-time budget in minutes (total over resumes)")
    batch_size: int = opt(64, "images per step", flag="--batch")
    lr: float = opt(2e-3, "peak learning rate")
    lr_min_ratio: float = opt(0.05, "final learning rate / peak (cosine decay)")
    warmup_steps: int = opt(100, "linear warmup steps", flag="--warmup")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    grad_clip: float = opt(1.0, "gradient-norm clip (0: off)")
    ema_decay: float = opt(0.999, "EMA decay of the exported weights", flag="--ema")
    cond_drop: float = opt(0.1, "caption dropout for classifier-free guidance")
    caption_mix: bool = opt(True, "caption every image 'a {style} painting of a {object}' only (data version 1's "
                            "captions) instead of drawing from toyworld.CAPTION_TEMPLATES", flag="--single-template")
    min_snr_gamma: float = opt(5.0, "Min-SNR gamma of the loss weights (0: off)", flag="--min-snr")
    n_per_pair: int = opt(64, "pre-rendered images per style x object")
    styles: list[str] | None = None     # None: toyworld.KNOWN_STYLES (never the held-out ones)
    objects: list[str] | None = None    # None: all toyworld.OBJECTS
    data_seed: int = opt(0, "seed of the rendered training images")
    seed: int = opt(0, "seed of init, batches and noise")
    checkpoint_minutes: float = opt(5.0, "minutes between checkpoints")
    checkpoint_every: int = opt(0, "also checkpoint every N steps (0: by time only)")
    sample_every: int = opt(250, "steps between sample grids (0: off)")
    sample_steps: int = opt(25, "DDIM steps of the sample grids")
    guidance_scale: float = opt(DEFAULT_GUIDANCE, "CFG scale for samples and the export's measurement",
                                flag="--guidance")
    log_every: int = opt(10, "steps between loss-history entries")
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which adapter, which captions, guidance or not."""
    name: str
    adapter: str
    caption_mode: str
    guided: bool
    label: str
    lr: float | None = None       # its own fine-tuning lr (None: RecipeConfig.lr, the adapters' lr)
    default: bool = True          # in the default ablation (variants() with no names); False: run it by name


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "lora", "instance", False, "DreamBooth-LoRA, instance token (challenge baseline)"),
    Variant("dora", "dora", "instance", False, "DoRA, instance token"),
    Variant("dora_decoupled", "dora", "decoupled", False, "DoRA + decoupled prompts"),
    Variant("guided_dora", "dora", "decoupled", True, "Guided DoRA: DoRA + decoupled prompts + RB-Modulation"),
    # off the chain: guidance without decoupling, so each of the two can be judged on its own (shares dora's fine-tune)
    Variant("dora_rb", "dora", "instance", True, "DoRA + RB-Modulation, instance token (no decoupling)"),
    # Custom Diffusion (Kumari et al. 2023): full cross-attention K/V weights + the instance token, the baseline's
    # captions. lr chosen on the VALIDATION styles watercolor + mosaic (150 steps, 12 unseen objects each, seed 0),
    # mean Final: 2e-4 0.200 (Style stays the base's), 1e-3 0.167, 2e-3 0.206, 8e-3 0.128 (most Style, content lost).
    # Not in the default ablation (`gdlib ablation --variants baseline,custom` adds the row; notebook 07 uses it)
    Variant("custom", "custom", "instance", False, "Custom Diffusion: cross-attention K/V + instance token",
            lr=2e-3, default=False),
)}


# ------------------------------------------------------------------------------------------ the DiT editor (nb 08)
EDIT_KINDS = ("restyle", "swap")


@dataclass
class DiTConfig:
    """Sizes of the small diffusion-transformer editor (gdlib.models.dit), saved next to its weights. Defaults: small
    enough to pretrain on 2 CPU cores (32 px, patch 4: 64 target + 64 source + 12 text tokens per sequence)."""
    image_size: int = opt(32, "image size in px (square)")
    patch: int = opt(4, "patch size: 32 px / 4 = an 8x8 grid of tokens per image", choices=(1, 2, 4, 8))
    width: int = opt(96, "transformer width (token dimension)")
    depth: int = opt(4, "transformer blocks (adaLN-Zero, joint text + source + target attention)")
    heads: int = opt(4, "attention heads")
    mlp_ratio: int = opt(4, "MLP hidden width / width")
    text_width: int = opt(64, "instruction-encoder width (gdlib.models.text.TextEncoder)")
    text_layers: int = opt(1, "instruction-encoder layers")
    max_length: int = opt(12, "instruction tokens including <bos> and <eos>")


@dataclass
class EditorConfig:
    """Knobs of the editor's pretraining (`gdlib train-editor`): flow matching on ToyWorld edit pairs of the KNOWN
    styles; the budget is whichever of steps / minutes runs out first (summed over resumes)."""
    out_dir: str = opt("runs/editor", "run directory (resumable checkpoint, exported editor)", flag="--out")
    steps: int = opt(20_000, "step budget (total over resumes)")
    minutes: float = opt(60.0, "training wall-time budget in minutes (total over resumes)")
    batch_size: int = opt(32, "edit pairs per step", flag="--batch")
    lr: float = opt(1e-3, "peak learning rate (AdamW, linear warmup, then constant)")
    warmup_steps: int = opt(100, "linear warmup steps", flag="--warmup")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "gradient-norm clip (0: off)")
    cond_drop: float = opt(0.1, "instruction dropout (for classifier-free guidance on the instruction)")
    edits: list[str] = opt(help="edit kinds to draw (comma list of restyle, swap)", factory=lambda: list(EDIT_KINDS))
    t_sampling: str = opt("logit_normal", "training times: uniform, or logit-normal as SD3 (Esser et al. 2024)",
                          choices=("uniform", "logit_normal"))
    seed: int = opt(0, "seed of init, pairs, times and noise")
    checkpoint_every: int = opt(200, "steps between resumable checkpoints (0: only at the end)")
    log_every: int = opt(10, "steps between loss-history entries")
    model: DiTConfig = field(default_factory=DiTConfig)


@dataclass
class EditLoRAConfig:
    """Knobs of EditLoRA (PhotoDoodle, Huang et al. 2025): a few-shot LoRA on the pretrained editor for one new edit."""
    adapter: str = opt("lora", "lora | dora", choices=("lora", "dora"))
    rank: int = opt(4, "adapter rank r")
    alpha: float | None = opt(None, "adapter scale numerator (s = alpha / r); default: rank", type=float)
    targets: list[str] = opt(help="module names to adapt (comma list; the DiT blocks' attention projections)",
                             factory=lambda: list(DEFAULT_TARGETS))
    steps: int = opt(300, "optimizer steps")
    lr: float = opt(2e-3, "learning rate")
    batch_size: int = opt(8, "pairs per step", flag="--batch")
    t_sampling: str = opt("logit_normal", "training times (as EditorConfig)", choices=("uniform", "logit_normal"))
    grad_clip: float = opt(1.0, "gradient-norm clip (0: off)")
    seed: int = opt(0, "seed of batches, times, noise and adapter init")
