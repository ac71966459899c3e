"""A small text-conditional UNet (Ho et al. 2020; Rombach et al. 2022): residual blocks with FiLM timestep
embedding, and transformer blocks where the text enters through cross-attention (to_k, to_v read the
text encoder's context). GroupNorm(+FiLM, +SiLU) and attention go through gdlib.kernels."""
from __future__ import annotations

import math

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..kernels import group_norm  # noqa: E402
from .config import UNetConfig  # noqa: E402
from .text import Attention, LayerNorm, feed_forward  # noqa: E402


def timestep_embedding(t: "jt.Var", dim: int, max_period: float = 10000.0) -> "jt.Var":
    """Sinusoidal embedding [cos(t w_i), sin(t w_i)], w_i = max_period^(-i/half) (Vaswani et al. 2017, Sec. 3.5)."""
    half = dim // 2
    freqs = jt.array(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half))
    args = t.float32().reshape(-1, 1) * freqs.reshape(1, -1)
    return jt.concat([jt.cos(args), jt.sin(args)], dim=1)


def space_to_depth(x: "jt.Var", p: int) -> "jt.Var":
    """[B, C, H, W] -> [B, C p^2, H/p, W/p], an invertible pixel reshuffle (pixel-unshuffle)."""
    if p == 1:
        return x
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"space_to_depth: {H}x{W} image is not divisible by patch size {p}")
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4).reshape(B, C * p * p, H // p, W // p)


def depth_to_space(x: "jt.Var", p: int) -> "jt.Var":
    """Inverse of space_to_depth: [B, C p^2, h, w] -> [B, C, h p, w p]."""
    if p == 1:
        return x
    B, Cp, h, w = x.shape
    C = Cp // (p * p)
    return x.reshape(B, C, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C, h * p, w * p)


class GroupNorm(nn.Module):
    """GroupNorm parameters; the op (with optional FiLM scale/shift and SiLU) is gdlib.kernels.group_norm."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        self.groups, self.eps = groups, eps
        self.weight = jt.ones(channels)
        self.bias = jt.zeros(channels)

    def execute(self, x, scale=None, shift=None, silu: bool = False):
        return group_norm(x, self.groups, self.weight, self.bias, self.eps, scale=scale, shift=shift, silu=silu)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = conv(SiLU(GN(h) (1 + s) + b)) with (s, b) from the embedding; x + h."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        self.norm1 = GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv2.weight = self.conv2.weight * 0.0  # zero-init: each block starts as the identity
        self.conv2.bias = self.conv2.bias * 0.0
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def execute(self, x, emb):
        h = self.conv1(self.norm1(x, silu=True))
        scale, shift = jt.chunk(self.emb_proj(nn.silu(emb)), 2, dim=1)
        h = self.conv2(self.norm2(h, scale=scale, shift=shift, silu=True))
        return (x if self.skip is None else self.skip(x)) + h


class TransformerBlock(nn.Module):
    """GN -> proj_in -> [x + SelfAttn(LN x)] -> x + CrossAttn(LN x, text) -> x + FF(LN x) -> proj_out, residual."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int, self_attn: bool):
        self.norm = GroupNorm(groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.attn1 = Attention(channels, heads) if self_attn else None
        self.norm1 = LayerNorm(channels) if self_attn else None
        self.norm2 = LayerNorm(channels)
        self.attn2 = Attention(channels, heads, context_dim=context_dim)
        self.norm3 = LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = nn.Linear(channels, channels)
        self.proj_out.weight = self.proj_out.weight * 0.0
        self.proj_out.bias = self.proj_out.bias * 0.0

    def execute(self, x, context):
        B, C, H, W = x.shape
        h = self.norm(x).reshape(B, C, H * W).transpose(0, 2, 1)
        h = self.proj_in(h)
        if self.attn1 is not None:
            h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context)
        h = h + feed_forward(self.ff, self.norm3(h))
        h = self.proj_out(h).transpose(0, 2, 1).reshape(B, C, H, W)
        return x + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, c: int):
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def execute(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 convolution."""

    def __init__(self, c: int):
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def execute(self, x):
        B, C, H, W = x.shape
        x = x.reshape(B, C, H, 1, W, 1).broadcast((B, C, H, 2, W, 2)).reshape(B, C, 2 * H, 2 * W)
        return self.conv(x)


class Stage(nn.Module):
    """One resolution level: resblocks, each optionally followed by a transformer block."""

    def __init__(self, resblocks: list, attns: list):
        self.resblocks = nn.ModuleList(resblocks)
        self.attns = nn.ModuleList([a if a is not None else nn.Identity() for a in attns])
        self.has_attn = [a is not None for a in attns]


class UNet(nn.Module):
    """eps_hat (or v_hat) = UNet(x_t [B, 3, H, W], t [B] or int, context [B, L, D])."""

    def __init__(self, config: UNetConfig):
        self.config = c = config
        C = c.base_channels
        emb_dim = 4 * C
        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_embed = nn.Linear(c.context_dim, emb_dim) if c.pooled_text else None
        if c.image_size % c.patch_size or c.patch_size < 1:
            raise ValueError(f"UNet: image_size {c.image_size} is not a multiple of patch_size {c.patch_size}")
        pc = c.in_channels * c.patch_size ** 2
        self.conv_in = nn.Conv2d(pc, C, 3, padding=1)

        def attn(ch, res):
            if res not in c.attn_resolutions:
                return None
            return TransformerBlock(ch, c.context_dim, c.heads, c.groups, self_attn=res in c.self_attn_resolutions)

        chans, ch, res = [C], C, c.image_size // c.patch_size
        down = []
        for level, mult in enumerate(c.channel_mult):
            rbs, ats = [], []
            for _ in range(c.num_res_blocks):
                rbs.append(ResBlock(ch, C * mult, emb_dim, c.groups))
                ch = C * mult
                ats.append(attn(ch, res))
                chans.append(ch)
            stage = Stage(rbs, ats)
            stage.downsample = Downsample(ch) if level < len(c.channel_mult) - 1 else None
            if stage.downsample is not None:
                chans.append(ch)
                res //= 2
            down.append(stage)
        self.down = nn.ModuleList(down)
        self.mid_block1 = ResBlock(ch, ch, emb_dim, c.groups)
        self.mid_attn = TransformerBlock(ch, c.context_dim, c.heads, c.groups, self_attn=True)
        self.mid_block2 = ResBlock(ch, ch, emb_dim, c.groups)
        up = []
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            rbs, ats = [], []
            for _ in range(c.num_res_blocks + 1):
                rbs.append(ResBlock(ch + chans.pop(), C * mult, emb_dim, c.groups))
                ch = C * mult
                ats.append(attn(ch, res))
            stage = Stage(rbs, ats)
            stage.upsample = Upsample(ch) if level > 0 else None
            if stage.upsample is not None:
                res *= 2
            up.append(stage)
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, pc, 3, padding=1)
        self.conv_out.weight = self.conv_out.weight * 0.0
        self.conv_out.bias = self.conv_out.bias * 0.0

    def execute(self, x: "jt.Var", t, context: "jt.Var") -> "jt.Var":
        B = x.shape[0]
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet: expected x [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.config.context_dim:
            raise ValueError(f"UNet: expected context [{B}, L, {self.config.context_dim}], got {tuple(context.shape)}")
        if not isinstance(t, jt.Var):
            t = jt.array(np.asarray(t, np.float32).reshape(-1))
        if t.numel() == 1 and B > 1:
            t = t.reshape(1).broadcast((B,))
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        if self.text_embed is not None:
            emb = emb + self.text_embed(context.mean(dim=1))
        h = self.conv_in(space_to_depth(x, self.config.patch_size))
        hs = [h]
        for stage in self.down:
            for rb, at, has in zip(stage.resblocks, stage.attns, stage.has_attn):
                h = rb(h, emb)
                if has:
                    h = at(h, context)
                hs.append(h)
            if stage.downsample is not None:
                h = stage.downsample(h)
                hs.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb), context), emb)
        for stage in self.up:
            for rb, at, has in zip(stage.resblocks, stage.attns, stage.has_attn):
                h = rb(jt.concat([h, hs.pop()], dim=1), emb)
                if has:
                    h = at(h, context)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return depth_to_space(self.conv_out(self.norm_out(h, silu=True)), self.config.patch_size)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return int(sum(int(np.prod(p.shape)) for p in module.parameters()))
