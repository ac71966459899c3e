"""gdlib.schedules / gdlib.sampling against diffusers' schedulers: same timesteps, same steps, same trajectories."""
import math

import numpy as np
import pytest

from gdlib import runtime
from gdlib import sampling as S
from gdlib.schedules import NoiseSchedule

jt = runtime.setup_jittor()
torch = pytest.importorskip("torch", reason="parity extra not installed: pip install -e .[parity]")
diffusers = pytest.importorskip("diffusers", reason="parity extra not installed: pip install -e .[parity]")

pytestmark = pytest.mark.parity

BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}
PRED = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample"}
SD21 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
            set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", clip_sample=False)


def pair(cls, **cfg):
    """A gdlib NoiseSchedule and a diffusers scheduler of class `cls` with the same configuration."""
    cfg = dict(cfg)
    sched = cfg.pop("beta_schedule", "linear")
    b0, b1 = BETAS[sched]
    cfg.setdefault("beta_start", b0)
    cfg.setdefault("beta_end", b1)
    ours = NoiseSchedule(beta_schedule=sched, **cfg)
    dkeys = {"beta_start", "beta_end", "prediction_type", "steps_offset", "timestep_spacing", "sample_max_value"}
    dcfg = {k: v for k, v in cfg.items() if k in dkeys}
    if cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
        dcfg["clip_sample"] = cfg.get("clip_sample", False)
        dcfg["thresholding"] = cfg.get("thresholding", False)
    if cls is diffusers.DDIMScheduler:
        dcfg["set_alpha_to_one"] = cfg.get("set_alpha_to_one", True)
    theirs = cls(beta_schedule=sched, **dcfg)
    return ours, theirs


def fake_model(schedule: NoiseSchedule):
    """A fixed smooth model: x0 = a x - s g, eps = s x + a g, v = g with g = 0.1 sin(1.3 x + t / 250) (a, s at t)."""
    def outputs(x: np.ndarray, t: float):
        abar = 1.0 / (1.0 + float(schedule.sigma_at(t)) ** 2)
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        g = 0.1 * np.sin(1.3 * x + float(t) / 250.0)
        out = {"epsilon": s * x + a * g, "sample": a * x - s * g, "v_prediction": g}[schedule.prediction_type]
        return out.astype(np.float32)

    def jt_model(x, t):
        return jt.array(outputs(x.numpy().astype(np.float64), t))

    def torch_model(x, t):
        return torch.from_numpy(outputs(x.numpy().astype(np.float64), float(t)))
    return jt_model, torch_model


SHAPE = (2, 3, 4, 4)


def randn(seed, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----- tables -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", list(BETAS))
def test_alphas_cumprod_match(beta_schedule):
    ours, theirs = pair(diffusers.DDIMScheduler, beta_schedule=beta_schedule)
    assert ours.alphas_cumprod.dtype == np.float64
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=2e-5, atol=0)
    np.testing.assert_allclose(ours.betas, theirs.betas.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_timesteps_equal_exactly(spacing, steps_offset):
    for n in (1, 7, 50, 333, 1000):
        if steps_offset and spacing == "leading" and n == 1000:
            continue  # diffusers would produce timestep 1000 (out of range); we raise instead
        cfg = dict(timestep_spacing=spacing, steps_offset=steps_offset)
        for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
            ours, theirs = pair(cls, **cfg)
            theirs.set_timesteps(n)
            assert np.array_equal(ours.timesteps(n), theirs.timesteps.numpy()), (cls.__name__, n)
        for cls in (diffusers.EulerDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler):
            ours, theirs = pair(cls, **cfg)
            theirs.set_timesteps(n)
            ts, sig = ours.euler_sigmas(n)
            assert np.array_equal(ts.astype(np.float32), theirs.timesteps.numpy()), (cls.__name__, n)
            np.testing.assert_allclose(sig, theirs.sigmas.numpy(), rtol=1e-5, atol=1e-6)
        if n < 1000:
            ours, theirs = pair(diffusers.DPMSolverMultistepScheduler, **cfg)
            theirs.set_timesteps(n)
            ts, sig = ours.dpm_sigmas(n)
            assert np.array_equal(ts.astype(np.int64), theirs.timesteps.numpy()), n
            np.testing.assert_allclose(sig, theirs.sigmas.numpy(), rtol=1e-5, atol=1e-6)


def test_sd21_timesteps():
    ours = NoiseSchedule.stable_diffusion_2_1()
    ts = ours.timesteps(50)
    assert ts[0] == 981 and ts[1] == 961 and ts[-1] == 1 and len(ts) == 50
    theirs = diffusers.DDIMScheduler(**SD21)
    theirs.set_timesteps(50)
    assert np.array_equal(ts, theirs.timesteps.numpy())


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_karras_sigmas_and_timesteps(beta_schedule):
    """Karras sigmas agree to diffusers' float32 precision: its sigma_0 = sqrt((1 - abar_0) / abar_0) is computed in
    float32, where 1 - abar_0 (about 1e-4) loses up to ~3e-4 relative, which moves the float timesteps
    sigma_to_t derives from them by up to 1.5e-4 relative; our tables are exact float64."""
    b0, b1 = BETAS[beta_schedule]
    ours = NoiseSchedule(beta_schedule=beta_schedule, beta_start=b0, beta_end=b1, timestep_spacing="linspace")
    eul = diffusers.EulerDiscreteScheduler(beta_schedule=beta_schedule, beta_start=b0, beta_end=b1,
                                           use_karras_sigmas=True)
    eul.set_timesteps(12)
    ts, sig = ours.euler_sigmas(12, karras=True)
    np.testing.assert_allclose(sig, eul.sigmas.numpy(), rtol=5e-4, atol=1e-6)
    np.testing.assert_allclose(ts, eul.timesteps.numpy(), rtol=3e-4, atol=2e-3)
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule=beta_schedule, beta_start=b0, beta_end=b1,
                                                use_karras_sigmas=True)
    dpm.set_timesteps(12)
    ts, sig = ours.dpm_sigmas(12, karras=True)
    np.testing.assert_allclose(sig, dpm.sigmas.numpy(), rtol=5e-4, atol=1e-6)
    np.testing.assert_allclose(ts, dpm.timesteps.numpy(), rtol=3e-4, atol=2e-3)


# ----- one step -----------------------------------------------------------------------------------------
STEP_CASES = [(b, p, sp) for b, sp in zip(BETAS, ["leading", "trailing", "linspace"]) for p in PRED]


@pytest.mark.parametrize("beta_schedule,prediction,spacing", STEP_CASES)
def test_ddim_and_ddpm_single_steps(beta_schedule, prediction, spacing):
    n = 10
    for eta in (0.0, 0.7):
        for set_one in (True, False):
            ours, theirs = pair(diffusers.DDIMScheduler, beta_schedule=beta_schedule, prediction_type=prediction,
                                timestep_spacing=spacing, set_alpha_to_one=set_one)
            theirs.set_timesteps(n)
            ts = ours.timesteps(n)
            for k in (0, n // 2, n - 1):
                t = int(ts[k])
                out, x, z = randn(1), randn(2), randn(3)
                ref = theirs.step(torch.from_numpy(out), t, torch.from_numpy(x), eta=eta,
                                  variance_noise=torch.from_numpy(z))
                x_prev, x0 = S.ddim_step(ours, jt.array(out), t, jt.array(x), n, eta=eta, noise=jt.array(z))
                np.testing.assert_allclose(x_prev.numpy(), ref.prev_sample.numpy(), atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(x0.numpy(), ref.pred_original_sample.numpy(), atol=1e-5, rtol=1e-5)
    ours, theirs = pair(diffusers.DDPMScheduler, beta_schedule=beta_schedule, prediction_type=prediction,
                        timestep_spacing=spacing)
    theirs.set_timesteps(n)
    for k in (0, n // 2, n - 1):
        t = int(ours.timesteps(n)[k])
        out, x = randn(4), randn(5)
        gen = torch.Generator().manual_seed(k)
        ref = theirs.step(torch.from_numpy(out), t, torch.from_numpy(x), generator=gen)
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(k)).numpy()
        x_prev, x0 = S.ddpm_step(ours, jt.array(out), t, jt.array(x), n, noise=jt.array(z))
        np.testing.assert_allclose(x_prev.numpy(), ref.prev_sample.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(x0.numpy(), ref.pred_original_sample.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["clip", "threshold"])
def test_ddim_step_clip_and_dynamic_thresholding(mode):
    flags = {"clip_sample": True} if mode == "clip" else {"thresholding": True, "sample_max_value": 1.5}
    ours, theirs = pair(diffusers.DDIMScheduler, prediction_type="sample", **flags)
    assert theirs.config.sample_max_value == ours.sample_max_value
    theirs.set_timesteps(5)
    out, x = 2.0 * randn(6), randn(7)
    t = int(ours.timesteps(5)[1])
    ref = theirs.step(torch.from_numpy(out), t, torch.from_numpy(x))
    x_prev, x0 = S.ddim_step(ours, out, t, x, 5)
    np.testing.assert_allclose(x0.numpy(), ref.pred_original_sample.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_prev.numpy(), ref.prev_sample.numpy(), atol=1e-5, rtol=1e-5)
    assert np.abs(x0.numpy()).max() <= 1.0 + 1e-6 and np.abs(out).max() > 1.5  # it did clip


# ----- whole trajectories with a fixed fake model -------------------------------------------------------
def run_diffusers(theirs, torch_model, x_T, n, noise_seed=None, **step_kw):
    theirs.set_timesteps(n)
    gen = torch.Generator().manual_seed(noise_seed) if noise_seed is not None else None
    x = torch.from_numpy(x_T) * theirs.init_noise_sigma
    for t in theirs.timesteps:
        inp = theirs.scale_model_input(x, t)
        out = torch_model(inp, t)
        kw = dict(step_kw)
        if gen is not None:
            kw["generator"] = gen
        x = theirs.step(out, t, x, **kw).prev_sample
    return x.numpy()


def torch_noise_fn(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: jt.array(torch.randn(shape, generator=gen).numpy())


TRAJ_CONFIGS = [dict(beta_schedule="linear", prediction_type="epsilon", timestep_spacing="leading"),
                dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="trailing"),
                dict(SD21)]


@pytest.mark.parametrize("cfg", TRAJ_CONFIGS, ids=["linear-eps-leading", "cos-sample-trailing", "sd21-v"])
def test_ddim_ddpm_trajectories(cfg):
    n, x_T = 8, randn(11)
    for eta in (0.0, 1.0):
        ours, theirs = pair(diffusers.DDIMScheduler, **cfg)
        jm, tm = fake_model(ours)
        ref = run_diffusers(theirs, tm, x_T, n, noise_seed=5 if eta else None, eta=eta)
        got = S.sample_ddim(jm, x_T, ours, n, eta=eta, noise_fn=torch_noise_fn(5))
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-4, rtol=1e-4)
    ours, theirs = pair(diffusers.DDPMScheduler, **{k: v for k, v in cfg.items() if k != "set_alpha_to_one"})
    jm, tm = fake_model(ours)
    ref = run_diffusers(theirs, tm, x_T, n, noise_seed=9)
    got = S.sample_ddpm(jm, x_T, ours, n, noise_fn=torch_noise_fn(9))
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4, rtol=1e-4)


K_CONFIGS = [dict(beta_schedule="linear", prediction_type="epsilon", timestep_spacing="linspace"),
             # trailing would start the cosine schedule at sigma_max = 2e4, where float32 has no digits left
             dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", timestep_spacing="leading"),
             dict(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="leading",
                  steps_offset=1)]


@pytest.mark.parametrize("cfg", K_CONFIGS, ids=["linear-eps-linspace", "cos-eps-leading", "sd-v-leading"])
def test_k_samplers_trajectories(cfg):
    """Euler, Euler-ancestral and DPM-Solver++(2M) from the same x_T: our k-style samplers vs diffusers' schedulers."""
    n, x_T = 8, randn(12)
    for name, cls in [("euler", diffusers.EulerDiscreteScheduler),
                      ("euler_ancestral", diffusers.EulerAncestralDiscreteScheduler),
                      ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler)]:
        ours, theirs = pair(cls, **cfg)
        jm, tm = fake_model(ours)
        theirs.set_timesteps(n)
        # diffusers starts at init_noise_sigma * x_T in its own frame; express that start in ours.
        if name == "dpmpp_2m":
            ts, sigmas = ours.dpm_sigmas(n)
            x0_ref = run_diffusers(theirs, tm, x_T, n)
            x_start = x_T * math.sqrt(1 + sigmas[0] ** 2)
        else:
            ts, sigmas = ours.euler_sigmas(n)
            x0_ref = run_diffusers(theirs, tm, x_T, n, noise_seed=3 if name == "euler_ancestral" else None)
            x_start = x_T * float(theirs.init_noise_sigma)
        den = S.Denoiser(jm, ours, ts, sigmas[:-1])
        if name == "euler":
            got = S.sample_euler(den, x_start, sigmas)
        elif name == "euler_ancestral":
            got = S.sample_euler_ancestral(den, x_start, sigmas, eta=1.0, noise_fn=torch_noise_fn(3))
        else:
            got = S.sample_dpmpp_2m(den, x_start, sigmas)
        np.testing.assert_allclose(got.numpy(), x0_ref, atol=1e-4, rtol=1e-4, err_msg=name)
