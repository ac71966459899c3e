"""A Gaussian mixture whose noisy marginals are known in closed form: an exact diffusion "model" with no training.

If x0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, then
p_t = sum_k w_k N(sqrt(abar) mu_k, abar Sigma_k + (1 - abar) I), so the score, the exact eps = E[eps | x_t]
= -sqrt(1 - abar) grad log p_t, and Tweedie's E[x0 | x_t] are available for every t. Numpy float64 inside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .schedules import NoiseSchedule


@dataclass
class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in D dimensions."""
    weights: np.ndarray  # [K]
    means: np.ndarray    # [K, D]
    covs: np.ndarray     # [K, D, D]

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64)
        self.covs = np.asarray(self.covs, dtype=np.float64)
        K = len(self.weights)
        if self.means.ndim != 2 or self.means.shape[0] != K:
            raise ValueError(f"means must be [K={K}, D], got {self.means.shape}")
        D = self.means.shape[1]
        if self.covs.shape != (K, D, D):
            raise ValueError(f"covs must be [K={K}, D={D}, D={D}], got {self.covs.shape}")
        if np.any(self.weights < 0) or not np.isclose(self.weights.sum(), 1.0):
            raise ValueError("weights must be non-negative and sum to 1")
        if np.any(np.linalg.eigvalsh(self.covs) <= 0):
            raise ValueError("every covariance must be symmetric positive definite")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, rng: np.random.Generator | int = 0) -> np.ndarray:
        """n exact samples x0 ~ p_0, [n, D]."""
        rng = np.random.default_rng(rng)
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        L = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.dim))
        return self.means[k] + np.einsum("nij,nj->ni", L[k], z)

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"points must be [N, {self.dim}], got shape {x.shape}")
        return x

    def _noisy(self, abar: float):
        """Means sqrt(abar) mu_k and covariances abar Sigma_k + (1 - abar) I of p_t."""
        if not 0.0 < abar <= 1.0:
            raise ValueError(f"abar must be in (0, 1], got {abar}")
        return math.sqrt(abar) * self.means, abar * self.covs + (1.0 - abar) * np.eye(self.dim)

    def _resp_and_prec(self, x: np.ndarray, abar: float):
        m, C = self._noisy(abar)
        P = np.linalg.inv(C)                                   # [K, D, D]
        d = x[:, None, :] - m[None]                            # [N, K, D]
        maha = np.einsum("nki,kij,nkj->nk", d, P, d)
        logdet = np.linalg.slogdet(C)[1]
        logp = np.log(np.maximum(self.weights, 1e-300)) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return logp, d, P

    def log_prob(self, x, abar: float = 1.0) -> np.ndarray:
        """log p_t(x) of the noised mixture at noise level abar."""
        logp, _, _ = self._resp_and_prec(self._check_x(x), abar)
        mx = logp.max(axis=1, keepdims=True)
        return (mx + np.log(np.exp(logp - mx).sum(axis=1, keepdims=True)))[:, 0]

    def score(self, x, abar: float) -> np.ndarray:
        """grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - sqrt(abar) mu_k), r_k the posterior responsibilities."""
        logp, d, P = self._resp_and_prec(self._check_x(x), abar)
        r = np.exp(logp - logp.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        return -np.einsum("nk,kij,nkj->ni", r, P, d)

    def eps(self, x, abar: float) -> np.ndarray:
        """The exact noise prediction E[eps | x_t] = -sqrt(1 - abar) grad log p_t(x_t) (Song et al. 2021)."""
        return -math.sqrt(1.0 - abar) * self.score(x, abar)

    def x0_mean(self, x, abar: float) -> np.ndarray:
        """Tweedie: E[x0 | x_t] = (x_t + (1 - abar) grad log p_t(x_t)) / sqrt(abar) (Efron 2011)."""
        return (self._check_x(x) + (1.0 - abar) * self.score(x, abar)) / math.sqrt(abar)

    def model(self, schedule: NoiseSchedule):
        """model(x_t: jt.Var, t) -> exact output in schedule.prediction_type (t may be fractional: abar from sigma_at)."""
        from . import runtime
        jt = runtime.setup_jittor()

        def f(x_t, t):
            x = x_t.numpy().astype(np.float64) if hasattr(x_t, "numpy") else np.asarray(x_t, np.float64)
            abar = 1.0 / (1.0 + float(schedule.sigma_at(t)) ** 2)
            eps = self.eps(x, abar)
            a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
            if schedule.prediction_type == "epsilon":
                out = eps
            elif schedule.prediction_type == "sample":
                out = (x - s * eps) / a
            else:
                out = a * eps - s * (x - s * eps) / a
            return jt.array(out.astype(np.float32))
        return f

    def denoiser(self):
        """Exact k-diffusion denoiser D(x, sigma) = E[x0 | x0 + sigma eps = x] in the VE frame, for any sigma > 0."""
        from . import runtime
        jt = runtime.setup_jittor()

        def D(x, sigma):
            abar = 1.0 / (1.0 + float(sigma) ** 2)
            xv = x.numpy().astype(np.float64) if hasattr(x, "numpy") else np.asarray(x, np.float64)
            return jt.array(self.x0_mean(xv * math.sqrt(abar), abar).astype(np.float32))
        return D


def ring_mixture(k: int = 6, radius: float = 0.65, std_radial: float = 0.05, std_tangential: float = 0.15,
                 center_weight: float = 0.0) -> GaussianMixture:
    """k elongated Gaussians on a ring (tangentially stretched), optionally a central one: a 2-D test density."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ang = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    covs = []
    for a in ang:
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        covs.append(R @ np.diag([std_radial ** 2, std_tangential ** 2]) @ R.T)
    w = np.full(k, (1.0 - center_weight) / k)
    if center_weight > 0:
        means = np.vstack([means, [[0.0, 0.0]]])
        covs.append(np.eye(2) * std_radial ** 2)
        w = np.append(w, center_weight)
    return GaussianMixture(w, means, np.array(covs))


def sliced_wasserstein(a, b, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size point clouds: sqrt(mean over directions of W2^2 in 1-D)."""
    a = np.asarray(a.numpy() if hasattr(a, "numpy") and not isinstance(a, np.ndarray) else a, dtype=np.float64)
    b = np.asarray(b.numpy() if hasattr(b, "numpy") and not isinstance(b, np.ndarray) else b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two [N, D] clouds of the same shape, got {a.shape} and {b.shape}")
    theta = np.random.default_rng(seed).standard_normal((n_proj, a.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    pa, pb = np.sort(a @ theta.T, axis=0), np.sort(b @ theta.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def run_sampler_2d(sampler: str = "ddim", steps: int = 20, eta: float = 0.0, n: int = 1000, seed: int = 0,
                   mix: GaussianMixture | None = None, schedule: NoiseSchedule | None = None,
                   n_paths: int = 16, karras: bool = False) -> dict:
    """Sample the mixture with one gdlib sampler from fixed x_T; return samples, exact samples, SWD, NFE and paths.

    paths: [steps + 1, n_paths, 2] trajectories of the first points, in the VP frame x_t (so every sampler is
    drawn on the same axes); x0_hats: [steps, n_paths, 2] the Tweedie estimates seen at each step.
    """
    from . import sampling
    mix = ring_mixture() if mix is None else mix
    schedule = NoiseSchedule() if schedule is None else schedule
    if mix.dim != 2:
        raise ValueError(f"run_sampler_2d draws 2-D mixtures, got dim {mix.dim}")
    if n < 2 or n_paths < 0 or n_paths > n:
        raise ValueError(f"need n >= 2 and 0 <= n_paths <= n, got n={n}, n_paths={n_paths}")
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((n, 2)).astype(np.float32)
    noise_rng = np.random.default_rng(seed + 1)
    noise_fn = lambda shape: noise_rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    paths, x0_hats, nfe = [], [], [0]

    def callback(info):
        nfe[0] += 1
        x = info["x"].numpy()[:n_paths]
        if "sigma" in info:  # VE frame -> VP frame
            x = x / math.sqrt(1.0 + info["sigma"] ** 2)
        paths.append(x)
        x0_hats.append(info["x0_hat"].numpy()[:n_paths])

    out = sampling.sample(sampler, mix.model(schedule), x_T, schedule, steps, eta=eta, karras=karras,
                          callback=callback, noise_fn=noise_fn).numpy()
    paths.append(out[:n_paths])
    exact = mix.sample(n, seed + 2)
    return {"sampler": sampler, "steps": steps, "eta": eta, "nfe": nfe[0], "samples": out, "exact": exact,
            "swd": sliced_wasserstein(out, exact), "paths": np.stack(paths), "x0_hats": np.stack(x0_hats),
            "x_T": x_T}
