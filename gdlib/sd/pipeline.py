"""Text -> image with a loaded Stable Diffusion folder: prompt encoding, classifier-free guidance, DDIM, VAE decode.

Follows diffusers' StableDiffusionPipeline step by step so the numbers agree:
  c = text_encoder(tokenize(prompt)).last_hidden_state, u = the same for the negative prompt ("" by default);
  eps_hat = eps(x, t, u) + w (eps(x, t, c) - eps(x, t, u))            (Ho & Salimans 2022, Eq. 6), only if w > 1;
  DDIM(eta) over the schedule's timesteps (gdlib.sampling.sample_ddim; Song et al. 2021a, Eq. 12), or another of
  gdlib.sampling's samplers (`sampler=`);
  image = clamp(vae.decode(z / scaling_factor) / 2 + 1/2, 0, 1), channels last.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .. import runtime
from .. import sampling

jt = runtime.setup_jittor()


def encode_prompt(pipe, prompts: str | Sequence[str], clip_skip: int | None = None) -> "jt.Var":
    """[N, 77, d] text embeddings; clip_skip k uses final_layer_norm(hidden_states[-(k + 1)]) as diffusers does."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    out = pipe.text_encoder(pipe.tokenizer.encode(prompts))
    if clip_skip:
        return out.penultimate(pipe.text_encoder.final_layer_norm, clip_skip)
    return out.last_hidden_state


def guided_model(unet, context: "jt.Var", uncond: "jt.Var | None", guidance_scale: float) -> Callable:
    """model(x_t, t) for gdlib's samplers: one batched UNet call on [uncond; cond], then CFG."""
    if uncond is None:
        return lambda x, t: unet(x, t, context)
    both = jt.concat([uncond, context], dim=0)
    w = float(guidance_scale)

    def fn(x, t):
        out = unet(jt.concat([x, x], dim=0), t, both)
        u, c = jt.chunk(out, 2, dim=0)
        return u + w * (c - u)
    return fn


def decode_latents(pipe, z: "jt.Var") -> np.ndarray:
    """Latents -> float32 images [N, H, W, 3] in [0, 1] (diffusers' output_type="np")."""
    x = pipe.vae.decode(z / pipe.vae.scaling_factor)
    return np.clip(x.numpy() / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


# diffusers' default timestep_spacing of the scheduler class behind each sampler, used when the folder's
# scheduler_config.json does not set it or lists it in `_use_default_values` (diffusers' from_config then gives the
# new class its own default: DDIM/DDPM "leading", Euler/DPM-Solver "linspace")
SPACING_DEFAULTS = {"ddim": "leading", "ddpm": "leading", "euler": "linspace", "euler_ancestral": "linspace",
                    "dpmpp_2m": "linspace"}


def sampler_schedule(pipe, sampler: str):
    """The folder's NoiseSchedule as diffusers' scheduler for `sampler` reads the same config (a field the config lacks
    takes that class's default: timestep_spacing, see SPACING_DEFAULTS)."""
    import dataclasses

    cfg = pipe.scheduler_config
    if "timestep_spacing" in cfg and "timestep_spacing" not in cfg.get("_use_default_values", ()):
        return pipe.schedule
    return dataclasses.replace(pipe.schedule, timestep_spacing=SPACING_DEFAULTS[sampler])


def k_start_scale(schedule, sampler: str, steps: int, karras: bool) -> float:
    """diffusers' init_noise_sigma / gdlib's sqrt(1 + sigma_max^2) for the k-diffusion samplers: diffusers' Euler
    schedulers start from x_T * sigma_max under "linspace" / "trailing" spacing (sqrt(1 + sigma_max^2) otherwise),
    DPM-Solver from x_T in the VP frame (= gdlib's start); gdlib.sampling.sample always uses sqrt(1 + sigma_max^2)."""
    if sampler not in ("euler", "euler_ancestral") or schedule.timestep_spacing not in ("linspace", "trailing"):
        return 1.0
    sigma_max = float(schedule.euler_sigmas(steps, karras=karras)[1][0])
    return sigma_max / (1.0 + sigma_max ** 2) ** 0.5


def sample(pipe, prompts: str | Sequence[str], latents, steps: int = 25, guidance_scale: float = 7.5,
           negative_prompt: str | Sequence[str] = "", eta: float = 0.0, clip_skip: int | None = None,
           callback: Callable | None = None, return_latents: bool = False, x0_transform: Callable | None = None,
           wrap_model: Callable | None = None, noise_fn: Callable | None = None, sampler: str = "ddim",
           karras: bool = False):
    """Images [N, H, W, 3] in [0, 1] from the initial latents x_T [N, C, h, w] (x_T ~ N(0, I); the k-diffusion
    samplers scale it by sqrt(1 + sigma_max^2) as diffusers' init_noise_sigma does); with return_latents, (images,
    final latents). sampler: any of gdlib.sampling.SAMPLERS on the folder's schedule (diffusers' DDIM, DDPM, Euler,
    Euler-ancestral, DPM-Solver++(2M) schedulers; `karras` sigmas for the last three). Hooks for guidance
    (gdlib.sd.guidance): x0_transform(x0_hat, eps_hat, t, i) -> x0_hat (DDIM / DDPM only, as in gdlib.sampling);
    wrap_model(model, uncond) -> model around the CFG model."""
    if sampler not in sampling.SAMPLERS:
        raise ValueError(f"sample: unknown sampler {sampler!r}; choose one of {', '.join(sampling.SAMPLERS)}")
    if x0_transform is not None and sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sample: the x0_transform hook (RB-Modulation) runs with the ddim or ddpm sampler, not {sampler}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    x = latents if isinstance(latents, jt.Var) else jt.array(np.asarray(latents, dtype=np.float32))
    if len(x.shape) != 4 or x.shape[0] != len(prompts):
        raise ValueError(f"sample: latents must be [{len(prompts)}, C, h, w] for {len(prompts)} prompts, "
                         f"got {tuple(x.shape)}")
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"sample: {len(negatives)} negative prompts for {len(prompts)} prompts")
    with jt.no_grad():
        context = encode_prompt(pipe, prompts, clip_skip)
        uncond = encode_prompt(pipe, negatives, clip_skip) if guidance_scale > 1.0 else None
        model = guided_model(pipe.unet, context, uncond, guidance_scale)
        if wrap_model is not None:
            model = wrap_model(model, uncond if uncond is not None else encode_prompt(pipe, [""], clip_skip))
        if sampler == "ddim":
            z = sampling.sample_ddim(model, x, pipe.schedule, steps, eta=eta, callback=callback, noise_fn=noise_fn,
                                     x0_transform=x0_transform)
        elif sampler == "ddpm":
            z = sampling.sample_ddpm(model, x, pipe.schedule, steps, callback=callback, noise_fn=noise_fn,
                                     x0_transform=x0_transform)
        else:   # as StableDiffusionPipeline with that scheduler: its config reading and its init_noise_sigma
            schedule = sampler_schedule(pipe, sampler)
            x = x * k_start_scale(schedule, sampler, steps, karras)
            z = sampling.sample(sampler, model, x, schedule, steps, eta=eta, karras=karras, callback=callback,
                                noise_fn=noise_fn)
        images = decode_latents(pipe, z)
    return (images, z) if return_latents else images
