"""Load a Stable Diffusion 1.x / 2.x diffusers folder into gdlib's Jittor models: offline, safetensors only.

A diffusers pipeline folder is
  model_index.json                 which component lives in which sub-folder (library, class)
  tokenizer/    vocab.json + merges.txt (or transformers' tokenizer.json), tokenizer_config.json
  text_encoder/ config.json + model.safetensors                       (transformers CLIPTextModel)
  unet/         config.json + diffusion_pytorch_model.safetensors     (diffusers UNet2DConditionModel)
  vae/          config.json + diffusion_pytorch_model.safetensors     (diffusers AutoencoderKL)
  scheduler/    scheduler_config.json                                 (any diffusers DDPM-family scheduler)
Weights are read with safetensors.numpy (never torch, never pickles), fp16 or fp32 (the `.fp16` variant and sharded
`*.safetensors.index.json` too), and converted to the models' dtype (load_pipeline's `dtype`: float32 by default;
float16 only on request and only under CUDA, where it is untested; see resolve_dtype). Every config field is checked: a field that selects a
feature these ports lack raises a ValueError naming it, as does a missing component, file or weight name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from ..schedules import NoiseSchedule  # noqa: E402
from .memory import SliceSize, set_attention_slicing  # noqa: E402
from .text_encoder import CLIPTextConfig, CLIPTextModel  # noqa: E402
from .tokenizer import CLIPTokenizer, special_tokens_of  # noqa: E402
from .unet import ANY, UNET_NEUTRAL, UNet2DConditionModel, UNetConfig  # noqa: E402
from .vae import VAE_NEUTRAL, AutoencoderKL, VAEConfig  # noqa: E402

COMPONENTS = {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder": ("CLIPTextModel",),
              "unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",), "scheduler": None}
UNSUPPORTED_COMPONENTS = ("text_encoder_2", "tokenizer_2", "transformer", "text_encoder_3", "prior")
# Scheduler fields NoiseSchedule reads; missing ones take DDIMScheduler's defaults (as DDIMScheduler.from_config).
SCHEDULE_FIELDS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                   "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 0,
                   "timestep_spacing": "leading", "clip_sample": True, "clip_sample_range": 1.0,
                   "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
SCHEDULE_NEUTRAL = {"trained_betas": (None,), "rescale_betas_zero_snr": (None, False)}
TEXT_NEUTRAL = {"model_type": ("clip_text_model",)}
CPU_FP16_MESSAGE = ("dtype='float16' on the CPU is not supported: Jittor's CPU matmul is float32 only (it fails with "
                    "'support float32 only now'); load with dtype=None or 'float32' on the CPU, float16 under CUDA")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype: str | None = None, cuda: bool | None = None) -> str:
    """The models' dtype: None -> "float32" (the tested path); "float16" only under CUDA (jt.flags.use_cuda; halves
    the weights' memory, but no GPU was available to test it: the models still build some float32 tensors, e.g. the
    timestep embedding); on the CPU it is refused (ValueError)."""
    cuda = bool(jt.flags.use_cuda) if cuda is None else cuda
    if dtype is None:
        return "float32"
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported (use 'float32', 'float16' or None for the device default)")
    resolved = DTYPES[str(dtype)]
    if resolved == "float16" and not cuda:
        raise ValueError(CPU_FP16_MESSAGE)
    return resolved


# ----- files --------------------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a ValueError naming the missing/broken file."""
    if not path.is_file():
        raise ValueError(f"{what}: {path} is missing")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return d


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 numpy arrays (integer buffers kept as they are)."""
    from safetensors.numpy import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types; bf16 has no numpy dtype)
        raise ValueError(f"{path}: cannot read it with safetensors.numpy ({e}); fp16/fp32 files are supported") from None
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in tensors.items()}


def read_weights(component: Path, stem: str) -> dict[str, np.ndarray]:
    """`{stem}.safetensors`, else its `.fp16` variant, else a sharded `{stem}.safetensors.index.json`."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (component / name).is_file():
            return read_safetensors(component / name)
    for name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json"):
        if (component / name).is_file():
            index = read_json(component / name, component.name).get("weight_map", {})
            out: dict[str, np.ndarray] = {}
            for shard in sorted(set(index.values())):
                out.update(read_safetensors(component / shard))
            return out
    pickles = sorted(p.name for p in component.glob("*.bin")) + sorted(p.name for p in component.glob("*.ckpt"))
    hint = f" (found {pickles}: pickled weights are not read; convert them to safetensors)" if pickles else ""
    raise ValueError(f"{component.name}: weight file {component / (stem + '.safetensors')} is missing{hint}")


def load_weights(module: Any, tensors: dict[str, np.ndarray], where: str, dtype: str = "float32") -> None:
    """Copy tensors (cast to `dtype`) into the module's parameters by name; missing/unexpected names or a shape
    mismatch raise."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        def few(names):
            return f"{names[:5]}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"
        raise ValueError(f"{where}: the weights do not match the model its config describes: "
                         f"{len(missing)} missing {few(missing)}, {len(unexpected)} unexpected {few(unexpected)}")
    for name, var in own.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(var.shape):
            raise ValueError(f"{where}: weight {name} has shape {tuple(arr.shape)}, the model expects {tuple(var.shape)}")
        var.update(jt.array(np.ascontiguousarray(arr, dtype=dtype)))


# ----- configs ------------------------------------------------------------------------------------------
def parse_config(cls: type, d: dict, neutral: dict, where: str, strict: bool = True):
    """cls(**fields) from a config dict. Keys starting with '_' are metadata; keys in `neutral` must hold one of
    their allowed values (ANY: ignored); with `strict`, any other key must be null/false."""
    known, kwargs = cls.field_names(), {}
    for key, value in d.items():
        if key.startswith("_"):
            continue
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in neutral:
            allowed = neutral[key]
            values = value if isinstance(value, list) else [value]
            if allowed is not ANY and any(v not in allowed for v in values):
                raise ValueError(f"{where}: {key}={value!r} is not supported (supported: "
                                 f"{' or '.join(repr(a) for a in allowed)})")
        elif strict and value not in (None, False):
            raise ValueError(f"{where}: config field {key}={value!r} is not supported by gdlib's port")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    except TypeError as e:
        raise ValueError(f"{where}: bad config value ({e})") from None


def schedule_from_config(d: dict, where: str = "scheduler/scheduler_config.json") -> NoiseSchedule:
    """The NoiseSchedule of a diffusers scheduler config; absent fields take DDIMScheduler's defaults."""
    for key, allowed in SCHEDULE_NEUTRAL.items():
        if d.get(key) not in allowed:
            raise ValueError(f"{where}: {key}={d.get(key)!r} is not supported")
    cfg = {k: d.get(k, default) for k, default in SCHEDULE_FIELDS.items()}
    try:
        return NoiseSchedule(**cfg)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _component(folder: Path, name: str) -> Path:
    d = folder / name
    if not d.is_dir():
        raise ValueError(f"{folder} is not a Stable Diffusion folder: the component folder {name}/ is missing")
    return d


def _check_class(d: dict, expected: str, where: str) -> None:
    cls = d.get("_class_name")
    if cls is not None and cls != expected:
        raise ValueError(f"{where}: _class_name={cls!r} is not supported (expected {expected})")


# ----- components ---------------------------------------------------------------------------------------
def load_unet(folder: str | Path, dtype: str = "float32") -> UNet2DConditionModel:
    """unet/ (or a unet folder itself) -> UNet2DConditionModel with its weights in `dtype`."""
    d = Path(folder)
    d = d / "unet" if (d / "unet").is_dir() else d
    raw = read_json(d / "config.json", "unet")
    _check_class(raw, "UNet2DConditionModel", "unet/config.json")
    model = UNet2DConditionModel(parse_config(UNetConfig, raw, UNET_NEUTRAL, "unet/config.json"))
    load_weights(model, read_weights(d, "diffusion_pytorch_model"), "unet", dtype)
    return model


# diffusers' old names of the VAE's mid-block attention (converted on load there as well)
_OLD_VAE_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _rename_vae(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        for old, new in _OLD_VAE_NAMES.items():
            if old in k and ".mid_block.attentions." in k:
                k = k.replace(old, new)
                if v.ndim == 4 and k.endswith("weight"):
                    v = v[:, :, 0, 0]
        out[k] = v
    return out


def load_vae(folder: str | Path, dtype: str = "float32") -> AutoencoderKL:
    """vae/ (or a vae folder itself) -> AutoencoderKL with its weights in `dtype`."""
    d = Path(folder)
    d = d / "vae" if (d / "vae").is_dir() else d
    raw = read_json(d / "config.json", "vae")
    _check_class(raw, "AutoencoderKL", "vae/config.json")
    model = AutoencoderKL(parse_config(VAEConfig, raw, VAE_NEUTRAL, "vae/config.json"))
    load_weights(model, _rename_vae(read_weights(d, "diffusion_pytorch_model")), "vae", dtype)
    return model


def load_text_encoder(folder: str | Path, dtype: str = "float32") -> CLIPTextModel:
    """text_encoder/ -> CLIPTextModel in `dtype`; transformers' generic config keys are ignored, `text_model.`
    prefixes dropped."""
    d = Path(folder)
    d = d / "text_encoder" if (d / "text_encoder").is_dir() else d
    raw = read_json(d / "config.json", "text_encoder")
    arch = raw.get("architectures") or ["CLIPTextModel"]
    if "CLIPTextModel" not in arch:
        raise ValueError(f"text_encoder/config.json: architectures={arch} is not supported (expected CLIPTextModel)")
    model = CLIPTextModel(parse_config(CLIPTextConfig, raw, TEXT_NEUTRAL, "text_encoder/config.json", strict=False))
    tensors = {k[len("text_model."):] if k.startswith("text_model.") else k: v
               for k, v in read_weights(d, "model").items()}
    tensors.pop("embeddings.position_ids", None)  # a buffer (0..76) older transformers saved
    load_weights(model, tensors, "text_encoder", dtype)
    return model


def load_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """tokenizer/ from vocab.json + merges.txt (gdlib.sd.tokenizer), or from transformers' tokenizer.json."""
    d = Path(folder)
    d = d / "tokenizer" if (d / "tokenizer").is_dir() else d
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        return CLIPTokenizer.from_folder(d)
    if not (d / "tokenizer.json").is_file():
        raise ValueError(f"tokenizer: {d} has neither vocab.json + merges.txt nor tokenizer.json")
    tok_json = read_json(d / "tokenizer.json", "tokenizer")
    model = tok_json.get("model", {})
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"tokenizer: {d / 'tokenizer.json'} is not a CLIP BPE tokenizer")
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    cfg = read_json(d / "tokenizer_config.json", "tokenizer") if (d / "tokenizer_config.json").is_file() else {}
    pad = cfg.get("pad_token") or "<|endoftext|>"
    pad = pad.get("content") if isinstance(pad, dict) else pad
    ml = cfg.get("model_max_length")
    # the added tokens tokenizer.json declares (with their `normalized` flags), then the config's (a later one wins)
    specials = special_tokens_of(tok_json) + special_tokens_of(cfg)
    return CLIPTokenizer(model["vocab"], merges, pad, ml if isinstance(ml, int) and 0 < ml < 10 ** 6 else 77,
                         special_tokens=specials)


def load_schedule(folder: str | Path) -> tuple[NoiseSchedule, dict]:
    """scheduler/scheduler_config.json -> (NoiseSchedule, the raw config)."""
    d = Path(folder)
    d = d / "scheduler" if (d / "scheduler").is_dir() else d
    raw = read_json(d / "scheduler_config.json", "scheduler")
    return schedule_from_config(raw), raw


# ----- the pipeline -------------------------------------------------------------------------------------
@dataclass
class StableDiffusion:
    """The components of a Stable Diffusion folder, in Jittor (sample with gdlib.sd.pipeline.sample)."""
    folder: Path
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    schedule: NoiseSchedule
    scheduler_config: dict = field(repr=False)
    model_index: dict = field(repr=False)

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.downscale

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of the UNet's default latent (unet sample_size)."""
        s = self.unet.config.sample_size or 64
        return (self.unet.config.in_channels, s, s)

    def enable_attention_slicing(self, slice_size: SliceSize = "auto") -> None:
        """diffusers' enable_attention_slicing, on the UNet and the VAE: attention in chunks of the batch*heads axis
        (int, "auto" = half the heads, "max" = one at a time); same numbers, bounded score memory."""
        for model in (self.unet, self.vae):
            set_attention_slicing(model, slice_size)

    def disable_attention_slicing(self) -> None:
        """Attention over the whole batch*heads axis again."""
        self.enable_attention_slicing(None)


def check_model_index(folder: Path) -> dict:
    """model_index.json names every component SD 1.x / 2.x needs, with a class the ports implement."""
    index = read_json(folder / "model_index.json", f"{folder} is not a diffusers pipeline folder")
    extra = [k for k in UNSUPPORTED_COMPONENTS if isinstance(index.get(k), list) and index[k][0] is not None]
    if extra:
        raise ValueError(f"{folder}: model_index.json has {extra}: {index.get('_class_name')} (SDXL/SD3-style) "
                         "is not supported; only Stable Diffusion 1.x / 2.x folders are")
    for name, classes in COMPONENTS.items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise ValueError(f"{folder}: model_index.json has no {name} component")
        if classes is not None and entry[1] not in classes:
            raise ValueError(f"{folder}: {name} class {entry[1]!r} is not supported (supported: {', '.join(classes)})")
    return index


def load_pipeline(folder: str | Path, dtype: str | None = None) -> StableDiffusion:
    """Read a Stable Diffusion 1.x / 2.x diffusers folder: tokenizer, text encoder, UNet, VAE (in `dtype`, see
    resolve_dtype: float32 on the CPU) and the NoiseSchedule of its scheduler config. Raises ValueError naming what
    is missing or unsupported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    index = check_model_index(folder)
    for name in COMPONENTS:
        _component(folder, name)
    dtype = resolve_dtype(dtype)
    schedule, sched_cfg = load_schedule(folder)
    return StableDiffusion(folder=folder, tokenizer=load_tokenizer(folder),
                           text_encoder=load_text_encoder(folder, dtype), unet=load_unet(folder, dtype),
                           vae=load_vae(folder, dtype), schedule=schedule,
                           scheduler_config=sched_cfg, model_index=index)
