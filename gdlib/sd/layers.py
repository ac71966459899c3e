"""The building blocks Stable Diffusion's UNet (gdlib.sd.unet) and VAE (gdlib.sd.vae) share, in Jittor, diffusers' names.

GroupNorm / LayerNorm (torch's parameters and numerics), Attention (diffusers' Attention: token self/cross-attention,
or the VAE's spatial single-head block with GroupNorm and residual), the transformer stack of the UNet
(GEGLU, FeedForward, BasicTransformerBlock, Transformer2DModel), ResnetBlock2D, Downsample2D / Upsample2D (nearest
neighbour, also to an odd target size) and the sinusoidal timestep embedding (Timesteps, TimestepEmbedding).
Each module keeps diffusers' attribute names (to_q, to_out.0, proj_in, conv1, time_emb_proj, ...) so state dicts
load by name and peft-style adapter targets line up with gdlib.adapters.
Attention.slice_size (set it with gdlib.sd.memory.set_attention_slicing) computes attention in chunks.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..kernels import attention, group_norm, multihead_attention  # noqa: E402

# A config value that is read and ignored (the *_NEUTRAL tables of the unet / vae configs).
ANY = object()


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


def sliced_attention(q: "jt.Var", k: "jt.Var", v: "jt.Var", heads: int, scale: float, slice_size: int) -> "jt.Var":
    """multihead_attention on [B, N, heads*d] computed `slice_size` rows of the batch*heads axis at a time
    (diffusers' SlicedAttnProcessor): at most [slice_size, N, M] scores at once, the same numbers."""
    B, N, C = q.shape
    d = C // heads

    def rows(t: "jt.Var") -> "jt.Var":   # [B, n, heads*d] -> [B*heads, 1, n, d]
        return t.reshape(B, t.shape[1], heads, d).transpose(0, 2, 1, 3).reshape(B * heads, 1, t.shape[1], d)

    qs, ks, vs = rows(q), rows(k), rows(v)
    out = [attention(qs[i:i + slice_size], ks[i:i + slice_size], vs[i:i + slice_size], scale)
           for i in range(0, B * heads, slice_size)]
    return jt.concat(out, dim=0).reshape(B, heads, N, d).transpose(0, 2, 1, 3).reshape(B, N, C)


class Attention(nn.Module):
    """diffusers' Attention: softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, Eq. 1), then to_out.0.

    On tokens [B, N, C] with an optional context [B, M, Cc] (cross-attention; self-attention without it). With
    `norm_groups` it is the VAE's spatial block on [B, C, H, W]: GroupNorm first, residual added (diffusers'
    group_norm / residual_connection). `slice_size` (None: off; gdlib.sd.memory.set_attention_slicing) computes it
    in chunks of the batch*heads axis."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, out_bias: bool = True, norm_groups: int | None = None, eps: float = 1e-5):
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.slice_size: int | None = None
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
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        if self.slice_size is not None and self.slice_size < q.shape[0] * self.heads:
            out = sliced_attention(q, k, v, self.heads, self.scale, self.slice_size)
        else:
            out = multihead_attention(q, k, v, self.heads, self.scale)
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
