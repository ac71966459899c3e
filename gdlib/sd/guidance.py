"""RB-Modulation and AFA on a Stable Diffusion folder: the course's gdlib.guidance, with the seed team's Psi.

The control works on latents here: x0_hat is a latent [N, 4, h, w], and the style descriptor is the one the
challenge entry used on SD 2.1 -- Gram matrices of the VAE decoder's up-block feature maps while decoding x0_hat
("at every step compare the Gram matrices of the predicted x0 with the style image and guide with the gradient"):
    Psi(z) = concat_l unit(vec G_l(F_l(z / scaling_factor))) / sqrt(L),   G = F F^T / (H W)  (Gatys et al. 2016, Eq. 3)
with F_l the output of the decoder's up block l. The reference's Psi is that of its VAE latent (posterior mean).
Everything else is gdlib.guidance unchanged: RBModulation as the sampler's x0_transform (Rout et al. 2024, Sec. 4;
mean-squared alignment term), AFA wrappers on the UNet's self-attention `attn1` (Sec. 5).
Cost: every controlled step runs num_iter forward + backward passes of the decoder's up blocks (not of the UNet).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from .. import guidance as G  # noqa: E402
from ..config import RBConfig  # noqa: E402
from ..style import _unit, gram_matrix  # noqa: E402
from .finetune import encode_images  # noqa: E402
from .pipeline import sample  # noqa: E402


class DecoderGram:
    """Psi(z) on SD latents: unit Gram vectors of the VAE decoder's up-block outputs, concatenated / sqrt(L)."""

    name = "vae-gram"

    def __init__(self, vae, blocks: Sequence[int] | None = None):
        n = len(vae.decoder.up_blocks)
        self.blocks = tuple(range(n)) if blocks is None else tuple(int(b) for b in blocks)
        if not self.blocks or any(b < 0 or b >= n for b in self.blocks):
            raise ValueError(f"DecoderGram: blocks must be indices of the decoder's {n} up blocks, got {blocks!r}")
        self.vae = vae

    def features(self, z: "jt.Var") -> list:
        """The decoder's up-block outputs F_l for the latents z (diffusers' Decoder.forward up to block max(l))."""
        dec = self.vae.decoder
        h = dec.mid_block(dec.conv_in(z / self.vae.scaling_factor))
        maps = []
        for i, block in enumerate(dec.up_blocks[:max(self.blocks) + 1]):
            h = block(h)
            if i in self.blocks:
                maps.append(h)
        return maps

    def __call__(self, z) -> "jt.Var":
        z = G._var(z)
        if z.ndim != 4 or z.shape[1] != self.vae.decoder.conv_in.weight.shape[1]:
            raise ValueError(f"DecoderGram: expected latents [N, {self.vae.decoder.conv_in.weight.shape[1]}, h, w], "
                             f"got shape {tuple(z.shape)}")
        parts = [_unit(gram_matrix(m).reshape(m.shape[0], -1)) for m in self.features(z)]
        return jt.concat(parts, dim=1) / float(np.sqrt(len(parts)))


def reference_latents(pipe, images) -> "jt.Var":
    """Reference images [K, 3, H, W] in [-1, 1] at the pipeline's size -> their latents [K, C, h, w]."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    size = pipe.latent_shape[1] * pipe.vae_scale_factor
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (size, size):
        raise ValueError(f"style references must be images [K, 3, {size}, {size}] in [-1, 1] (the folder's UNet "
                         f"size), got shape {x.shape}")
    return jt.array(encode_images(pipe, x))


def stylize(pipe, prompts: str | Sequence[str], references, steps: int = 25, guidance_scale: float = 7.5,
            config: RBConfig | None = None, control: bool = True, afa: bool = False,
            blocks: Sequence[int] | None = None, negative_prompt: str = "", seed: int = 0,
            latents=None, return_history: bool = False):
    """Text -> images [N, H, W, 3] in [0, 1] from an SD folder with CFG + DDIM, steered toward the references'
    style by RB-Modulation (control, Psi = DecoderGram) and/or AFA (the first reference's self-attention K/V);
    with return_history also the per-step control infos (gdlib.guidance.RBModulation.history)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("stylize: give at least one prompt")
    rng = np.random.default_rng(seed)
    if latents is None:
        latents = rng.standard_normal((len(prompts), *pipe.latent_shape)).astype(np.float32)
    z_ref = reference_latents(pipe, references)
    rb = None
    if control:
        psi = DecoderGram(pipe.vae, blocks)
        rb = G.RBModulation(psi, z_ref, steps, config or RBConfig())
    wrap, ctx = None, contextlib.nullcontext()
    if afa:
        ref_noise = rng.standard_normal((1, *pipe.latent_shape)).astype(np.float32)
        ctx = G.afa_enabled(pipe.unet)

        def wrap(model, uncond):
            return G.afa_model(pipe.unet, pipe.schedule, model, z_ref[:1], uncond[:1], ref_noise)
    with ctx:
        images = sample(pipe, prompts, latents, steps=steps, guidance_scale=guidance_scale,
                        negative_prompt=negative_prompt, x0_transform=rb, wrap_model=wrap)
    return (images, rb.history if rb is not None else []) if return_history else images
