"""LoRA / DoRA adapters of gdlib's Stable Diffusion UNet, written so that diffusers and peft load them.

gdlib.adapters.inject(pipe.unet, ...) adapts the UNet's layers under diffusers' module names (to_q, to_k, to_v,
to_out.0, ...); this module writes the trained adapter in the two formats the PyTorch side reads:

  save_diffusers_lora(unet, folder)   what StableDiffusionPipeline.save_lora_weights writes (diffusers >= 0.33):
      pytorch_lora_weights.safetensors with keys `unet.{module}.lora_A.weight` [r, in], `unet.{module}.lora_B.weight`
      [out, r] (and `unet.{module}.lora_magnitude_vector` [out] for DoRA), and the safetensors metadata
      {"format": "pt", "lora_adapter_metadata": json of the peft LoraConfig fields prefixed "unet."}; read with
      `pipe.load_lora_weights(folder)`. The metadata carries lora_alpha: without it diffusers assumes alpha = r
      (scale 1), so an adapter trained with alpha != r would load at the wrong strength.
  save_peft_adapter(unet, folder)     a peft adapter folder (adapter_config.json + adapter_model.safetensors with
      `base_model.model.{module}...` keys, as PeftModel.save_pretrained writes); read with
      `peft.PeftModel.from_pretrained(diffusers_unet, folder)`.

Conventions are peft's (gdlib.adapters follows them term by term): W' = W0 + s B A with s = alpha / r (rsLoRA:
alpha / sqrt(r)); DoRA W' = m * (W0 + s B A) / ||W0 + s B A|| with the norm per OUTPUT unit (row of the [out, in]
weight; over in, kh, kw for convs, whose magnitude peft stores as [1, out, 1, 1]).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from ..adapters import adapted_layers  # noqa: E402

WEIGHT_NAME = "pytorch_lora_weights.safetensors"   # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"             # diffusers' LORA_ADAPTER_METADATA_KEY
PEFT_WEIGHT_NAME, PEFT_CONFIG_NAME = "adapter_model.safetensors", "adapter_config.json"


def _layers(unet) -> dict:
    layers = adapted_layers(unet)
    if not layers:
        raise ValueError("the UNet has no adapters: call gdlib.adapters.inject(pipe.unet, ...) first")
    kinds = {(l.kind, l.rank, l.alpha, l.rslora) for l in layers.values()}
    if len(kinds) != 1:
        raise ValueError(f"the adapted layers differ in (kind, rank, alpha, rslora): {sorted(kinds)}; one config is written")
    kind = next(iter(kinds))[0]
    if kind not in ("lora", "dora"):
        raise ValueError(f"kind={kind!r} has no peft/diffusers equivalent (only 'lora' and 'dora' do)")
    if any(l.merged for l in layers.values()):
        raise ValueError("the adapters are merged into the UNet: unmerge first")
    return layers


def lora_config(unet) -> dict:
    """The peft LoraConfig fields that describe gdlib's adapter on this UNet (LoraConfig(**lora_config(unet)))."""
    layers = _layers(unet)
    first = next(iter(layers.values()))
    return {"r": first.rank, "lora_alpha": first.alpha, "target_modules": sorted(layers),
            "use_dora": first.kind == "dora", "use_rslora": first.rslora, "lora_dropout": first.dropout_p,
            "bias": "none", "rank_pattern": {}, "alpha_pattern": {}}


def adapter_tensors(unet, prefix: str) -> dict[str, np.ndarray]:
    """The adapter as float32 numpy arrays under `{prefix}{module}.lora_A.weight` / `.lora_B.weight` /
    `.lora_magnitude_vector` (peft's state-dict names; conv magnitudes in peft's [1, out, 1, 1] layout)."""
    out = {}
    for name, layer in _layers(unet).items():
        out[f"{prefix}{name}.lora_A.weight"] = layer.lora_A.numpy().astype(np.float32)
        out[f"{prefix}{name}.lora_B.weight"] = layer.lora_B.numpy().astype(np.float32)
        if layer.kind == "dora":
            m = layer.magnitude.numpy().astype(np.float32)
            out[f"{prefix}{name}.lora_magnitude_vector"] = m.reshape(1, -1, 1, 1) if len(layer.lora_A.shape) == 4 else m
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_diffusers_lora(unet, folder: str | Path, weight_name: str = WEIGHT_NAME) -> Path:
    """Write the UNet's adapter as StableDiffusionPipeline.save_lora_weights does; returns the file's path.
    Load it with `pipe.load_lora_weights(folder)` (or `(folder, weight_name=...)`)."""
    from ..checkpoint import save_tensors
    cfg = lora_config(unet)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", METADATA_KEY: json.dumps({f"unet.{k}": v for k, v in cfg.items()}, indent=2, sort_keys=True)}
    path = folder / weight_name
    return save_tensors(path, adapter_tensors(unet, "unet."), meta)


def save_peft_adapter(unet, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write a peft adapter folder (adapter_config.json + adapter_model.safetensors) for the diffusers UNet:
    `peft.PeftModel.from_pretrained(unet, folder)` rebuilds the same LoRA / DoRA. Returns the folder."""
    from ..checkpoint import save_tensors, write_text_atomic
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
           "inference_mode": True, "init_lora_weights": True, **lora_config(unet)}
    write_text_atomic(folder / PEFT_CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True))
    save_tensors(folder / PEFT_WEIGHT_NAME, adapter_tensors(unet, "base_model.model."), {"format": "pt"})
    return folder
