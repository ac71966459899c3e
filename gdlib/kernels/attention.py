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
            and (jt.flags.use_cuda or _cpu_scratch(q, k) <= _MAX_CPU_SCRATCH)
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
# CPU: OpenMP over (batch, head), transposed layouts so inner loops run along queries. CUDA: a thread per row.
# ---------------------------------------------------------------------------------------------------------
import functools  # noqa: E402

import numpy as np  # noqa: E402

from . import _build  # noqa: E402

_CPU_HEADER = _build.CPU_HEADER + "#include <vector>\n"

_CPU_FWD = """
// in: q [B,H,N,D], k [B,H,M,D], v [B,H,M,D]; out: o [B,H,N,D], lse [B,H,N]
// Per (batch, head) the work runs in transposed layouts (Q^T, S^T, O^T: query index innermost), so that every
// inner loop, the softmax's max and sum included, is a contiguous loop over queries i that vectorizes.
const long BH = (long)in0_shape0 * in0_shape1;
const int N = in0_shape2, M = in1_shape2;
constexpr int D = @D;  // head size as a constant: the d-loops unroll
const float sc = (float)@SCALE;
#pragma omp parallel if (BH * N * M * D >= @PAR_MIN)
{
    std::vector<float> qt_((size_t)D * N), st_((size_t)M * N), ot_((size_t)D * N), mx_(N), sm_(N);
    float *qt = qt_.data(), *st = st_.data(), *ot = ot_.data(), *mx = mx_.data(), *sm = sm_.data();
    #pragma omp for schedule(dynamic, 1)
    for (long bh = 0; bh < BH; bh++) {
        const float* qb = in0_p + bh * N * D;
        const float* kb = in1_p + bh * M * D;
        const float* vb = in2_p + bh * M * D;
        for (int i = 0; i < N; i++)
            for (int d = 0; d < D; d++) qt[d * N + i] = qb[i * D + d] * sc;
        for (int j = 0; j < M; j++) {                       // S^T[j, :] = sum_d k[j, d] Q^T[d, :]
            float* s = st + (size_t)j * N;
            for (int i = 0; i < N; i++) s[i] = 0;
            for (int d = 0; d < D; d++) {
                const float kd = kb[j * D + d];
                const float* q = qt + (size_t)d * N;
                for (int i = 0; i < N; i++) s[i] += kd * q[i];
            }
        }
        for (int i = 0; i < N; i++) { mx[i] = st[i]; sm[i] = 0; }
        for (int j = 1; j < M; j++) {
            const float* s = st + (size_t)j * N;
            for (int i = 0; i < N; i++) mx[i] = s[i] > mx[i] ? s[i] : mx[i];
        }
        for (int j = 0; j < M; j++) {
            float* s = st + (size_t)j * N;
            for (int i = 0; i < N; i++) { s[i] = std::exp(s[i] - mx[i]); sm[i] += s[i]; }
        }
        for (int t = 0; t < D * N; t++) ot[t] = 0;
        for (int j = 0; j < M; j++) {                       // O^T[d, :] += v[j, d] P^T[j, :]
            const float* p = st + (size_t)j * N;
            for (int d = 0; d < D; d++) {
                const float vd = vb[j * D + d];
                float* o = ot + (size_t)d * N;
                for (int i = 0; i < N; i++) o[i] += vd * p[i];
            }
        }
        for (int i = 0; i < N; i++) { out1_p[bh * N + i] = mx[i] + std::log(sm[i]); sm[i] = 1.0f / sm[i]; }
        float* ob = out0_p + bh * N * D;
        for (int i = 0; i < N; i++)
            for (int d = 0; d < D; d++) ob[i * D + d] = ot[d * N + i] * sm[i];
    }
}
"""

_CPU_BWD = """
// in: q, k, v, o, lse, dO; out: dq, dk, dv.  Parallel over (batch, head): no write races.
// Same transposed layouts as the forward; dS' = P (dP - D_i) is kept unscaled, the scale enters via Q^T.
const long BH = (long)in0_shape0 * in0_shape1;
const int N = in0_shape2, M = in1_shape2;
constexpr int D = @D;
const float sc = (float)@SCALE;
#pragma omp parallel if (BH * N * M * D >= @PAR_MIN)
{
    std::vector<float> qt_((size_t)D * N), gt_((size_t)D * N), dqt_((size_t)D * N), pt_((size_t)M * N),
                       dst_((size_t)M * N), di_(N);
    float *qt = qt_.data(), *gt = gt_.data(), *dqt = dqt_.data(), *pt = pt_.data(), *dst = dst_.data(),
          *di = di_.data();
    #pragma omp for schedule(dynamic, 1)
    for (long bh = 0; bh < BH; bh++) {
        const float* qb = in0_p + bh * N * D;
        const float* kb = in1_p + bh * M * D;
        const float* vb = in2_p + bh * M * D;
        const float* ob = in3_p + bh * N * D;
        const float* lse = in4_p + bh * N;
        const float* gb = in5_p + bh * N * D;
        for (int i = 0; i < N; i++) {
            float acc = 0;
            for (int d = 0; d < D; d++) {
                qt[d * N + i] = qb[i * D + d] * sc;
                gt[d * N + i] = gb[i * D + d];
                acc += gb[i * D + d] * ob[i * D + d];
            }
            di[i] = acc;                                    // D_i = dO_i . o_i
        }
        for (int j = 0; j < M; j++) {
            float* p = pt + (size_t)j * N;
            float* ds = dst + (size_t)j * N;
            for (int i = 0; i < N; i++) { p[i] = 0; ds[i] = 0; }
            for (int d = 0; d < D; d++) {
                const float kd = kb[j * D + d], vd = vb[j * D + d];
                const float* q = qt + (size_t)d * N;
                const float* g = gt + (size_t)d * N;
                for (int i = 0; i < N; i++) { p[i] += kd * q[i]; ds[i] += vd * g[i]; }
            }
            for (int i = 0; i < N; i++) {
                p[i] = std::exp(p[i] - lse[i]);
                ds[i] = p[i] * (ds[i] - di[i]);
            }
        }
        for (int t = 0; t < D * N; t++) dqt[t] = 0;
        float* dkb = out1_p + bh * M * D;
        float* dvb = out2_p + bh * M * D;
        for (int j = 0; j < M; j++) {
            const float* p = pt + (size_t)j * N;
            const float* ds = dst + (size_t)j * N;
            for (int d = 0; d < D; d++) {
                const float kd = kb[j * D + d] * sc;
                float* dq = dqt + (size_t)d * N;
                const float* q = qt + (size_t)d * N;
                const float* g = gt + (size_t)d * N;
                float ak = 0, av = 0;
                for (int i = 0; i < N; i++) {
                    dq[i] += kd * ds[i];
                    ak += ds[i] * q[i];
                    av += p[i] * g[i];
                }
                dkb[j * D + d] = ak;                        // dk_j = sum_i dS'_ij (scale q_i)
                dvb[j * D + d] = av;                        // dv_j = sum_i p_ij dO_i
            }
        }
        float* dqb = out0_p + bh * N * D;
        for (int i = 0; i < N; i++)
            for (int d = 0; d < D; d++) dqb[i * D + d] = dqt[d * N + i];
    }
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


_MAX_CPU_SCRATCH = 1 << 22  # floats of per-thread scratch, (3 D + 2 Nk) Nq; beyond it the reference runs


def _cpu_scratch(q, k) -> int:
    """Per-thread scratch of the CPU backward in floats: Q^T, dO^T, dQ^T [d, Nq] and P^T, dS^T [Nk, Nq]."""
    return (3 * q.shape[-1] + 2 * k.shape[2]) * q.shape[2]


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
    if not jt.flags.use_cuda and _cpu_scratch(q, k) > _MAX_CPU_SCRATCH:
        raise ValueError(f"attention_fused: {_cpu_scratch(q, k)} floats of scratch per thread exceed the CPU "
                         f"kernel's limit of {_MAX_CPU_SCRATCH} (use attention(), which falls back)")
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
