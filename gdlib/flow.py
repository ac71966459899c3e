"""Flow matching on the linear path (Lipman et al. 2023; rectified flow, Liu et al. 2023), as SD3 and FLUX train it.

Path and target, t in [0, 1] with t = 0 the data and t = 1 pure noise (SD3's convention):
    x_t = (1 - t) x0 + t eps,        u = dx_t/dt = eps - x0          (the velocity the network regresses)
The marginal velocity field E[u | x_t] = (x_t - E[x0 | x_t]) / t moves noise to data along an ODE,
dx/dt = u(x, t) integrated from t = 1 to 0.

The link to the course's diffusion models: dividing by r_t = sqrt((1 - t)^2 + t^2) gives
    x_t / r_t = sqrt(abar) x0 + sqrt(1 - abar) eps   with   sqrt(abar) = (1 - t) / r_t,
a VP point at noise level abar(t); so a flow-matching model and an eps / v model of the same data know the same
E[x0 | x_t], and the flow ODE carries the same marginals p_t as the probability-flow ODE (checked on the exact
Gaussian mixture of notebook 01 in tests/test_flow.py). In that VP frame a v-prediction (Salimans & Ho 2022),
v = a eps - s x0 with a = sqrt(abar), s = sqrt(1 - abar), converts exactly: eps = a v + s x_vp and x0 = a x_vp - s v,
so u = eps - x0 = (a + s) v + (s - a) x_vp (`velocity_from_v`).
Samplers follow k-diffusion's functional style: sample_x(velocity, x, ts, callback=None).
NumPy or Jittor arrays work alike (only +, -, * are used on x).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


def interpolate(x0, eps, t: float):
    """x_t = (1 - t) x0 + t eps: the linear (rectified-flow) path."""
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0, eps):
    """u = d x_t / dt = eps - x0: the flow-matching regression target."""
    return eps - x0


def vp_scale(t: float) -> tuple[float, float]:
    """(r_t, abar_t): x_t / r_t is a VP point at noise level abar_t = ((1 - t) / r_t)^2, r_t = sqrt((1-t)^2 + t^2)."""
    r = math.sqrt((1.0 - t) ** 2 + t ** 2)
    return r, ((1.0 - t) / r) ** 2


def velocity_from_x0(x_t, x0_hat, t: float):
    """The marginal velocity from a data estimate: u = (x_t - x0_hat) / t (since eps = (x_t - (1 - t) x0) / t)."""
    if t <= 0:
        raise ValueError("velocity_from_x0: t must be > 0 (at t = 0 the path is the data itself)")
    return (x_t - x0_hat) / t


def velocity_from_eps(x_t, eps_hat, t: float):
    """The marginal velocity from a noise estimate: x0_hat = (x_t - t eps_hat) / (1 - t), u = eps_hat - x0_hat."""
    if t >= 1:
        raise ValueError("velocity_from_eps: t must be < 1 (at t = 1 the path holds no data)")
    return eps_hat - (x_t - t * eps_hat) / (1.0 - t)


def velocity_from_v(x_t, v_hat, t: float):
    """The flow velocity from a v-prediction made at the VP point x_t / r_t: u = (a + s) v + (s - a) x_t / r_t."""
    r, abar = vp_scale(t)
    a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
    return (a + s) * v_hat + (s - a) * (x_t / r)


def flow_timesteps(n: int, shift: float = 1.0) -> np.ndarray:
    """n + 1 times from 1 to 0; shift > 1 spends more steps at high noise (SD3's t' = s t / (1 + (s - 1) t))."""
    if int(n) < 1 or shift <= 0:
        raise ValueError(f"flow_timesteps: need n >= 1 and shift > 0, got n={n}, shift={shift}")
    t = np.linspace(1.0, 0.0, int(n) + 1)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_euler_flow(velocity: Callable[[Any, float], Any], x, ts: Sequence[float], callback: Callable | None = None):
    """Euler on dx/dt = velocity(x, t) from ts[0] (= 1, noise) to ts[-1] (= 0): one model call per step."""
    for i in range(len(ts) - 1):
        u = velocity(x, float(ts[i]))
        if callback is not None:
            callback({"x": x, "i": i, "t": float(ts[i]), "velocity": u})
        x = x + (float(ts[i + 1]) - float(ts[i])) * u
    return x


def sample_heun_flow(velocity: Callable[[Any, float], Any], x, ts: Sequence[float], callback: Callable | None = None):
    """Heun (trapezoidal predictor-corrector) on the flow ODE: two model calls per step, Euler on the last step to
    t = 0 (where the velocity (x - x0_hat) / t is undefined), as k-diffusion's sample_heun does at sigma = 0."""
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        u = velocity(x, t)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": u})
        x_euler = x + (t_next - t) * u
        if t_next <= 0:
            x = x_euler
        else:
            x = x + (t_next - t) * 0.5 * (u + velocity(x_euler, t_next))
    return x


def mixture_posterior_x0(mix, x, t: float) -> np.ndarray:
    """E[x0 | x_t] on the linear path for a gdlib.mixture.GaussianMixture, stable for every t in [0, 1]: per component
    x_t ~ N((1-t) mu_k, (1-t)^2 S_k + t^2 I) and E[x0 | x_t, k] = mu_k + (1-t) S_k C_k^-1 (x_t - (1-t) mu_k)."""
    x = np.asarray(x, np.float64)
    D = mix.dim
    C = (1.0 - t) ** 2 * mix.covs + t ** 2 * np.eye(D)                # [K, D, D]
    P = np.linalg.inv(C)
    d = x[:, None, :] - (1.0 - t) * mix.means[None]                    # [N, K, D]
    maha = np.einsum("nki,kij,nkj->nk", d, P, d)
    logp = np.log(np.maximum(mix.weights, 1e-300)) - 0.5 * (maha + np.linalg.slogdet(C)[1])
    resp = np.exp(logp - logp.max(1, keepdims=True))
    resp /= resp.sum(1, keepdims=True)
    cond = mix.means[None] + (1.0 - t) * np.einsum("kij,kjl,nkl->nki", mix.covs, P, d)
    return np.einsum("nk,nki->ni", resp, cond)


def mixture_velocity(mix) -> Callable[[np.ndarray, float], np.ndarray]:
    """The exact marginal velocity E[eps - x0 | x_t] of a gdlib.mixture.GaussianMixture: (x_t - E[x0 | x_t]) / t."""

    def u(x, t: float):
        x = np.asarray(x, np.float64)
        t = max(float(t), 1e-12)
        return velocity_from_x0(x, mixture_posterior_x0(mix, x, t), t)
    return u
