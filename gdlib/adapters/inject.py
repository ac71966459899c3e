"""Put adapters into a model by module name (peft's target_modules rules), and act on all of them at once."""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from .layers import AdaptedConv2d, AdaptedLinear, AdapterLayer  # noqa: E402

from ..config import DEFAULT_TARGETS  # noqa: E402,F401  (peft's usual placement; re-exported)


def _matches(name: str, targets: str | Iterable[str]) -> bool:
    """peft's rule: a str is a regex that must match the full name; a list matches a name or a '.'-suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _resolve(name: str, module: nn.Module) -> tuple[str, nn.Module] | None:
    """The Linear/Conv2d (or adapted layer) for a matched name: itself, or child '0' of a container (diffusers' to_out)."""
    kinds = (nn.Linear, nn.Conv2d, AdapterLayer)
    if isinstance(module, kinds):
        return name, module
    if isinstance(module, nn.Sequential) and "0" in module.layers and isinstance(module.layers["0"], kinds):
        return f"{name}.0", module.layers["0"]
    return None


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` (setattr on the parent; Sequential's digit keys go to .layers)."""
    parent = model
    *path, leaf = name.split(".")
    for part in path:
        parent = parent.layers[part] if isinstance(parent, nn.Sequential) else getattr(parent, part)
    if isinstance(parent, nn.Sequential):
        parent.layers[leaf] = new
    else:
        setattr(parent, leaf, new)


def adapted_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """All adapted layers of a model by dotted name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def inject(model: nn.Module, targets: str | Iterable[str] = DEFAULT_TARGETS, kind: str = "dora", rank: int = 4,
           alpha: float = 4.0, rslora: bool = False, dropout: float = 0.0, init: str | None = None,
           detach_norm: bool = True, seed: int | None = 0) -> list[str]:
    """Wrap every Linear/Conv2d whose name matches `targets` in place; freeze the rest; return the adapted names."""
    if adapted_layers(model):
        raise ValueError("inject(): the model already has adapters; one adapter per model is supported "
                         "(merge_and_unload() first to stack another one on top)")
    matched, skipped = [], []
    for name, module in model.named_modules():
        if not name or not _matches(name, targets):
            continue
        hit = _resolve(name, module)
        if hit is None:
            skipped.append(f"{name} ({type(module).__name__})")
        elif hit[0] not in [m[0] for m in matched]:
            matched.append(hit)
    if not matched:
        leaves = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        raise ValueError(f"inject(): no Linear/Conv2d matches targets={targets!r}"
                         + (f" (matched non-linear modules: {skipped})" if skipped else "")
                         + f". Adaptable layers are: {leaves[:20]}{' ...' if len(leaves) > 20 else ''}")
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.stop_grad()  # the base model is frozen; only adapter Vars are trained
    backup = getattr(model, "backup_grad_state", None)
    if isinstance(backup, dict):  # Jittor's eval()/train() would otherwise restart these gradients
        for p in model.parameters():
            backup[id(p)] = False
    names = []
    for name, layer in matched:
        cls = AdaptedConv2d if isinstance(layer, nn.Conv2d) else AdaptedLinear
        _set_child(model, name, cls(layer, kind=kind, rank=rank, alpha=alpha, rslora=rslora, dropout=dropout,
                                    init=init, detach_norm=detach_norm, rng=rng))
        names.append(name)
    return names


def trainable_parameters(model: nn.Module) -> list:
    """The Vars to give the optimizer: every adapter's lora_A, lora_B (and magnitude). Base weights stay out."""
    params = [p for layer in adapted_layers(model).values() for p in layer.trainable()]
    if not params:
        raise ValueError("trainable_parameters(): the model has no adapters; call inject() first")
    return params


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """{'trainable', 'total', 'fraction'}: adapter parameters versus all parameters of the adapted model."""
    trainable = sum(int(np.prod(p.shape)) for layer in adapted_layers(model).values() for p in layer.trainable())
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every (unmerged) adapter on or off; off gives exactly the base model's output."""
    for name, layer in adapted_layers(model).items():
        if layer.merged:
            raise ValueError(f"set_enabled(): {name} is merged; unmerge(model) first")
        layer.enabled = bool(enabled)


def set_scale(model: nn.Module, scale: float) -> None:
    """Inference strength: scaling = scale * alpha / r (peft's set_scale; for DoRA it also enters the norm)."""
    for name, layer in adapted_layers(model).items():
        if layer.merged:
            raise ValueError(f"set_scale(): {name} is merged; unmerge(model) first")
        layer.scaling = float(scale) * layer.base_scaling


def merge(model: nn.Module) -> None:
    """Merge every adapter into its base weight (inference at the base model's cost)."""
    for layer in adapted_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo merge() on every adapted layer."""
    for layer in adapted_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put the plain base layers back in place of the wrappers (peft's merge_and_unload; weights stay frozen)."""
    for name, layer in adapted_layers(model).items():
        if not layer.merged:
            layer.merge()
        _set_child(model, name, layer.base)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Drop the adapters without merging: the base model comes back unchanged (weights stay frozen)."""
    for name, layer in adapted_layers(model).items():
        if layer.merged:
            layer.unmerge()
        _set_child(model, name, layer.base)
    return model
