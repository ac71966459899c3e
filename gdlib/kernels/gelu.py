"""GELU(x + b) = (x + b) Phi(x + b) with the bias of the preceding Linear folded in (Hendrycks & Gimpel 2016)."""
from __future__ import annotations

import functools

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from . import _build  # noqa: E402
from .switch import kernels_on  # noqa: E402


def bias_gelu_reference(x: "jt.Var", bias: "jt.Var") -> "jt.Var":
    """GELU(x + bias), exact erf form; bias [C] broadcasts over the last axis of x [..., C]."""
    _check(x, bias)
    return jt.nn.gelu(x + bias)


def bias_gelu(x: "jt.Var", bias: "jt.Var") -> "jt.Var":
    """GELU(x + bias); the fused kernel when the switch is on, else the reference."""
    _check(x, bias)
    if kernels_on() and str(x.dtype) == "float32" and str(bias.dtype) == "float32" \
            and _available(_build.device_key()):
        return bias_gelu_fused(x, bias)
    return bias_gelu_reference(x, bias)


def _check(x, bias) -> None:
    if len(bias.shape) != 1 or len(x.shape) < 1 or x.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias_gelu: bias must be [C] for x [..., C]; got x {tuple(x.shape)}, bias {tuple(bias.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Fused path on rows [R, C]: z = x + b, y = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2,
#   dz = dy (Phi(z) + z phi(z)),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi),  dx = dz,  db = sum_rows dz;
# the forward also writes Phi(z), so the backward needs one exp and no erf per element.
# CPU: OpenMP over rows (elementwise, vectorized erf/exp), db from per-thread partial sums. CUDA: a thread per
# element, then a thread per column for db.
# ---------------------------------------------------------------------------------------------------------
_CPU_FWD = """
// in: x, b; out: y, Phi(z) (kept for the backward, which then needs no erf)
const long C = in1_shape0, R = in0->num / C;
#pragma omp parallel for schedule(static) if (R * C >= @PAR_MIN)
for (long r = 0; r < R; r++) {
    const float* x = in0_p + r * C;
    float* y = out0_p + r * C;
    float* cdf = out1_p + r * C;
    for (long c = 0; c < C; c++) {
        const float z = x[c] + in1_p[c];
        const float phi = 0.5f * (1.0f + std::erf(z * 0.70710678118654752f));
        cdf[c] = phi;
        y[c] = z * phi;
    }
}
"""

_CPU_BWD = """
// in: x, b, dy, Phi(z); out: dx, db. Each thread sums dz over its own rows into a partial db; the partials
// are then added in thread order (deterministic for a given thread count), so dz is read only once.
const long C = in1_shape0, R = in0->num / C;
std::vector<float> part_((size_t)omp_get_max_threads() * C, 0.0f);
float* part = part_.data();
int nt = 1;
#pragma omp parallel if (R * C >= @PAR_MIN)
{
    #pragma omp single
    nt = omp_get_num_threads();
    float* acc = part + (size_t)omp_get_thread_num() * C;
    #pragma omp for schedule(static)
    for (long r = 0; r < R; r++) {
        const float* x = in0_p + r * C;
        const float* g = in2_p + r * C;
        const float* cdf = in3_p + r * C;
        float* dx = out0_p + r * C;
        for (long c = 0; c < C; c++) {
            const float z = x[c] + in1_p[c];
            const float pdf = 0.39894228040143268f * std::exp(-0.5f * z * z);
            const float dz = g[c] * (cdf[c] + z * pdf);
            dx[c] = dz;
            acc[c] += dz;
        }
    }
}
for (long c = 0; c < C; c++) out1_p[c] = part[c];
for (int t = 1; t < nt; t++)
    for (long c = 0; c < C; c++) out1_p[c] += part[(size_t)t * C + c];
"""

_CUDA_HEADER = _build.CUDA_HEADER + """
__global__ void gdlib_gelu_fwd(const float* x, const float* b, float* y, float* cdf, long n, long C) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float z = x[i] + b[i % C];
    const float phi = 0.5f * (1.0f + erff(z * 0.70710678118654752f));
    cdf[i] = phi;
    y[i] = z * phi;
}
__global__ void gdlib_gelu_bwd(const float* x, const float* b, const float* g, const float* cdf, float* dx,
                               long n, long C) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float z = x[i] + b[i % C];
    const float pdf = 0.39894228040143268f * expf(-0.5f * z * z);
    dx[i] = g[i] * (cdf[i] + z * pdf);
}
__global__ void gdlib_gelu_db(const float* dx, float* db, long R, long C) {
    const long c = (long)blockIdx.x * blockDim.x + threadIdx.x;   // one thread per column, coalesced over c
    if (c >= C) return;
    float acc = 0;
    for (long r = 0; r < R; r++) acc += dx[r * C + c];
    db[c] = acc;
}
"""

_CUDA_FWD = """
const long C = in1_shape0, n = in0->num;
gdlib_gelu_fwd<<<(n + 255) / 256, 256>>>(in0_p, in1_p, out0_p, out1_p, n, C);
"""
_CUDA_BWD = """
const long C = in1_shape0, n = in0->num;
gdlib_gelu_bwd<<<(n + 255) / 256, 256>>>(in0_p, in1_p, in2_p, in3_p, out0_p, n, C);
gdlib_gelu_db<<<(C + 255) / 256, 256>>>(out0_p, out1_p, n / C, C);
"""


_HDR = _build.CPU_HEADER + "#include <vector>\n"


def _fill(src: str) -> str:
    return src.replace("@PAR_MIN", str(_build.PARALLEL_MIN_ELEMENTS))


class _BiasGeluFn(jt.Function):
    """GELU(x + b) on x [..., C], b [C] with the fused backward above."""

    def execute(self, x, b):
        y, cdf = jt.code([x.shape, x.shape], [x.dtype, x.dtype], [x, b], cpu_header=_build.CPU_HEADER,
                         cpu_src=_fill(_CPU_FWD), cuda_header=_CUDA_HEADER, cuda_src=_CUDA_FWD)
        self.saved = (x, b, cdf)
        return y

    def grad(self, dy):
        if dy is None:
            return None, None
        x, b, cdf = self.saved
        dx, db = jt.code([x.shape, b.shape], [x.dtype, b.dtype], [x, b, dy, cdf], cpu_header=_HDR,
                         cpu_src=_fill(_CPU_BWD), cuda_header=_CUDA_HEADER, cuda_src=_CUDA_BWD)
        return dx, db


def bias_gelu_fused(x: "jt.Var", bias: "jt.Var") -> "jt.Var":
    """The fused op (one pass forward, one pass backward plus a column sum for the bias), no fallback."""
    _check(x, bias)
    return _BiasGeluFn()(x, bias)


def _probe() -> None:
    """Compile and run forward and backward of the fused op on a tiny input."""
    x = jt.array(np.linspace(-3, 3, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5))
    b = jt.array(np.linspace(-1, 1, 5, dtype=np.float32))
    y = bias_gelu_fused(x, b)
    gx, gb = jt.grad((y * y).sum(), [x, b])
    jt.sync([y, gx, gb])
    if not (np.isfinite(gx.numpy()).all() and np.isfinite(gb.numpy()).all()):
        raise RuntimeError("non-finite gradient from the fused bias_gelu probe")


@functools.lru_cache(maxsize=None)
def _available(device: int) -> bool:
    return _build.fused_ok("bias_gelu", _probe)
