"""Fused kernels against their plain-Jittor references: forward, gradients (numerical and reference), switch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import kernels  # noqa: E402
from gdlib.kernels import _build  # noqa: E402
from gdlib.kernels import groupnorm as gn  # noqa: E402

RTOL = 1e-5  # float32 relative tolerance of the issue


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (norm-wise relative error)."""
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def assert_close(fused: np.ndarray, ref: np.ndarray, what: str, rtol: float = RTOL) -> None:
    """Norm-wise relative error <= rtol, and every element within rtol * max|ref|."""
    assert fused.shape == ref.shape, (what, fused.shape, ref.shape)
    assert np.isfinite(fused).all(), f"{what}: non-finite values"
    err = rel_err(fused, ref)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"
    worst = float(np.abs(fused - ref).max())
    assert worst <= rtol * float(np.abs(ref).max()) + 1e-30, f"{what}: max abs diff {worst:.3g}"


def _gn_inputs(rng, B, C, spatial, film=True, affine=True, scale_x=1.0, offset=0.0):
    x = rng.normal(size=(B, C, *spatial)).astype(np.float32) * scale_x + offset
    d = dict(x=x)
    if affine:
        d["weight"] = (1 + 0.3 * rng.normal(size=C)).astype(np.float32)
        d["bias"] = (0.3 * rng.normal(size=C)).astype(np.float32)
    if film:
        d["scale"] = (0.3 * rng.normal(size=(B, C))).astype(np.float32)
        d["shift"] = (0.3 * rng.normal(size=(B, C))).astype(np.float32)
    return d


def _gn_run(fn, arrs, G, silu, gy):
    """Forward, then gradients of sum(y * gy) w.r.t. every input; all as numpy."""
    v = {k: jt.array(a) for k, a in arrs.items()}
    y = fn(v["x"], G, v.get("weight"), v.get("bias"), 1e-5, v.get("scale"), v.get("shift"), silu)
    names = list(v)
    grads = jt.grad((y * jt.array(gy)).sum(), [v[k] for k in names])
    return y.numpy(), {k: g.numpy() for k, g in zip(names, grads)}


# ------------------------------------------------------------------ GroupNorm
@pytest.mark.parametrize("sp", [(3, 2), ()])  # [B, C, H, W] and LayerNorm-style rows [B, C]
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("film", [False, True])
def test_group_norm_numerical_gradient(silu, film, sp):
    """Directional derivatives of the fused op match central finite differences of its own forward."""
    rng = np.random.default_rng(1 + 2 * silu + film + 4 * len(sp))
    B, G = 2, 3
    C = 6 if sp else 24  # rows: 8 values per group (with 2 the normalization is too curved for h = 1e-2)
    arrs = _gn_inputs(rng, B, C, sp, film=film)
    gy = rng.normal(size=(B, C, *sp)).astype(np.float32)

    def loss(a):
        v = {k: jt.array(x) for k, x in a.items()}
        y = gn.group_norm_fused(v["x"], G, v["weight"], v["bias"], 1e-5, v.get("scale"), v.get("shift"), silu)
        return float((y.numpy().astype(np.float64) * gy).sum())

    _, grads = _gn_run(gn.group_norm_fused, arrs, G, silu, gy)
    h = 1e-2
    for name in arrs:
        for _ in range(3):
            u = rng.normal(size=arrs[name].shape).astype(np.float32)
            plus = {**arrs, name: arrs[name] + h * u}
            minus = {**arrs, name: arrs[name] - h * u}
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            analytic = float((grads[name].astype(np.float64) * u).sum())
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), (name, numeric, analytic)


@pytest.mark.parametrize("B,C,spatial,G,silu,film", [
    (64, 32, (32, 32), 8, True, False),    # UNet input resblock, norm1
    (64, 64, (16, 16), 8, True, True),     # resblock norm2 with the time-embedding FiLM
    (64, 64, (8, 8), 8, False, False),     # transformer block input norm
    (5, 12, (7,), 4, True, True),          # odd sizes, 1-D spatial
    (3, 8, (), 2, False, True),            # [B, C] input
    (64 * 16, 96, (), 1, False, False),    # LayerNorm of the transformer tokens (rows x width, one group)
    (40, 12, (), 3, True, True),           # [B, C] rows with several groups, FiLM and SiLU
])
def test_group_norm_matches_reference(B, C, spatial, G, silu, film):
    """Fused forward and every gradient equal the plain-Jittor reference on real shapes."""
    rng = np.random.default_rng(B + C)
    arrs = _gn_inputs(rng, B, C, spatial, film=film, scale_x=2.0, offset=0.5)
    gy = rng.normal(size=(B, C, *spatial)).astype(np.float32)
    y_f, g_f = _gn_run(gn.group_norm_fused, arrs, G, silu, gy)
    y_r, g_r = _gn_run(gn.group_norm_reference, arrs, G, silu, gy)
    assert_close(y_f, y_r, "y")
    for k in g_r:
        assert_close(g_f[k], g_r[k], f"d{k}")


def test_group_norm_without_affine_and_large_offset():
    """No weight/bias, data far from zero mean: the statistics stay accurate."""
    rng = np.random.default_rng(7)
    arrs = _gn_inputs(rng, 4, 8, (6, 6), film=False, affine=False, scale_x=0.1, offset=30.0)
    gy = rng.normal(size=arrs["x"].shape).astype(np.float32)
    y_f, g_f = _gn_run(gn.group_norm_fused, arrs, 4, True, gy)
    y_r, g_r = _gn_run(gn.group_norm_reference, arrs, 4, True, gy)
    assert_close(y_f, y_r, "y", rtol=1e-4)  # the reference loses digits here (float32 x - mean)
    assert_close(g_f["x"], g_r["x"], "dx", rtol=1e-4)


def test_group_norm_switch_selects_path():
    """use_kernels/kernels_enabled pick the fused op or the reference (bitwise)."""
    rng = np.random.default_rng(3)
    arrs = _gn_inputs(rng, 4, 8, (5, 5))
    v = {k: jt.array(a) for k, a in arrs.items()}
    args = (v["x"], 4, v["weight"], v["bias"], 1e-5, v["scale"], v["shift"], True)
    fused = gn.group_norm_fused(*args).numpy()
    ref = gn.group_norm_reference(*args).numpy()
    with kernels.kernels_enabled(False):
        assert not kernels.kernels_on()
        np.testing.assert_array_equal(kernels.group_norm(*args).numpy(), ref)
    assert kernels.kernels_on()
    np.testing.assert_array_equal(kernels.group_norm(*args).numpy(), fused)


def test_group_norm_bad_groups_is_value_error():
    x = jt.ones((2, 6, 4, 4))
    for flag in (True, False):
        with kernels.kernels_enabled(flag), pytest.raises(ValueError, match="6 channels"):
            kernels.group_norm(x, 4)


def test_group_norm_non_float32_uses_reference():
    x = jt.array(np.random.default_rng(0).normal(size=(2, 4, 3))).float64()
    y = kernels.group_norm(x, 2)
    assert str(y.dtype) == "float64"
    np.testing.assert_array_equal(y.numpy(), gn.group_norm_reference(x, 2).numpy())


# ------------------------------------------------------------------ fallback
def test_broken_kernel_warns_once_and_falls_back():
    """A kernel whose source does not compile is reported once and reported as unavailable."""
    def probe():
        x = jt.ones((3,))
        y = jt.code(x.shape, x.dtype, [x], cpu_src="this is not C++;", cuda_src="this is not CUDA;")
        y.sync()

    name = f"broken_{np.random.default_rng().integers(1 << 30)}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.fused_ok(name, probe) is False
        assert _build.fused_ok(name, probe) is False
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and name in msgs[0] and "reference" in msgs[0]
    assert _build.status()[f"{name}/cpu"] is False


def test_fused_kernels_compiled_here():
    """On this machine the fused ops compile (else every other test here would only test the reference)."""
    x = jt.ones((2, 4, 3))
    kernels.group_norm(x, 2).sync()
    kernels.attention(jt.ones((1, 1, 2, 2)), jt.ones((1, 1, 2, 2)), jt.ones((1, 1, 2, 2))).sync()
    kernels.bias_gelu(jt.ones((2, 3)), jt.ones((3,))).sync()
    dev = "cuda" if jt.flags.use_cuda else "cpu"
    assert _build.status().get(f"group_norm/{dev}") is True
    assert _build.status().get(f"attention/{dev}") is True
    assert _build.status().get(f"bias_gelu/{dev}") is True


# ------------------------------------------------------------------ attention
import importlib  # noqa: E402

att = importlib.import_module("gdlib.kernels.attention")  # the package re-exports the function `attention`


def _att_run(fn, q, k, v, go, scale=None):
    tq, tk, tv = jt.array(q), jt.array(k), jt.array(v)
    o = fn(tq, tk, tv, scale)
    grads = jt.grad((o * jt.array(go)).sum(), [tq, tk, tv])
    return o.numpy(), [g.numpy() for g in grads]


def _att_inputs(rng, B, H, N, M, D, spread=1.0):
    q = (spread * rng.normal(size=(B, H, N, D))).astype(np.float32)
    k = (spread * rng.normal(size=(B, H, M, D))).astype(np.float32)
    v = rng.normal(size=(B, H, M, D)).astype(np.float32)
    go = rng.normal(size=(B, H, N, D)).astype(np.float32)
    return q, k, v, go


def test_attention_numerical_gradient():
    """Directional derivatives of the fused op match central finite differences of its own forward."""
    rng = np.random.default_rng(11)
    q, k, v, go = _att_inputs(rng, 2, 2, 5, 4, 3)
    _, grads = _att_run(att.attention_fused, q, k, v, go)

    def loss(qq, kk, vv):
        o = att.attention_fused(jt.array(qq), jt.array(kk), jt.array(vv)).numpy().astype(np.float64)
        return float((o * go).sum())

    h = 1e-2
    for idx, base in enumerate((q, k, v)):
        for _ in range(3):
            u = rng.normal(size=base.shape).astype(np.float32)
            args_p = [q, k, v]
            args_m = [q, k, v]
            args_p[idx] = base + h * u
            args_m[idx] = base - h * u
            numeric = (loss(*args_p) - loss(*args_m)) / (2 * h)
            analytic = float((grads[idx].astype(np.float64) * u).sum())
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), (idx, numeric, analytic)


@pytest.mark.parametrize("B,H,N,M,D,spread", [
    (64, 4, 256, 12, 16, 1.0),   # cross-attention at 16 px over 12 text tokens
    (64, 4, 64, 64, 16, 1.0),    # self-attention at 8 px
    (64, 4, 64, 12, 16, 3.0),    # peaked softmax
    (3, 2, 7, 5, 9, 1.0),        # odd sizes
    (8, 4, 12, 12, 24, 1.0),     # text encoder self-attention
])
def test_attention_matches_reference(B, H, N, M, D, spread):
    """Fused forward and dq, dk, dv equal the plain-Jittor reference on real shapes."""
    rng = np.random.default_rng(N + M + D)
    q, k, v, go = _att_inputs(rng, B, H, N, M, D, spread)
    o_f, g_f = _att_run(att.attention_fused, q, k, v, go)
    o_r, g_r = _att_run(att.attention_reference, q, k, v, go)
    assert_close(o_f, o_r, "o")
    for name, a, b in zip("qkv", g_f, g_r):
        assert_close(a, b, f"d{name}")


def test_attention_custom_scale_and_switch():
    """An explicit scale is honoured; the switch picks fused or reference bitwise."""
    rng = np.random.default_rng(5)
    q, k, v, go = _att_inputs(rng, 2, 3, 6, 4, 8)
    o_f, _ = _att_run(att.attention_fused, q, k, v, go, scale=0.7)
    o_r, _ = _att_run(att.attention_reference, q, k, v, go, scale=0.7)
    assert_close(o_f, o_r, "o(scale=0.7)")
    o_default, _ = _att_run(att.attention_reference, q, k, v, go)
    assert rel_err(o_default, o_r) > 1e-3  # the scale really changes the result
    tq, tk, tv = jt.array(q), jt.array(k), jt.array(v)
    with kernels.kernels_enabled(False):
        np.testing.assert_array_equal(kernels.attention(tq, tk, tv, 0.7).numpy(), o_r)
    np.testing.assert_array_equal(kernels.attention(tq, tk, tv, 0.7).numpy(), o_f)


def test_attention_bad_shapes_are_value_errors():
    q = jt.ones((2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"\[B, H, N, d\]"):
        kernels.attention(q.reshape(6, 4, 8), q, q)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.attention(q, jt.ones((2, 3, 5, 7)), jt.ones((2, 3, 5, 7)))


def test_attention_long_keys_fall_back_on_cpu():
    """Beyond the CPU kernel's scratch limit attention() uses the reference and the fused op refuses."""
    if jt.flags.use_cuda:
        pytest.skip("the scratch limit is CPU-only")
    rng = np.random.default_rng(2)
    q, k, v, _ = _att_inputs(rng, 1, 1, 2048, 1024, 4)
    assert att._cpu_scratch(jt.array(q), jt.array(k)) > att._MAX_CPU_SCRATCH
    tq, tk, tv = jt.array(q), jt.array(k), jt.array(v)
    np.testing.assert_array_equal(kernels.attention(tq, tk, tv).numpy(),
                                  att.attention_reference(tq, tk, tv).numpy())
    with pytest.raises(ValueError, match="scratch per thread exceed"):
        att.attention_fused(tq, tk, tv)


# ------------------------------------------------------------------ multi-head attention, token layout
def _mha_run(fn, q, k, v, go, heads, scale=None):
    tq, tk, tv = jt.array(q), jt.array(k), jt.array(v)
    o = fn(tq, tk, tv, heads, scale)
    grads = jt.grad((o * jt.array(go)).sum(), [tq, tk, tv])
    return o.numpy(), [g.numpy() for g in grads]


def _mha_inputs(rng, B, N, M, C, spread=1.0):
    q = (spread * rng.normal(size=(B, N, C))).astype(np.float32)
    k = (spread * rng.normal(size=(B, M, C))).astype(np.float32)
    v = rng.normal(size=(B, M, C)).astype(np.float32)
    go = rng.normal(size=(B, N, C)).astype(np.float32)
    return q, k, v, go


def test_multihead_attention_numerical_gradient():
    """Directional derivatives of the token-layout fused op match central finite differences of its forward."""
    rng = np.random.default_rng(12)
    heads = 2
    q, k, v, go = _mha_inputs(rng, 2, 5, 4, 2 * 3)
    _, grads = _mha_run(att.multihead_attention_fused, q, k, v, go, heads)

    def loss(qq, kk, vv):
        o = att.multihead_attention_fused(jt.array(qq), jt.array(kk), jt.array(vv), heads).numpy()
        return float((o.astype(np.float64) * go).sum())

    h = 1e-2
    for idx, base in enumerate((q, k, v)):
        for _ in range(3):
            u = rng.normal(size=base.shape).astype(np.float32)
            args_p, args_m = [q, k, v], [q, k, v]
            args_p[idx], args_m[idx] = base + h * u, base - h * u
            numeric = (loss(*args_p) - loss(*args_m)) / (2 * h)
            analytic = float((grads[idx].astype(np.float64) * u).sum())
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), (idx, numeric, analytic)


@pytest.mark.parametrize("B,N,M,C,heads,spread", [
    (64, 64, 64, 96, 4, 1.0),    # UNet self-attention at 8 px (width 96, 4 heads of 24)
    (64, 64, 12, 96, 4, 1.0),    # cross-attention at 8 px over 12 text tokens
    (64, 16, 16, 96, 4, 3.0),    # self-attention at 4 px, peaked softmax
    (64, 12, 12, 96, 4, 1.0),    # text encoder self-attention
    (3, 7, 5, 18, 2, 1.0),       # odd sizes (head size 9: padded tiles)
    (2, 33, 17, 120, 3, 1.0),    # rows not a multiple of the 4-row tile, head size 40
])
def test_multihead_attention_matches_reference(B, N, M, C, heads, spread):
    """Token-layout fused forward and dq, dk, dv equal split-heads + attention_reference + merge."""
    rng = np.random.default_rng(N + M + C)
    q, k, v, go = _mha_inputs(rng, B, N, M, C, spread)
    o_f, g_f = _mha_run(att.multihead_attention_fused, q, k, v, go, heads)
    o_r, g_r = _mha_run(att.multihead_attention_reference, q, k, v, go, heads)
    assert_close(o_f, o_r, "o")
    for name, a, b in zip("qkv", g_f, g_r):
        assert_close(a, b, f"d{name}")


def test_multihead_attention_equals_head_layout_kernel():
    """The token layout is the same math as the [B, H, N, d] layout: the two fused paths agree."""
    rng = np.random.default_rng(21)
    B, N, M, H, D = 4, 10, 6, 3, 8
    q, k, v, go = _mha_inputs(rng, B, N, M, H * D)
    o_t, g_t = _mha_run(att.multihead_attention_fused, q, k, v, go, H, 0.5)

    def split(a, n):
        return a.reshape(B, n, H, D).transpose(0, 2, 1, 3).copy()

    o_h, g_h = _att_run(att.attention_fused, split(q, N), split(k, M), split(v, M), split(go, N), 0.5)
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], H * D)  # noqa: E731
    assert_close(o_t, merge(o_h), "o")
    for name, a, b in zip("qkv", g_t, g_h):
        assert_close(a, merge(b), f"d{name}")


def test_multihead_attention_switch_and_errors():
    """The switch picks fused or reference (bitwise); bad shapes and head counts are ValueErrors."""
    rng = np.random.default_rng(6)
    q, k, v, _ = _mha_inputs(rng, 2, 5, 3, 8)
    t = [jt.array(a) for a in (q, k, v)]
    fused = att.multihead_attention_fused(*t, 2).numpy()
    ref = att.multihead_attention_reference(*t, 2).numpy()
    np.testing.assert_array_equal(kernels.multihead_attention(*t, 2).numpy(), fused)
    with kernels.kernels_enabled(False):
        np.testing.assert_array_equal(kernels.multihead_attention(*t, 2).numpy(), ref)
    with pytest.raises(ValueError, match="3 heads"):
        kernels.multihead_attention(*t, 3)
    with pytest.raises(ValueError, match=r"\[B, N, heads\*d\]"):
        kernels.multihead_attention(t[0].reshape(10, 8), t[1], t[2], 2)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.multihead_attention(t[0], t[1], jt.ones((2, 4, 8)), 2)


def test_multihead_attention_long_keys_fall_back_on_cpu():
    """Beyond the CPU scratch limit multihead_attention() runs the reference and the fused op refuses."""
    if jt.flags.use_cuda:
        pytest.skip("the scratch limit is CPU-only")
    rng = np.random.default_rng(4)
    q, k, v, _ = _mha_inputs(rng, 1, 2048, 1024, 4)
    assert att._scratch_floats(2048, 1024, 4) > att._MAX_CPU_SCRATCH
    t = [jt.array(a) for a in (q, k, v)]
    np.testing.assert_array_equal(kernels.multihead_attention(*t, 1).numpy(),
                                  att.multihead_attention_reference(*t, 1).numpy())
    with pytest.raises(ValueError, match="scratch per thread exceed"):
        att.multihead_attention_fused(*t, 1)


# ------------------------------------------------------------------ GELU with the Linear's bias folded in
gelu_mod = importlib.import_module("gdlib.kernels.gelu")


def _gelu_run(fn, x, b, gy):
    tx, tb = jt.array(x), jt.array(b)
    y = fn(tx, tb)
    gx, gb = jt.grad((y * jt.array(gy)).sum(), [tx, tb])
    return y.numpy(), gx.numpy(), gb.numpy()


def test_bias_gelu_numerical_gradient():
    """Directional derivatives of the fused op match central finite differences of its own forward."""
    rng = np.random.default_rng(13)
    x = (2 * rng.normal(size=(3, 4, 5))).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    gy = rng.normal(size=x.shape).astype(np.float32)
    _, gx, gb = _gelu_run(gelu_mod.bias_gelu_fused, x, b, gy)

    def loss(xx, bb):
        y = gelu_mod.bias_gelu_fused(jt.array(xx), jt.array(bb)).numpy()
        return float((y.astype(np.float64) * gy).sum())

    h = 1e-2
    for _ in range(3):
        u, w = rng.normal(size=x.shape).astype(np.float32), rng.normal(size=b.shape).astype(np.float32)
        num_x = (loss(x + h * u, b) - loss(x - h * u, b)) / (2 * h)
        num_b = (loss(x, b + h * w) - loss(x, b - h * w)) / (2 * h)
        for numeric, analytic in ((num_x, float((gx.astype(np.float64) * u).sum())),
                                  (num_b, float((gb.astype(np.float64) * w).sum()))):
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), (numeric, analytic)


@pytest.mark.parametrize("shape", [(64, 64, 384), (64, 12, 384), (64 * 16, 384), (3, 5, 7), (1, 17)])
def test_bias_gelu_matches_reference(shape):
    """Fused forward, dx and db equal GELU(x + b) and its autograd on the UNet's feed-forward shapes."""
    rng = np.random.default_rng(sum(shape))
    x = (2 * rng.normal(size=shape)).astype(np.float32)
    b = rng.normal(size=shape[-1]).astype(np.float32)
    gy = rng.normal(size=shape).astype(np.float32)
    for a, r, what in zip(_gelu_run(gelu_mod.bias_gelu_fused, x, b, gy),
                          _gelu_run(gelu_mod.bias_gelu_reference, x, b, gy), ("y", "dx", "db")):
        assert_close(a, r, what)


def test_bias_gelu_switch_and_errors():
    rng = np.random.default_rng(8)
    x, b = jt.array(rng.normal(size=(4, 6)).astype(np.float32)), jt.array(rng.normal(size=6).astype(np.float32))
    np.testing.assert_array_equal(kernels.bias_gelu(x, b).numpy(), gelu_mod.bias_gelu_fused(x, b).numpy())
    with kernels.kernels_enabled(False):
        np.testing.assert_array_equal(kernels.bias_gelu(x, b).numpy(), gelu_mod.bias_gelu_reference(x, b).numpy())
    with pytest.raises(ValueError, match="bias must be"):
        kernels.bias_gelu(x, jt.ones((5,)))


def test_model_blocks_use_kernels_and_match_modules():
    """feed_forward and Attention give the module-by-module result (fused path within 1e-5, reference bitwise)."""
    from jittor import nn

    from gdlib.models.text import Attention, feed_forward
    jt.set_global_seed(3)
    rng = np.random.default_rng(9)
    ff = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
    x = jt.array(rng.normal(size=(2, 5, 16)).astype(np.float32))
    ref = ff(x).numpy()
    with kernels.kernels_enabled(False):
        np.testing.assert_array_equal(feed_forward(ff, x).numpy(), ref)
    assert_close(feed_forward(ff, x).numpy(), ref, "feed_forward")
    attn = Attention(16, 4, context_dim=8)
    ctx = jt.array(rng.normal(size=(2, 3, 8)).astype(np.float32))
    B, N, C = x.shape
    split = lambda t, n: t.reshape(B, n, 4, 4).transpose(0, 2, 1, 3)  # noqa: E731
    o = att.attention_reference(split(attn.to_q(x), N), split(attn.to_k(ctx), 3), split(attn.to_v(ctx), 3))
    expected = attn.to_out[0](o.transpose(0, 2, 1, 3).reshape(B, N, C)).numpy()
    assert_close(attn(x, ctx).numpy(), expected, "Attention")


# ------------------------------------------------------------------ fused AdamW step and gradient clipping
from gdlib.checkpoint import optimizer_tensors, restore_optimizer  # noqa: E402
from gdlib.kernels.adamw import AdamW as FusedAdamW  # noqa: E402


def _adamw_run(cls, clip: float | None, steps: int = 3):
    """A few steps on a quadratic over parameters of UNet-like shapes; returns params, m, v as numpy."""
    rng = np.random.default_rng(17)
    ps = [jt.array(rng.normal(size=s).astype(np.float32)) for s in [(96, 192, 3, 3), (384, 96), (96,), (1,)]]
    opt = cls(ps, 1e-3, weight_decay=0.01)
    for it in range(steps):
        opt.lr = 1e-3 * (it + 1)  # the training loop changes lr every step
        loss = sum((p * p * (i + 1)).sum() + p.sum() for i, p in enumerate(ps)) * 10
        opt.backward(loss)
        if clip is not None:
            opt.clip_grad_norm(clip)
        opt.step()
    pg = opt.param_groups[0]
    return [p.numpy() for p in ps], [m.numpy() for m in pg["m"]], [v.numpy() for v in pg["values"]]


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fused_adamw_matches_jittor_adamw(clip):
    """Parameters and moments after 3 steps equal jt.optim.AdamW's (with and without norm clipping)."""
    fused, ref = _adamw_run(FusedAdamW, clip), _adamw_run(jt.optim.AdamW, clip)
    for what, rtol in (("p", RTOL), ("m", RTOL if clip is None else 1e-4), ("v", RTOL if clip is None else 1e-4)):
        # with clipping the fused norm is summed in double, the reference's in float32: moments differ ~1.4e-5
        for a, b in zip(fused["pmv".index(what)], ref["pmv".index(what)]):
            assert_close(a, b, f"{what} {a.shape}", rtol=rtol)


def test_fused_adamw_switch_off_is_jittor_adamw_and_state_is_compatible():
    """Switch off: bitwise jt.optim.AdamW; the moments save and restore through gdlib.checkpoint."""
    with kernels.kernels_enabled(False):
        off = _adamw_run(FusedAdamW, 1.0)
    ref = _adamw_run(jt.optim.AdamW, 1.0)
    for a, b in zip(sum(off, []), sum(ref, [])):
        np.testing.assert_array_equal(a, b)
    p = jt.array(np.ones(4, np.float32))
    opt = FusedAdamW([p], 1e-2)
    opt.backward((p * p).sum())
    opt.step()
    tensors = optimizer_tensors(opt)
    opt2 = FusedAdamW([jt.array(np.ones(4, np.float32))], 1e-2)
    restore_optimizer(opt2, tensors, opt.n_step)
    np.testing.assert_array_equal(opt2.param_groups[0]["m"][0].numpy(), opt.param_groups[0]["m"][0].numpy())
    assert opt2.n_step == 1


@pytest.mark.parametrize("on", [True, False])
def test_grad_norm_and_clip_grad_norm_return_the_joint_norm(on):
    """grad_norm(opt) and clip_grad_norm(...) give the 2-norm over all gradients, fused or not."""
    from gdlib.kernels.adamw import grad_norm
    rng = np.random.default_rng(5)
    ps = [jt.array(rng.normal(size=s).astype(np.float32)) for s in [(7, 3), (5,)]]
    opt = FusedAdamW(ps, 1e-3)
    with kernels.kernels_enabled(on):
        assert grad_norm(opt) is None  # before any backward
        opt.backward(sum((p * p).sum() for p in ps))  # gradient 2 p
        want = 2 * np.sqrt(sum((p.numpy() ** 2).sum() for p in ps))
        assert_close(grad_norm(opt).numpy(), np.array([want]), "grad_norm", rtol=1e-5)
        assert_close(opt.clip_grad_norm(1.0).numpy(), np.array([want]), "clip_grad_norm", rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, -0.7])
def test_multihead_attention_explicit_scale(scale):
    """An explicit (even negative) softmax scale is honoured by the fused forward and backward."""
    rng = np.random.default_rng(31)
    q, k, v, go = _mha_inputs(rng, 3, 9, 6, 16, spread=2.0)
    o_f, g_f = _mha_run(att.multihead_attention_fused, q, k, v, go, 2, scale)
    o_r, g_r = _mha_run(att.multihead_attention_reference, q, k, v, go, 2, scale)
    assert_close(o_f, o_r, f"o(scale={scale})")
    for name, a, b in zip("qkv", g_f, g_r):
        assert_close(a, b, f"d{name}(scale={scale})")
