"""Adapter-only files: safetensors with peft's key names, plus the config and the base model's identity.

Keys are peft's (get_peft_model_state_dict of a PeftModel): `base_model.model.{name}.lora_A.weight`,
`...lora_B.weight` and, for DoRA, `...lora_magnitude_vector` (shape [out], [1, out, 1, 1] for convs as peft
stores it), so `peft.set_peft_model_state_dict` reads them. The safetensors metadata holds the config and two
fingerprints of the base: the adapted layers' names and shapes, and a hash of their frozen weights (DoRA's
magnitude only means something on the W0 it was trained on). Loading into another base is a clear error.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from .inject import adapted_layers, inject  # noqa: E402

PREFIX = "base_model.model."
FORMAT = "gdlib-adapter/1"


def base_fingerprint(model: nn.Module) -> dict[str, str]:
    """{'shapes': sha256 of adapted layer names + base weight shapes, 'weights': sha256 of those frozen weights}."""
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("base_fingerprint(): the model has no adapters; call inject() first")
    h_shape, h_weight = hashlib.sha256(), hashlib.sha256()
    for name in sorted(layers):
        layer = layers[name]
        if layer.merged:
            raise ValueError(f"base_fingerprint(): {name} is merged; unmerge(model) first")
        w = layer.base.weight.numpy().astype(np.float32)
        h_shape.update(f"{name}:{tuple(w.shape)};".encode())
        h_weight.update(name.encode())
        h_weight.update(np.ascontiguousarray(w).tobytes())
    return {"shapes": h_shape.hexdigest()[:16], "weights": h_weight.hexdigest()[:16]}


def adapter_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """The adapter weights as numpy arrays under peft's key names."""
    out = {}
    for name, layer in adapted_layers(model).items():
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.numpy()
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.numpy()
        if layer.magnitude is not None:
            m = layer.magnitude.numpy()
            if layer.kind == "dora" and len(layer.base.weight.shape) == 4:
                m = m.reshape(1, -1, 1, 1)  # peft's conv layout
            out[f"{PREFIX}{name}.lora_magnitude_vector"] = m
    return out


def adapter_config(model: nn.Module) -> dict:
    """kind, rank, alpha, rslora, init, detach_norm and the adapted layer names (one config for all layers)."""
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("adapter_config(): the model has no adapters")
    first = next(iter(layers.values()))
    return {"kind": first.kind, "rank": first.rank, "alpha": first.alpha, "rslora": first.rslora,
            "dropout": first.dropout_p, "init": first.init, "detach_norm": first.detach_norm,
            "layers": sorted(layers)}


def save_adapter(model: nn.Module, path: str | Path, base_id: str | None = None, extra: dict | None = None) -> Path:
    """Write the adapter (only) to a .safetensors file with its config and the base model's fingerprint (atomically)."""
    from ..checkpoint import save_tensors
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_adapter(): {path} should end in .safetensors")
    meta = {"format": FORMAT, "config": json.dumps(adapter_config(model)),
            "base_fingerprint": json.dumps(base_fingerprint(model))}
    if base_id is not None:
        meta["base_id"] = str(base_id)
    if extra:
        meta["extra"] = json.dumps(extra)
    return save_tensors(path, adapter_state_dict(model), meta)


def read_adapter(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, metadata with 'config' and 'base_fingerprint' decoded) of an adapter file."""
    from ..checkpoint import load_tensors
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter file {path} does not exist (save one with gdlib.adapters.save_adapter)")
    tensors, meta = load_tensors(path)  # a damaged file: ValueError naming it
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gdlib adapter file (metadata format={meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    meta["config"] = json.loads(meta["config"])
    meta["base_fingerprint"] = json.loads(meta["base_fingerprint"])
    return tensors, meta


def load_adapter(model: nn.Module, path: str | Path, strict_base: bool = True, base_id: str | None = None) -> list[str]:
    """Load an adapter file into `model` (injecting it first if the model has none); return the layer names.

    Raises ValueError when the adapted layers' names/shapes differ from the file's (a different architecture),
    or, with strict_base=True, when their frozen weights differ (a different base checkpoint) or base_id differs.
    """
    tensors, meta = read_adapter(path)
    cfg = meta["config"]
    if not adapted_layers(model):
        present = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        missing = [n for n in cfg["layers"] if n not in present]
        if missing:
            raise ValueError(f"load_adapter(): {path} adapts layers this model does not have: {missing[:8]}. "
                             "It was trained for a different base model.")
        inject(model, targets="|".join(re.escape(n) for n in cfg["layers"]), kind=cfg["kind"], rank=cfg["rank"],
               alpha=cfg["alpha"], rslora=cfg["rslora"], dropout=cfg["dropout"], init=cfg["init"],
               detach_norm=cfg["detach_norm"])
    layers = adapted_layers(model)
    if sorted(layers) != cfg["layers"]:
        raise ValueError(f"load_adapter(): the model's adapted layers {sorted(layers)[:6]}... differ from the "
                         f"file's {cfg['layers'][:6]}...")
    for name, layer in layers.items():
        if (layer.kind, layer.rank) != (cfg["kind"], cfg["rank"]):
            raise ValueError(f"load_adapter(): {name} is {layer.kind} rank {layer.rank}, the file holds "
                             f"{cfg['kind']} rank {cfg['rank']}")
    fp, want = base_fingerprint(model), meta["base_fingerprint"]
    if fp["shapes"] != want["shapes"]:
        raise ValueError(f"load_adapter(): {path} was saved on a base model whose adapted layers have other "
                         f"shapes (fingerprint {want['shapes']} vs this model's {fp['shapes']})")
    if fp["weights"] != want["weights"] or (base_id is not None and meta.get("base_id") not in (None, base_id)):
        msg = (f"load_adapter(): {path} was trained on a different base checkpoint (weights fingerprint "
               f"{want['weights']}, base_id {meta.get('base_id')!r}) than this model ({fp['weights']}, {base_id!r})")
        if strict_base:
            raise ValueError(msg + "; pass strict_base=False to load it anyway")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    for name, layer in layers.items():
        for attr, key in (("lora_A", "lora_A.weight"), ("lora_B", "lora_B.weight"), ("magnitude", "lora_magnitude_vector")):
            var = getattr(layer, attr)
            if var is None:
                continue
            arr = tensors[f"{PREFIX}{name}.{key}"].reshape(var.shape).astype(np.float32)
            var.update(jt.array(arr))
    return sorted(layers)

