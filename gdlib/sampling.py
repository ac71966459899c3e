"""Functional samplers with diffusers' numbers: DDPM, DDIM(eta), Euler (PF-ODE), Euler-ancestral, DPM-Solver++(2M).

Two families, one calling convention each:
- discrete (diffusers DDPM/DDIM): `sample_ddim(model, x, schedule, num_inference_steps, ...)` where
  `model(x_t, t: int) -> model output` in `schedule.prediction_type`, x in the VP frame (x_T ~ N(0, I));
- k-diffusion style: `sample_euler(denoiser, x, sigmas, ...)` where `denoiser(x, sigma) -> x0_hat`, x in the
  VE frame x = x0 + sigma eps (start with x = sigmas[0] * noise). `Denoiser` turns a discrete model + schedule
  into such a denoiser.
Every sampler calls `callback(info)` once per step with a dict: x (state before the step), i, t or sigma,
x0_hat (alias denoised). Tensors are jt.Var float32 (numpy arrays are accepted and converted).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from . import runtime
from .schedules import NoiseSchedule, get_sigmas_karras  # noqa: F401  (re-exported: k-diffusion-style API)

Callback = Callable[[dict[str, Any]], None]
NoiseFn = Callable[[tuple], Any]


def _jt():
    return runtime.setup_jittor()


def _as_var(x):
    """jt.Var float32 from a jt.Var or array-like."""
    jt = _jt()
    if isinstance(x, jt.Var):
        return x if x.dtype == "float32" else x.float32()
    return jt.array(np.asarray(x, dtype=np.float32))


def _noise(noise_fn: NoiseFn | None, shape) -> Any:
    """z ~ N(0, I) of `shape` from noise_fn (for determinism) or jt.randn."""
    jt = _jt()
    z = jt.randn(*shape) if noise_fn is None else _as_var(noise_fn(tuple(shape)))
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"noise_fn returned shape {tuple(z.shape)}, expected {tuple(shape)}")
    return z


def _check_eta(eta: float) -> None:
    if not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic), got {eta}")


def _model_out(model, x, t):
    """Call the model and check its output shape."""
    out = _as_var(model(x, t))
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"model returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
    return out


# ----- discrete samplers (diffusers DDIMScheduler / DDPMScheduler) ------------------------------------
def ddim_update(schedule: NoiseSchedule, x0_hat, eps_hat, t: int, prev_t: int, eta: float = 0.0, noise=None):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std z, std = eta sigma_t (Song et al. 2021a, Eq. 12, 16)."""
    _check_eta(eta)
    abar, abar_prev = schedule.abar(t), schedule.abar(prev_t)
    variance = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    std = eta * math.sqrt(variance)
    x_prev = math.sqrt(abar_prev) * x0_hat + math.sqrt(max(1 - abar_prev - std ** 2, 0.0)) * eps_hat
    if eta > 0:
        z = _noise(None, x0_hat.shape) if noise is None else _as_var(noise)
        if tuple(z.shape) != tuple(x0_hat.shape):
            raise ValueError(f"noise shape {tuple(z.shape)} != sample shape {tuple(x0_hat.shape)}")
        x_prev = x_prev + std * z
    return x_prev


def ddim_step(schedule: NoiseSchedule, model_output, t: int, x_t, num_inference_steps: int,
              eta: float = 0.0, noise=None):
    """One DDIMScheduler.step: returns (x_prev, x0_hat); prev timestep is t - T//N (Song et al. 2021a, Eq. 12)."""
    _check_eta(eta)
    model_output, x_t = _as_var(model_output), _as_var(x_t)
    prev_t = schedule.ddim_prev_timestep(t, num_inference_steps)
    x0_hat, eps_hat = schedule.to_x0_eps(model_output, x_t, t)
    x0_hat = schedule.process_x0(x0_hat)
    return ddim_update(schedule, x0_hat, eps_hat, t, prev_t, eta, noise), x0_hat


def ddpm_update(schedule: NoiseSchedule, x0_hat, x_t, t: int, prev_t: int, noise=None):
    """Posterior q(x_prev | x_t, x0) mean plus fixed_small std (Ho et al. 2020, Eq. 6-7); noise only if t > 0."""
    abar, abar_prev = schedule.abar(t), (schedule.abar(prev_t) if prev_t >= 0 else 1.0)
    beta_t = 1 - abar / abar_prev
    mean = (math.sqrt(abar_prev) * beta_t / (1 - abar)) * x0_hat \
        + (math.sqrt(abar / abar_prev) * (1 - abar_prev) / (1 - abar)) * x_t
    if t > 0:
        variance = max((1 - abar_prev) / (1 - abar) * beta_t, 1e-20)
        z = _noise(None, x_t.shape) if noise is None else _as_var(noise)
        if tuple(z.shape) != tuple(x_t.shape):
            raise ValueError(f"noise shape {tuple(z.shape)} != sample shape {tuple(x_t.shape)}")
        mean = mean + math.sqrt(variance) * z
    return mean


def ddpm_prev_timestep(schedule: NoiseSchedule, t: int, num_inference_steps: int) -> int:
    """The next entry of the timestep list after t (-1 after the last), as DDPMScheduler.previous_timestep."""
    ts = schedule.timesteps(num_inference_steps)
    idx = np.nonzero(ts == int(t))[0]
    if len(idx) == 0:
        raise ValueError(f"timestep {t} is not in the {num_inference_steps}-step schedule {ts.tolist()}")
    k = int(idx[0])
    return int(ts[k + 1]) if k + 1 < len(ts) else -1


def ddpm_step(schedule: NoiseSchedule, model_output, t: int, x_t, num_inference_steps: int, noise=None):
    """One DDPMScheduler.step (variance fixed_small): returns (x_prev, x0_hat)."""
    model_output, x_t = _as_var(model_output), _as_var(x_t)
    prev_t = ddpm_prev_timestep(schedule, t, num_inference_steps)
    x0_hat, _ = schedule.to_x0_eps(model_output, x_t, t)
    x0_hat = schedule.process_x0(x0_hat)
    return ddpm_update(schedule, x0_hat, x_t, t, prev_t, noise), x0_hat


def _discrete_loop(kind: str, model, x, schedule: NoiseSchedule, num_inference_steps: int, eta: float,
                   callback: Callback | None, noise_fn: NoiseFn | None, x0_transform):
    x = _as_var(x)
    ts = schedule.timesteps(num_inference_steps)
    for i, t in enumerate(ts):
        t = int(t)
        out = _model_out(model, x, t)
        x0_hat, eps_hat = schedule.to_x0_eps(out, x, t)
        x0_hat = schedule.process_x0(x0_hat)
        if x0_transform is not None:
            x0_hat = _as_var(x0_transform(x0_hat, eps_hat, t, i))
            if tuple(x0_hat.shape) != tuple(x.shape):
                raise ValueError(f"x0_transform returned shape {tuple(x0_hat.shape)}, expected {tuple(x.shape)}")
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_hat": x0_hat, "denoised": x0_hat, "eps_hat": eps_hat})
        if kind == "ddim":
            prev_t = t - schedule.num_train_timesteps // num_inference_steps
            z = _noise(noise_fn, x.shape) if eta > 0 else None
            x = ddim_update(schedule, x0_hat, eps_hat, t, prev_t, eta, z)
        else:
            prev_t = int(ts[i + 1]) if i + 1 < len(ts) else -1
            z = _noise(noise_fn, x.shape) if t > 0 else None
            x = ddpm_update(schedule, x0_hat, x, t, prev_t, z)
        x.sync()
    return x


def sample_ddim(model, x, schedule: NoiseSchedule, num_inference_steps: int, eta: float = 0.0,
                callback: Callback | None = None, noise_fn: NoiseFn | None = None, x0_transform=None):
    """DDIM(eta) from x = x_T (VP frame) to x0; eta = 0 deterministic, eta = 1 DDPM-like (Song et al. 2021a)."""
    _check_eta(eta)
    schedule._check_steps(num_inference_steps)
    return _discrete_loop("ddim", model, x, schedule, num_inference_steps, eta, callback, noise_fn, x0_transform)


def sample_ddpm(model, x, schedule: NoiseSchedule, num_inference_steps: int, callback: Callback | None = None,
                noise_fn: NoiseFn | None = None, x0_transform=None):
    """Ancestral DDPM sampling over the spaced timesteps, as DDPMScheduler (Ho et al. 2020, Alg. 2)."""
    schedule._check_steps(num_inference_steps)
    return _discrete_loop("ddpm", model, x, schedule, num_inference_steps, 0.0, callback, noise_fn, x0_transform)


# ----- k-diffusion style samplers (VE frame x = x0 + sigma eps) ------------------------------------------
class Denoiser:
    """Wrap a discrete eps / v / x0 model into denoiser(x, sigma) -> x0_hat in the VE frame (k-diffusion's DiscreteEpsDDPMDenoiser).

    The model sees x / sqrt(sigma^2 + 1) (the VP sample) and the timestep of sigma: taken from the (timesteps,
    sigmas) table when given (diffusers' own pairing), else by log-sigma interpolation. The timestep is passed
    as an int when it is a whole number, else as a float.
    """

    def __init__(self, model, schedule: NoiseSchedule, timesteps: Sequence[float] | None = None,
                 sigmas: Sequence[float] | None = None, process_x0: bool = True):
        self.model, self.schedule, self.process_x0 = model, schedule, process_x0
        self.table: dict[float, float] = {}
        if timesteps is not None and sigmas is not None:
            self.table = {float(s): float(t) for t, s in zip(timesteps, sigmas)}

    def sigma_to_t(self, sigma: float) -> int | float:
        t = self.table.get(float(sigma))
        if t is None:
            t = float(self.schedule.sigma_to_t(float(sigma)))
        return int(round(t)) if abs(t - round(t)) < 1e-6 else t

    def __call__(self, x, sigma: float):
        """x0_hat = E[x0 | x] at noise level sigma (VE frame)."""
        sigma = float(sigma)
        if sigma <= 0:
            raise ValueError(f"the denoiser needs sigma > 0, got {sigma}")
        x = _as_var(x)
        c_in = 1.0 / math.sqrt(sigma ** 2 + 1)
        t = self.sigma_to_t(sigma)
        out = _model_out(self.model, x * c_in, t)
        pt = self.schedule.prediction_type
        if pt == "epsilon":
            x0 = x - sigma * out
        elif pt == "v_prediction":
            x0 = out * (-sigma * c_in) + x * (c_in ** 2)
        else:
            x0 = out
        return self.schedule.process_x0(x0) if self.process_x0 else x0


def _check_sigmas(sigmas) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if len(s) < 2:
        raise ValueError(f"sigmas needs at least 2 entries (start and end), got {len(s)}")
    if np.any(s < 0) or np.any(np.diff(s) > 0):
        raise ValueError("sigmas must be non-negative and non-increasing (end with 0 to denoise fully)")
    return s


def _k_callback(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": float(sigma), "sigma_hat": float(sigma), "x0_hat": denoised,
                  "denoised": denoised})


def sample_euler(denoiser, x, sigmas, callback: Callback | None = None):
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Alg. 1 without churn)."""
    s = _check_sigmas(sigmas)
    x = _as_var(x)
    for i in range(len(s) - 1):
        denoised = _as_var(denoiser(x, s[i]))
        _k_callback(callback, x, i, s[i], denoised)
        d = (x - denoised) / float(s[i])
        x = x + d * float(s[i + 1] - s[i])
        x.sync()
    return x


def ancestral_sigmas(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: sigma_up = min(s_to, eta sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2))."""
    _check_eta(eta)
    if eta == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    sigma_down = math.sqrt(sigma_to ** 2 - sigma_up ** 2)
    return sigma_down, sigma_up


def sample_euler_ancestral(denoiser, x, sigmas, callback: Callback | None = None, eta: float = 1.0,
                           noise_fn: NoiseFn | None = None):
    """Euler-ancestral: Euler to sigma_down, then add sigma_up noise; a reverse-SDE sampler, eta = 0 is Euler."""
    _check_eta(eta)
    s = _check_sigmas(sigmas)
    x = _as_var(x)
    for i in range(len(s) - 1):
        denoised = _as_var(denoiser(x, s[i]))
        _k_callback(callback, x, i, s[i], denoised)
        sigma_down, sigma_up = ancestral_sigmas(float(s[i]), float(s[i + 1]), eta)
        d = (x - denoised) / float(s[i])
        x = x + d * (sigma_down - float(s[i]))
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + _noise(noise_fn, x.shape) * sigma_up
        x.sync()
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, callback: Callback | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in t = -log sigma, first order at the ends."""
    s = _check_sigmas(sigmas)
    x = _as_var(x)
    old_denoised = None
    for i in range(len(s) - 1):
        denoised = _as_var(denoiser(x, s[i]))
        _k_callback(callback, x, i, s[i], denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            t, t_next = -math.log(s[i]), -math.log(s[i + 1])
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                r = (t - (-math.log(s[i - 1]))) / h
                d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = x * float(s[i + 1] / s[i]) - d * math.expm1(-h)
        old_denoised = denoised
        x.sync()
    return x


# ----- one entry point for the notebooks and widgets --------------------------------------------------
SAMPLERS = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m")


def sample(sampler: str, model, x_T, schedule: NoiseSchedule, num_inference_steps: int, eta: float = 0.0,
           karras: bool = False, callback: Callback | None = None, noise_fn: NoiseFn | None = None):
    """Run any sampler from x_T ~ N(0, I) (VP frame) to x0 with `num_inference_steps` model evaluations.

    ddim uses `eta`; euler_ancestral uses `eta` (1 = reverse SDE); euler and dpmpp_2m are deterministic.
    k-diffusion samplers start from x_T * sqrt(1 + sigma_max^2) so that every sampler gets the same x_T.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    _check_eta(eta)
    if sampler == "ddim":
        return sample_ddim(model, x_T, schedule, num_inference_steps, eta, callback, noise_fn)
    if sampler == "ddpm":
        return sample_ddpm(model, x_T, schedule, num_inference_steps, callback, noise_fn)
    if sampler == "dpmpp_2m":
        ts, sigmas = schedule.dpm_sigmas(num_inference_steps, karras=karras)
    else:
        ts, sigmas = schedule.euler_sigmas(num_inference_steps, karras=karras)
    den = Denoiser(model, schedule, ts, sigmas[:-1])
    x = _as_var(x_T) * math.sqrt(1 + float(sigmas[0]) ** 2)
    if sampler == "euler":
        return sample_euler(den, x, sigmas, callback)
    if sampler == "euler_ancestral":
        return sample_euler_ancestral(den, x, sigmas, callback, eta, noise_fn)
    return sample_dpmpp_2m(den, x, sigmas, callback)
