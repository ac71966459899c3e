"""Fused custom ops for the UNet's hot paths, each beside its plain-Jittor reference.

One switch chooses the path: `use_kernels(True)` (default) runs the fused kernels where they exist,
`use_kernels(False)` the references; `with kernels_enabled(False): ...` scopes it. Tests check
the two paths agree; bench/ measures what the kernels buy.
Each fused op is a jt.code op with an OpenMP cpu_src and a cuda_src and its own backward; if it fails to
compile it warns once and the reference runs instead (`fused_status()` tells which compiled).
Ops: group_norm (+FiLM, +SiLU; also the LayerNorm rows), attention on [B, H, N, d] and multihead_attention on
the projections' own layout [B, N, heads*d], bias_gelu (the feed-forward's first bias + GELU), dora_scale, and
AdamW, a drop-in jt.optim.AdamW whose step and gradient clipping are fused ops (gdlib.train uses it;
gdlib.finetune still creates jt.optim.AdamW).
"""
from .switch import kernels_on, kernels_enabled, use_kernels
from .groupnorm import group_norm, group_norm_fused, group_norm_reference
from .attention import attention, attention_fused, attention_reference
from .attention import multihead_attention, multihead_attention_fused, multihead_attention_reference
from .gelu import bias_gelu, bias_gelu_fused, bias_gelu_reference
from .adamw import AdamW  # drop-in jt.optim.AdamW: one fused op per parameter, fused grad-norm clip
from ._build import status as fused_status  # which fused ops compiled on which backend
from .dora import dora_scale, dora_scale_reference  # noqa: F401  (DoRA's g = m / ||W0 + sBA||)

__all__ = ["kernels_on", "kernels_enabled", "use_kernels", "group_norm", "group_norm_reference",
           "group_norm_fused", "attention", "attention_reference", "attention_fused", "multihead_attention",
           "multihead_attention_reference", "multihead_attention_fused", "bias_gelu", "bias_gelu_reference",
           "bias_gelu_fused", "AdamW", "fused_status"]
