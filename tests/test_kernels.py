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
    dev = "cuda" if jt.flags.use_cuda else "cpu"
    assert _build.status().get(f"group_norm/{dev}") is True
    assert _build.status().get(f"attention/{dev}") is True


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
