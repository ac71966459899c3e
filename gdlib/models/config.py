"""Sizes of the toy text-to-image model, saved next to its weights (JSON in the safetensors metadata)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class TextConfig:
    """Word-level tokenizer + small transformer text encoder."""
    vocab: list[str] = field(default_factory=list)  # the base words (specials and reserved slots are added)
    num_reserved: int = 32          # empty slots for new tokens ("sks", "style_07", ...)
    max_length: int = 12            # tokens including <bos> and <eos>
    width: int = 96
    layers: int = 2
    heads: int = 4


@dataclass
class UNetConfig:
    """A small UNet with residual blocks, timestep embedding, self- and cross-attention."""
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 2             # invertible space-to-depth first (Hoogeboom et al. 2023): 32 px -> 16 x 16 x 12
    base_channels: int = 48
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8, 4)      # UNet-internal sizes with cross-attention (text enters here)
    self_attn_resolutions: tuple[int, ...] = (8, 4)  # self-attention as well at these sizes
    heads: int = 4
    groups: int = 8
    context_dim: int = 96           # = TextConfig.width
    pooled_text: bool = True        # also add the pooled text embedding to the time embedding (as Imagen)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model and its noise schedule."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    prediction_type: str = "epsilon"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    timestep_spacing: str = "trailing"   # start sampling at t = T-1 (pure noise)
    clip_sample: bool = True             # clip x0_hat to [-1, 1] while sampling (diffusers' DDIM default)

    def to_json(self) -> str:
        """Serialize to a JSON string."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        """Rebuild from to_json's output; unknown keys are a clear error."""
        d = json.loads(s)
        unet = _build(UNetConfig, d.pop("unet", {}))
        text = _build(TextConfig, d.pop("text", {}))
        top = _build(cls, d, skip=("unet", "text"))
        top.unet, top.text = unet, text
        return top


def _build(klass, d: dict, skip: tuple[str, ...] = ()):
    names = {f.name for f in fields(klass)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{klass.__name__}: unknown config keys {sorted(unknown)} (config from a newer gdlib?)")
    kw = {k: (tuple(v) if isinstance(v, list) and k != "vocab" else v) for k, v in d.items() if k not in skip}
    return klass(**kw)
