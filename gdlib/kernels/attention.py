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
# CPU: OpenMP over (batch, head); the five products per head run as register-blocked 4 x 16 tiles on padded
# scratch (S = Q K^T, O = P V; backward dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q). CUDA: a thread per row.
# ---------------------------------------------------------------------------------------------------------
import functools  # noqa: E402

import numpy as np  # noqa: E402

from . import _build  # noqa: E402

_CPU_HEADER = _build.CPU_HEADER + r"""
#include <vector>
#include <algorithm>
#include <cstring>
// C[n x 16t] (+)= A[n x k] B[k x 16t]: register-blocked tiles of 4 rows x 16 columns held in GCC vector registers
// (2 x 8 floats per row). A is read as A[r * ars + kk * acs] (so A^T is free); B and C are row-major scratch with
// row strides ldb, ldc that are multiples of 16 and zero-padded columns.
#define GDLIB_ATT_R 4
typedef float gdlib_v8 __attribute__((vector_size(32)));
static inline gdlib_v8 gdlib_ld8(const float* p) { gdlib_v8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void gdlib_st8(float* p, gdlib_v8 v) { std::memcpy(p, &v, sizeof v); }
template <int R>
static inline void gdlib_att_tile(int k, const float* __restrict A, long ars, long acs, const float* __restrict B,
                                  long ldb, float* __restrict C, long ldc, bool acc) {
    gdlib_v8 c0[R], c1[R];
    for (int r = 0; r < R; r++) {
        if (acc) { c0[r] = gdlib_ld8(C + r * ldc); c1[r] = gdlib_ld8(C + r * ldc + 8); }
        else { c0[r] = gdlib_v8{}; c1[r] = gdlib_v8{}; }
    }
    for (int kk = 0; kk < k; kk++) {
        const gdlib_v8 b0 = gdlib_ld8(B + kk * ldb), b1 = gdlib_ld8(B + kk * ldb + 8);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const float a = A[r * ars + kk * acs];
            c0[r] += a * b0;
            c1[r] += a * b1;
        }
    }
    for (int r = 0; r < R; r++) { gdlib_st8(C + r * ldc, c0[r]); gdlib_st8(C + r * ldc + 8, c1[r]); }
}
static inline void gdlib_att_gemm(int n, int mpad, int k, const float* A, long ars, long acs,
                                  const float* B, long ldb, float* C, long ldc, bool acc) {
    for (int j0 = 0; j0 < mpad; j0 += 16) {
        int i = 0;
        for (; i + GDLIB_ATT_R <= n; i += GDLIB_ATT_R)
            gdlib_att_tile<GDLIB_ATT_R>(k, A + i * ars, ars, acs, B + j0, ldb, C + i * ldc + j0, ldc, acc);
        for (; i < n; i++)
            gdlib_att_tile<1>(k, A + i * ars, ars, acs, B + j0, ldb, C + i * ldc + j0, ldc, acc);
    }
}
static inline int gdlib_att_pad(int n) { return (n + 15) / 16 * 16; }
"""

# Shared by the forward and the backward: the layout's sizes, and the loop over (batch, head) with its pointers.
_CPU_SHAPES = """constexpr int H = @H, TOK = @TOK;
const int B = in0_shape0;
#if @TOK
const int N = in0_shape1, M = in1_shape1, D = in0_shape2 / H;
#else
const int N = in0_shape2, M = in1_shape2, D = in0_shape3;
#endif
"""
_CPU_HEAD_LOOP = """    #pragma omp for schedule(dynamic, 1)
    for (long bh = 0; bh < (long)B * H; bh++) {
        const long b = bh / H, h = bh % H;
        const long qoff = TOK ? b * N * rs + h * D : bh * N * D;
        const long koff = TOK ? b * M * rs + h * D : bh * M * D;
        const float* qb = in0_p + qoff;
        const float* kb = in1_p + koff;
        const float* vb = in2_p + koff;
"""

_CPU_FWD = """
// in: q, k, v; out: o, lse [B,H,N]. Layout @TOK = 0: q [B,H,N,D], k, v [B,H,M,D]; @TOK = 1 (token layout, heads
// side by side as the projections write them): q [B,N,H*D], k, v [B,M,H*D], o like q. Per (batch, head):
// S = Q K^T, P = softmax(scale S) row-wise, O = P V, lse_i = log sum_j exp(scale s_ij), all in padded scratch.
@SHAPES
const long rs = TOK ? (long)H * D : D;             // row stride of q, k, v, o
const float sc = (float)@SCALE;
const int Mp = gdlib_att_pad(M), Dp = gdlib_att_pad(D);
#pragma omp parallel if ((long)B * H * N * M * D >= @PAR_MIN)
{
    std::vector<float> kt_((size_t)D * Mp), vs_((size_t)M * Dp), s_((size_t)N * Mp), o_((size_t)N * Dp);
    float *kt = kt_.data(), *vs = vs_.data(), *s = s_.data(), *os = o_.data();
@HEAD_LOOP
        for (int d = 0; d < D; d++) {                  // K^T [D, Mp] and V [M, Dp], zero-padded
            float* r = kt + (size_t)d * Mp;
            for (int j = 0; j < M; j++) r[j] = kb[j * rs + d];
            for (int j = M; j < Mp; j++) r[j] = 0;
        }
        for (int j = 0; j < M; j++) {
            float* r = vs + (size_t)j * Dp;
            for (int d = 0; d < D; d++) r[d] = vb[j * rs + d];
            for (int d = D; d < Dp; d++) r[d] = 0;
        }
        gdlib_att_gemm(N, Mp, D, qb, rs, 1, kt, Mp, s, Mp, false);          // S = Q K^T
        float* lse = out1_p + bh * N;
        for (int i = 0; i < N; i++) {                  // P = softmax(scale S) in place; lse_i for the backward
            float* p = s + (size_t)i * Mp;
            for (int j = 0; j < M; j++) p[j] *= sc;
            float mx = p[0];
            for (int j = 1; j < M; j++) mx = p[j] > mx ? p[j] : mx;
            float sum = 0;
            for (int j = 0; j < M; j++) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
            lse[i] = mx + std::log(sum);
            const float inv = 1.0f / sum;
            for (int j = 0; j < M; j++) p[j] *= inv;
        }
        gdlib_att_gemm(N, Dp, M, s, Mp, 1, vs, Dp, os, Dp, false);          // O = P V
        float* ob = out0_p + qoff;
        for (int i = 0; i < N; i++)
            for (int d = 0; d < D; d++) ob[i * rs + d] = os[(size_t)i * Dp + d];
    }
}
""".replace("@SHAPES\n", _CPU_SHAPES).replace("@HEAD_LOOP\n", _CPU_HEAD_LOOP)

_CPU_BWD = """
// in: q, k, v, o, lse, dO; out: dq, dk, dv (layouts as in the forward). Parallel over (batch, head): no races.
// P = exp(scale Q K^T - lse), dP = dO V^T, dS = P (dP - D_i) with D_i = dO_i . o_i,
// dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
@SHAPES
const long rs = TOK ? (long)H * D : D;
const float sc = (float)@SCALE;
const int Mp = gdlib_att_pad(M), Dp = gdlib_att_pad(D);
#pragma omp parallel if ((long)B * H * N * M * D >= @PAR_MIN)
{
    std::vector<float> kt_((size_t)D * Mp), vt_((size_t)D * Mp), ks_((size_t)M * Dp), qs_((size_t)N * Dp),
                       gs_((size_t)N * Dp), p_((size_t)N * Mp), dp_((size_t)N * Mp), r_((size_t)std::max(N, M) * Dp),
                       di_(N);
    float *kt = kt_.data(), *vt = vt_.data(), *ks = ks_.data(), *qs = qs_.data(), *gs = gs_.data(),
          *p = p_.data(), *dp = dp_.data(), *res = r_.data(), *di = di_.data();
@HEAD_LOOP
        const float* ob = in3_p + qoff;
        const float* lse = in4_p + bh * N;
        const float* gb = in5_p + qoff;
        for (int d = 0; d < D; d++) {                  // K^T, V^T [D, Mp]
            float* a = kt + (size_t)d * Mp;
            float* c = vt + (size_t)d * Mp;
            for (int j = 0; j < M; j++) { a[j] = kb[j * rs + d]; c[j] = vb[j * rs + d]; }
            for (int j = M; j < Mp; j++) { a[j] = 0; c[j] = 0; }
        }
        for (int j = 0; j < M; j++) {                  // K [M, Dp]
            float* a = ks + (size_t)j * Dp;
            for (int d = 0; d < D; d++) a[d] = kb[j * rs + d];
            for (int d = D; d < Dp; d++) a[d] = 0;
        }
        for (int i = 0; i < N; i++) {                  // Q, dO [N, Dp]; D_i = dO_i . o_i
            float* a = qs + (size_t)i * Dp;
            float* g = gs + (size_t)i * Dp;
            float acc = 0;
            for (int d = 0; d < D; d++) {
                a[d] = qb[i * rs + d]; g[d] = gb[i * rs + d];
                acc += gb[i * rs + d] * ob[i * rs + d];
            }
            for (int d = D; d < Dp; d++) { a[d] = 0; g[d] = 0; }
            di[i] = acc;
        }
        gdlib_att_gemm(N, Mp, D, qb, rs, 1, kt, Mp, p, Mp, false);          // S = Q K^T
        gdlib_att_gemm(N, Mp, D, gb, rs, 1, vt, Mp, dp, Mp, false);         // dP = dO V^T
        for (int i = 0; i < N; i++) {
            float* pr = p + (size_t)i * Mp;
            float* dr = dp + (size_t)i * Mp;
            const float l = lse[i], dd = di[i];
            for (int j = 0; j < M; j++) {
                pr[j] = std::exp(sc * pr[j] - l);
                dr[j] = pr[j] * (dr[j] - dd);          // dS (without the scale)
            }
        }
        float* dqb = out0_p + qoff;
        float* dkb = out1_p + koff;
        float* dvb = out2_p + koff;
        gdlib_att_gemm(M, Dp, N, p, 1, Mp, gs, Dp, res, Dp, false);         // dV = P^T dO
        for (int j = 0; j < M; j++)
            for (int d = 0; d < D; d++) dvb[j * rs + d] = res[(size_t)j * Dp + d];
        gdlib_att_gemm(M, Dp, N, dp, 1, Mp, qs, Dp, res, Dp, false);        // dK = scale dS^T Q
        for (int j = 0; j < M; j++)
            for (int d = 0; d < D; d++) dkb[j * rs + d] = sc * res[(size_t)j * Dp + d];
        gdlib_att_gemm(N, Dp, M, dp, Mp, 1, ks, Dp, res, Dp, false);        // dQ = scale dS K
        for (int i = 0; i < N; i++)
            for (int d = 0; d < D; d++) dqb[i * rs + d] = sc * res[(size_t)i * Dp + d];
    }
}
""".replace("@SHAPES\n", _CPU_SHAPES).replace("@HEAD_LOOP\n", _CPU_HEAD_LOOP)

_CUDA_HEADER = _build.CUDA_HEADER + """
#define GDLIB_ATT_T 128
// Offset of row i (of n rows) of head h in batch b: tok = 1 for [B, n, H*D], tok = 0 for [B, H, n, D].
__device__ inline long gdlib_att_row(long b, long h, long i, long n, int H, int D, int tok) {
    return tok ? ((b * n + i) * H + h) * D : ((b * H + h) * n + i) * D;
}
__global__ void gdlib_att_fwd(const float* q, const float* k, const float* v, float* o, float* lse,
                              long rows, int N, int D, int M, int H, int tok, float sc) {
    const long r = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;   // one thread per query row (b, h, i)
    if (r >= rows) return;
    const long bh = r / N, i = r % N, b = bh / H, h = bh % H;
    const float* qi = q + gdlib_att_row(b, h, i, N, H, D, tok);
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j < M; j++) {           // online max / sum (one pass)
        const float* kj = k + gdlib_att_row(b, h, j, M, H, D, tok);
        float s = 0;
        for (int d = 0; d < D; d++) s += qi[d] * kj[d];
        s *= sc;
        if (s > mx) { sum = sum * expf(mx - s) + 1.0f; mx = s; } else { sum += expf(s - mx); }
    }
    const float l = mx + logf(sum);
    float* oi = o + gdlib_att_row(b, h, i, N, H, D, tok);
    for (int d = 0; d < D; d++) oi[d] = 0;
    for (int j = 0; j < M; j++) {
        const float* kj = k + gdlib_att_row(b, h, j, M, H, D, tok);
        const float* vj = v + gdlib_att_row(b, h, j, M, H, D, tok);
        float s = 0;
        for (int d = 0; d < D; d++) s += qi[d] * kj[d];
        const float w = expf(s * sc - l);
        for (int d = 0; d < D; d++) oi[d] += w * vj[d];
    }
    lse[r] = l;
}
__global__ void gdlib_att_bwd_q(const float* q, const float* k, const float* v, const float* o,
                                const float* lse, const float* g, float* dq, long rows, int N, int D, int M,
                                int H, int tok, float sc) {
    const long r = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;
    if (r >= rows) return;
    const long bh = r / N, i = r % N, b = bh / H, h = bh % H;
    const long qo = gdlib_att_row(b, h, i, N, H, D, tok);
    const float* qi = q + qo;
    const float* gi = g + qo;
    const float* oi = o + qo;
    float* dqi = dq + qo;
    float Di = 0;
    for (int d = 0; d < D; d++) { Di += gi[d] * oi[d]; dqi[d] = 0; }
    for (int j = 0; j < M; j++) {
        const float* kj = k + gdlib_att_row(b, h, j, M, H, D, tok);
        const float* vj = v + gdlib_att_row(b, h, j, M, H, D, tok);
        float s = 0, dp = 0;
        for (int d = 0; d < D; d++) { s += qi[d] * kj[d]; dp += gi[d] * vj[d]; }
        const float ds = expf(s * sc - lse[r]) * (dp - Di) * sc;
        for (int d = 0; d < D; d++) dqi[d] += ds * kj[d];
    }
}
__global__ void gdlib_att_bwd_kv(const float* q, const float* k, const float* v, const float* o,
                                 const float* lse, const float* g, float* dk, float* dv, long cols, int N,
                                 int D, int M, int H, int tok, float sc) {
    const long c = (long)blockIdx.x * GDLIB_ATT_T + threadIdx.x;   // one thread per key/value row (b, h, j)
    if (c >= cols) return;
    const long bh = c / M, j = c % M, b = bh / H, h = bh % H;
    const long ko = gdlib_att_row(b, h, j, M, H, D, tok);
    const float* kj = k + ko;
    const float* vj = v + ko;
    float* dkj = dk + ko;
    float* dvj = dv + ko;
    for (int d = 0; d < D; d++) { dkj[d] = 0; dvj[d] = 0; }
    for (int i = 0; i < N; i++) {
        const long r = bh * N + i;
        const long qo = gdlib_att_row(b, h, i, N, H, D, tok);
        const float* qi = q + qo;
        const float* gi = g + qo;
        const float* oi = o + qo;
        float s = 0, dp = 0, Di = 0;
        for (int d = 0; d < D; d++) { s += qi[d] * kj[d]; dp += gi[d] * vj[d]; Di += gi[d] * oi[d]; }
        const float p = expf(s * sc - lse[r]);
        const float ds = p * (dp - Di) * sc;
        for (int d = 0; d < D; d++) { dkj[d] += ds * qi[d]; dvj[d] += p * gi[d]; }
    }
}
"""

# Shapes as (N, D, M) for both layouts: @TOK = 1 reads q [B, N, H*D], k [B, M, H*D].
_CUDA_DIMS = """
constexpr int H = @H, TOK = @TOK;
#if @TOK
const int N = in0_shape1, M = in1_shape1, D = in0_shape2 / H;
#else
const int N = in0_shape2, M = in1_shape2, D = in0_shape3;
#endif
const long rows = (long)in0_shape0 * H * N, cols = (long)in0_shape0 * H * M;
"""
_CUDA_FWD = _CUDA_DIMS + """
gdlib_att_fwd<<<(rows + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, out0_p, out1_p, rows, N, D, M, H, TOK, (float)@SCALE);
"""
_CUDA_BWD = _CUDA_DIMS + """
gdlib_att_bwd_q<<<(rows + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, out0_p, rows, N, D, M, H, TOK, (float)@SCALE);
gdlib_att_bwd_kv<<<(cols + GDLIB_ATT_T - 1) / GDLIB_ATT_T, GDLIB_ATT_T>>>(
    in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, out1_p, out2_p, cols, N, D, M, H, TOK, (float)@SCALE);
"""


_MAX_CPU_SCRATCH = 1 << 22  # floats of per-thread scratch of the CPU backward; beyond it the reference runs


def _scratch_floats(N: int, M: int, D: int) -> int:
    """Per-thread scratch of the CPU backward in floats: K^T, V^T [D, Mp], K [M, Dp], Q, dO [N, Dp], P, dS [N, Mp]."""
    Mp, Dp = -(-M // 16) * 16, -(-D // 16) * 16
    return 2 * (D + N) * Mp + (3 * N + 2 * M + max(N, M)) * Dp + N


def _cpu_scratch(q, k) -> int:
    """Per-thread scratch of the CPU backward for q [B, H, Nq, d], k [B, H, Nk, d]."""
    return _scratch_floats(q.shape[2], k.shape[2], q.shape[-1])


def _fill(src: str, scale: float, heads: int, tokens: bool) -> str:
    """Bake the softmax scale, head count and layout into a kernel source as constants."""
    return (src.replace("@SCALE", repr(float(scale))).replace("@H", str(int(heads)))
            .replace("@TOK", "1" if tokens else "0").replace("@PAR_MIN", str(_build.PARALLEL_MIN_MACS)))


class _AttentionFn(jt.Function):
    """softmax(q k^T * scale) v with the recomputing fused backward above; heads = 0 for [B, H, N, d] inputs,
    else the head count of token-layout inputs [B, N, heads * d]."""

    def __init__(self, scale: float, heads: int = 0):
        self.scale, self.heads, self.tokens = scale, heads, heads > 0

    def execute(self, q, k, v):
        H = self.heads if self.tokens else q.shape[1]
        N = q.shape[1] if self.tokens else q.shape[2]
        srcs = dict(cpu_header=_CPU_HEADER, cuda_header=_CUDA_HEADER)
        o, lse = jt.code([q.shape, (q.shape[0], H, N)], [q.dtype, q.dtype], [q, k, v],
                         cpu_src=_fill(_CPU_FWD, self.scale, H, self.tokens),
                         cuda_src=_fill(_CUDA_FWD, self.scale, H, self.tokens), **srcs)
        self.saved = (q, k, v, o, lse, H)
        return o

    def grad(self, go):
        if go is None:
            return None, None, None
        q, k, v, o, lse, H = self.saved
        dq, dk, dv = jt.code([q.shape, k.shape, v.shape], [q.dtype] * 3, [q, k, v, o, lse, go],
                             cpu_header=_CPU_HEADER, cpu_src=_fill(_CPU_BWD, self.scale, H, self.tokens),
                             cuda_header=_CUDA_HEADER, cuda_src=_fill(_CUDA_BWD, self.scale, H, self.tokens))
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


# ---------------------------------------------------------------------------------------------------------
# Token layout: q [B, N, heads * d], k and v [B, M, heads * d] exactly as the to_q / to_k / to_v projections
# write them; the kernel reads each head's columns in place, so no [B, heads, N, d] transposed copies (and
# none of their gradients) are made.
# ---------------------------------------------------------------------------------------------------------
def _check_token_shapes(q, k, v, heads: int) -> None:
    """Clear errors for token-layout inputs that do not fit."""
    if len(q.shape) != 3 or len(k.shape) != 3 or len(v.shape) != 3:
        raise ValueError(f"multihead_attention: q, k, v must be [B, N, heads*d]; got {q.shape}, {k.shape}, {v.shape}")
    if not isinstance(heads, int) or heads < 1 or q.shape[2] % heads:
        raise ValueError(f"multihead_attention: width {q.shape[2]} does not split into {heads} heads")
    if q.shape[0] != k.shape[0] or tuple(k.shape) != tuple(v.shape) or q.shape[2] != k.shape[2]:
        raise ValueError(f"multihead_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "(need q [B, N, C], k and v [B, M, C])")
    if k.shape[1] < 1:
        raise ValueError(f"multihead_attention: need at least one key; got k {k.shape}")


def _split_heads(x: "jt.Var", heads: int) -> "jt.Var":
    B, N, C = x.shape
    return x.reshape(B, N, heads, C // heads).transpose(0, 2, 1, 3)


def multihead_attention_reference(q: "jt.Var", k: "jt.Var", v: "jt.Var", heads: int,
                                  scale: float | None = None) -> "jt.Var":
    """Eq. 1 per head on [B, N, heads*d] inputs: split heads, attention_reference, merge heads back."""
    _check_token_shapes(q, k, v, heads)
    B, N, C = q.shape
    o = attention_reference(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), scale)
    return o.transpose(0, 2, 1, 3).reshape(B, N, C)


def multihead_attention_fused(q: "jt.Var", k: "jt.Var", v: "jt.Var", heads: int,
                              scale: float | None = None) -> "jt.Var":
    """The fused op reading and writing the token layout [B, N, heads*d] directly, no fallback."""
    _check_token_shapes(q, k, v, heads)
    D = q.shape[2] // heads
    if not jt.flags.use_cuda and _scratch_floats(q.shape[1], k.shape[1], D) > _MAX_CPU_SCRATCH:
        raise ValueError(f"multihead_attention_fused: {_scratch_floats(q.shape[1], k.shape[1], D)} floats of "
                         f"scratch per thread exceed the CPU kernel's limit of {_MAX_CPU_SCRATCH} "
                         "(use multihead_attention(), which falls back)")
    s = (1.0 / math.sqrt(D)) if scale is None else float(scale)
    return _AttentionFn(s, heads)(q, k, v)


def multihead_attention(q: "jt.Var", k: "jt.Var", v: "jt.Var", heads: int, scale: float | None = None) -> "jt.Var":
    """Multi-head attention on [B, N, heads*d] (Vaswani et al. 2017, Eq. 1 per head); fused when the switch is on."""
    _check_token_shapes(q, k, v, heads)
    if (kernels_on() and all(str(t.dtype) == "float32" for t in (q, k, v))
            and (jt.flags.use_cuda or _scratch_floats(q.shape[1], k.shape[1], q.shape[2] // heads) <= _MAX_CPU_SCRATCH)
            and _available(_build.device_key())):
        return multihead_attention_fused(q, k, v, heads, scale)
    return multihead_attention_reference(q, k, v, heads, scale)


def _probe() -> None:
    """Compile and run forward and backward of the fused op (both layouts) on tiny inputs."""
    rng = np.random.default_rng(0)
    q, k, v = (jt.array(rng.normal(size=(1, 2, n, 4)).astype(np.float32)) for n in (3, 5, 5))
    o = attention_fused(q, k, v)
    grads = jt.grad((o * o).sum(), [q, k, v])
    qt, kt, vt = (jt.array(rng.normal(size=(1, n, 8)).astype(np.float32)) for n in (3, 5, 5))
    ot = multihead_attention_fused(qt, kt, vt, 2)
    grads += jt.grad((ot * ot).sum(), [qt, kt, vt])
    jt.sync([o, ot, *grads])
    if not all(np.isfinite(g.numpy()).all() for g in grads):
        raise RuntimeError("non-finite gradient from the fused attention probe")


@functools.lru_cache(maxsize=None)
def _available(device: int) -> bool:
    return _build.fused_ok("attention", _probe)
