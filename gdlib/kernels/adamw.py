"""AdamW (Loshchilov & Hutter 2019, Alg. 2) with gradient-norm clipping, one fused op per parameter.

`AdamW` is a drop-in subclass of jt.optim.AdamW (same state: pg["m"], pg["values"], n_step; same math as
its step()), whose step runs one jt.code op per parameter instead of about fifteen Jittor ops, and whose
clip_grad_norm sums the squared gradients of all parameters in one op instead of concatenating them. With the switch off
(gdlib.kernels.use_kernels(False)) both methods are jt.optim.AdamW's own (the reference).
Difference: clip_grad_norm leaves pg["grads"] unscaled and step() applies the clip factor.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from . import _build  # noqa: E402
from .switch import kernels_on  # noqa: E402

# Per element, with h = [1 - lr wd, b0, 1 - b0, b1, 1 - b1, eps, lr / bc1, 1 / sqrt(bc2), clip factor] (the
# complements in double, as jt.optim.AdamW's Python floats; 1 - 0.999f in float32 is off by 1e-5):
#   g' = clip g,  m = b0 m + (1 - b0) g',  v = b1 v + (1 - b1) g'^2,
#   p = p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)      (jt.optim.AdamW.step, op by op)
_CPU_STEP = """
// in: p, g, m, v, h[9]; out: p', m', v'
const long n = in0->num;
const float decay = in4_p[0], b0 = in4_p[1], c0 = in4_p[2], b1 = in4_p[3], c1 = in4_p[4], eps = in4_p[5],
            step = in4_p[6], rsq2 = in4_p[7], clip = in4_p[8];
#pragma omp parallel for schedule(static) if (n >= @PAR_MIN)
for (long i = 0; i < n; i++) {
    const float g = in1_p[i] * clip;
    const float m = b0 * in2_p[i] + c0 * g;
    const float v = b1 * in3_p[i] + c1 * g * g;
    out1_p[i] = m;
    out2_p[i] = v;
    out0_p[i] = in0_p[i] * decay - step * m / (std::sqrt(v) * rsq2 + eps);
}
"""

_CUDA_HEADER = _build.CUDA_HEADER + """
__global__ void gdlib_adamw_step(const float* p, const float* gr, const float* m0, const float* v0, const float* h,
                                 float* p1, float* m1, float* v1, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gr[i] * h[8];
    const float m = h[1] * m0[i] + h[2] * g;
    const float v = h[3] * v0[i] + h[4] * g * g;
    m1[i] = m;
    v1[i] = v;
    p1[i] = p[i] * h[0] - h[6] * m / (sqrtf(v) * h[7] + h[5]);
}
__global__ void gdlib_sumsq(const float* x, float* out, long n) {   // one block of 256 threads
    __shared__ double sh[256];
    double s = 0;
    for (long i = threadIdx.x; i < n; i += 256) s += (double)x[i] * x[i];
    sh[threadIdx.x] = s; __syncthreads();
    for (int o = 128; o > 0; o >>= 1) { if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o]; __syncthreads(); }
    if (threadIdx.x == 0) out[0] = (float)sh[0];
}
"""
_CUDA_STEP = """
const long n = in0->num;
gdlib_adamw_step<<<(n + 255) / 256, 256>>>(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, out1_p, out2_p, n);
"""

_CPU_SUMSQ_ONE = """
{   // sum of squares of input @I, in double
    const long n = in@I->num;
    const float* x = in@I_p;
    double s = 0;
    #pragma omp parallel for reduction(+:s) schedule(static) if (n >= @PAR_MIN)
    for (long i = 0; i < n; i++) s += (double)x[i] * x[i];
    out0_p[@I] = (float)s;
}
"""
_CUDA_SUMSQ_ONE = """
gdlib_sumsq<<<1, 256>>>(in@I_p, out0_p + @I, in@I->num);
"""


def _fill(src: str) -> str:
    return src.replace("@PAR_MIN", str(_build.PARALLEL_MIN_ELEMENTS))


def adamw_update(p: "jt.Var", g: "jt.Var", m: "jt.Var", v: "jt.Var", h: "jt.Var"):
    """The fused op: new (p, m, v) from h = [1 - lr wd, b0, 1 - b0, b1, 1 - b1, eps, lr / bc1, 1 / sqrt(bc2), clip]."""
    return jt.code([p.shape] * 3, [p.dtype] * 3, [p, g, m, v, h], cpu_header=_build.CPU_HEADER,
                   cpu_src=_fill(_CPU_STEP), cuda_header=_CUDA_HEADER, cuda_src=_CUDA_STEP)


def sums_of_squares(grads: list) -> "jt.Var":
    """[len(grads)] Var of sum g^2 per gradient (accumulated in double), all in one op."""
    src = lambda one: "".join(one.replace("@I", str(i)) for i in range(len(grads)))  # noqa: E731
    return jt.code([(len(grads),)], [grads[0].dtype], list(grads), cpu_header=_build.CPU_HEADER,
                   cpu_src=_fill(src(_CPU_SUMSQ_ONE)), cuda_header=_CUDA_HEADER,
                   cuda_src=src(_CUDA_SUMSQ_ONE))[0]


def grad_norm(opt) -> "jt.Var | None":
    """Joint 2-norm of the gradients of opt's last backward ([1] Var, lazy; None before any backward)."""
    grads = [g for pg in opt.param_groups for p, g in zip(pg["params"], pg.get("grads", [])) if not p.is_stop_grad()]
    if not grads:
        return None
    if kernels_on() and _available(_build.device_key()) and all(str(g.dtype) == "float32" for g in grads):
        return jt.sqrt(sums_of_squares(grads).sum()).reshape(1)
    return jt.sqrt(sum(g.float32().sqr().sum() for g in grads)).reshape(1)


class AdamW(jt.optim.AdamW):
    """jt.optim.AdamW with one fused op per parameter (switch on) or jt.optim.AdamW's own step (switch off)."""

    def __init__(self, params, lr, eps=1e-8, betas=(0.9, 0.999), weight_decay=0):
        super().__init__(params, lr, eps=eps, betas=betas, weight_decay=weight_decay)
        self._clip = None  # [1] Var set by clip_grad_norm, consumed by the next step

    def _fused(self) -> bool:
        return kernels_on() and _available(_build.device_key()) and all(
            str(p.dtype) == "float32" for pg in self.param_groups for p in pg["params"])

    def clip_grad_norm(self, max_norm: float, norm_type: int = 2, total_norm: "jt.Var | None" = None):
        """Scale all gradients so that their joint 2-norm is at most max_norm (applied inside step()).

        Returns the norm before clipping ([1] Var; None for jt.optim's other norm types); pass total_norm if
        it is already computed (from grad_norm(opt))."""
        if not self._fused() or norm_type != 2:
            norm = (total_norm if total_norm is not None else grad_norm(self)) if norm_type == 2 else None
            if norm is not None:
                norm.sync()  # before jt.optim scales the gradients in place
            super().clip_grad_norm(max_norm, norm_type)
            return norm
        if total_norm is None:
            total_norm = grad_norm(self)
        if total_norm is not None:
            self._clip = jt.minimum(max_norm / (total_norm + 1e-6), 1.0).reshape(1).stop_grad()
        return total_norm

    def step(self, loss=None, retain_graph=False):
        if not self._fused():
            if self._clip is not None:  # clipped while the switch was on: apply it the reference way
                self.pre_step(loss, retain_graph)
                loss = None
                for pg in self.param_groups:
                    for p, g in zip(pg["params"], pg["grads"]):
                        if not p.is_stop_grad():
                            g.update(g * self._clip)
                self._clip = None
            return super().step(loss, retain_graph)
        self.pre_step(loss, retain_graph)
        n = float(self.n_step)
        clip = self._clip if self._clip is not None else jt.ones((1,))
        self._clip = None
        for pg in self.param_groups:
            lr = pg.get("lr", self.lr)
            eps = pg.get("eps", self.eps)
            weight_decay = pg.get("weight_decay", self.weight_decay)
            b0, b1 = pg.get("betas", self.betas)
            hyper = np.array([1 - lr * weight_decay, b0, 1 - b0, b1, 1 - b1, eps, lr / (1 - b0 ** n),
                              1 / np.sqrt(1 - b1 ** n)], np.float32)
            h = jt.concat([jt.array(hyper), clip.float32()]).stop_grad()
            for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"], pg["m"]):
                if p.is_stop_grad():
                    continue
                p1, m1, v1 = adamw_update(p, g, m, v, h)
                m.update(m1)
                v.update(v1)
                p.update(p1)
        self.post_step()


def _probe() -> None:
    """Compile and run both ops once on a tiny input."""
    p = jt.array(np.linspace(-1, 1, 6, dtype=np.float32))
    g = jt.array(np.linspace(1, 2, 6, dtype=np.float32))
    h = jt.array(np.array([1, 0.9, 0.1, 0.999, 1e-3, 1e-8, 1e-3, 1.0, 1.0], np.float32))
    outs = list(adamw_update(p, g, jt.zeros(6), jt.zeros(6), h)) + [sums_of_squares([g, p])]
    jt.sync(outs)
    if not all(np.isfinite(o.numpy()).all() for o in outs):
        raise RuntimeError("non-finite output from the fused AdamW probe")


@functools.lru_cache(maxsize=None)
def _available(device: int) -> bool:
    return _build.fused_ok("adamw", _probe)
