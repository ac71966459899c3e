"""Style files: one .safetensors per fine-tuned style (or several concepts), holding the UNet adapter under peft's
keys (lora / dora; readable by gdlib.adapters.load_adapter), or the changed UNet weights (full, custom), the new
tokens' embedding rows or the text encoder, and the info a model needs to use it (captions, tokens, base fingerprint)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime

jt = runtime.setup_jittor()

from .checkpoint import load_tensors, save_tensors  # noqa: E402
from .config import CUSTOM_TARGETS  # noqa: E402
from .pipeline import TextToImage  # noqa: E402
from .styledata import model_fingerprint  # noqa: E402


STYLE_KEY = "gdlib_style"


def custom_layers(model: TextToImage) -> list[tuple[str, Any]]:
    """The (name, Linear) pairs Custom Diffusion trains: every cross-attention key and value projection."""
    found = [(n, m) for n, m in model.unet.named_modules() if any(n.endswith(t) for t in CUSTOM_TARGETS)]
    if not found:
        raise ValueError(f"adapter 'custom': the UNet has no {CUSTOM_TARGETS} layers")
    return found


def style_tensors(model: TextToImage, info: dict) -> dict[str, np.ndarray]:
    """What a style file stores: the UNet adapter (peft keys) or UNet weights, token rows or text-encoder weights."""
    from .adapters import adapter_state_dict
    from .checkpoint import module_state

    if info["adapter"] == "full":
        out = module_state(model.unet, "unet.")
    elif info["adapter"] == "custom":
        out = {f"unet.{n}.weight": m.weight.numpy().copy() for n, m in custom_layers(model)}
    else:
        out = adapter_state_dict(model.unet)
    if info["train_text_encoder"]:
        out.update(module_state(model.text_encoder, "text_encoder."))
    else:
        emb = model.text_encoder.token_embedding.weight.numpy()
        for w in info["new_tokens"]:
            out[f"token_embedding.{w}"] = emb[model.tokenizer.ids[w]].copy()
    return out


def save_style(path: str | os.PathLike, model: TextToImage, info: dict) -> Path:
    """One .safetensors file; for lora/dora its metadata is also a gdlib adapter file (adapters.read_adapter)."""
    from .adapters import adapter_config, base_fingerprint
    from .adapters.io import FORMAT

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the style file must end in .safetensors, got {path.name!r}")
    meta = {STYLE_KEY: json.dumps(info)}
    if info["adapter"] in ("full", "custom"):
        meta["format"] = f"gdlib-style-{info['adapter']}/1"
    else:
        meta.update({"format": FORMAT, "config": json.dumps(adapter_config(model.unet)),
                     "base_fingerprint": json.dumps(base_fingerprint(model.unet)), "base_id": info["base_fingerprint"]})
    return save_tensors(path, style_tensors(model, info), meta)


def read_style(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, style info) of a style file, with a clear error for other files."""
    tensors, meta = load_tensors(path)
    if STYLE_KEY not in meta:
        raise ValueError(f"{path} is not a gdlib style file (no {STYLE_KEY!r} metadata); write one with "
                         "`gdlib train-style` or gdlib.finetune.finetune_style")
    return tensors, json.loads(meta[STYLE_KEY])


def load_style(model: TextToImage, path: str | os.PathLike, strict_base: bool = True) -> dict:
    """Apply a style file to a freshly loaded base model in place (tokens, adapter/weights); return its info.
    A file trained on another base model is a ValueError (strict_base=False: a warning)."""
    import warnings

    from .adapters import load_adapter
    from .checkpoint import load_module_state

    tensors, info = read_style(path)
    fp = model_fingerprint(model)
    if fp != info["base_fingerprint"]:
        msg = (f"{path} was fine-tuned on another base model (fingerprint {info['base_fingerprint']}, "
               f"base {info.get('base_path')!r}); this model's fingerprint is {fp}. Load the base it was trained on")
        if strict_base:
            raise ValueError(msg + " (or pass strict_base=False to apply it anyway)")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    ids = model.tokenizer.add_tokens(info["new_tokens"])
    if info["adapter"] == "full":
        load_module_state(model.unet, tensors, "unet.")
    elif info["adapter"] == "custom":
        layers = dict(custom_layers(model))
        for key, value in tensors.items():
            if key.startswith("unet."):
                layers[key[len("unet."):-len(".weight")]].weight.update(jt.array(value))
    else:
        load_adapter(model.unet, path, strict_base=strict_base)
    if info["train_text_encoder"]:
        load_module_state(model.text_encoder, tensors, "text_encoder.")
    elif ids:
        emb = model.text_encoder.token_embedding.weight
        w = emb.numpy()
        for i, word in zip(ids, info["new_tokens"]):
            w[i] = tensors[f"token_embedding.{word}"]
        emb.update(jt.array(w))
    for p in model.parameters():
        p.stop_grad()
    return info
