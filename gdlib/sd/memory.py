"""Memory savers of gdlib.sd's models, under diffusers' names: attention slicing.

  set_attention_slicing(module, slice_size)   diffusers' `enable_attention_slicing`: every Attention of the module
      tree computes softmax(q k^T / sqrt(d)) v in chunks of `slice_size` along the batch*heads axis, so at most
      [slice_size, N, M] scores exist at once ("auto": half the heads, "max": one, None: off). The numbers do not
      change. gdlib's fused CPU/CUDA attention kernel never stores the [N, M] matrix, so slicing bounds memory where
      the reference path runs (kernels off, non-float32 inputs, or sequences too long for the CPU kernel's scratch,
      e.g. the VAE's mid-block at 512 px).

Gradient checkpointing (diffusers' enable_gradient_checkpointing) is not here: stock Jittor 1.3.11 has no
recomputation API, and a jt.Function version (forward under no_grad keeping the inputs, backward recomputing with
jt.grad) gave gradients equal to 1.3e-6 but did not lower the peak memory of a training step (measured: 1.79 GB
without, 1.84 GB with, UNet widths 64/128 at 32x32, batch 16; not investigated further: Jittor runs a step's
forward and backward as one lazy graph, and its executor decides when intermediates are freed).
"""
from __future__ import annotations

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

SliceSize = int | str | None


def resolve_slice_size(slice_size: SliceSize, heads: int) -> int | None:
    """diffusers' rule for one attention layer: "auto" -> heads // 2 (at least 1), "max" -> 1, None -> off; a positive
    int is used as is (rows of the batch*heads axis; unlike diffusers it may exceed the heads: e.g. the VAE's one)."""
    if slice_size is None:
        return None
    if slice_size == "auto":
        return max(1, heads // 2)
    if slice_size == "max":
        return 1
    if not isinstance(slice_size, int) or isinstance(slice_size, bool) or slice_size < 1:
        raise ValueError(f"slice_size={slice_size!r}: use a positive int, 'auto', 'max' or None")
    return slice_size


def attention_layers(module: nn.Module) -> list:
    """Every sliceable attention layer (gdlib.sd.layers.Attention: has `heads` and `slice_size`) of a module tree."""
    return [m for _, m in module.named_modules() if hasattr(m, "slice_size") and hasattr(m, "heads")]


def set_attention_slicing(module: nn.Module, slice_size: SliceSize = "auto") -> None:
    """Compute every Attention of `module` in chunks of the batch*heads axis (diffusers' enable_attention_slicing);
    slice_size: a positive int, "auto" (half the heads), "max" (one at a time) or None (off)."""
    layers = attention_layers(module)
    if not layers:
        raise ValueError(f"set_attention_slicing(): {type(module).__name__} has no gdlib.sd attention layers")
    sizes = [resolve_slice_size(slice_size, m.heads) for m in layers]   # validate all before changing any
    for m, s in zip(layers, sizes):
        m.slice_size = s
