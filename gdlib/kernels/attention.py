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
    # The fused path is added by the kernels issue; until then both paths are the reference.
    return attention_reference(q, k, v, scale)
