"""SDEdit (Meng et al. 2022): edit an image by noising it part of the way and denoising it with a prompt. The UNet
baseline of notebook 08 ("global restyling"), with the start time chosen as diffusers' img2img pipelines choose it."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import runtime
from .config import DEFAULT_GUIDANCE

jt = runtime.setup_jittor()

from .sampling import ddim_step  # noqa: E402
from .schedules import NoiseSchedule  # noqa: E402


def img2img_timesteps(schedule: NoiseSchedule, num_inference_steps: int, strength: float) -> np.ndarray:
    """The last int(N * strength) timesteps of the N-step schedule (diffusers' StableDiffusionImg2ImgPipeline
    .get_timesteps): strength 1 runs the whole schedule from (almost) pure noise, strength 0 runs nothing."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    ts = schedule.timesteps(num_inference_steps)
    n = min(int(num_inference_steps * strength), num_inference_steps)
    return ts[num_inference_steps - n:]


def sdedit(model, sources: np.ndarray, prompts: Sequence[str] | str, strength: float = 0.6,
           num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0,
           callback: Callable | None = None) -> np.ndarray:
    """x_t0 = sqrt(abar_t0) x_src + sqrt(1 - abar_t0) eps (Ho et al. 2020, Eq. 4) at the first img2img timestep, then
    DDIM with CFG to t = 0. `model`: a gdlib TextToImage (with any adapter loaded). Returns float32 [N, 3, H, W]."""
    from .imageio import image_batch
    from .pipeline import cfg_model

    x_src, prompts = image_batch(sources, prompts, "sdedit")
    ts = img2img_timesteps(model.schedule, num_inference_steps, strength)
    if len(ts) == 0:
        return x_src.copy()
    eps = np.random.default_rng([int(seed), 5003]).standard_normal(x_src.shape)
    with jt.no_grad():
        x = model.schedule.add_noise(jt.array(x_src), jt.array(eps.astype(np.float32)), int(ts[0]))
        fn = cfg_model(model, model.encode(prompts), model.encode([""]), guidance_scale)
        for i, t in enumerate(ts):
            t = int(t)
            x, x0_hat = ddim_step(model.schedule, fn(x, t), t, x, num_inference_steps)
            if callback is not None:
                callback({"x": x, "i": i, "t": t, "x0_hat": x0_hat})
            x.sync()
        out = x.numpy()
    return np.clip(out, -1.0, 1.0).astype(np.float32)
