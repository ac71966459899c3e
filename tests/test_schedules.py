"""gdlib.schedules: tables, spacing, prediction conversions, Tweedie, clipping, bad input (no torch needed)."""
import math

import numpy as np
import pytest

from gdlib import runtime
from gdlib import schedules as sch
from gdlib.schedules import NoiseSchedule

jt = runtime.setup_jittor()


def test_tables_and_cosine_definition():
    s = NoiseSchedule()
    assert s.alphas_cumprod.dtype == np.float64 and s.alphas_cumprod.shape == (1000,)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    c = NoiseSchedule(beta_schedule="squaredcos_cap_v2")
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # before the 0.999 cap bites, abar_t telescopes to f((t+1)/T) / f(0)
    np.testing.assert_allclose(c.alphas_cumprod[:900], [f((t + 1) / 1000) / f(0) for t in range(900)], rtol=1e-9)
    assert c.betas.max() == pytest.approx(0.999)
    sl = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert sl.betas[0] == pytest.approx(0.00085) and sl.betas[-1] == pytest.approx(0.012)
    assert np.sqrt(sl.betas)[1] - np.sqrt(sl.betas)[0] == pytest.approx(np.sqrt(sl.betas)[-1] - np.sqrt(sl.betas)[-2])


def test_spacings():
    lead = NoiseSchedule(timestep_spacing="leading")
    assert lead.timesteps(10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    trail = NoiseSchedule(timestep_spacing="trailing")
    assert trail.timesteps(10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    lin = NoiseSchedule(timestep_spacing="linspace")
    assert lin.timesteps(4).tolist() == [999, 666, 333, 0]
    assert lead.timesteps(1000).tolist() == list(range(999, -1, -1))
    sd = NoiseSchedule.stable_diffusion_2_1()
    ts = sd.timesteps(50)
    assert ts.tolist() == list(range(981, 0, -20))
    assert sd.final_alpha_cumprod == sd.alphas_cumprod[0] and lead.final_alpha_cumprod == 1.0
    assert lead.ddim_prev_timestep(100, 10) == 0 and lin.ddim_prev_timestep(333, 4) == 83


def test_euler_sigmas_and_inverse():
    s = NoiseSchedule(timestep_spacing="linspace")
    ts, sig = s.euler_sigmas(7)
    assert sig[-1] == 0 and len(sig) == 8 and np.all(np.diff(sig) < 0)
    assert sig[0] == pytest.approx(s.sigmas_table[-1])
    np.testing.assert_allclose(s.sigma_to_t(s.sigmas_table[[0, 10, 500, 999]]), [0, 10, 500, 999], atol=1e-9)
    k = sch.get_sigmas_karras(5, 0.1, 10.0)
    assert k[0] == pytest.approx(10.0) and k[-2] == pytest.approx(0.1) and k[-1] == 0 and len(k) == 6
    # rho = 1 is a straight line
    np.testing.assert_allclose(sch.get_sigmas_karras(5, 1.0, 5.0, rho=1.0)[:-1], [5, 4, 3, 2, 1])


@pytest.mark.parametrize("prediction_type", sch.PREDICTION_TYPES)
def test_prediction_conversions_roundtrip(prediction_type):
    s = NoiseSchedule(prediction_type=prediction_type)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((3, 2, 5)), rng.standard_normal((3, 2, 5))
    for t in (0, 250, 999):
        x_t = s.add_noise(x0, eps, t)
        out = s.from_x0_eps(x0, eps, x_t, t)
        x0_hat, eps_hat = s.to_x0_eps(out, x_t, t)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-6 if t < 999 else 1e-4)
        np.testing.assert_allclose(eps_hat, eps, atol=1e-6)
    # the same on jt.Var float32
    xv, ev = jt.array(x0.astype(np.float32)), jt.array(eps.astype(np.float32))
    x_t = s.add_noise(xv, ev, 500)
    x0_hat, eps_hat = s.to_x0_eps(s.from_x0_eps(xv, ev, x_t, 500), x_t, 500)
    np.testing.assert_allclose(x0_hat.numpy(), x0, atol=1e-5)
    np.testing.assert_allclose(eps_hat.numpy(), eps, atol=1e-5)


def test_velocity_and_per_sample_timesteps():
    s = NoiseSchedule()
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    t = np.array([0, 10, 500, 999])
    x_t, v = s.add_noise(x0, eps, t), s.velocity(x0, eps, t)
    a = np.sqrt(s.alphas_cumprod[t])[:, None]
    np.testing.assert_allclose(x_t, a * x0 + np.sqrt(1 - a ** 2) * eps)
    np.testing.assert_allclose(a * x_t - np.sqrt(1 - a ** 2) * v, x0, atol=1e-12)  # x0 from v
    np.testing.assert_allclose(a * v + np.sqrt(1 - a ** 2) * x_t, eps, atol=1e-12)  # eps from v


def test_tweedie_is_posterior_mean_for_gaussian_data():
    """For x0 ~ N(m, c^2 I): E[x0|x_t] = m + c^2 sqrt(abar) (x_t - sqrt(abar) m) / (abar c^2 + 1 - abar)."""
    m, c, abar = 0.3, 0.5, 0.4
    x_t = np.linspace(-2, 2, 9)
    var_t = abar * c ** 2 + 1 - abar
    score = -(x_t - math.sqrt(abar) * m) / var_t
    eps_exact = -math.sqrt(1 - abar) * score
    x0_post = m + c ** 2 * math.sqrt(abar) * (x_t - math.sqrt(abar) * m) / var_t
    np.testing.assert_allclose(sch.tweedie_x0(eps_exact, x_t, abar), x0_post, atol=1e-12)
    np.testing.assert_allclose(sch.score_from_eps(eps_exact, abar), score, atol=1e-12)


def test_clip_and_dynamic_threshold():
    x = np.array([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.9]], dtype=np.float32)
    np.testing.assert_allclose(sch.clip(x), np.clip(x, -1, 1))
    y = sch.dynamic_threshold(x, ratio=1.0, max_value=2.5)
    # row 0: s = clamp(max|x| = 3, 1, 2.5) = 2.5 -> clamp to [-2.5, 2.5] then / 2.5 ; row 1: s = 1, unchanged
    np.testing.assert_allclose(y[0], np.clip(x[0], -2.5, 2.5) / 2.5, rtol=1e-6)
    np.testing.assert_allclose(y[1], x[1])
    yj = sch.dynamic_threshold(jt.array(x), ratio=1.0, max_value=2.5)
    np.testing.assert_allclose(yj.numpy(), y)
    s = NoiseSchedule(clip_sample=True)
    assert np.abs(s.process_x0(x)).max() == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_schedule="cosine"), "beta_schedule"),
    (dict(timestep_spacing="uniform"), "timestep_spacing"),
    (dict(prediction_type="x0"), "prediction_type"),
    (dict(beta_start=0.5, beta_end=1.5), "betas must lie"),
    (dict(steps_offset=-1), "steps_offset"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)


def test_bad_calls_raise():
    s = NoiseSchedule()
    with pytest.raises(ValueError, match="larger than num_train_timesteps"):
        s.timesteps(1001)
    with pytest.raises(ValueError, match="positive integer"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="pushes timestep"):
        NoiseSchedule(steps_offset=1).timesteps(1000)
    with pytest.raises(ValueError, match="shapes differ"):
        s.add_noise(np.zeros((2, 3)), np.zeros((3, 2)), 5)
    with pytest.raises(ValueError, match="timesteps must lie"):
        s.add_noise(np.zeros((2, 3)), np.zeros((2, 3)), 1000)
    with pytest.raises(ValueError, match="shapes differ"):
        s.to_x0_eps(np.zeros((2, 3)), np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        sch.get_sigmas_karras(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="batch axis"):
        sch.dynamic_threshold(np.zeros(5))


@pytest.mark.parametrize("prediction_type", sch.PREDICTION_TYPES)
def test_per_sample_timesteps_for_training(prediction_type):
    """A training batch has one t per sample: target and inversion broadcast over [B, C, H, W] (numpy and jt.Var)."""
    s = NoiseSchedule(prediction_type=prediction_type)
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    t = np.array([3, 400, 990])
    x_t = s.add_noise(x0, eps, t)
    target = s.training_target(x0, eps, t)
    for b in range(3):  # each sample equals the scalar-t computation
        np.testing.assert_allclose(target[b], s.training_target(x0[b:b + 1], eps[b:b + 1], int(t[b]))[0], atol=1e-12)
    x0_hat, eps_hat = s.to_x0_eps(target, x_t, t)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-8)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-8)
    tj = jt.array(t.astype(np.int32))
    x0j, epsj = jt.array(x0.astype(np.float32)), jt.array(eps.astype(np.float32))
    x_tj = s.add_noise(x0j, epsj, tj)
    x0_hat_j, _ = s.to_x0_eps(s.training_target(x0j, epsj, tj), x_tj, tj)
    np.testing.assert_allclose(x_tj.numpy(), x_t, atol=1e-5)
    np.testing.assert_allclose(x0_hat_j.numpy(), x0, atol=1e-4)  # float32; 1/sqrt(abar_990) ~ 140 amplifies round-off
