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


def load_diffusers_lora(unet, path: str | Path, scale: float = 1.0) -> list[str]:
    """Inject and fill the adapter of a diffusers LoRA / DoRA file (`unet.{module}.lora_A.weight`, `.lora_B.weight`,
    `.lora_magnitude_vector`: what save_diffusers_lora and diffusers' save_lora_weights write) into gdlib's SD UNet;
    lora_alpha from the file's metadata, else alpha = r as diffusers assumes. Returns the adapted module names."""
    import re

    from ..adapters import inject, set_scale
    from ..checkpoint import load_tensors

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    tensors, meta = load_tensors(path)
    suffix = ".lora_A.weight"
    modules = sorted(k[len("unet."):-len(suffix)] for k in tensors if k.startswith("unet.") and k.endswith(suffix))
    if not modules:
        raise ValueError(f"{path} holds no diffusers LoRA keys (`unet.<module>.lora_A.weight`; first keys: "
                         f"{sorted(tensors)[:3]}); other formats (e.g. kohya's `lora_unet_...`): load and re-save "
                         "them with diffusers' load_lora_weights + save_lora_weights first")
    others = sorted({k.split(".")[0] for k in tensors if not k.startswith("unet.")})
    if others:
        raise ValueError(f"{path} also adapts {others} (e.g. the text encoder); gdlib.sd loads UNet adapters only")
    cfg = {}
    if METADATA_KEY in meta:
        cfg = {k.split(".", 1)[1]: v for k, v in json.loads(meta[METADATA_KEY]).items() if k.startswith("unet.")}
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{path}: per-layer ranks / alphas (rank_pattern / alpha_pattern) are not supported")
    ranks = {tensors[f"unet.{m}{suffix}"].shape[0] for m in modules}
    if len(ranks) != 1:
        raise ValueError(f"{path}: the layers have different ranks {sorted(ranks)}; one rank per file is supported")
    rank = int(cfg.get("r", next(iter(ranks))))
    dora = any(f"unet.{m}.lora_magnitude_vector" in tensors for m in modules)
    present = {n for n, _ in unet.named_modules()}
    missing = [m for m in modules if m not in present]
    if missing:
        raise ValueError(f"{path} adapts modules this UNet does not have ({missing[:4]}): it was trained for "
                         "another base model")
    names = inject(unet, targets="|".join(re.escape(m) for m in modules), kind="dora" if dora else "lora",
                   rank=rank, alpha=float(cfg.get("lora_alpha", rank)), rslora=bool(cfg.get("use_rslora", False)))
    layers = adapted_layers(unet)
    for name in modules:
        layer = layers[name]
        for attr, key in (("lora_A", "lora_A.weight"), ("lora_B", "lora_B.weight"), ("magnitude", "lora_magnitude_vector")):
            var = getattr(layer, attr)
            if var is None:
                continue
            arr = tensors[f"unet.{name}.{key}"]
            if arr.size != var.numel():
                raise ValueError(f"{path}: {name}.{key} has shape {arr.shape}, this UNet's layer needs "
                                 f"{tuple(var.shape)}: the file was trained for another base model")
            var.update(jt.array(arr.reshape(var.shape).astype(np.float32)))
    if scale != 1.0:
        set_scale(unet, scale)
    return names
