"""Fused custom ops for the UNet's hot paths, each beside its plain-Jittor reference.

One switch chooses the path: `use_kernels(True)` (default) runs the fused kernels where they exist,
`use_kernels(False)` the references; `with kernels_enabled(False): ...` scopes it. Tests check
the two paths agree; bench/ measures what the kernels buy.
Each fused op is a jt.code op with an OpenMP cpu_src and a cuda_src and its own backward; if it fails to
compile it warns once and the reference runs instead (`fused_status()` tells which compiled).
"""
from .switch import kernels_on, kernels_enabled, use_kernels
from .groupnorm import group_norm, group_norm_fused, group_norm_reference
from .attention import attention, attention_fused, attention_reference
from ._build import status as fused_status  # which fused ops compiled on which backend
from .dora import dora_scale, dora_scale_reference  # noqa: F401  (DoRA's g = m / ||W0 + sBA||)

__all__ = ["kernels_on", "kernels_enabled", "use_kernels", "group_norm", "group_norm_reference",
           "group_norm_fused", "attention", "attention_reference", "attention_fused", "fused_status"]
