"""gdlib.adapters and gdlib.kernels.dora without PyTorch: definitions (spec dora.md), merge, io, analysis."""
import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from gdlib import adapters  # noqa: E402
from gdlib.kernels import kernels_enabled  # noqa: E402
from gdlib.kernels.dora import FUSED_MIN_NUMEL, dora_scale, dora_scale_fused, dora_scale_reference  # noqa: E402

D, C = 8, 4
ALL = ("to_q", "to_k", "to_v", "to_out", "conv")


class Block(nn.Module):
    """Attention-like names as in diffusers (to_out is a container whose item 0 is the Linear) plus a conv."""

    def __init__(self, groups=1):
        self.to_q = nn.Linear(D, D)
        self.to_k = nn.Linear(D, D, bias=False)
        self.to_v = nn.Linear(D, D)
        self.to_out = nn.Sequential(nn.Linear(D, D), nn.Dropout(0.0))
        self.conv = nn.Conv2d(C, C, 3, padding=1, groups=groups)
        self.norm = nn.LayerNorm(D)

    def execute(self, x, img):
        h = self.to_q(self.norm(x)) + self.to_k(x) * self.to_v(x)
        return self.to_out(h), self.conv(img)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return jt.array(rng.standard_normal((2, 3, D)).astype(np.float32)), \
        jt.array(rng.standard_normal((2, C, 6, 6)).astype(np.float32))


def _outputs(m, x, img):
    return [o.numpy() for o in m(x, img)]


def _twin(src, seed=None):
    """A Block with src's base weights (or fresh random ones when seed is given)."""
    m = Block()
    if seed is None:
        m.load_parameters({k: v.numpy() for k, v in src.state_dict().items()})
    return m


def _perturb(model, seed=1):
    """Move every adapter off its zero start so that all terms of the forward matter."""
    rng = np.random.default_rng(seed)
    for layer in adapters.adapted_layers(model).values():
        layer.lora_B.update(jt.array(0.3 * rng.standard_normal(layer.lora_B.shape).astype(np.float32)))
        if layer.magnitude is not None:
            m = layer.magnitude.numpy()
            layer.magnitude.update(jt.array((m * (1 + 0.2 * rng.standard_normal(m.shape))).astype(np.float32)))


def _explicit_weight(layer, detach=True):
    """W' from the definitions in specs/dora.md, written out independently of the layer's code."""
    w, s = layer.base.weight, layer.scaling
    out, r = w.shape[0], layer.rank
    v = w + (s * jt.matmul(layer.lora_B.reshape(out, r), layer.lora_A.reshape(r, -1))).reshape(w.shape)
    if layer.kind == "lora":
        return v
    if layer.kind == "dora":
        n = jt.sqrt((v.reshape(out, -1) ** 2).sum(1))
        n = n.detach() if detach else n
        return v * (layer.magnitude / n).reshape([-1] + [1] * (len(w.shape) - 1))
    wd = w.detach()
    n_col = jt.sqrt((wd * wd).sum([0] + list(range(2, len(w.shape)))))
    return v * (layer.magnitude / n_col).reshape([1, -1] + [1] * (len(w.shape) - 2))


def _explicit_forward(layer, x, detach=True):
    w = _explicit_weight(layer, detach)
    b = layer.base
    if len(w.shape) == 2:
        y = nn.matmul_transpose(x, w)
        return y if b.bias is None else y + b.bias
    return nn.conv2d(x, w, b.bias, b.stride, b.padding, b.dilation, 1)


# --- injection ------------------------------------------------------------------------------------------------
def test_inject_by_name_adapts_to_out_item_zero_and_freezes_the_rest():
    m = Block()
    names = adapters.inject(m, kind="dora")
    assert sorted(names) == ["to_k", "to_out.0", "to_q", "to_v"]
    layer = adapters.adapted_layers(m)["to_out.0"]
    assert isinstance(m.to_out[0], adapters.AdaptedLinear) and layer.base.weight.shape == [D, D]
    assert [tuple(layer.lora_A.shape), tuple(layer.lora_B.shape), tuple(layer.magnitude.shape)] == \
        [(4, D), (D, 4), (D,)]
    assert all(p.is_stop_grad() for p in m.norm.parameters()) and all(p.is_stop_grad() for p in layer.base.parameters())
    counts = adapters.parameter_counts(m)
    assert counts["trainable"] == 4 * (4 * (D + D) + D)
    assert counts["trainable"] == sum(int(np.prod(p.shape)) for p in adapters.trainable_parameters(m))


def test_inject_conv_shapes_and_regex_targets():
    m = Block()
    assert adapters.inject(m, targets=r".*conv|to_q", kind="lora", rank=2) == ["to_q", "conv"]
    conv = adapters.adapted_layers(m)["conv"]
    assert tuple(conv.lora_A.shape) == (2, C, 3, 3) and tuple(conv.lora_B.shape) == (C, 2, 1, 1)
    assert conv.magnitude is None


def test_inject_rejects_bad_input_clearly():
    with pytest.raises(ValueError, match="no Linear/Conv2d matches.*Adaptable layers are"):
        adapters.inject(Block(), targets=("to_nothing",))
    with pytest.raises(ValueError, match="kind="):
        adapters.inject(Block(), kind="dorra")
    with pytest.raises(ValueError, match="init="):
        adapters.inject(Block(), init="xavier")
    with pytest.raises(ValueError, match="rank"):
        adapters.inject(Block(), rank=0)
    with pytest.raises(ValueError, match="groups"):
        adapters.inject(Block(groups=2), targets=("conv",))
    m = Block()
    adapters.inject(m)
    with pytest.raises(ValueError, match="already has adapters"):
        adapters.inject(m)


def test_scaling_rslora_and_inits():
    m = Block()
    adapters.inject(m, targets=("to_q",), kind="lora", rank=4, alpha=8, rslora=True)
    assert adapters.adapted_layers(m)["to_q"].scaling == pytest.approx(8 / 2)
    big = nn.Linear(400, 300)
    g = adapters.AdaptedLinear(big, kind="lora", rank=50, alpha=50, init="gaussian", rng=np.random.default_rng(0))
    assert g.scaling == 1.0 and np.std(g.lora_A.numpy()) == pytest.approx(1 / 50, rel=0.02)
    k = adapters.AdaptedLinear(big, kind="lora", rank=50, init="kaiming", rng=np.random.default_rng(0))
    assert np.abs(k.lora_A.numpy()).max() <= 1 / np.sqrt(400)
    assert np.std(k.lora_A.numpy()) == pytest.approx(1 / np.sqrt(3 * 400), rel=0.02)  # U(-b, b): b / sqrt(3)


# --- forward definitions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_step_zero_output_equals_base(kind):
    m = Block()
    x, img = _inputs()
    before = _outputs(m, x, img)
    adapters.inject(m, targets=ALL, kind=kind)
    for a, b in zip(_outputs(m, x, img), before):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_seed_variant_is_nonzero_at_step_zero_and_matches_its_definition():
    m = Block()
    x, img = _inputs()
    before = _outputs(m, x, img)
    adapters.inject(m, targets=ALL, kind="seed_dora")
    after = _outputs(m, x, img)
    assert max(np.abs(a - b).max() for a, b in zip(after, before)) > 1e-4
    layers = adapters.adapted_layers(m)
    for name, inp in (("to_q", x), ("conv", img)):
        layer = layers[name]
        assert tuple(layer.magnitude.shape) == (layer.base.weight.shape[1],)  # per INPUT column
        np.testing.assert_allclose(layer(inp).numpy(), _explicit_forward(layer, inp).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "dora", "seed_dora"])
def test_forward_equals_the_explicit_weight(kind):
    m = Block()
    adapters.inject(m, targets=ALL, kind=kind, alpha=8)
    _perturb(m)
    x, img = _inputs()
    for name, layer in adapters.adapted_layers(m).items():
        inp = img if name == "conv" else x
        np.testing.assert_allclose(layer(inp).numpy(), _explicit_forward(layer, inp).numpy(), rtol=0, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("detach", [True, False])
def test_dora_gradients_detached_and_full(detach):
    """Sec. 4.3 of Liu et al.: detach_norm=True treats ||W0 + sBA|| as a constant; False differentiates it."""
    m = Block()
    adapters.inject(m, targets=("to_q", "conv"), kind="dora", detach_norm=detach)
    _perturb(m)
    x, img = _inputs()
    rng = np.random.default_rng(7)
    for name, inp in (("to_q", x), ("conv", img)):
        layer = adapters.adapted_layers(m)[name]
        y = layer(inp)
        r = jt.array(rng.standard_normal(y.shape).astype(np.float32))
        params = layer.trainable()
        got = jt.grad((y * r).sum(), params)
        want = jt.grad((_explicit_forward(layer, inp, detach) * r).sum(), params)
        other = jt.grad((_explicit_forward(layer, inp, not detach) * r).sum(), params)
        for g, w, o in zip(got, want, other):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=1e-4, err_msg=name)
        assert np.abs(got[0].numpy() - other[0].numpy()).max() > 1e-4  # the option changes the A gradient


def test_dropout_only_in_training_mode():
    m = Block()
    adapters.inject(m, targets=("to_q",), kind="dora", dropout=0.5)
    _perturb(m)
    layer = adapters.adapted_layers(m)["to_q"]
    x, _ = _inputs()
    m.eval()
    y_eval = layer(x).numpy()
    np.testing.assert_allclose(y_eval, _explicit_forward(layer, x).numpy(), rtol=0, atol=1e-5)
    m.train()
    assert np.abs(layer(x).numpy() - y_eval).max() > 1e-3
    assert not layer.base.weight.requires_grad  # Jittor's train() must not unfreeze the base


# --- enable / scale / merge -----------------------------------------------------------------------------------
def test_disable_and_scale():
    m = Block()
    x, img = _inputs()
    base = _outputs(m, x, img)
    adapters.inject(m, targets=ALL, kind="lora")
    _perturb(m)
    adapted = _outputs(m, x, img)
    adapters.set_enabled(m, False)
    for a, b in zip(_outputs(m, x, img), base):
        np.testing.assert_array_equal(a, b)
    adapters.set_enabled(m, True)
    adapters.set_scale(m, 0.0)
    for a, b in zip(_outputs(m, x, img), base):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    adapters.set_scale(m, 1.0)
    for a, b in zip(_outputs(m, x, img), adapted):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    adapters.merge(m)
    with pytest.raises(ValueError, match="merged"):
        adapters.set_scale(m, 0.5)
    with pytest.raises(ValueError, match="merged"):
        adapters.set_enabled(m, False)


@pytest.mark.parametrize("kind", ["lora", "dora", "seed_dora"])
def test_merge_equals_unmerged_and_unmerge_restores_w0(kind):
    m = Block()
    adapters.inject(m, targets=ALL, kind=kind)
    _perturb(m)
    x, img = _inputs()
    w0 = {n: l.base.weight.numpy().copy() for n, l in adapters.adapted_layers(m).items()}
    unmerged = _outputs(m, x, img)
    w_eff = adapters.layer_weights(m)
    adapters.merge(m)
    for a, b in zip(_outputs(m, x, img), unmerged):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for n, l in adapters.adapted_layers(m).items():
        np.testing.assert_allclose(l.base.weight.numpy(), w_eff[n], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already merged"):
        adapters.merge(m)
    adapters.unmerge(m)
    for n, l in adapters.adapted_layers(m).items():
        np.testing.assert_allclose(l.base.weight.numpy(), w0[n], rtol=0, atol=1e-6)
    adapters.merge_and_unload(m)
    assert not adapters.adapted_layers(m) and isinstance(m.to_q, nn.Linear)
    for a, b in zip(_outputs(m, x, img), unmerged):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_training_moves_only_the_adapter():
    m = Block()
    adapters.inject(m, targets=ALL, kind="dora")
    frozen = {k: v.numpy().copy() for k, v in m.state_dict().items() if ".base." in k or k.startswith("norm")}
    params = adapters.trainable_parameters(m)
    start = [p.numpy().copy() for p in params]
    opt = jt.optim.AdamW(params, lr=1e-2)
    x, img = _inputs()
    for _ in range(2):
        y, z = m(x, img)
        opt.step((y ** 2).mean() + (z ** 2).mean())
    after = m.state_dict()
    for k, v in frozen.items():
        np.testing.assert_array_equal(after[k].numpy(), v, err_msg=k)
    assert all(np.abs(p.numpy() - s).max() > 0 for p, s in zip(params, start))


# --- files ----------------------------------------------------------------------------------------------------
def test_save_load_roundtrip_and_peft_key_names(tmp_path):
    m = Block()
    adapters.inject(m, targets=ALL, kind="dora", rank=2, alpha=3)
    _perturb(m)
    x, img = _inputs()
    want = _outputs(m, x, img)
    path = adapters.save_adapter(m, tmp_path / "style.safetensors", base_id="base-v1")
    tensors, meta = adapters.read_adapter(path)
    assert "base_model.model.to_out.0.lora_A.weight" in tensors
    assert tensors["base_model.model.conv.lora_magnitude_vector"].shape == (1, C, 1, 1)  # peft's conv layout
    assert meta["config"]["kind"] == "dora" and meta["config"]["rank"] == 2 and meta["base_id"] == "base-v1"
    fresh = Block()
    fresh.load_parameters({k.replace(".base.", "."): v.numpy() for k, v in m.state_dict().items()
                           if "lora" not in k and "magnitude" not in k})
    assert adapters.load_adapter(fresh, path, base_id="base-v1") == sorted(adapters.adapted_layers(m))
    for a, b in zip(_outputs(fresh, x, img), want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_load_refuses_another_base(tmp_path):
    m = Block()
    adapters.inject(m, targets=ALL, kind="dora")
    path = adapters.save_adapter(m, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="different base checkpoint"):
        adapters.load_adapter(Block(), path)  # same architecture, other weights
    with pytest.warns(RuntimeWarning, match="different base checkpoint"):
        adapters.load_adapter(Block(), path, strict_base=False)

    class Wider(nn.Module):
        def __init__(self):
            self.to_q, self.to_k, self.to_v = nn.Linear(D, 2 * D), nn.Linear(D, D), nn.Linear(D, D)
            self.to_out = nn.Sequential(nn.Linear(D, D))
            self.conv = nn.Conv2d(C, C, 3, padding=1)
    with pytest.raises(ValueError, match="other shapes"):
        adapters.load_adapter(Wider(), path)

    class Other(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(D, D)
    with pytest.raises(ValueError, match="does not have"):
        adapters.load_adapter(Other(), path)
    with pytest.raises(FileNotFoundError):
        adapters.load_adapter(Block(), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        adapters.save_adapter(m, tmp_path / "a.pt")


# --- analysis -------------------------------------------------------------------------------------------------
def test_magnitude_direction_and_delta_m_delta_d():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((6, 5, 3, 3))
    mag, v = adapters.magnitude_direction(w0)
    np.testing.assert_allclose(mag[:, None, None, None] * v, w0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(v.reshape(6, -1), axis=1), 1.0, atol=1e-12)
    assert adapters.delta_m_delta_d(w0, w0) == (pytest.approx(0.0), pytest.approx(0.0, abs=1e-12))
    dm, dd = adapters.delta_m_delta_d(1.5 * w0, w0)  # magnitude only
    assert dm == pytest.approx(0.5 * mag.mean()) and dd == pytest.approx(0.0, abs=1e-12)
    flipped = -w0  # direction only: cos = -1, same norms
    assert adapters.delta_m_delta_d(flipped, w0) == (pytest.approx(0.0), pytest.approx(2.0))
    a, b = adapters.fit_slope([0.1, 0.2, 0.3], [1.0, 0.8, 0.6])
    assert a == pytest.approx(-2.0) and b == pytest.approx(1.2)
    with pytest.raises(ValueError):
        adapters.fit_slope([0.1], [1.0])
    with pytest.raises(ValueError):
        adapters.magnitude_direction(np.ones(3))


# --- fused kernel ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3, 3)])
def test_fused_dora_scale_matches_reference(shape):
    rng = np.random.default_rng(0)
    r = 3
    w = jt.array(rng.standard_normal(shape).astype(np.float32))
    a = jt.array(rng.standard_normal((r,) + shape[1:]).astype(np.float32))
    b = jt.array(rng.standard_normal((shape[0], r) + (1, 1) * (len(shape) == 4)).astype(np.float32))
    mag = jt.array(rng.random(shape[0]).astype(np.float32) + 0.5)
    g_fused = dora_scale_fused(w, a, b, mag, 0.7)
    g_ref = dora_scale_reference(w, a, b, mag, 0.7)
    np.testing.assert_allclose(g_fused.numpy(), g_ref.numpy(), rtol=1e-6, atol=0)
    v = w.numpy().reshape(shape[0], -1) + 0.7 * b.numpy().reshape(shape[0], r) @ a.numpy().reshape(r, -1)
    np.testing.assert_allclose(g_ref.numpy(), mag.numpy() / np.linalg.norm(v, axis=1), rtol=1e-5)
    rr = jt.array(rng.standard_normal(shape[0]).astype(np.float32))
    gm_fused, ga_fused = jt.grad((g_fused * rr).sum(), [mag, a])
    gm_ref = jt.grad((g_ref * rr).sum(), mag)
    np.testing.assert_allclose(gm_fused.numpy(), gm_ref.numpy(), rtol=1e-6)
    assert np.all(ga_fused.numpy() == 0)  # detached norm: nothing flows into A through g


def test_dm_dd_points_and_scatter_on_a_short_training():
    """dM/dD rows per (checkpoint, layer) from a real (tiny) DoRA run; the figure draws one panel per method."""
    import matplotlib
    matplotlib.use("Agg")
    from gdlib import plot

    m = Block()
    adapters.inject(m, targets=("to_q", "to_v"), kind="dora")
    names = ["to_q", "to_v"]
    w0 = adapters.layer_weights(m, names)
    assert set(adapters.layer_weights(m)) == {"to_q", "to_k", "to_v", "to_out.0", "conv"}  # plain layers too
    opt = jt.optim.AdamW(adapters.trainable_parameters(m), lr=5e-2)
    x, img = _inputs()
    snaps = {}
    for step in range(1, 4):
        opt.step((m(x, img)[0] ** 2).mean())
        snaps[step] = adapters.layer_weights(m, names)
    pts = adapters.dm_dd_points(snaps, w0)
    assert list(pts["step"]) == [1, 1, 2, 2, 3, 3] and set(pts["layer"]) == {"to_q", "to_v"}
    assert np.all(pts["dD"] > 0) and np.all(pts["dM"] > 0)
    i = list(zip(pts["step"], pts["layer"])).index((3, "to_q"))
    dm, dd = adapters.delta_m_delta_d(snaps[3]["to_q"], w0["to_q"])
    assert (pts["dM"][i], pts["dD"][i]) == (dm, dd)
    # DoRA: ||W'_n|| = |m_n|, so dM is exactly the magnitude vector's mean move
    mag = adapters.adapted_layers(m)["to_q"].magnitude.numpy()
    assert dm == pytest.approx(np.abs(np.abs(mag) - np.linalg.norm(w0["to_q"], axis=1)).mean(), rel=1e-4)
    fig = plot.dm_dd_scatter({"DoRA": pts}, {"DoRA": adapters.fit_slope(pts["dD"], pts["dM"])})
    assert len(fig.axes) == 2  # the panel and its colour bar
    with pytest.raises(ValueError, match="no pretrained weight"):
        adapters.dm_dd_points(snaps, {"to_q": w0["to_q"]})


def test_dora_scale_dispatch_uses_fused_only_for_large_weights(monkeypatch):
    """dora_scale picks the fused op for >= FUSED_MIN_NUMEL weights (where bench/adapters.py measured it faster)."""
    import gdlib.kernels.dora as kd
    calls = []
    real = kd.dora_scale_fused
    monkeypatch.setattr(kd, "dora_scale_fused", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(1)
    n = int(np.ceil(np.sqrt(FUSED_MIN_NUMEL)))
    for shape, fused in (((8, 8), False), ((n, n), True)):
        w = jt.array(rng.standard_normal(shape).astype(np.float32))
        a = jt.array(rng.standard_normal((2, shape[1])).astype(np.float32))
        b = jt.array(rng.standard_normal((shape[0], 2)).astype(np.float32))
        mag = jt.array(rng.random(shape[0]).astype(np.float32) + 0.5)
        with kernels_enabled(True):
            g = dora_scale(w, a, b, mag, 0.5)
        with kernels_enabled(False):
            g_off = dora_scale(w, a, b, mag, 0.5)
        np.testing.assert_allclose(g.numpy(), dora_scale_reference(w, a, b, mag, 0.5).numpy(), rtol=1e-5)
        np.testing.assert_allclose(g_off.numpy(), g.numpy(), rtol=1e-5)
        # the fused op is a jt.Function: its gradient into A is exactly zero (detached), the reference's too
        assert np.all(jt.grad(g.sum(), a).numpy() == 0)
        assert (len(calls) == 1) == fused  # once with the switch on, never with it off
        calls.clear()


@pytest.mark.parametrize("method", ["dora", "full"])
def test_study_finetune_snapshots_on_a_tiny_text_to_image_model(method):
    """adapters.study.finetune: real denoising steps on a tiny model, snapshots of the targeted layers' W'."""
    from gdlib import toyworld
    from gdlib.adapters import study
    from gdlib.models.config import TextConfig, UNetConfig
    from gdlib.pipeline import TextToImage

    jt.set_global_seed(0)
    model = TextToImage.from_toyworld(
        unet=UNetConfig(image_size=16, patch_size=2, base_channels=16, channel_mult=(1, 2), attn_resolutions=(4,),
                        self_attn_resolutions=(4,), heads=2, groups=4, context_dim=32),
        text=TextConfig(width=32, layers=1, heads=2))
    for p in model.unet.parameters():  # undo the zero-init of output projections so that gradients reach to_q...
        if len(p.shape) >= 2 and float((p * p).sum().item()) == 0.0:
            p.update(jt.array(0.05 * np.random.default_rng(0).standard_normal(p.shape).astype(np.float32)))
    fs = toyworld.few_shot_set(toyworld.HELDOUT_STYLES[0], "fruit", k=2, size=16)
    frozen_before = {k: v.numpy().copy() for k, v in model.unet.state_dict().items() if "norm" in k}
    res = study.finetune(model, fs["images"], fs["captions"], method=method, rank=2, steps=3, lr=1e-2,
                         batch_size=2, snapshot_every=1)
    assert sorted(res["snapshots"]) == [0, 1, 2, 3] and len(res["loss"]) == 3 and np.all(np.isfinite(res["loss"]))
    assert res["names"] == study.target_names(model.unet) and all(n.endswith(("to_q", "to_k", "to_v", "to_out.0"))
                                                                   for n in res["names"])
    pts = adapters.dm_dd_points({s: w for s, w in res["snapshots"].items() if s > 0}, res["w0"])
    assert np.all(pts["dD"] > 0) and np.all(pts["dM"] > 0)
    after = model.unet.state_dict()
    norms_moved = any(np.abs(after[k].numpy() - v).max() > 0 for k, v in frozen_before.items() if k in after)
    if method == "full":
        assert norms_moved and res["params"] == sum(int(np.prod(p.shape)) for p in model.unet.parameters())
    else:
        assert not norms_moved and res["params"] == adapters.parameter_counts(model.unet)["trainable"]
    with pytest.raises(ValueError, match="method="):
        study.finetune(model, fs["images"], fs["captions"], method="qlora")


def test_relative_delta_m_divides_by_the_mean_row_norm():
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((6, 5))
    wt = w0 * 1.1 + 0.01 * rng.standard_normal((6, 5))
    dm, dd = adapters.delta_m_delta_d(wt, w0)
    dm_rel, dd_rel = adapters.delta_m_delta_d(wt, w0, relative=True)
    assert dd_rel == dd and dm_rel == pytest.approx(dm / np.linalg.norm(w0, axis=1).mean())
    # scaling a layer (and its update) by 10 changes the absolute dM tenfold, not the relative one
    dm10, _ = adapters.delta_m_delta_d(10 * wt, 10 * w0)
    dm10_rel, _ = adapters.delta_m_delta_d(10 * wt, 10 * w0, relative=True)
    assert dm10 == pytest.approx(10 * dm) and dm10_rel == pytest.approx(dm_rel)
