"""gdlib.sampling on the exact 2-D mixture: equivalences (DDIM = PF-ODE Euler, DDIM(eta) = Euler-ancestral(eta)),
hooks (callback, x0_transform, noise_fn), convergence, the widget, and bad input."""
import math

import numpy as np
import pytest

from gdlib import runtime
from gdlib import mixture as M
from gdlib import sampling as S
from gdlib.schedules import NoiseSchedule

jt = runtime.setup_jittor()
N = 256  # one shape for every Jittor graph in this file keeps compiles few


@pytest.fixture(scope="module")
def mix():
    return M.ring_mixture()


def x_T(seed=0):
    return np.random.default_rng(seed).standard_normal((N, 2)).astype(np.float32)


def np_noise(seed):
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape).astype(np.float32)


def test_ddim_eta0_is_euler_on_pf_ode(mix):
    """In x_bar = x / sqrt(abar), sigma = sqrt((1-abar)/abar), DDIM(eta=0) is Euler on dx_bar/dsigma = eps."""
    s = NoiseSchedule(timestep_spacing="leading")
    model = mix.model(s)
    ddim = S.sample_ddim(model, x_T(), s, 12).numpy()
    ts, sigmas = s.euler_sigmas(12)
    np.testing.assert_array_equal(ts, s.timesteps(12))
    den = S.Denoiser(model, s, ts, sigmas[:-1])
    euler = S.sample_euler(den, x_T() * math.sqrt(1 + sigmas[0] ** 2), sigmas).numpy()
    np.testing.assert_allclose(ddim, euler, atol=2e-5)
    assert np.abs(ddim - x_T()).max() > 0.1  # it did move


def test_ddim_eta_is_euler_ancestral_eta(mix):
    s = NoiseSchedule()
    model = mix.model(s)
    for eta in (0.5, 1.0):
        ddim = S.sample_ddim(model, x_T(1), s, 8, eta=eta, noise_fn=np_noise(7)).numpy()
        ts, sigmas = s.euler_sigmas(8)
        den = S.Denoiser(model, s, ts, sigmas[:-1])
        anc = S.sample_euler_ancestral(den, x_T(1) * math.sqrt(1 + sigmas[0] ** 2), sigmas, eta=eta,
                                       noise_fn=np_noise(7)).numpy()
        np.testing.assert_allclose(ddim, anc, atol=2e-5)
    det = S.sample_ddim(model, x_T(1), s, 8, eta=0.0).numpy()
    assert np.abs(ddim - det).max() > 0.05  # eta really injects noise


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoiser_wrapper_matches_exact_denoiser(mix, prediction_type):
    """Denoiser(model in any parametrization) = the mixture's exact E[x0 | x0 + sigma eps] at table sigmas."""
    s = NoiseSchedule(prediction_type=prediction_type, beta_schedule="scaled_linear", beta_start=0.00085,
                      beta_end=0.012)
    den, exact = S.Denoiser(mix.model(s), s), mix.denoiser()
    for t in (5, 300, 900):
        sigma = float(s.sigmas_table[t])
        assert den.sigma_to_t(sigma) == t
        x = jt.array(x_T(2) * math.sqrt(1 + sigma ** 2))
        np.testing.assert_allclose(den(x, sigma).numpy(), exact(x, sigma).numpy(), atol=2e-4)


def test_callback_and_x0_transform(mix):
    s = NoiseSchedule()
    model = mix.model(s)
    seen = []
    base = S.sample_ddim(model, x_T(), s, 6, callback=lambda info: seen.append(info)).numpy()
    assert [d["i"] for d in seen] == list(range(6)) and [d["t"] for d in seen] == s.timesteps(6).tolist()
    assert all(tuple(d["x0_hat"].shape) == (N, 2) for d in seen)
    calls = []

    def shift_last(x0_hat, eps_hat, t, i):
        calls.append((t, i))
        return x0_hat + 0.25 if i == 5 else x0_hat

    shifted = S.sample_ddim(model, x_T(), s, 6, x0_transform=shift_last).numpy()
    assert calls == [(int(t), i) for i, t in enumerate(s.timesteps(6))]
    # last step: x_prev = sqrt(abar_prev = 1) x0_hat + 0 * eps_hat, so the shift passes through unchanged
    np.testing.assert_allclose(shifted - base, 0.25, atol=1e-5)
    k_seen = []
    S.sample("dpmpp_2m", model, x_T(), s, 5, callback=k_seen.append)
    assert len(k_seen) == 5 and k_seen[-1]["sigma"] > 0 and "denoised" in k_seen[0]


def test_noise_fn_makes_stochastic_samplers_reproducible(mix):
    s = NoiseSchedule()
    model = mix.model(s)
    a = S.sample_ddpm(model, x_T(), s, 5, noise_fn=np_noise(3)).numpy()
    b = S.sample_ddpm(model, x_T(), s, 5, noise_fn=np_noise(3)).numpy()
    c = S.sample_ddpm(model, x_T(), s, 5, noise_fn=np_noise(4)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_every_sampler_converges_to_the_mixture(mix, sampler):
    """More steps -> closer to exact samples, and at 50 steps within 2x the finite-sample SWD floor."""
    s = NoiseSchedule()
    eta = 1.0 if sampler == "euler_ancestral" else 0.0
    r3 = M.run_sampler_2d(sampler, 3, eta, n=N, seed=0, mix=mix, schedule=s)
    r50 = M.run_sampler_2d(sampler, 50, eta, n=N, seed=0, mix=mix, schedule=s)
    floor = M.sliced_wasserstein(mix.sample(N, 10), mix.sample(N, 11))
    assert r3["nfe"] == 3 and r50["nfe"] == 50 and r50["paths"].shape == (51, 16, 2)
    assert r50["swd"] < r3["swd"]
    assert r50["swd"] < 2.0 * floor + 0.02, (r50["swd"], floor)


def test_sampler_explorer_widget_headless(mix):
    from gdlib import widgets
    ex = widgets.sampler_explorer(n=N)
    ex.controls["sampler"].value = "dpmpp_2m"
    assert ex.error is None and ex.result["sampler"] == "dpmpp_2m" and ex.result["nfe"] == 10
    ex.controls["steps"].value = 4
    assert ex.error is None and ex.result["nfe"] == 4 and ex.result["samples"].shape == (N, 2)
    direct = M.run_sampler_2d("dpmpp_2m", 4, 0.0, n=N, seed=0)
    np.testing.assert_array_equal(ex.result["samples"], direct["samples"])
    ex.controls["sampler"].value = "euler_ancestral"
    ex.controls["eta"].value = 1.0
    assert ex.error is None and ex.result["eta"] == 1.0
    ex.controls["steps"].value = 100
    assert ex.error is None and ex.result["nfe"] == 100


def test_bad_input_raises(mix):
    s = NoiseSchedule()
    model = mix.model(s)
    x = x_T()
    with pytest.raises(ValueError, match="eta must be"):
        S.sample_ddim(model, x, s, 5, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be"):
        S.ddim_step(s, x, 500, x, 10, eta=-1.0)
    with pytest.raises(ValueError, match="larger than num_train_timesteps"):
        S.sample_ddim(model, x, s, 1001)
    with pytest.raises(ValueError, match="model returned shape"):
        S.sample_ddim(lambda x_t, t: jt.zeros((3, 2)), x, s, 5)
    with pytest.raises(ValueError, match="noise_fn returned shape"):
        S.sample_ddpm(model, x, s, 5, noise_fn=lambda shape: np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shapes differ"):
        S.ddim_step(s, np.zeros((4, 2), np.float32), 500, x, 10)
    with pytest.raises(ValueError, match="noise shape"):
        S.ddim_step(s, x, 500, x, 10, eta=1.0, noise=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample("heun", model, x, s, 5)
    with pytest.raises(ValueError, match="non-increasing"):
        S.sample_euler(mix.denoiser(), x, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="not in the"):
        S.ddpm_step(s, x, 123, x, 10)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        mix.eps(np.zeros((4, 3)), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        M.sliced_wasserstein(np.zeros((4, 2)), np.zeros((5, 2)))
