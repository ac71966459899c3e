"""Flow matching on the exact Gaussian mixture: path and target, the exact marginal velocity against Monte Carlo,
conversions from eps / v predictions, samplers, and the same marginals as the probability-flow ODE."""
import math

import numpy as np
import pytest

from gdlib import flow, mixture as M


@pytest.fixture(scope="module")
def mix():
    return M.ring_mixture()


def test_path_target_and_conversions_agree(mix):
    rng = np.random.default_rng(0)
    x0, eps = mix.sample(5, 1), rng.standard_normal((5, 2))
    t, h = 0.37, 1e-6
    num = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t - h)) / (2 * h)
    np.testing.assert_allclose(num, flow.velocity_target(x0, eps), atol=1e-8)
    x_t = flow.interpolate(x0, eps, t)
    r, abar = flow.vp_scale(t)
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    np.testing.assert_allclose(x_t / r, a * x0 + s * eps, atol=1e-12)             # a VP point at abar(t)
    u = eps - x0
    np.testing.assert_allclose(flow.velocity_from_eps(x_t, eps, t), u, atol=1e-12)
    np.testing.assert_allclose(flow.velocity_from_x0(x_t, x0, t), u, atol=1e-12)
    np.testing.assert_allclose(flow.velocity_from_v(x_t, a * eps - s * x0, t), u, atol=1e-12)


def test_exact_velocity_is_the_posterior_mean_of_eps_minus_x0(mix):
    t = 0.6
    x_q = np.array([[0.3, 0.1], [-0.4, 0.6], [0.0, -0.8]])
    u = flow.mixture_velocity(mix)(x_q, t)
    prior = mix.sample(400_000, 3)
    # p(x0 | x_t) ~ p(x0) N(x_t; (1 - t) x0, t^2 I): importance weights, then E[(x_t - (1 - t) x0) / t - x0]
    logw = -((x_q[:, None, :] - (1 - t) * prior[None]) ** 2).sum(-1) / (2 * t ** 2)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    x0_mc = w @ prior
    u_mc = (x_q - (1 - t) * x0_mc) / t - x0_mc
    assert np.abs(u - u_mc).max() < 0.03


def test_the_flow_ode_carries_the_pf_ode_marginals(mix):
    n = 2000
    floor = M.sliced_wasserstein(mix.sample(n, 100), mix.sample(n, 101))
    x1 = np.random.default_rng(5).standard_normal((n, 2))
    u = flow.mixture_velocity(mix)
    heun = flow.sample_heun_flow(u, x1, flow.flow_timesteps(40))
    assert M.sliced_wasserstein(heun, mix.sample(n, 7)) < 2 * floor
    # stopped half-way, the flow's points, moved to the VP frame, are distributed as p_t of the diffusion
    t_mid = 0.5
    ts = np.linspace(1.0, t_mid, 41)
    x_mid = flow.sample_heun_flow(u, x1, ts)
    r, abar = flow.vp_scale(t_mid)
    noisy = math.sqrt(abar) * mix.sample(n, 8) + math.sqrt(1 - abar) * np.random.default_rng(9).standard_normal((n, 2))
    floor_mid = M.sliced_wasserstein(noisy, math.sqrt(abar) * mix.sample(n, 10)
                                     + math.sqrt(1 - abar) * np.random.default_rng(11).standard_normal((n, 2)))
    assert M.sliced_wasserstein(x_mid / r, noisy) < 2.5 * floor_mid
    # per step, the second-order corrector is more accurate (at equal model calls it is not, here: its last step to
    # t = 0 must be an Euler step, and with few steps that step is long)
    for k in (3, 5):
        err_euler = M.sliced_wasserstein(flow.sample_euler_flow(u, x1, flow.flow_timesteps(k)), mix.sample(n, 7))
        err_heun = M.sliced_wasserstein(flow.sample_heun_flow(u, x1, flow.flow_timesteps(k)), mix.sample(n, 7))
        assert err_heun < err_euler, (k, err_heun, err_euler)


def test_timesteps_and_errors():
    ts = flow.flow_timesteps(4, shift=3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
    assert ts[2] > 0.5                                   # shift > 1 keeps more of the path at high noise
    with pytest.raises(ValueError):
        flow.flow_timesteps(0)
    with pytest.raises(ValueError):
        flow.velocity_from_x0(np.zeros(2), np.zeros(2), 0.0)


def test_posterior_mean_matches_tweedie_at_the_vp_point(mix):
    x = np.array([[0.2, -0.3], [1.0, 0.4]])
    for t in (0.2, 0.5, 0.8):
        r, abar = flow.vp_scale(t)
        np.testing.assert_allclose(flow.mixture_posterior_x0(mix, x, t), mix.x0_mean(x / r, abar), atol=1e-9)
