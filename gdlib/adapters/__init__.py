"""LoRA and DoRA adapters for Jittor Linear and Conv2d, with peft's definitions and key names.

    from gdlib import adapters
    names = adapters.inject(unet, targets=("to_q", "to_k", "to_v", "to_out"), kind="dora", rank=4, alpha=4)
    opt = jt.optim.AdamW(adapters.trainable_parameters(unet), lr=2e-4)
    adapters.save_adapter(unet, "style.safetensors", base_id="base-v1")
    adapters.merge(unet)  # inference at the base model's cost; adapters.unmerge(unet) undoes it

Modules: `layers` (AdaptedLinear, AdaptedConv2d), `inject` (by name, enable/scale/merge on a whole model),
`io` (safetensors save/load with a base fingerprint), `decomposition` (magnitude/direction, dM-dD analysis),
`study` (full FT / LoRA / DoRA fine-tuning with weight snapshots; imported on use: `from gdlib.adapters import study`).
"""
from .layers import KINDS, INITS, AdapterLayer, AdaptedLinear, AdaptedConv2d
from .inject import (DEFAULT_TARGETS, inject, adapted_layers, trainable_parameters, parameter_counts, set_enabled,
                     set_scale, merge, unmerge, merge_and_unload, unload)
from .io import base_fingerprint, adapter_state_dict, adapter_config, save_adapter, read_adapter, load_adapter
from .decomposition import magnitude_direction, delta_m_delta_d, fit_slope, layer_weights, dm_dd_points

__all__ = ["KINDS", "INITS", "AdapterLayer", "AdaptedLinear", "AdaptedConv2d", "DEFAULT_TARGETS", "inject",
           "adapted_layers", "trainable_parameters", "parameter_counts", "set_enabled", "set_scale", "merge",
           "unmerge", "merge_and_unload", "unload", "base_fingerprint", "adapter_state_dict", "adapter_config",
           "save_adapter", "read_adapter", "load_adapter", "magnitude_direction", "delta_m_delta_d", "fit_slope",
           "layer_weights", "dm_dd_points"]
