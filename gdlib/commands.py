"""The command line's parsers, one per subcommand, Jittor-free: `gdlib <cmd> --help` and bad arguments are answered
here before any model code loads. Options that are knobs of a config dataclass come from gdlib.config (help text,
flag, default: one place); the rest are inputs and outputs of the command."""
from __future__ import annotations

from typing import Callable

from . import config as C
from .cliutil import Parser, add_config_args

# the fields of each config the CLI exposes (in this order)
STYLE_OPTIONS = ("adapter", "rank", "alpha", "targets", "steps", "lr", "batch_size", "resolution", "caption_mode",
                 "token", "attributes", "new_words", "prior_weight", "num_class_images", "class_steps",
                 "class_guidance", "class_objects", "train_tokens", "train_text_encoder", "min_snr_gamma", "flip",
                 "seed", "checkpoint_every")
TRAIN_OPTIONS = ("out_dir", "steps", "minutes", "batch_size", "lr", "warmup_steps", "ema_decay", "cond_drop",
                 "caption_mix", "grad_clip", "min_snr_gamma", "n_per_pair", "seed", "checkpoint_minutes",
                 "checkpoint_every", "sample_every", "guidance_scale")
RECIPE_OPTIONS = ("steps", "rank", "lr", "targets", "sample_steps", "guidance_scale", "psi", "afa", "seed")
RB_OPTIONS = ("lam_style", "num_iter", "eta", "tau")


def _base_option(p: Parser, flag: str = "--base", sd_folder: bool = False) -> None:
    p.add_argument(flag, default=str(C.DEFAULT_BASE), help="base model (.safetensors export or train-base checkpoint)"
                   + (", or a Stable Diffusion 1.x / 2.x diffusers folder" if sd_folder else ""))


def train_style() -> Parser:
    p = Parser(prog="gdlib train-style", description=(
        "Fine-tune the base model on a style folder (STYLE_DIR/images/{object}.png). Several folders train one model "
        "jointly, each with its own token (Custom Diffusion's multi-concept training; --captions instance). Rerun the "
        "same command to resume from OUT's checkpoint (OUT without .safetensors + .ckpt.safetensors)."))
    p.add_argument("style_dir", nargs="+", help="challenge style folder(s), e.g. toy_challenge/00")
    p.add_argument("--out", required=True, help="style file to write, e.g. runs/styles/00.safetensors (on an SD "
                   "folder: the diffusers LoRA file)")
    p.add_argument("--base", default=str(C.DEFAULT_BASE),
                   help="base model (.safetensors export or train-base checkpoint) or a Stable Diffusion 1.x / 2.x "
                        "diffusers folder (LoRA / DoRA on the attention projections, any caption mode, prior "
                        "preservation with class images cached in OUT.class_images/; writes a file diffusers' "
                        "load_lora_weights reads)")
    add_config_args(p, C.StyleConfig, STYLE_OPTIONS)
    sd_help = {"class_guidance": "on a Stable Diffusion folder: 7.5 (diffusers' default) unless given",
               "class_objects": "on a Stable Diffusion folder the default is the style folder's objects"}
    for action in p._actions:  # StyleConfig's defaults are the ToyWorld model's
        if action.dest in sd_help:
            action.help += "; " + sd_help[action.dest]
    p.add_argument("--cache-dir", default=None, help="class-image cache (default: $GDLIB_CACHE or ~/.cache/gdlib; on a "
                   "Stable Diffusion folder: OUT without .safetensors + .class_images/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def train_base() -> Parser:
    from .models.config import TextConfig, UNetConfig

    u, tx = UNetConfig(), TextConfig()
    p = Parser(prog="gdlib train-base", description=(
        "Pretrain the toy text-to-image model on ToyWorld's known styles. Rerun the same command to resume "
        "from OUT/ckpt.safetensors; the step and minute budgets are totals over all resumes."))
    add_config_args(p, C.TrainConfig, TRAIN_OPTIONS)
    p.add_argument("--base-channels", type=int, default=u.base_channels, help=f"UNet width (default: {u.base_channels})")
    p.add_argument("--channel-mult", default=",".join(map(str, u.channel_mult)), help="UNet width per level, e.g. 1,2,2")
    p.add_argument("--patch-size", type=int, default=u.patch_size, help="space-to-depth patch of the UNet input")
    p.add_argument("--attn-resolutions", default=",".join(map(str, u.attn_resolutions)),
                   help="UNet-internal sizes with cross-attention (the text enters there), e.g. 16,8,4")
    p.add_argument("--self-attn-resolutions", default=",".join(map(str, u.self_attn_resolutions)),
                   help="sizes with self-attention as well (a subset of --attn-resolutions)")
    p.add_argument("--text-width", type=int, default=tx.width, help="text-encoder width")
    p.add_argument("--text-layers", type=int, default=tx.layers, help="text-encoder layers")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--export", default=None, help="after training: measure accuracies, write EMA weights + card here")
    p.add_argument("--eval-steps", type=int, default=25, help="DDIM steps for the export's accuracy measurement")
    p.add_argument("--eval-per-pair", type=int, default=1, help="images per known style x object when measuring")
    p.add_argument("--eval-templates", default="trained",
                   help="caption templates measured by --export: 'trained' (every template the run drew) or a comma list")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def sample() -> Parser:
    from .sampling import SAMPLERS

    p = Parser(prog="gdlib sample", description="Generate images with classifier-free guidance and DDIM (or --sampler).")
    p.add_argument("prompts", nargs="+", help='e.g. "a pixel painting of a cat"')
    p.add_argument("--checkpoint", default=str(C.DEFAULT_BASE),
                   help="base model (.safetensors export or train-base checkpoint) or a Stable Diffusion 1.x / 2.x "
                        "diffusers folder")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS),
                   help="sampler on the model's noise schedule, as diffusers' scheduler of that name (default: ddim)")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale (default: {C.DEFAULT_GUIDANCE} for a ToyWorld model, 7.5 for "
                        "an SD folder)")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/sample.png", help="PNG grid to write")
    return p


def _recipe_options(p: Parser, sd_folder: bool = False) -> None:
    _base_option(p, sd_folder=sd_folder)
    add_config_args(p, C.RecipeConfig, RECIPE_OPTIONS)
    add_config_args(p, C.RBConfig, RB_OPTIONS)


def generate() -> Parser:
    p = Parser(prog="gdlib generate", description=(
        "prompt.json (+ a style file, + RB-Modulation toward STYLE_DIR's images) -> OUT/{NN}/{prompt}.png, the "
        "challenge's output layout."))
    p.add_argument("style_dir", help="challenge style folder: NN/images/{object}.png and NN/prompt.json")
    p.add_argument("--out", required=True, help="predictions root; images go to OUT/NN/{prompt}.png")
    p.add_argument("--adapter", default=None, help="style file from `gdlib train-style` (default: base model only); with an SD "
                   "folder as --base, the diffusers LoRA file `train-style --base FOLDER` wrote (its .card.json "
                   "beside it gives the prompt form)")
    p.add_argument("--concept", default=None, help="which style of a multi-concept style file (folder id or token)")
    p.add_argument("--prompts", default=None, help="prompt.json to use instead of STYLE_DIR/prompt.json")
    p.add_argument("--no-guidance", action="store_true", help="plain sampling, no RB-Modulation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _recipe_options(p, sd_folder=True)
    return p


def ablation() -> Parser:
    from .toyworld import HELDOUT_STYLES, TEST_STYLES

    p = Parser(prog="gdlib ablation", description=(
        "The variants on the held-out ToyWorld TEST styles x every unseen object x several seeds; prints (and "
        "optionally writes into the README) each variant's means and its paired bootstrap 95% interval against the "
        "baseline; writes OUT/results.json (per set, per seed, with the command and versions)."))
    p.add_argument("--styles", default=",".join(TEST_STYLES),
                   help=f"held-out ToyWorld styles to export and use (default: the test styles; all: {HELDOUT_STYLES})")
    p.add_argument("--challenge", default=None, help="use this challenge folder instead of exporting ToyWorld styles")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the ToyWorld export")
    p.add_argument("--variants", default=None, help="comma list of variants (default: all; see gdlib.recipe.VARIANTS)")
    p.add_argument("--seeds", default="0,1,2", help="fine-tune + sampling seeds, comma list (each set runs once per seed)")
    p.add_argument("--out", default="runs/ablation", help="predictions go to OUT/predictions/{variant}/NN")
    p.add_argument("--results", default=None, help="results JSON to write (default: OUT/results.json)")
    p.add_argument("--readme", default=None, help="write the table into this README between ablation markers")
    p.add_argument("--max-prompts", type=int, default=None, help="prompts per exported style (default: all 12)")
    _recipe_options(p)
    return p


def demo() -> Parser:
    from .toyworld import HELDOUT_STYLES

    p = Parser(prog="gdlib demo", description=(
        "Fine-tune DoRA with decoupled prompts on one held-out ToyWorld style, generate the unseen objects with and "
        "without RB-Modulation, write OUT/demo.png and the score table."))
    p.add_argument("--style", default="watercolor", choices=list(HELDOUT_STYLES), help="held-out ToyWorld style")
    p.add_argument("--out", default="outputs", help="folder for demo.png, demo_scores.md and the predictions")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the ToyWorld export")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _recipe_options(p)
    return p


def sweep() -> Parser:
    from .toyworld import VALIDATION_STYLES

    p = Parser(prog="gdlib sweep", description=(
        "The coordinate sweep of the recipe's knobs on the validation styles (never the test styles); writes "
        "results + table."))
    p.add_argument("--styles", default=",".join(VALIDATION_STYLES), help="validation styles (never the test styles)")
    p.add_argument("--seeds", default="0", help="fine-tune + sampling seeds, comma list")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the ToyWorld export")
    _base_option(p)
    p.add_argument("--results", default="runs/sweep/results.json", help="results JSON to write")
    p.add_argument("--table", default=None, help="also write the Markdown table (with the command) to this file")
    return p


def train_evaluators() -> Parser:
    p = Parser(prog="gdlib train-evaluators", description="Train the ToyWorld content and style evaluators.")
    p.add_argument("--out", default="runs/evaluators", help=f"output folder (default runs/evaluators; the shipped "
                   f"ones live in {C.DATA_DIR / 'evaluators'}: pass it to replace them)")
    p.add_argument("--seed", type=int, default=0, help="training data / init seed")
    p.add_argument("--eval-seed", type=int, default=1000, help="fresh seed for the reported accuracies")
    p.add_argument("--n-per-pair", type=int, default=24, help="training images per (style, object) pair")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    return p


def train_csd() -> Parser:
    p = Parser(prog="gdlib train-csd", description="Train the learned ToyWorld style descriptor.")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam-invariance", type=float, default=5.0, help="weight of the content-invariance loss")
    p.add_argument("--lam-confusion", type=float, default=0.0, help="weight of the adversarial content-confusion loss")
    p.add_argument("--dim", type=int, default=16,
                   help="embedding size (64 carried the object at 0.39 on held-out styles, 16 at 0.16; chance 0.07)")
    p.add_argument("--out", default="runs/csd", help=f"output folder (default runs/csd; the shipped descriptor lives "
                   f"in {C.DATA_DIR / 'style'}: pass it to replace it)")
    return p


EDITOR_OPTIONS = ("out_dir", "steps", "minutes", "batch_size", "lr", "warmup_steps", "grad_clip", "cond_drop", "edits",
                  "t_sampling", "seed", "checkpoint_every")
DIT_OPTIONS = ("patch", "width", "depth", "heads", "text_width", "text_layers")
EDIT_LORA_OPTIONS = ("adapter", "rank", "alpha", "targets", "steps", "lr", "batch_size", "t_sampling", "seed")
DEFAULT_EDITOR = str(C.DEFAULT_EDITOR)


def train_editor() -> Parser:
    p = Parser(prog="gdlib train-editor", description=(
        "Pretrain the small DiT editor with flow matching on ToyWorld edit pairs of the known styles (restyle, object "
        "swap). Rerun the same command to resume from OUT/ckpt.safetensors; the step and minute budgets are totals "
        "over all resumes. Writes OUT/editor.safetensors."))
    add_config_args(p, C.EditorConfig, EDITOR_OPTIONS)
    add_config_args(p, C.DiTConfig, DIT_OPTIONS)
    p.add_argument("--export", default=None, help="after training: measure the editor on held-out pairs and write "
                   "editor.safetensors + model card here")
    p.add_argument("--eval-pairs", type=int, default=60, help="held-out pairs per edit kind for --export")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def train_edit() -> Parser:
    p = Parser(prog="gdlib train-edit", description=(
        "EditLoRA (PhotoDoodle): fit a LoRA on the pretrained editor from a few edit pairs. PAIRS_DIR holds "
        'pairs.jsonl, one {"source": ..., "target": ..., "caption": ...} per line (image paths relative to '
        "PAIRS_DIR)."))
    p.add_argument("pairs_dir", help="folder with pairs.jsonl and the images it names")
    p.add_argument("--out", required=True, help="adapter file to write, e.g. runs/edits/watercolor.safetensors")
    p.add_argument("--base", default=DEFAULT_EDITOR,
                   help=f"editor from `gdlib train-editor` (default: {DEFAULT_EDITOR})")
    add_config_args(p, C.EditLoRAConfig, EDIT_LORA_OPTIONS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def edit() -> Parser:
    p = Parser(prog="gdlib edit", description="Edit an image by an instruction with the DiT editor (+ an EditLoRA).")
    p.add_argument("--model", default=DEFAULT_EDITOR, help=f"editor file (default: {DEFAULT_EDITOR})")
    p.add_argument("--adapter", default=None, help="EditLoRA file from `gdlib train-edit`")
    p.add_argument("--source", required=True, help="source image (any size; resized and centre-cropped)")
    p.add_argument("--caption", required=True, help='instruction, e.g. "make it pixel" or "replace cat with fish"')
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--steps", type=int, default=20, help="flow ODE steps (default: 20)")
    p.add_argument("--sampler", default="euler", choices=["euler", "heun"], help="ODE solver (default: euler)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG scale on the instruction (1: off)")
    p.add_argument("--shift", type=float, default=1.0, help="SD3 time shift of the steps (1: uniform)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    return p


PARSERS: dict[str, Callable[[], Parser]] = {
    "train-style": train_style, "train-base": train_base, "sample": sample, "generate": generate,
    "ablation": ablation, "demo": demo, "sweep": sweep, "train-evaluators": train_evaluators, "train-csd": train_csd,
    "train-editor": train_editor, "train-edit": train_edit, "edit": edit,
}


def parse(name: str, argv: list[str]):
    """Parse a subcommand's arguments (bad ones: one line on stderr, exit 2)."""
    return PARSERS[name]().parse_args(argv)
