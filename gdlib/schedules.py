"""Noise schedules with diffusers' semantics: betas, alphas_cumprod, timestep spacing, predictions.

Tables are numpy float64. Functions on samples take numpy arrays or jt.Var (any shape, float32) and
return the same kind. Notation: abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, Eq. 4),
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and in the variance-exploding view
sigma_t = sqrt((1 - abar_t) / abar_t), x_bar = x_t / sqrt(abar_t) = x0 + sigma_t eps (Karras et al. 2022).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _jt():
    """Jittor, imported through gdlib.runtime (never directly)."""
    from . import runtime
    return runtime.setup_jittor()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming the valid choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}")


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02, max_beta: float = 0.999) -> np.ndarray:
    """beta_1..beta_T as diffusers defines them (linear: Ho et al. 2020; squaredcos_cap_v2: Nichol & Dhariwal 2021, Eq. 17)."""
    _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    T = int(num_train_timesteps)
    if T < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2
    else:
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)])
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(f"betas must lie in (0, 1); got range [{betas.min()}, {betas.max()}] "
                         f"from beta_start={beta_start}, beta_end={beta_end}")
    return betas


def _spaced(num_inference_steps: int, T: int, spacing: str, steps_offset: int, rounded: bool) -> np.ndarray:
    """diffusers' timestep spacing (DDIM/DDPM/Euler set_timesteps); float when not rounded (Euler linspace)."""
    N = num_inference_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N)[::-1]
        return ts.round() if rounded else ts.astype(np.float32).astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, N) * (T // N))[::-1].astype(np.float64) + steps_offset
    return np.round(np.arange(T, 0, -T / N)).astype(np.float64) - 1  # trailing


def _bcast(coef, like):
    """Shape a per-sample coefficient (scalar or [B]) to broadcast against `like` ([B, ...])."""
    c = np.asarray(coef, dtype=np.float64)
    if c.ndim == 0:
        return float(c)
    c = c.reshape((-1,) + (1,) * (len(like.shape) - 1))
    if isinstance(like, np.ndarray):
        return c if like.dtype == np.float64 else c.astype(np.float32)
    return _jt().array(c.astype(np.float32))


def _check_same_shape(a, b, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


@dataclass
class NoiseSchedule:
    """A discrete DDPM noise schedule with diffusers' configuration names and semantics."""
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    betas: np.ndarray = field(init=False, repr=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset must be >= 0, got {self.steps_offset}")
        if not 0.0 < self.dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {self.dynamic_thresholding_ratio}")
        self.betas = make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)

    @classmethod
    def stable_diffusion_2_1(cls, **overrides: Any) -> "NoiseSchedule":
        """The scheduler configuration of Stable Diffusion 2.1 (768, v-prediction)."""
        cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                   timestep_spacing="leading", clip_sample=False)
        cfg.update(overrides)
        return cls(**cfg)

    # ----- tables -------------------------------------------------------------------------------
    @property
    def final_alpha_cumprod(self) -> float:
        """abar used after the last step: 1 if set_alpha_to_one else abar_0 (DDIM)."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    @property
    def sigmas_table(self) -> np.ndarray:
        """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1 (Karras et al. 2022, Table 1, VP)."""
        return np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    def abar(self, t) -> float:
        """abar_t for an integer timestep; abar_{-1} := final_alpha_cumprod."""
        t = int(t)
        if t >= self.num_train_timesteps:
            raise ValueError(f"timestep {t} out of range [0, {self.num_train_timesteps - 1}]")
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def _check_steps(self, num_inference_steps: int) -> int:
        n = int(num_inference_steps)
        if n != num_inference_steps or n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if n > self.num_train_timesteps:
            raise ValueError(f"num_inference_steps={n} is larger than num_train_timesteps="
                             f"{self.num_train_timesteps}; use at most {self.num_train_timesteps} steps")
        return n

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Integer timesteps, high to low, as DDIMScheduler/DDPMScheduler.set_timesteps makes them."""
        n = self._check_steps(num_inference_steps)
        ts = _spaced(n, self.num_train_timesteps, self.timestep_spacing, self.steps_offset, rounded=True)
        ts = ts.astype(np.int64)
        if ts.max() >= self.num_train_timesteps:
            raise ValueError(f"steps_offset={self.steps_offset} pushes timestep {ts.max()} past "
                             f"num_train_timesteps-1={self.num_train_timesteps - 1}")
        return ts

    def ddim_prev_timestep(self, t: int, num_inference_steps: int) -> int:
        """DDIM's previous timestep t - T//N, whatever the spacing (may be negative)."""
        return int(t) - self.num_train_timesteps // self._check_steps(num_inference_steps)

    def sigma_at(self, t) -> np.ndarray:
        """sigma at (possibly fractional) timesteps, linear interpolation of sigmas_table (EulerDiscreteScheduler)."""
        return np.interp(np.asarray(t, dtype=np.float64), np.arange(self.num_train_timesteps), self.sigmas_table)

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Fractional timestep of sigma by interpolation in log sigma (diffusers/k-diffusion _sigma_to_t)."""
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigmas = np.log(self.sigmas_table)
        log_sigma = np.log(np.maximum(sigma, 1e-10)).reshape(-1)
        dists = log_sigma - log_sigmas[:, None]
        low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
        w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
        return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)

    def euler_sigmas(self, num_inference_steps: int, karras: bool = False, rho: float = 7.0):
        """(timesteps, sigmas + [0]) exactly as EulerDiscreteScheduler / EulerAncestralDiscreteScheduler build them."""
        n = self._check_steps(num_inference_steps)
        ts = _spaced(n, self.num_train_timesteps, self.timestep_spacing, self.steps_offset, rounded=False)
        sig = self.sigma_at(ts)
        if karras:
            sig = get_sigmas_karras(n, float(sig[-1]), float(sig[0]), rho)[:-1]
            ts = self.sigma_to_t(sig)
        return ts, np.concatenate([sig, [0.0]])

    def dpm_sigmas(self, num_inference_steps: int, karras: bool = False, rho: float = 7.0):
        """(timesteps, sigmas + [0]) as DPMSolverMultistepScheduler.set_timesteps builds them (N+1 grid)."""
        n = self._check_steps(num_inference_steps)
        T = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif self.timestep_spacing == "leading":
            ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + self.steps_offset
        else:
            ts = np.arange(T, 0, -T / n).round() - 1
        ts = ts.astype(np.int64).astype(np.float64)
        if karras:
            sig = get_sigmas_karras(n, float(self.sigmas_table[0]), float(self.sigmas_table[-1]), rho)[:-1]
            ts = self.sigma_to_t(sig)
            if self.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
            ts = ts.astype(np.int64).astype(np.float64)  # diffusers stores int64 timesteps (truncating)
        else:
            sig = self.sigma_at(ts)
        return ts, np.concatenate([sig, [0.0]])

    # ----- forward process and predictions ------------------------------------------------------
    def add_noise(self, x0, eps, t):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4); t an int or one per sample."""
        _check_same_shape(x0, eps, "add_noise(x0, eps)")
        abar = self._abar_of(t, len(x0.shape))
        return _bcast(np.sqrt(abar), x0) * x0 + _bcast(np.sqrt(1 - abar), x0) * eps

    def velocity(self, x0, eps, t):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, Sec. 4)."""
        _check_same_shape(x0, eps, "velocity(x0, eps)")
        abar = self._abar_of(t, len(x0.shape))
        return _bcast(np.sqrt(abar), x0) * eps - _bcast(np.sqrt(1 - abar), x0) * x0

    def _abar_of(self, t, ndim: int) -> np.ndarray:
        t_arr = np.asarray(t.numpy() if hasattr(t, "numpy") and not isinstance(t, np.ndarray) else t)
        if t_arr.ndim > 1:
            raise ValueError(f"t must be an int or a 1-D array of timesteps, got shape {t_arr.shape}")
        if np.any(t_arr < 0) or np.any(t_arr >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {t_arr}")
        return self.alphas_cumprod[t_arr.astype(np.int64)]

    def _abar_any(self, t, ndim: int):
        """abar for an int timestep (-1 -> final_alpha_cumprod) or one per sample (1-D array / jt.Var)."""
        if isinstance(t, (int, np.integer)) or (isinstance(t, np.ndarray) and t.ndim == 0):
            return self.abar(t)
        return self._abar_of(t, ndim)

    def to_x0_eps(self, model_output, x_t, t, abar: float | None = None):
        """(x0_hat, eps_hat) from the model output in self.prediction_type; x0_hat is Tweedie's E[x0|x_t]."""
        return prediction_to_x0_eps(self.prediction_type, model_output, x_t,
                                    self._abar_any(t, len(x_t.shape)) if abar is None else abar)

    def from_x0_eps(self, x0, eps, x_t, t):
        """The model output (in self.prediction_type) that a perfect model returns given x0 and eps."""
        return self.training_target(x0, eps, t)

    def training_target(self, x0, eps, t):
        """What the model learns to output at x_t = add_noise(x0, eps, t): eps, x0, or v (per prediction_type)."""
        _check_same_shape(x0, eps, "training_target(x0, eps)")
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        abar = self._abar_any(t, len(x0.shape))
        return _bcast(np.sqrt(abar), x0) * eps - _bcast(np.sqrt(1 - abar), x0) * x0

    def process_x0(self, x0):
        """Dynamic thresholding (Saharia et al. 2022) or clip to [-r, r], as configured; else unchanged."""
        if self.thresholding:
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        if self.clip_sample:
            return clip(x0, self.clip_sample_range)
        return x0


def prediction_to_x0_eps(prediction_type: str, model_output, x_t, abar):
    """Convert an epsilon / v / sample prediction at noise level abar (scalar or one per sample) into (x0_hat, eps_hat)."""
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _check_same_shape(model_output, x_t, "model_output vs x_t")
    a, s = _bcast(np.sqrt(abar), x_t), _bcast(np.sqrt(1.0 - np.asarray(abar, dtype=np.float64)), x_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    return a * x_t - s * model_output, a * model_output + s * x_t


def tweedie_x0(eps_hat, x_t, abar: float):
    """Tweedie's estimate E[x0|x_t] = (x_t - sqrt(1-abar) eps_hat) / sqrt(abar) (Efron 2011; Chung et al. 2023, Eq. 7)."""
    return prediction_to_x0_eps("epsilon", eps_hat, x_t, abar)[0]


def score_from_eps(eps_hat, abar: float):
    """grad log p_t(x_t) = -eps / sqrt(1 - abar) (Song et al. 2021, Eq. 33 / Sec. 4)."""
    return eps_hat * (-1.0 / math.sqrt(1.0 - abar))


def clip(x0, clip_range: float = 1.0):
    """Clamp x0_hat to [-clip_range, clip_range]."""
    if isinstance(x0, np.ndarray):
        return np.clip(x0, -clip_range, clip_range)
    return x0.clamp(-clip_range, clip_range)


def dynamic_threshold(x0, ratio: float = 0.995, max_value: float = 1.0):
    """Imagen's dynamic thresholding: s = clamp(quantile(|x0|, ratio), 1, max_value) per sample; x0 <- clamp(x0, -s, s)/s."""
    if len(x0.shape) < 2:
        raise ValueError(f"dynamic_threshold needs a batch axis [B, ...], got shape {tuple(x0.shape)}")
    is_np = isinstance(x0, np.ndarray)
    a = x0 if is_np else x0.numpy()
    flat = a.reshape(a.shape[0], -1)
    s = np.quantile(np.abs(flat).astype(np.float64), ratio, axis=1)  # linear interpolation, as torch.quantile
    s = np.clip(s, 1.0, max_value)[:, None]
    out = (np.clip(flat, -s, s) / s).reshape(a.shape).astype(a.dtype)
    if is_np:
        return out
    return _jt().array(out)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, Eq. 5: (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then append 0."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = np.linspace(0, 1, n)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.concatenate([sig, [0.0]])
