"""RB-Modulation control, its sampler integration (DDIM, DDPM, CFG), AFA, and the guidance widget."""
import math

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import guidance, sampling, style  # noqa: E402
from gdlib.guidance import RBConfig  # noqa: E402
from gdlib.schedules import NoiseSchedule  # noqa: E402


def tiny_model(seed: int = 0):
    """A small random text-to-image model (16 px) whose zero-initialised output layers are randomised."""
    from gdlib.models.config import TextConfig, UNetConfig
    from gdlib.pipeline import TextToImage

    jt.set_global_seed(seed)
    text = TextConfig(width=32, layers=1, heads=2)
    unet = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), attn_resolutions=(4,),
                      self_attn_resolutions=(4,), heads=2, groups=4, context_dim=32)
    m = TextToImage.from_toyworld(unet=unet, text=text)
    rng = np.random.default_rng(seed)
    for p in m.unet.parameters():
        if float(np.abs(p.numpy()).max()) == 0.0:
            p.assign(jt.array((0.05 * rng.standard_normal(p.shape)).astype(np.float32)))
    return m


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def ref_image(style_name: str = "mosaic", size: int = 16):
    from gdlib import toyworld
    return toyworld.to_float(toyworld.render("cat", style_name, 3, size=size))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_iter"):
        RBConfig(num_iter=-1)
    with pytest.raises(ValueError, match="eta"):
        RBConfig(eta=float("nan"))
    with pytest.raises(ValueError, match="tau"):
        RBConfig(tau=1.5)


def test_learning_rate_decays_linearly():
    assert guidance.learning_rate(0.1, 0, 20) == pytest.approx(0.1)
    assert guidance.learning_rate(0.1, 10, 20) == pytest.approx(0.05)
    assert guidance.learning_rate(0.1, 19, 20) == pytest.approx(0.005)


def test_adam_update_matches_numpy():
    rng = np.random.default_rng(0)
    z, g = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    m, v = np.zeros_like(z), np.zeros_like(z)
    zj, mj, vj = jt.array(z), jt.array(m), jt.array(v)
    for k in (1, 2):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        z = z - 0.05 * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
        zj, mj, vj = guidance.adam_update(zj, jt.array(g), mj, vj, k, 0.05)
    np.testing.assert_allclose(zj.numpy(), z, rtol=1e-5, atol=1e-6)


def test_first_control_step_is_signed_style_gradient():
    """With one Adam step from z = x0_hat the alignment gradient is 0, so z - x0_hat = -lr sign(grad style)."""
    psi = style.GramDescriptor()
    x0 = jt.array(np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    ref = jt.array(ref_image())
    psi_ref = guidance.reference_embedding(psi, ref)
    cfg = RBConfig(num_iter=1, eta=0.1, lam_style=1.0)   # g below is the unweighted style gradient
    z, info = guidance.rb_control(x0, psi, psi_ref, 5, 20, cfg)
    x = x0.detach()
    g = jt.grad(guidance.cosine_style_loss(psi(x), psi_ref), x).numpy()
    lr = 0.1 * (1 - 5 / 20)
    expect = x0.numpy() - lr * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(z.numpy(), expect, atol=1e-5)
    assert info["active"] and info["lr"] == pytest.approx(lr)


def test_control_lowers_style_loss_and_respects_tau_and_no_grad():
    psi = style.GramDescriptor()
    x0 = jt.array(np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    psi_ref = guidance.reference_embedding(psi, jt.array(ref_image()))
    with jt.no_grad():  # the samplers run the model without gradients; the control must still work
        z, info = guidance.rb_control(x0, psi, psi_ref, 0, 10, RBConfig(num_iter=3, eta=0.05, lam_align=0.0))
    assert info["style_after"] < info["style_before"]
    assert float(np.abs(z.numpy() - x0.numpy()).max()) > 0.01
    z2, info2 = guidance.rb_control(x0, psi, psi_ref, 4, 10, RBConfig(tau=4))
    assert not info2["active"]
    np.testing.assert_array_equal(z2.numpy(), x0.numpy())
    z3, _ = guidance.rb_control(x0, psi, psi_ref, 0, 10, RBConfig(lam_style=0.0, lam_align=1.0))
    np.testing.assert_allclose(z3.numpy(), x0.numpy(), atol=1e-7)  # zero gradient: Adam does not move


def test_content_loss_needs_a_function():
    psi = style.GramDescriptor()
    x0 = jt.array(np.zeros((1, 3, 16, 16), np.float32))
    psi_ref = guidance.reference_embedding(psi, jt.array(ref_image()))
    with pytest.raises(ValueError, match="content_fn"):
        guidance.rb_control(x0, psi, psi_ref, 0, 10, RBConfig(lam_content=1.0))
    target = jt.array(np.full((1, 3, 16, 16), 0.5, np.float32))
    z, _ = guidance.rb_control(x0, psi, psi_ref, 0, 10, RBConfig(lam_style=0.0, lam_align=0.0, lam_content=1.0),
                               content_fn=lambda z: ((z - target) ** 2).mean())
    assert float(z.numpy().mean()) > 0.2  # moved toward the content target


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampler_step_uses_same_eps_and_adds_the_control(kind):
    """x_1(guided) - x_1(unguided) = effective_control(z, x0_hat): same x_t, same eps_hat, same noise."""
    sched = NoiseSchedule(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=True)
    rng = np.random.default_rng(3)
    x_T = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    W = jt.array(rng.standard_normal((3, 3)).astype(np.float32) * 0.3)

    def model(x, t):
        return jt.matmul(W, x.reshape(2, 3, -1)).reshape(x.shape) + 0.01 * t / 1000.0

    rb = guidance.RBModulation(style.GramDescriptor(), ref_image(), 3, RBConfig(num_iter=2, eta=0.05))
    seen = {}

    def run(guided: bool):
        states = {}

        def transform(x0_hat, eps_hat, t, i):
            if guided and i == 0:
                z = rb(x0_hat, eps_hat, t, i)
                seen.update(x0=x0_hat.numpy(), z=z.numpy(), t=t)
                return z
            return x0_hat

        def cb(info):
            states[info["i"]] = (info["x"].numpy(), info["t"])
        fn = sampling.sample_ddim if kind == "ddim" else sampling.sample_ddpm
        kw = {"eta": 0.0} if kind == "ddim" else {}
        fn(model, jt.array(x_T), sched, 3, noise_fn=lambda s: noise, x0_transform=transform, callback=cb, **kw)
        return states

    g, p = run(True), run(False)
    prev_t = g[1][1]
    u = guidance.effective_control(sched, kind, seen["t"], prev_t, seen["z"], seen["x0"]).numpy()
    assert float(np.abs(u).max()) > 1e-4
    np.testing.assert_allclose(g[1][0] - p[1][0], u, atol=2e-5)


def test_afa_with_own_reference_is_identity_and_restores(model):
    """If the reference K/V equal the sample's own, every AFA branch equals plain attention."""
    unet = model.unet
    x = jt.array(np.random.default_rng(4).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    ctx = model.encode(["a mosaic painting of a cat"])
    with jt.no_grad():
        plain = unet(x, 500, ctx).numpy()
        names_before = sorted(n for n, _ in unet.named_modules())
        with guidance.afa_enabled(unet) as names:
            assert names and all(n.endswith("attn1") for n in names)
            guidance.set_afa_mode(unet, "record")
            rec = unet(x, 500, ctx).numpy()
            guidance.set_afa_mode(unet, "aggregate")
            same = unet(x, 500, ctx).numpy()
            guidance.set_afa_mode(unet, "record")
            unet(jt.array(ref_image()), 500, ctx).sync()
            guidance.set_afa_mode(unet, "aggregate")
            other = unet(x, 500, ctx).numpy()
            guidance.set_afa_mode(unet, "off")
        assert sorted(n for n, _ in unet.named_modules()) == names_before
        after = unet(x, 500, ctx).numpy()
    np.testing.assert_allclose(rec, plain, atol=1e-5)
    np.testing.assert_allclose(same, plain, atol=1e-4)
    np.testing.assert_allclose(after, plain, atol=1e-6)
    assert float(np.abs(other - plain).max()) > 1e-4


def test_afa_errors(model):
    with pytest.raises(ValueError, match="no attention module"):
        guidance.inject_afa(model.unet, targets=("nope",))
    with pytest.raises(ValueError, match="inject_afa"):
        guidance.afa_model(model.unet, model.schedule, lambda x, t: x, ref_image(), None, ref_image())
    with guidance.afa_enabled(model.unet):
        with pytest.raises(ValueError, match="already"):
            guidance.inject_afa(model.unet)
        guidance.set_afa_mode(model.unet, "aggregate")
        x = jt.array(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(ValueError, match="record"):
            model.unet(x, 10, model.encode([""]))
        guidance.set_afa_mode(model.unet, "off")


@pytest.mark.parametrize("sampler,afa", [("ddim", False), ("ddpm", True)])
def test_stylize_runs_and_control_changes_images(model, sampler, afa):
    kw = dict(num_inference_steps=3, guidance_scale=2.0, sampler=sampler, seed=0)
    ref = ref_image()
    plain = guidance.stylize(model, ["a cat", "a boat"], ref, control=False, **kw)
    guided, hist = guidance.stylize(model, ["a cat", "a boat"], ref, psi="gram", afa=afa,
                                    config=RBConfig(num_iter=2, eta=0.1, tau=2), return_history=True, **kw)
    again = guidance.stylize(model, ["a cat", "a boat"], ref, control=False, **kw)
    assert guided.shape == plain.shape == (2, 3, 16, 16) and guided.dtype == np.float32
    np.testing.assert_allclose(plain, again, atol=1e-6)  # deterministic given the seed
    assert float(np.abs(guided - plain).mean()) > 1e-3
    assert [h["active"] for h in hist[0]] == [True, True, False]  # tau = 2 of 3 steps


def test_stylize_bad_input(model):
    with pytest.raises(ValueError, match="x_ref"):
        guidance.stylize(model, ["a cat"], np.zeros((1, 3, 32, 32), np.float32), num_inference_steps=2)
    with pytest.raises(ValueError, match="sampler"):
        guidance.stylize(model, ["a cat"], ref_image(), sampler="euler")
    with pytest.raises(ValueError, match="descriptor"):
        guidance.stylize(model, ["a cat"], ref_image(), psi="clip")


def test_guidance_widget_headless(model):
    from gdlib import widgets

    ex = widgets.rb_explorer(model, ["a cat", "a boat"], ref_image(), psis={"gram": style.GramDescriptor()},
                             num_inference_steps=2, guidance_scale=2.0)
    ex.controls["num_iter"].value = 0
    assert ex.error is None, ex.error
    base = ex.result["images"].copy()
    ex.controls["num_iter"].value = 2
    ex.controls["lam_style"].value = 5.0
    assert ex.error is None, ex.error
    assert ex.result["images"].shape == (2, 3, 16, 16)
    assert float(np.abs(ex.result["images"] - base).mean()) > 1e-3
    assert math.isfinite(ex.result["style_loss_last"])
    ex.controls["tau"].value = 0  # no controlled step: back to the unguided images
    assert ex.error is None
    np.testing.assert_allclose(ex.result["images"], base, atol=1e-6)
