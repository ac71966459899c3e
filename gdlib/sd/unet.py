"""Stable Diffusion's UNet2DConditionModel (Rombach et al. 2022) in Jittor, with diffusers' module names.

Every parameter has the name diffusers gives it, so a diffusers state dict loads by name and peft-style adapter
targets (to_q, to_k, to_v, to_out.0, proj_in, ...) line up with gdlib.adapters. The network, for SD 1.x / 2.x:
  emb  = linear_2(SiLU(linear_1(sinusoid(t))))                         (time_proj, time_embedding)
  h    = conv_in(x); down blocks (ResnetBlock2D [+ Transformer2DModel]) keep every output as a skip;
  mid  = resnet, transformer, resnet;  up blocks concatenate the skips (last first) before each resnet;
  out  = conv_out(SiLU(conv_norm_out(h))).
The building blocks (ResnetBlock2D, Attention, Downsample2D, Upsample2D) are shared with gdlib.sd.vae.
Note diffusers' naming quirk: `attention_head_dim` in an SD config is the number of HEADS per block
(SD 1.x: 8 heads; SD 2.x: [5, 10, 20, 20] heads of 64 channels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..kernels import group_norm, multihead_attention  # noqa: E402

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
ANY = object()
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


# ----- layers -------------------------------------------------------------------------------------------
class GroupNorm(nn.Module):
    """torch.nn.GroupNorm's parameters (weight, bias); the op, with an optional fused SiLU, is gdlib.kernels.group_norm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.eps = num_groups, eps
        self.weight = jt.ones(num_channels)
        self.bias = jt.zeros(num_channels)

    def execute(self, x: "jt.Var", silu: bool = False) -> "jt.Var":
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu=silu)


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis (two-pass variance, as torch)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.eps = eps
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)

    def execute(self, x: "jt.Var") -> "jt.Var":
        c = x - x.mean(dim=-1, keepdims=True)
        var = (c * c).mean(dim=-1, keepdims=True)
        return c / jt.sqrt(var + self.eps) * self.weight + self.bias


class Identity(nn.Module):
    """A parameter-free placeholder that keeps diffusers' list indices (ff.net.1 is a Dropout there)."""

    def execute(self, x: "jt.Var") -> "jt.Var":
        return x


def silu(x: "jt.Var") -> "jt.Var":
    return x * jt.sigmoid(x)


class Attention(nn.Module):
    """diffusers' Attention: softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, Eq. 1), then to_out.0.

    On tokens [B, N, C] with an optional context [B, M, Cc] (cross-attention; self-attention without it). With
    `norm_groups` it is the VAE's spatial block on [B, C, H, W]: GroupNorm first, residual added (diffusers'
    group_norm / residual_connection)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, out_bias: bool = True, norm_groups: int | None = None, eps: float = 1e-5):
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.group_norm = GroupNorm(norm_groups, query_dim, eps) if norm_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias)])

    def execute(self, x: "jt.Var", context: "jt.Var | None" = None) -> "jt.Var":
        spatial = len(x.shape) == 4
        residual = x
        if spatial:
            B, C, H, W = x.shape
            if self.group_norm is not None:
                x = self.group_norm(x)
            x = x.reshape(B, C, H * W).transpose(0, 2, 1)
        ctx = x if context is None else context
        out = multihead_attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads, self.scale)
        out = self.to_out[0](out)
        if spatial:
            out = out.transpose(0, 2, 1).reshape(B, C, H, W) + residual
        return out


class GEGLU(nn.Module):
    """GEGLU(x) = a * GELU(g), [a, g] = proj(x) split in halves (Shazeer 2020, Eq. 5); GELU exact (erf)."""

    def __init__(self, dim_in: int, dim_out: int):
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def execute(self, x: "jt.Var") -> "jt.Var":
        a, g = jt.chunk(self.proj(x), 2, dim=-1)
        return a * nn.gelu(g)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim -> 4 dim), net.1 = (dropout), net.2 = Linear(4 dim -> dim), diffusers' names."""

    def __init__(self, dim: int, mult: int = 4):
        self.net = nn.ModuleList([GEGLU(dim, mult * dim), Identity(), nn.Linear(mult * dim, dim)])

    def execute(self, x: "jt.Var") -> "jt.Var":
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x)  (pre-LayerNorm, eps 1e-5)."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def execute(self, x: "jt.Var", context: "jt.Var") -> "jt.Var":
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or Linear on tokens if use_linear_projection) -> blocks
    -> proj_out -> + input (diffusers' continuous-input Transformer2DModel)."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, num_layers: int, cross_attention_dim: int,
                 norm_groups: int, use_linear_projection: bool):
        inner = heads * dim_head
        self.linear = use_linear_projection
        self.norm = GroupNorm(norm_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner) if self.linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim)
                                                 for _ in range(num_layers)])
        self.proj_out = nn.Linear(inner, in_channels) if self.linear else nn.Conv2d(inner, in_channels, 1)

    def execute(self, x: "jt.Var", context: "jt.Var") -> "jt.Var":
        B, _, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, h.shape[1])
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, h.shape[-1]).permute(0, 3, 1, 2)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class ResnetBlock2D(nn.Module):
    """h = conv1(SiLU(norm1 x)) [+ time_emb_proj(SiLU(emb))]; h = conv2(SiLU(norm2 h)); (shortcut(x) + h) / s
    (He et al. 2016 with the DDPM time embedding added per channel, Ho et al. 2020)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        self.scale = output_scale_factor
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def execute(self, x: "jt.Var", temb: "jt.Var | None" = None) -> "jt.Var":
        h = self.conv1(self.norm1(x, silu=True))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(silu(temb)).reshape(h.shape[0], h.shape[1], 1, 1)
        h = self.conv2(self.norm2(h, silu=True))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.scale == 1.0 else out / self.scale


class Downsample2D(nn.Module):
    """A stride-2 3x3 conv; with padding 0 the input is first padded by one on the right and bottom (the VAE)."""

    def __init__(self, channels: int, padding: int = 1):
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def execute(self, x: "jt.Var") -> "jt.Var":
        if self.padding == 0:
            x = nn.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def upsample_nearest(x: "jt.Var", size: Sequence[int] | None = None) -> "jt.Var":
    """Nearest-neighbour upsampling as torch's F.interpolate(mode='nearest'): source index floor(i * in / out);
    exactly 2x by default."""
    B, C, H, W = x.shape
    if size is None or (int(size[0]), int(size[1])) == (2 * H, 2 * W):
        return x.reshape(B, C, H, 1, W, 1).broadcast((B, C, H, 2, W, 2)).reshape(B, C, 2 * H, 2 * W)
    oh, ow = int(size[0]), int(size[1])
    ih = np.floor(np.arange(oh) * (H / oh)).astype(np.int32)
    iw = np.floor(np.arange(ow) * (W / ow)).astype(np.int32)
    return x[:, :, jt.array(ih)][:, :, :, jt.array(iw)]


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x (or to `size`, for odd latent sizes) then a 3x3 conv."""

    def __init__(self, channels: int):
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def execute(self, x: "jt.Var", size: Sequence[int] | None = None) -> "jt.Var":
        return self.conv(upsample_nearest(x, size))


# ----- time embedding -----------------------------------------------------------------------------------
class Timesteps(nn.Module):
    """Sinusoidal embedding of t (Vaswani et al. 2017, Sec. 3.5; DDPM): w_i = exp(-ln(10^4) i / (half - shift)),
    emb = [sin(t w), cos(t w)], or [cos, sin] with flip_sin_to_cos; float32 as diffusers computes it."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float):
        self.num_channels, self.flip, self.shift = num_channels, flip_sin_to_cos, downscale_freq_shift

    def execute(self, t: "jt.Var") -> "jt.Var":
        half = self.num_channels // 2
        exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)
        freqs = np.exp(exponent / np.float32(half - self.shift)).astype(np.float32)
        args = t.float32().reshape(-1, 1) * jt.array(freqs).reshape(1, -1)
        sin, cos = jt.sin(args), jt.cos(args)
        emb = jt.concat([cos, sin] if self.flip else [sin, cos], dim=1)
        if self.num_channels % 2:
            emb = jt.concat([emb, jt.zeros((emb.shape[0], 1))], dim=1)
        return emb


class TimestepEmbedding(nn.Module):
    """linear_2(SiLU(linear_1(e)))."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def execute(self, x: "jt.Var") -> "jt.Var":
        return self.linear_2(silu(self.linear_1(x)))


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
