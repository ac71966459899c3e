"""DoRA's per-output-unit scale g = m / ||W0 + s B A|| (Liu et al. 2024, Eq. 5), norm detached (their Sec. 4.3).

`dora_scale_reference` is plain Jittor: it materialises W0 + s B A, then a row reduction and a divide.
`dora_scale` runs one fused CPU pass (jt.code) that builds each row of W0 + s B A in a register buffer,
reduces it and divides m by the norm, without materialising the [out, in] matrix (used from FUSED_MIN_NUMEL weights up); its gradient flows to
m only (dg/dm = 1/n), which is exactly the detached-norm rule. The full-gradient variant (norm not
detached) and CUDA always use the reference.
"""
from __future__ import annotations

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from ._build import CPU_HEADER  # noqa: E402
from .switch import kernels_on  # noqa: E402


def _as_2d(weight: "jt.Var", lora_A: "jt.Var", lora_B: "jt.Var") -> tuple["jt.Var", "jt.Var", "jt.Var"]:
    """Flatten a Linear [out, in] or Conv2d [out, in, kh, kw] weight and its adapter to matrices."""
    out, r = weight.shape[0], lora_A.shape[0]
    return weight.reshape(out, -1), lora_A.reshape(r, -1), lora_B.reshape(out, r)


def dora_norm_reference(weight: "jt.Var", lora_A: "jt.Var", lora_B: "jt.Var", scaling: float) -> "jt.Var":
    """n = ||W0 + s B A|| per output unit (row of the flattened weight), not detached: [out]."""
    W, A, B = _as_2d(weight, lora_A, lora_B)
    V = W + scaling * jt.matmul(B, A)
    return jt.sqrt((V * V).sum(1))


def dora_scale_reference(weight: "jt.Var", lora_A: "jt.Var", lora_B: "jt.Var", magnitude: "jt.Var",
                         scaling: float, detach_norm: bool = True) -> "jt.Var":
    """g = m / ||W0 + s B A||, one value per output unit: [out] (Eq. 5 of Liu et al. 2024)."""
    n = dora_norm_reference(weight, lora_A, lora_B, scaling)
    if detach_norm:
        n = n.detach()
    return magnitude / n


_CPU_SRC = """
    const int n_out = in0_shape0, K = in0_shape1, r = in1_shape0;
    const float s = @in4(0);
    // single-threaded: OpenMP costs more than it saves at adapter sizes on a shared CPU
    for (int o = 0; o < n_out; o++) {
        std::vector<float> row(K);
        for (int k = 0; k < K; k++) row[k] = @in0(o, k);
        for (int j = 0; j < r; j++) {
            const float b = s * @in2(o, j);
            for (int k = 0; k < K; k++) row[k] += b * @in1(j, k);
        }
        float acc = 0.f;
        for (int k = 0; k < K; k++) acc += row[k] * row[k];
        const float n = std::sqrt(acc);
        @out0(o) = n;
        @out1(o) = @in3(o) / n;
    }
"""


def _fused_norm_and_scale(W: "jt.Var", A: "jt.Var", B: "jt.Var", m: "jt.Var",
                          scaling: float) -> tuple["jt.Var", "jt.Var"]:
    """One pass: n_o = ||W0_o + s (B A)_o||, g_o = m_o / n_o (float32, CPU)."""
    s = jt.array([scaling]).float32()
    n, g = jt.code([(W.shape[0],), (W.shape[0],)], ["float32", "float32"],
                   [W.float32(), A.float32(), B.float32(), m.float32(), s],
                   cpu_header=CPU_HEADER + "#include <vector>\n", cpu_src=_CPU_SRC)
    return n, g


class _DoraScale(jt.Function):
    """g = m / n with n treated as a constant: the backward pass is dg / n into m, nothing into W0, A, B."""

    def execute(self, W, A, B, m, scaling):
        n, g = _fused_norm_and_scale(W, A, B, m, scaling)
        self.n = n.detach()
        return g

    def grad(self, grad_g):
        return None, None, None, grad_g / self.n


# bench/adapters.py (norm op alone, forward + backward, rank 4, 2 shared cores): fused / reference time was
# 1.27 at [64, 64] and 1.14 at [128, 128] (Jittor's own fused reduction wins on small weights), but 0.03 at
# [256, 256], 0.08 at [512, 512] and 0.11 at [1024, 1024]. So the fused pass runs from 32768 weights up.
FUSED_MIN_NUMEL = 32768


def dora_scale_fused(weight: "jt.Var", lora_A: "jt.Var", lora_B: "jt.Var", magnitude: "jt.Var",
                     scaling: float) -> "jt.Var":
    """g = m / ||W0 + s B A|| in one fused CPU pass (norm detached: gradient into m only)."""
    W, A, B = _as_2d(weight, lora_A, lora_B)
    return _DoraScale.apply(W.detach(), A.detach(), B.detach(), magnitude, float(scaling))


def dora_scale(weight: "jt.Var", lora_A: "jt.Var", lora_B: "jt.Var", magnitude: "jt.Var",
               scaling: float, detach_norm: bool = True) -> "jt.Var":
    """g = m / ||W0 + s B A|| per output unit; the fused pass when the switch is on, the norm is detached, the
    backend is the CPU and the weight is large enough for it to pay off (FUSED_MIN_NUMEL); else the reference."""
    big = int(np.prod(weight.shape)) >= FUSED_MIN_NUMEL
    if not (kernels_on() and detach_norm and big) or jt.flags.use_cuda or weight.dtype != "float32":
        return dora_scale_reference(weight, lora_A, lora_B, magnitude, scaling, detach_norm)
    return dora_scale_fused(weight, lora_A, lora_B, magnitude, scaling)
