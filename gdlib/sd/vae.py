"""Stable Diffusion's AutoencoderKL (Rombach et al. 2022, Sec. 3; Kingma & Welling 2014) in Jittor, diffusers' names.

encoder:  conv_in -> down_blocks (resnets, downsamplers.0 with right/bottom padding) -> mid_block
          (resnet, single-head spatial attention, resnet) -> SiLU(conv_norm_out) -> conv_out -> 2 * latent channels
quant_conv (1x1) -> moments = [mean, logvar]: q(z | x) = N(mean, exp(logvar)), logvar clamped to [-30, 20];
post_quant_conv (1x1) -> decoder: conv_in -> mid_block -> up_blocks (layers_per_block + 1 resnets, upsamplers.0)
          -> SiLU(conv_norm_out) -> conv_out.
All norms use eps 1e-6. The diffusion model works on z * scaling_factor (SD 1.x / 2.x: 0.18215), so a sampler's
latent is decoded as decode(z / scaling_factor).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from .layers import ANY, Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D  # noqa: E402

EPS = 1e-6


@dataclass
class VAEConfig:
    """The fields of diffusers' AutoencoderKL config that SD 1.x / 2.x use (diffusers' defaults)."""
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Sequence[str] = ("DownEncoderBlock2D",)
    up_block_types: Sequence[str] = ("UpDecoderBlock2D",)
    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types, self.up_block_types = tuple(self.down_block_types), tuple(self.up_block_types)
        n = len(self.block_out_channels)
        for name, seq, ok in (("down_block_types", self.down_block_types, "DownEncoderBlock2D"),
                              ("up_block_types", self.up_block_types, "UpDecoderBlock2D")):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries but block_out_channels has {n}")
            for i, b in enumerate(seq):
                if b != ok:
                    raise ValueError(f"{name}[{i}]={b!r} is not supported (supported: {ok})")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide block width {c}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


VAE_NEUTRAL: dict[str, Any] = {"act_fn": ("silu",), "shift_factor": (None,), "latents_mean": (None,),
                               "latents_std": (None,), "force_upcast": ANY}


class UNetMidBlock2D(nn.Module):
    """resnets.0 -> attentions.0 (one head over all channels, GroupNorm first, residual) -> resnets.1; no time input."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, 1, channels, bias=True, norm_groups=groups, eps=EPS)]) \
            if add_attention else None

    def execute(self, h: "jt.Var") -> "jt.Var":
        h = self.resnets[0](h)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h)


class EncoderBlock(nn.Module):
    """DownEncoderBlock2D: resnets, then downsamplers.0 (pad right/bottom, stride-2 conv) unless last."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, downsample: bool):
        self.resnets = nn.ModuleList([ResnetBlock2D(c_in if j == 0 else c_out, c_out, None, groups, EPS)
                                      for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(c_out, padding=0)]) if downsample else None

    def execute(self, h: "jt.Var") -> "jt.Var":
        for r in self.resnets:
            h = r(h)
        return h if self.downsamplers is None else self.downsamplers[0](h)


class DecoderBlock(nn.Module):
    """UpDecoderBlock2D: resnets, then upsamplers.0 (nearest 2x + conv) unless last."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, upsample: bool):
        self.resnets = nn.ModuleList([ResnetBlock2D(c_in if j == 0 else c_out, c_out, None, groups, EPS)
                                      for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(c_out)]) if upsample else None

    def execute(self, h: "jt.Var") -> "jt.Var":
        for r in self.resnets:
            h = r(h)
        return h if self.upsamplers is None else self.upsamplers[0](h)


class Encoder(nn.Module):
    """x [B, in_channels, H, W] -> moments [B, 2 latent, H / 2^(n-1), W / 2^(n-1)] (before quant_conv)."""

    def __init__(self, cfg: VAEConfig):
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < n - 1)
                                          for i in range(n)])
        self.mid_block = UNetMidBlock2D(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g, ch[-1], EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def execute(self, x: "jt.Var") -> "jt.Var":
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_norm_out(h, silu=True))


class Decoder(nn.Module):
    """z [B, latent, h, w] -> image [B, out_channels, h 2^(n-1), w 2^(n-1)]."""

    def __init__(self, cfg: VAEConfig):
        rev, g, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([DecoderBlock(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, i < n - 1)
                                        for i in range(n)])
        self.conv_norm_out = GroupNorm(g, rev[-1], EPS)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def execute(self, z: "jt.Var") -> "jt.Var":
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_norm_out(h, silu=True))


@dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), what AutoencoderKL.encode returns (diffusers' latent_dist)."""
    mean: "jt.Var"
    logvar: "jt.Var"

    @property
    def std(self) -> "jt.Var":
        return jt.exp(0.5 * self.logvar)

    def sample(self, noise: "jt.Var | None" = None) -> "jt.Var":
        """z = mean + std * noise, noise ~ N(0, I) (reparameterisation, Kingma & Welling 2014, Eq. 10)."""
        noise = jt.randn(*self.mean.shape) if noise is None else noise
        if tuple(noise.shape) != tuple(self.mean.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(self.mean.shape)}")
        return self.mean + self.std * noise

    def mode(self) -> "jt.Var":
        return self.mean


class AutoencoderKL(nn.Module):
    """Stable Diffusion's VAE: `encode(x) -> DiagonalGaussian` (x in [-1, 1]), `decode(z) -> x`; z is the unscaled
    latent (multiply by `scaling_factor` before diffusion, divide after)."""

    def __init__(self, config: VAEConfig):
        self.config = config
        self.scaling_factor = float(config.scaling_factor)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        L = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(L, L, 1) if config.use_post_quant_conv else None

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each axis: 2^(number of blocks - 1)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x: "jt.Var") -> DiagonalGaussian:
        if len(x.shape) != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"VAE.encode: x must be [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jt.chunk(moments, 2, dim=1)
        return DiagonalGaussian(mean, jt.clamp(logvar, -30.0, 20.0))

    def decode(self, z: "jt.Var") -> "jt.Var":
        if len(z.shape) != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"VAE.decode: z must be [B, {self.config.latent_channels}, h, w], got {tuple(z.shape)}")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def execute(self, x: "jt.Var") -> "jt.Var":
        """Reconstruction through the posterior mean: decode(encode(x).mean)."""
        return self.decode(self.encode(x).mean)
