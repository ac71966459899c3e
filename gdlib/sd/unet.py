"""Stable Diffusion's UNet2DConditionModel (Rombach et al. 2022) in Jittor, with diffusers' module names.

Every parameter has the name diffusers gives it, so a diffusers state dict loads by name and peft-style adapter
targets (to_q, to_k, to_v, to_out.0, proj_in, ...) line up with gdlib.adapters. The network, for SD 1.x / 2.x:
  emb  = linear_2(SiLU(linear_1(sinusoid(t))))                         (time_proj, time_embedding)
  h    = conv_in(x); down blocks (ResnetBlock2D [+ Transformer2DModel]) keep every output as a skip;
  mid  = resnet, transformer, resnet;  up blocks concatenate the skips (last first) before each resnet;
  out  = conv_out(SiLU(conv_norm_out(h))).
The building blocks (ResnetBlock2D, Attention, Transformer2DModel, Downsample2D, Upsample2D, the timestep
embedding) are in gdlib.sd.layers, shared with gdlib.sd.vae.
Note diffusers' naming quirk: `attention_head_dim` in an SD config is the number of HEADS per block
(SD 1.x: 8 heads; SD 2.x: [5, 10, 20, 20] heads of 64 channels).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

# The shared layers live in gdlib.sd.layers; re-exported here for older imports (text_encoder's LayerNorm, ...).
from .layers import (ANY, GEGLU, Attention, BasicTransformerBlock, Downsample2D, FeedForward, GroupNorm,  # noqa: E402,F401
                     Identity, LayerNorm, ResnetBlock2D, TimestepEmbedding, Timesteps, Transformer2DModel,
                     Upsample2D, silu, upsample_nearest)

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)


# ----- config -------------------------------------------------------------------------------------------
@dataclass
class UNetConfig:
    """The fields of diffusers' UNet2DConditionModel config that SD 1.x / 2.x use (diffusers' defaults)."""
    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: Sequence[str] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int = 1
    attention_head_dim: int | Sequence[int] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False   # fp16 only; the float32 port needs nothing
    dropout: float = 0.0             # inference: unused

    def __post_init__(self) -> None:
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        n = len(self.block_out_channels)
        for name, seq, ok in (("down_block_types", self.down_block_types, DOWN_BLOCKS),
                              ("up_block_types", self.up_block_types, UP_BLOCKS)):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries but block_out_channels has {n}")
            for i, b in enumerate(seq):
                if b not in ok:
                    raise ValueError(f"{name}[{i}]={b!r} is not supported (supported: {', '.join(ok)})")
        if self.mid_block_type not in MID_BLOCKS:
            raise ValueError(f"mid_block_type={self.mid_block_type!r} is not supported (supported: {MID_BLOCKS[0]})")
        for name in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r} is not supported (a positive int; per-block lists are not)")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding={self.downsample_padding!r} is not supported (0 or 1)")
        heads = self.attention_head_dim
        heads = (heads,) * n if isinstance(heads, int) else tuple(int(h) for h in heads)
        if len(heads) != n:
            raise ValueError(f"attention_head_dim has {len(heads)} entries but block_out_channels has {n}")
        self.attention_head_dim = heads
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide block width {c}")

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Heads per down block (diffusers: num_attention_heads = attention_head_dim)."""
        return tuple(self.attention_head_dim)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


# Config fields SD 1.x / 2.x leave at a neutral value; anything else names a feature this port lacks.
# ANY = read and ignored.
UNET_NEUTRAL: dict[str, Any] = {
    "act_fn": ("silu",), "center_input_sample": (False,), "num_attention_heads": (None,),
    "dual_cross_attention": (False,), "only_cross_attention": (False,), "class_embed_type": (None,),
    "num_class_embeds": (None,), "addition_embed_type": (None,), "addition_time_embed_dim": (None,),
    "addition_embed_type_num_heads": ANY, "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",), "time_embedding_dim": (None,), "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,), "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "cross_attention_norm": (None,), "attention_type": ("default",), "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,), "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False), "reverse_transformer_layers_per_block": (None,),
}


# ----- blocks -------------------------------------------------------------------------------------------
class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with_attention) or DownBlock2D: resnets [+ attentions], optional downsamplers.0;
    returns (h, outputs): every resnet/transformer output and the downsampled one are skips for the up path."""

    def __init__(self, cfg: UNetConfig, i: int, in_channels: int, temb: int, with_attention: bool):
        out, final = cfg.block_out_channels[i], i == len(cfg.block_out_channels) - 1
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if j == 0 else out, out, temb, g, eps)
                                      for j in range(cfg.layers_per_block)])
        if with_attention:
            heads = cfg.num_heads[i]
            self.attentions = nn.ModuleList([
                Transformer2DModel(heads, out // heads, out, cfg.transformer_layers_per_block, cfg.cross_attention_dim,
                                   g, cfg.use_linear_projection) for _ in range(cfg.layers_per_block)])
        else:
            self.attentions = None
        self.downsamplers = None if final else nn.ModuleList([Downsample2D(out, cfg.downsample_padding)])

    def execute(self, h, temb, context):
        outputs = []
        for j in range(len(self.resnets)):
            h = self.resnets[j](h, temb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
            outputs.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            outputs.append(h)
        return h, outputs


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D or UpBlock2D: layers_per_block + 1 resnets, each fed cat([h, skip]) (the latest skip
    first), [+ attentions], optional upsamplers.0."""

    def __init__(self, cfg: UNetConfig, i: int, prev_out: int, temb: int, with_attention: bool):
        rev = cfg.block_out_channels[::-1]
        out, skip_in = rev[i], rev[min(i + 1, len(rev) - 1)]
        final, n = i == len(rev) - 1, cfg.layers_per_block + 1
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([
            ResnetBlock2D((prev_out if j == 0 else out) + (skip_in if j == n - 1 else out), out, temb, g, eps)
            for j in range(n)])
        if with_attention:
            heads = cfg.num_heads[::-1][i]
            self.attentions = nn.ModuleList([
                Transformer2DModel(heads, out // heads, out, cfg.transformer_layers_per_block, cfg.cross_attention_dim,
                                   g, cfg.use_linear_projection) for _ in range(n)])
        else:
            self.attentions = None
        self.upsamplers = None if final else nn.ModuleList([Upsample2D(out)])

    def execute(self, h, skips: list, temb, context, upsample_size=None):
        for j in range(len(self.resnets)):
            h = self.resnets[j](jt.concat([h, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnets.0 -> (attentions.k -> resnets.k+1) for k < transformer count (SD: one)."""

    def __init__(self, cfg: UNetConfig, temb: int):
        c, g, eps, s = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        heads = cfg.num_heads[-1]
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, g, eps, s) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(heads, c // heads, c, cfg.transformer_layers_per_block,
                                                            cfg.cross_attention_dim, g, cfg.use_linear_projection)])

    def execute(self, h, temb, context):
        h = self.resnets[0](h, temb)
        for k in range(len(self.attentions)):
            h = self.resnets[k + 1](self.attentions[k](h, context), temb)
        return h


def _timesteps(t: Any, batch: int) -> "jt.Var":
    """t as float32 [batch]: a scalar (int, float, 0-d array) or one value per sample."""
    if isinstance(t, jt.Var):
        t = t.float32().reshape(-1)
    else:
        t = jt.array(np.asarray(t, dtype=np.float32).reshape(-1))
    if t.shape[0] == 1 and batch > 1:
        t = t.broadcast((batch,))
    if t.shape[0] != batch:
        raise ValueError(f"UNet: {t.shape[0]} timesteps for a batch of {batch}")
    return t


class UNet2DConditionModel(nn.Module):
    """eps (or v) = UNet(x_t, t, context): x [B, in_channels, h, w], t scalar or [B], context [B, M,
    cross_attention_dim] -> [B, out_channels, h, w] (diffusers' UNet2DConditionModel.forward(...).sample)."""

    def __init__(self, config: UNetConfig):
        self.config = cfg = config
        c0 = cfg.block_out_channels[0]
        temb = 4 * c0
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(c0, temb)
        down, prev = [], c0
        for i, kind in enumerate(cfg.down_block_types):
            down.append(DownBlock(cfg, i, prev, temb, kind == "CrossAttnDownBlock2D"))
            prev = cfg.block_out_channels[i]
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = UNetMidBlock2DCrossAttn(cfg, temb)
        up = []
        for i, kind in enumerate(cfg.up_block_types):
            up.append(UpBlock(cfg, i, prev, temb, kind == "CrossAttnUpBlock2D"))
            prev = cfg.block_out_channels[::-1][i]
        self.up_blocks = nn.ModuleList(up)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, c0, cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)

    def execute(self, sample: "jt.Var", timestep: Any, encoder_hidden_states: "jt.Var") -> "jt.Var":
        if len(sample.shape) != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet: sample must be [B, {self.config.in_channels}, h, w], got {tuple(sample.shape)}")
        ctx = encoder_hidden_states
        if len(ctx.shape) != 3 or ctx.shape[0] != sample.shape[0] or ctx.shape[2] != self.config.cross_attention_dim:
            raise ValueError(f"UNet: context must be [{sample.shape[0]}, M, {self.config.cross_attention_dim}], "
                             f"got {tuple(ctx.shape)}")
        emb = self.time_embedding(self.time_proj(_timesteps(timestep, sample.shape[0])))
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, out = block(h, emb, ctx)
            skips += out
        h = self.mid_block(h, emb, ctx)
        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if (block.upsamplers is not None and skips) else None
            h = block(h, mine, emb, ctx, size)
        return self.conv_out(self.conv_norm_out(h, silu=True))
