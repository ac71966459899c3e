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
    # The fused path is added by the kernels issue; until then both paths are the reference.
    return group_norm_reference(x, num_groups, weight, bias, eps, scale, shift, silu)
