"""GroupNorm with optional FiLM scale/shift and SiLU, as one op (Wu & He 2018)."""
from __future__ import annotations

from .. import runtime

jt = runtime.setup_jittor()

from .switch import kernels_on  # noqa: E402


def group_norm_reference(x: "jt.Var", num_groups: int, weight: "jt.Var | None" = None,
                         bias: "jt.Var | None" = None, eps: float = 1e-5,
                         scale: "jt.Var | None" = None, shift: "jt.Var | None" = None,
                         silu: bool = False) -> "jt.Var":
    """y = act(GN(x) * weight + bias) with optional y *= (1 + scale), y += shift ([B, C] each) before act."""
    B, C = x.shape[0], x.shape[1]
    if C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
    xg = x.reshape(B, num_groups, -1)
    mean = xg.mean(dim=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(dim=2, keepdims=True)
    y = ((xg - mean) / jt.sqrt(var + eps)).reshape(x.shape)
    extra = [1] * (len(x.shape) - 2)
    if weight is not None:
        y = y * weight.reshape(1, C, *extra)
    if bias is not None:
        y = y + bias.reshape(1, C, *extra)
    if scale is not None:
        y = y * (1 + scale.reshape(B, C, *extra))
    if shift is not None:
        y = y + shift.reshape(B, C, *extra)
    if silu:
        y = y * jt.sigmoid(y)
    return y


def group_norm(x: "jt.Var", num_groups: int, weight: "jt.Var | None" = None, bias: "jt.Var | None" = None,
               eps: float = 1e-5, scale: "jt.Var | None" = None, shift: "jt.Var | None" = None,
               silu: bool = False) -> "jt.Var":
    """GroupNorm(+FiLM)(+SiLU); the fused kernel when the switch is on, else the reference."""
    if kernels_on() and str(x.dtype) == "float32" and len(x.shape) >= 2 and _available(_build.device_key()):
        return group_norm_fused(x, num_groups, weight, bias, eps, scale, shift, silu)
    return group_norm_reference(x, num_groups, weight, bias, eps, scale, shift, silu)


# ---------------------------------------------------------------------------------------------------------
# Fused path. Per sample b and channel c the affine, FiLM and bias fold into one scale/offset pair:
#   z = x_hat * a[b, c] + d[b, c],  a = weight * (1 + scale),  d = bias * (1 + scale) + shift,
#   y = z * sigmoid(z) if silu else z,  x_hat = (x - mean_bg) * rstd_bg   (Eq. 1-4 of Wu & He 2018).
# The op takes (x [B, C, S], a [B, C], d [B, C]); Jittor's autograd carries da/dd to weight, bias, scale,
# shift. Backward with gz = dy * dy/dz, P = sum_s gz * x_hat, Q = sum_s gz (per b, c):
#   da = P, dd = Q,  dx = rstd * (gz * a - sum_c(a Q) / N - x_hat * sum_c(a P) / N),  N = (C / G) * S.
# ---------------------------------------------------------------------------------------------------------
import functools  # noqa: E402

import numpy as np  # noqa: E402

from . import _build  # noqa: E402

_CPU_FWD = """
const int B = in0_shape0, C = in0_shape1, S = in0_shape2;
const int G = @G, Cg = C / G;
const double N = (double)Cg * S;
#pragma omp parallel for schedule(dynamic, 1) if ((long)B * C * S >= @PAR_MIN)
for (int bg = 0; bg < B * G; bg++) {
    const int b = bg / G, g = bg % G;
    const size_t base = ((size_t)b * C + (size_t)g * Cg) * S;
    const float* xp = in0_p + base;
    const int n = Cg * S;
    double s1 = 0;
    for (int i = 0; i < n; i++) s1 += xp[i];
    const double m = s1 / N;
    double s2 = 0;
    for (int i = 0; i < n; i++) { double t = xp[i] - m; s2 += t * t; }
    const float r = (float)(1.0 / std::sqrt(s2 / N + @EPS));
    const float mf = (float)m;
    out1_p[bg] = mf; out2_p[bg] = r;
    if (S == 1) {  // LayerNorm-style rows [B, C]: one vectorized loop over channels
        const float* Ap = in1_p + (size_t)b * C + g * Cg;
        const float* Dp = in2_p + (size_t)b * C + g * Cg;
        float* yr = out0_p + base;
        for (int c = 0; c < Cg; c++) {
            const float z = (xp[c] - mf) * r * Ap[c] + Dp[c];
            yr[c] = @SILU ? z / (1.0f + std::exp(-z)) : z;
        }
        continue;
    }
    for (int c = 0; c < Cg; c++) {
        const int cc = g * Cg + c;
        const float A = in1_p[b * C + cc], D = in2_p[b * C + cc];
        const float* xr = xp + (size_t)c * S;
        float* yr = out0_p + base + (size_t)c * S;
        for (int k = 0; k < S; k++) {
            const float z = (xr[k] - mf) * r * A + D;
            yr[k] = @SILU ? z / (1.0f + std::exp(-z)) : z;
        }
    }
}
"""

_CPU_BWD = """
// in: x, a, d, mean, rstd, gy ; out: gx, P, Q
const int B = in0_shape0, C = in0_shape1, S = in0_shape2;
const int G = @G, Cg = C / G;
const float invN = (float)(1.0 / ((double)Cg * S));
#pragma omp parallel for schedule(dynamic, 1) if ((long)B * C * S >= @PAR_MIN)
for (int bg = 0; bg < B * G; bg++) {
    const int b = bg / G, g = bg % G;
    const size_t base = ((size_t)b * C + (size_t)g * Cg) * S;
    const float mf = in3_p[bg], r = in4_p[bg];
    if (S == 1) {  // LayerNorm-style rows [B, C]: P = gz * x_hat and Q = gz per channel, loops over channels
        const size_t o = (size_t)b * C + g * Cg;
        const float* xr = in0_p + base;
        const float* gr = in5_p + base;
        float* gz = out0_p + base;
        float sAPf = 0, sAQf = 0;
        for (int c = 0; c < Cg; c++) {
            const float xh = (xr[c] - mf) * r;
            float gk = gr[c];
            if (@SILU) {
                const float z = xh * in1_p[o + c] + in2_p[o + c];
                const float sg = 1.0f / (1.0f + std::exp(-z));
                gk = gk * sg * (1.0f + z * (1.0f - sg));
            }
            gz[c] = gk;
            out1_p[o + c] = gk * xh; out2_p[o + c] = gk;
            sAPf += in1_p[o + c] * gk * xh; sAQf += in1_p[o + c] * gk;
        }
        const float c1 = sAQf * invN, c2 = sAPf * invN;
        for (int c = 0; c < Cg; c++) {
            const float xh = (xr[c] - mf) * r;
            gz[c] = r * (gz[c] * in1_p[o + c] - c1 - xh * c2);
        }
        continue;
    }
    double sAP = 0, sAQ = 0;
    for (int c = 0; c < Cg; c++) {
        const int cc = g * Cg + c;
        const float A = in1_p[b * C + cc], D = in2_p[b * C + cc];
        const float* xr = in0_p + base + (size_t)c * S;
        const float* gr = in5_p + base + (size_t)c * S;
        float* gz = out0_p + base + (size_t)c * S;  // holds dL/dz until the second pass
        double p = 0, q = 0;
        for (int k = 0; k < S; k++) {
            const float xh = (xr[k] - mf) * r;
            float gk = gr[k];
            if (@SILU) {
                const float z = xh * A + D;
                const float sg = 1.0f / (1.0f + std::exp(-z));
                gk = gk * sg * (1.0f + z * (1.0f - sg));
            }
            gz[k] = gk;
            p += gk * xh; q += gk;
        }
        out1_p[b * C + cc] = (float)p; out2_p[b * C + cc] = (float)q;
        sAP += A * p; sAQ += A * q;
    }
    const float c1 = (float)sAQ * invN, c2 = (float)sAP * invN;
    for (int c = 0; c < Cg; c++) {
        const int cc = g * Cg + c;
        const float A = in1_p[b * C + cc];
        const float* xr = in0_p + base + (size_t)c * S;
        float* gx = out0_p + base + (size_t)c * S;
        for (int k = 0; k < S; k++) {
            const float xh = (xr[k] - mf) * r;
            gx[k] = r * (gx[k] * A - c1 - xh * c2);
        }
    }
}
"""

# CUDA: one block of 256 threads per (sample, group); tree reductions in shared memory.
_CUDA_HEADER = _build.CUDA_HEADER + """
#define GDLIB_GN_T 256
__device__ inline double gdlib_gn_block_sum(double v, double* sh) {
    sh[threadIdx.x] = v; __syncthreads();
    for (int o = GDLIB_GN_T / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    double r = sh[0]; __syncthreads();
    return r;
}
__global__ void gdlib_gn_fwd_@SILU(const float* x, const float* a, const float* d, float* y, float* mean,
                              float* rstd, int C, int S, int G, float eps) {
    __shared__ double sh[GDLIB_GN_T];
    const int bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G, n = Cg * S;
    const size_t base = ((size_t)b * C + (size_t)g * Cg) * S;
    const float* xp = x + base;
    double s1 = 0;
    for (int i = threadIdx.x; i < n; i += GDLIB_GN_T) s1 += xp[i];
    const double m = gdlib_gn_block_sum(s1, sh) / n;
    double s2 = 0;
    for (int i = threadIdx.x; i < n; i += GDLIB_GN_T) { double t = xp[i] - m; s2 += t * t; }
    const float r = (float)(1.0 / sqrt(gdlib_gn_block_sum(s2, sh) / n + eps));
    const float mf = (float)m;
    if (threadIdx.x == 0) { mean[bg] = mf; rstd[bg] = r; }
    for (int i = threadIdx.x; i < n; i += GDLIB_GN_T) {
        const int cc = g * Cg + i / S;
        const float z = (xp[i] - mf) * r * a[b * C + cc] + d[b * C + cc];
        y[base + i] = @SILU ? z / (1.0f + expf(-z)) : z;
    }
}
__global__ void gdlib_gn_bwd_@SILU(const float* x, const float* a, const float* d, const float* mean,
                              const float* rstd, const float* gy, float* gx, float* P, float* Q,
                              int C, int S, int G) {
    __shared__ double sh[GDLIB_GN_T];
    const int bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G;
    const size_t base = ((size_t)b * C + (size_t)g * Cg) * S;
    const float mf = mean[bg], r = rstd[bg];
    double sAP = 0, sAQ = 0;
    for (int c = 0; c < Cg; c++) {
        const int cc = g * Cg + c;
        const float A = a[b * C + cc], D = d[b * C + cc];
        const size_t row = base + (size_t)c * S;
        double p = 0, q = 0;
        for (int k = threadIdx.x; k < S; k += GDLIB_GN_T) {
            const float xh = (x[row + k] - mf) * r;
            float gk = gy[row + k];
            if (@SILU) {
                const float z = xh * A + D;
                const float sg = 1.0f / (1.0f + expf(-z));
                gk = gk * sg * (1.0f + z * (1.0f - sg));
            }
            gx[row + k] = gk;
            p += gk * xh; q += gk;
        }
        p = gdlib_gn_block_sum(p, sh);
        q = gdlib_gn_block_sum(q, sh);
        if (threadIdx.x == 0) { P[b * C + cc] = (float)p; Q[b * C + cc] = (float)q; }
        sAP += A * p; sAQ += A * q;
    }
    const float invN = 1.0f / ((float)Cg * S);
    const float c1 = (float)sAQ * invN, c2 = (float)sAP * invN;
    for (int i = threadIdx.x; i < Cg * S; i += GDLIB_GN_T) {
        const int cc = g * Cg + i / S;
        const float xh = (x[base + i] - mf) * r;
        gx[base + i] = r * (gx[base + i] * a[b * C + cc] - c1 - xh * c2);
    }
}
"""

_CUDA_FWD = """
gdlib_gn_fwd_@SILU<<<in0_shape0 * @G, GDLIB_GN_T>>>(in0_p, in1_p, in2_p, out0_p, out1_p, out2_p,
                                               in0_shape1, in0_shape2, @G, (float)@EPS);
"""
_CUDA_BWD = """
gdlib_gn_bwd_@SILU<<<in0_shape0 * @G, GDLIB_GN_T>>>(in0_p, in1_p, in2_p, in3_p, in4_p, in5_p,
                                               out0_p, out1_p, out2_p, in0_shape1, in0_shape2, @G);
"""


def _fill(src: str, G: int, eps: float, silu: bool) -> str:
    """Bake the group count, eps and the SiLU switch into a kernel source as constants."""
    return (src.replace("@G", str(int(G))).replace("@EPS", repr(float(eps))).replace("@SILU", "1" if silu else "0")
            .replace("@PAR_MIN", str(_build.PARALLEL_MIN_ELEMENTS)))


def _gn_forward(x, a, d, G: int, eps: float, silu: bool):
    """Fused forward: y [B, C, S], mean [B, G], rstd [B, G]."""
    B, C, _ = x.shape
    return jt.code([x.shape, (B, G), (B, G)], [x.dtype] * 3, [x, a, d],
                   cpu_header=_build.CPU_HEADER, cpu_src=_fill(_CPU_FWD, G, eps, silu),
                   cuda_header=_fill(_CUDA_HEADER, G, eps, silu), cuda_src=_fill(_CUDA_FWD, G, eps, silu))


def _gn_backward(x, a, d, mean, rstd, gy, G: int, silu: bool):
    """Fused backward: dx [B, C, S], P = da [B, C], Q = dd [B, C]."""
    return jt.code([x.shape, a.shape, a.shape], [x.dtype] * 3, [x, a, d, mean, rstd, gy],
                   cpu_header=_build.CPU_HEADER, cpu_src=_fill(_CPU_BWD, G, 0.0, silu),
                   cuda_header=_fill(_CUDA_HEADER, G, 0.0, silu), cuda_src=_fill(_CUDA_BWD, G, 0.0, silu))


class _GroupNormFn(jt.Function):
    """GroupNorm(+FiLM)(+SiLU) on (x [B, C, S], a [B, C], d [B, C]) with the fused backward above."""

    def __init__(self, num_groups: int, eps: float, silu: bool):
        self.G, self.eps, self.silu = num_groups, eps, silu

    def execute(self, x, a, d):
        y, mean, rstd = _gn_forward(x, a, d, self.G, self.eps, self.silu)
        self.saved = (x, a, d, mean, rstd)
        return y

    def grad(self, gy):
        if gy is None:
            return None, None, None
        x, a, d, mean, rstd = self.saved
        gx, P, Q = _gn_backward(x, a, d, mean, rstd, gy, self.G, self.silu)
        return gx, P, Q


def _probe() -> None:
    """Compile and run forward and backward of the fused op on a tiny input (both SiLU variants)."""
    x = jt.array(np.linspace(-1, 1, 2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3))
    a, d = jt.ones((2, 4)), jt.zeros((2, 4))
    for silu in (False, True):
        y = _GroupNormFn(2, 1e-5, silu)(x, a, d)
        gx, ga = jt.grad((y * y).sum(), [x, a])
        jt.sync([y, gx, ga])
        if not np.isfinite(gx.numpy()).all():
            raise RuntimeError("non-finite gradient from the fused group_norm probe")


@functools.lru_cache(maxsize=None)
def _available(device: int) -> bool:
    return _build.fused_ok("group_norm", _probe)


def _fold_affine(B: int, C: int, weight, bias, scale, shift):
    """a = weight * (1 + scale) and d = bias * (1 + scale) + shift as [B, C] (missing terms are 1 or 0)."""
    a = jt.ones((B, C)) if weight is None else weight.reshape(1, C).broadcast((B, C))
    d = jt.zeros((B, C)) if bias is None else bias.reshape(1, C).broadcast((B, C))
    if scale is not None:
        s1 = 1 + scale.reshape(B, C)
        a, d = a * s1, d * s1
    if shift is not None:
        d = d + shift.reshape(B, C)
    return a, d


def group_norm_fused(x: "jt.Var", num_groups: int, weight: "jt.Var | None" = None,
                     bias: "jt.Var | None" = None, eps: float = 1e-5, scale: "jt.Var | None" = None,
                     shift: "jt.Var | None" = None, silu: bool = False) -> "jt.Var":
    """The fused op (one pass for the statistics, one for the output; threaded backward), no fallback."""
    B, C = x.shape[0], x.shape[1]
    if C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
    a, d = _fold_affine(B, C, weight, bias, scale, shift)
    y = _GroupNormFn(int(num_groups), float(eps), bool(silu))(x.reshape(B, C, -1), a, d)
    return y.reshape(x.shape)
