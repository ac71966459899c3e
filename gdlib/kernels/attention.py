"""Scaled dot-product attention softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017, Eq. 1)."""
from __future__ import annotations

import math

from .. import runtime

jt = runtime.setup_jittor()

from .switch import kernels_on  # noqa: E402


def attention_reference(q: "jt.Var", k: "jt.Var", v: "jt.Var", scale: float | None = None) -> "jt.Var":
    """q [B, H, Nq, d], k and v [B, H, Nk, d] -> [B, H, Nq, d]."""
    d = q.shape[-1]
    s = (1.0 / math.sqrt(d)) if scale is None else scale
    logits = jt.matmul(q, k.transpose(0, 1, 3, 2)) * s
    logits = logits - logits.max(dim=-1, keepdims=True)
    p = jt.exp(logits)
    p = p / p.sum(dim=-1, keepdims=True)
    return jt.matmul(p, v)


def attention(q: "jt.Var", k: "jt.Var", v: "jt.Var", scale: float | None = None) -> "jt.Var":
    """Attention; the fused kernel when the switch is on, else the reference."""
    _check_shapes(q, k, v)
    if (kernels_on() and all(str(t.dtype) == "float32" for t in (q, k, v)) and v.shape[-1] == q.shape[-1]
            and (jt.flags.use_cuda or q.shape[-1] * k.shape[2] <= _MAX_CPU_BLOCK)
            and _available(_build.device_key())):
        return attention_fused(q, k, v, scale)
    return attention_reference(q, k, v, scale)


def _check_shapes(q, k, v) -> None:
    """Clear errors for shapes the attention of Eq. 1 cannot take."""
    if len(q.shape) != 4 or len(k.shape) != 4 or len(v.shape) != 4:
        raise ValueError(f"attention: q, k, v must be [B, H, N, d]; got {q.shape}, {k.shape}, {v.shape}")
    if tuple(q.shape[:2]) != tuple(k.shape[:2]) or tuple(k.shape[:3]) != tuple(v.shape[:3]) \
            or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "(need q [B, H, Nq, d], k [B, H, Nk, d], v [B, H, Nk, dv])")
    if k.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"attention: need at least one key and a head size >= 1; got k {k.shape}")


# ---------------------------------------------------------------------------------------------------------
# Fused path: one pass per query row i (flash-attention style, Dao et al. 2022, Alg. 1-2 without tiling):
#   s_ij = scale q_i . k_j,  lse_i = log sum_j exp(s_ij),  p_ij = exp(s_ij - lse_i),  o_i = sum_j p_ij v_j.
# Backward recomputes p from the saved lse: with D_i = dO_i . o_i and ds_ij = p_ij (dO_i . v_j - D_i),
#   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i.
# CPU: OpenMP over (batch, head), K^T and V^T staged so inner loops run along keys. CUDA: a thread per row.
# ---------------------------------------------------------------------------------------------------------
import functools  # noqa: E402

import numpy as np  # noqa: E402

from . import _build  # noqa: E402

_CPU_HEADER = _build.CPU_HEADER

_CPU_FWD = """
// in: q [B,H,N,D], k [B,H,M,D], v [B,H,M,D]; out: o [B,H,N,D], lse [B,H,N]
// Per (batch, head): K^T is copied once so that the inner loops run along the key axis j (axpy, vectorized).
const long BH = (long)in0_shape0 * in0_shape1;
const int N = in0_shape2;
constexpr int D = @D, M = @M;  // head size and key count as constants: the loops unroll and vectorize
const float sc = (float)@SCALE;
#pragma omp parallel for schedule(dynamic, 1) if (BH * N * M * D >= @PAR_MIN)
for (long bh = 0; bh < BH; bh++) {
    float kt[D * M], p[M];
    const float* kb = in1_p + bh * M * D;
    const float* vb = in2_p + bh * M * D;
    for (int j = 0; j < M; j++)
        for (int d = 0; d < D; d++) kt[d * M + j] = kb[j * D + d] * sc;
    for (int i = 0; i < N; i++) {
        const long r = bh * N + i;
        const float* qi = in0_p + r * D;
        for (int j = 0; j < M; j++) p[j] = 0;
        for (int d = 0; d < D; d++) {
            const float qd = qi[d];
            for (int j = 0; j < M; j++) p[j] += qd * kt[d * M + j];
        }
        float mx = p[0];
        for (int j = 1; j < M; j++) mx = p[j] > mx ? p[j] : mx;
        float sum = 0;
        for (int j = 0; j < M; j++) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
        const float inv = 1.0f / sum;
        float o[D];
        for (int d = 0; d < D; d++) o[d] = 0;
        for (int j = 0; j < M; j++) {
            const float w = p[j] * inv;
            for (int d = 0; d < D; d++) o[d] += w * vb[j * D + d];
        }
        float* oi = out0_p + r * D;
        for (int d = 0; d < D; d++) oi[d] = o[d];
        out1_p[r] = mx + std::log(sum);
    }
}
"""

_CPU_BWD = """
// in: q, k, v, o, lse, dO; out: dq, dk, dv.  Parallel over (batch, head): no write races.
const long BH = (long)in0_shape0 * in0_shape1;
const int N = in0_shape2;
constexpr int D = @D, M = @M;
const float sc = (float)@SCALE;
#pragma omp parallel for schedule(dynamic, 1) if (BH * N * M * D >= @PAR_MIN)
for (long bh = 0; bh < BH; bh++) {
    float kt[D * M], vt[D * M], dkt[D * M], dvt[D * M], p[M], ds[M];
    const float* kb = in1_p + bh * M * D;
    const float* vb = in2_p + bh * M * D;
    for (int j = 0; j < M; j++)
        for (int d = 0; d < D; d++) { kt[d * M + j] = kb[j * D + d]; vt[d * M + j] = vb[j * D + d]; }
    for (int t = 0; t < D * M; t++) { dkt[t] = 0; dvt[t] = 0; }
    for (int i = 0; i < N; i++) {
        const long r = bh * N + i;
        const float* qi = in0_p + r * D;
        const float* oi = in3_p + r * D;
        const float* gi = in5_p + r * D;
        const float lse = in4_p[r];
        float Di = 0;
        for (int d = 0; d < D; d++) Di += gi[d] * oi[d];
        for (int j = 0; j < M; j++) { p[j] = 0; ds[j] = 0; }
        for (int d = 0; d < D; d++) {
            const float qd = qi[d] * sc, gd = gi[d];
            for (int j = 0; j < M; j++) { p[j] += qd * kt[d * M + j]; ds[j] += gd * vt[d * M + j]; }
        }
        for (int j = 0; j < M; j++) {
            p[j] = std::exp(p[j] - lse);
            ds[j] = p[j] * (ds[j] - Di) * sc;
        }
        float* dqi = out0_p + r * D;
        for (int d = 0; d < D; d++) {
            const float qd = qi[d], gd = gi[d];
            float acc = 0;
            for (int j = 0; j < M; j++) {
                acc += ds[j] * kt[d * M + j];
                dkt[d * M + j] += ds[j] * qd;
                dvt[d * M + j] += p[j] * gd;
            }
            dqi[d] = acc;
        }
    }
    float* dkb = out1_p + bh * M * D;
    float* dvb = out2_p + bh * M * D;
    for (int j = 0; j < M; j++)
        for (int d = 0; d < D; d++) { dkb[j * D + d] = dkt[d * M + j]; dvb[j * D + d] = dvt[d * M + j]; }
}
"""

_CUDA_HEADER = _build.CUDA_HEADER + """
#define GDLIB_ATT_T 128
__global__ void gdlib_att_fwd(const float* q, const float* k, const float* v, float* o, float* lse,
                              long rows, int N, int D, int M, float sc) {
    const long r = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;
    if (r >= rows) return;
    const long bh = r / N;
    const float* qi = q + r * D;
    const float* kb = k + bh * M * D;
    const float* vb = v + bh * M * D;
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j < M; j++) {           // online max / sum (one pass)
        float s = 0;
        for (int d = 0; d < D; d++) s += qi[d] * kb[(long)j * D + d];
        s *= sc;
        if (s > mx) { sum = sum * expf(mx - s) + 1.0f; mx = s; } else { sum += expf(s - mx); }
    }
    const float l = mx + logf(sum);
    float* oi = o + r * D;
    for (int d = 0; d < D; d++) oi[d] = 0;
    for (int j = 0; j < M; j++) {
        float s = 0;
        for (int d = 0; d < D; d++) s += qi[d] * kb[(long)j * D + d];
        const float w = expf(s * sc - l);
        for (int d = 0; d < D; d++) oi[d] += w * vb[(long)j * D + d];
    }
    lse[r] = l;
}
__global__ void gdlib_att_bwd_q(const float* q, const float* k, const float* v, const float* o,
                                const float* lse, const float* g, float* dq, long rows, int N, int D, int M,
                                float sc) {
    const long r = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;
    if (r >= rows) return;
    const long bh = r / N;
    const float* qi = q + r * D;
    const float* gi = g + r * D;
    const float* oi = o + r * D;
    float* dqi = dq + r * D;
    float Di = 0;
    for (int d = 0; d < D; d++) { Di += gi[d] * oi[d]; dqi[d] = 0; }
    for (int j = 0; j < M; j++) {
        const float* kj = k + (bh * M + j) * D;
        const float* vj = v + (bh * M + j) * D;
        float s = 0, dp = 0;
        for (int d = 0; d < D; d++) { s += qi[d] * kj[d]; dp += gi[d] * vj[d]; }
        const float ds = expf(s * sc - lse[r]) * (dp - Di) * sc;
        for (int d = 0; d < D; d++) dqi[d] += ds * kj[d];
    }
}
__global__ void gdlib_att_bwd_kv(const float* q, const float* k, const float* v, const float* o,
                                 const float* lse, const float* g, float* dk, float* dv, long cols, int N,
                                 int D, int M, float sc) {
    const long c = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;   // one thread per key/value row j
    if (c >= cols) return;
    const long bh = c / M;
    const float* kj = k + c * D;
    const float* vj = v + c * D;
    float* dkj = dk + c * D;
    float* dvj = dv + c * D;
    for (int d = 0; d < D; d++) { dkj[d] = 0; dvj[d] = 0; }
    for (int i = 0; i < N; i++) {
        const long r = bh * N + i;
        const float* qi = q + r * D;
        const float* gi = g + r * D;
        const float* oi = o + r * D;
        float s = 0, dp = 0, Di = 0;
        for (int d = 0; d < D; d++) { s += qi[d] * kj[d]; dp += gi[d] * vj[d]; Di += gi[d] * oi[d]; }
        const float p = expf(s * sc - lse[r]);
        const float ds = p * (dp - Di) * sc;
        for (int d = 0; d < D; d++) { dkj[d] += ds * qi[d]; dvj[d] += p * gi[d]; }
    }
}
"""

_CUDA_FWD = """
const long rows = (long)in0_shape0 * in0_shape1 * in0_shape2;
gdlib_att_fwd<<<(rows + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, out0_p, out1_p, rows, in0_shape2, in0_shape3, in1_shape2, (float)@SCALE);
"""
_CUDA_BWD = """
const long rows = (long)in0_shape0 * in0_shape1 * in0_shape2;
const long cols = (long)in1_shape0 * in1_shape1 * in1_shape2;
gdlib_att_bwd_q<<<(rows + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, out0_p, rows, in0_shape2, in0_shape3, in1_shape2, (float)@SCALE);
gdlib_att_bwd_kv<<<(cols + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, out1_p, out2_p, cols, in0_shape2, in0_shape3, in1_shape2,
    (float)@SCALE);
"""


_MAX_CPU_BLOCK = 8192  # D * M floats per stack buffer (32 KiB, four of them); larger use the reference path


def _fill(src: str, scale: float, head_dim: int = 0, keys: int = 0) -> str:
    """Bake the softmax scale, head size and key count into a kernel source as constants."""
    return (src.replace("@SCALE", repr(float(scale))).replace("@D", str(int(head_dim)))
            .replace("@M", str(int(keys))).replace("@PAR_MIN", str(_build.PARALLEL_MIN_MACS)))


class _AttentionFn(jt.Function):
    """softmax(q k^T * scale) v with the recomputing fused backward above."""

    def __init__(self, scale: float):
        self.scale = scale

    def execute(self, q, k, v):
        B, H, N, _ = q.shape
        o, lse = jt.code([q.shape, (B, H, N)], [q.dtype, q.dtype], [q, k, v],
                         cpu_header=_CPU_HEADER, cpu_src=_fill(_CPU_FWD, self.scale, q.shape[-1], k.shape[2]),
                         cuda_header=_CUDA_HEADER, cuda_src=_fill(_CUDA_FWD, self.scale))
        self.saved = (q, k, v, o, lse)
        return o

    def grad(self, go):
        if go is None:
            return None, None, None
        q, k, v, o, lse = self.saved
        dq, dk, dv = jt.code([q.shape, k.shape, v.shape], [q.dtype] * 3, [q, k, v, o, lse, go],
                             cpu_header=_CPU_HEADER, cpu_src=_fill(_CPU_BWD, self.scale, q.shape[-1], k.shape[2]),
                             cuda_header=_CUDA_HEADER, cuda_src=_fill(_CUDA_BWD, self.scale))
        return dq, dk, dv


def attention_fused(q: "jt.Var", k: "jt.Var", v: "jt.Var", scale: float | None = None) -> "jt.Var":
    """The fused op (no [Nq, Nk] matrix in memory; threaded backward), no fallback."""
    _check_shapes(q, k, v)
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention_fused: v's head size {v.shape[-1]} != q's {q.shape[-1]} (use the reference)")
    if not jt.flags.use_cuda and q.shape[-1] * k.shape[2] > _MAX_CPU_BLOCK:
        raise ValueError(f"attention_fused: head size x keys = {q.shape[-1] * k.shape[2]} exceeds the CPU "
                         f"kernel's block of {_MAX_CPU_BLOCK} floats (use attention(), which falls back)")
    s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else float(scale)
    return _AttentionFn(s)(q, k, v)


def _probe() -> None:
    """Compile and run forward and backward of the fused op on a tiny input."""
    rng = np.random.default_rng(0)
    q, k, v = (jt.array(rng.normal(size=(1, 2, n, 4)).astype(np.float32)) for n in (3, 5, 5))
    o = attention_fused(q, k, v)
    grads = jt.grad((o * o).sum(), [q, k, v])
    jt.sync([o, *grads])
    if not all(np.isfinite(g.numpy()).all() for g in grads):
        raise RuntimeError("non-finite gradient from the fused attention probe")


@functools.lru_cache(maxsize=None)
def _available(device: int) -> bool:
    return _build.fused_ok("attention", _probe)
