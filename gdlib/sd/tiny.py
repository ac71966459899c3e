"""A tiny Stable Diffusion folder written by gdlib itself: random weights, no torch, no download.

`write_tiny_folder(root)` writes a complete diffusers-layout SD 1.x-style pipeline folder (model_index.json,
tokenizer/, text_encoder/, unet/, vae/, scheduler/) whose networks are gdlib.sd's own models at toy widths with
random weights, so gdlib.sd.loader.load_pipeline, gdlib.sd.pipeline.sample, gdlib.sd.finetune and gdlib.sd.lora can
be run (in notebook 09 and the tests) on a laptop with nothing else installed. The images it draws are noise: the
weights were never trained. The tokenizer is a tiny CLIP byte-level BPE vocabulary learned here from `CORPUS`.

Two flavours:
  legacy=False  what diffusers' save_pretrained writes today: fp32 `diffusion_pytorch_model.safetensors`, DDIMScheduler
                (diffusers' StableDiffusionPipeline.from_pretrained loads it too);
  legacy=True   the older formats hub folders still carry (tests/test_sd_models.py): an fp16 VAE variant with the
                pre-0.14 mid-block attention names (query/key/value/proj_attn), position_ids in the text encoder,
                a PNDMScheduler config.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from . import tokenizer as T  # noqa: E402
from .text_encoder import CLIPTextConfig, CLIPTextModel  # noqa: E402
from .unet import UNet2DConditionModel, UNetConfig  # noqa: E402
from .vae import AutoencoderKL, VAEConfig  # noqa: E402

CORPUS = ("a watercolor painting of a cat, a pixel painting of a castle, painting of a car by the sea; "
          "an ink sketch of two birds and 3 flowers, don't stop: it's the cat's toy! "
          "a photo of a tree in the style of neon lights") * 3
DOWN, UP = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
# SD 1.x / 2.x's scheduler numbers (scaled-linear betas 0.00085 -> 0.012, "leading" spacing with offset 1)
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}


def learn_bpe(corpus: str = CORPUS, n_merges: int = 120) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiny BPE vocabulary learned the CLIP way (bytes -> unicode, '</w>' on the last symbol): (vocab, merges)."""
    enc = T.bytes_to_unicode()
    words = Counter("".join(enc[b] for b in p.encode()) for p in T.pre_tokenize(T.normalize(corpus)))
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, f in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        for w in seqs:
            s, out, k = seqs[w], [], 0
            while k < len(s):
                if k < len(s) - 1 and (s[k], s[k + 1]) == best:
                    out.append(s[k] + s[k + 1])
                    k += 2
                else:
                    out.append(s[k])
                    k += 1
            seqs[w] = out
    base = list(enc.values())
    toks = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [T.BOS, T.EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(toks))}, merges


def write_tokenizer_files(d: str | Path, pad: str = T.EOS) -> None:
    """tokenizer/ files: vocab.json + merges.txt of `learn_bpe()` and a tokenizer_config.json with `pad`."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = learn_bpe(CORPUS)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "pad_token": pad}))


def tiny_configs(vocab_size: int, eos_token_id: int, sample_size: int = 8) -> dict:
    """The toy-width configs of the three networks: {"unet": UNetConfig, "vae": VAEConfig, "text_encoder": ...}.
    The VAE downsamples by 2, so images are 2 x sample_size pixels."""
    return {
        "unet": UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
                           norm_num_groups=8, sample_size=sample_size, down_block_types=DOWN, up_block_types=UP),
        "vae": VAEConfig(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=2 * sample_size),
        "text_encoder": CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, eos_token_id=eos_token_id),
    }


def random_tensors(module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every parameter of `module` drawn from numpy (independent of Jittor's global seed): matrices and kernels
    N(0, 1 / fan_in), 1-D weights (norm scales) 1, biases 0."""
    out = {}
    for name, v in module.state_dict().items():
        shape = tuple(v.shape)
        if len(shape) >= 2:
            out[name] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        else:
            out[name] = np.full(shape, 1.0 if name.endswith("weight") else 0.0, np.float32)
    return out


def _old_vae_name(k: str) -> str:
    """diffusers' pre-0.14 names of the VAE mid-block attention (still in some hub folders)."""
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
        k = k.replace(new, old)
    return k


def _save(d: Path, config_dict: dict, tensors: dict[str, np.ndarray], weights: str, dtype=np.float32) -> None:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config_dict, indent=2))
    save_file({k: np.ascontiguousarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in tensors.items()},
              str(d / weights))


def write_tiny_folder(root: str | Path, sample_size: int = 8, legacy: bool = False, seed: int = 0) -> Path:
    """Write a tiny random SD 1.x-style diffusers folder at `root` (created; files overwritten) and return it.
    Latents are sample_size px, images 2 x sample_size px. See the module docstring for `legacy`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    write_tokenizer_files(root / "tokenizer", T.EOS)
    vocab = json.loads((root / "tokenizer" / "vocab.json").read_text())
    cfgs = tiny_configs(len(vocab), vocab[T.EOS], sample_size)
    unet_t = random_tensors(UNet2DConditionModel(cfgs["unet"]), rng)
    vae_t = random_tensors(AutoencoderKL(cfgs["vae"]), rng)
    text_t = {"text_model." + k: v for k, v in random_tensors(CLIPTextModel(cfgs["text_encoder"]), rng).items()}
    _save(root / "unet", {"_class_name": "UNet2DConditionModel", **asdict(cfgs["unet"])}, unet_t,
          "diffusion_pytorch_model.safetensors")
    text_cfg = asdict(cfgs["text_encoder"])
    if legacy:
        vae_t = {_old_vae_name(k): v for k, v in vae_t.items()}
        text_t["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        _save(root / "vae", {"_class_name": "AutoencoderKL", **asdict(cfgs["vae"])}, vae_t,
              "diffusion_pytorch_model.fp16.safetensors", dtype=np.float16)
    else:
        text_cfg = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **text_cfg}
        _save(root / "vae", {"_class_name": "AutoencoderKL", **asdict(cfgs["vae"])}, vae_t,
              "diffusion_pytorch_model.safetensors")
    _save(root / "text_encoder", text_cfg, text_t, "model.safetensors")
    scheduler = (dict(_class_name="PNDMScheduler", skip_prk_steps=True, **SCHEDULER) if legacy else
                 dict(_class_name="DDIMScheduler", prediction_type="epsilon", **SCHEDULER))
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {"_class_name": "StableDiffusionPipeline", "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder": ["transformers", "CLIPTextModel"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler["_class_name"]],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
