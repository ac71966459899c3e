"""The equal-rank study of notebook 03: fine-tune one base model with full fine-tuning, LoRA or DoRA on a few
images and keep weight snapshots of the targeted layers for the magnitude/direction analysis (Liu et al. 2024)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()

from ..core import denoising_loss, noised_batch  # noqa: E402
from .decomposition import layer_weights  # noqa: E402
from .inject import DEFAULT_TARGETS, _matches, _resolve, inject, trainable_parameters  # noqa: E402

METHODS = ("full", "lora", "dora")


def target_names(unet, targets=DEFAULT_TARGETS) -> list[str]:
    """The Linear/Conv2d names that inject() would adapt (to_out -> to_out.0), or has adapted, in module order."""
    names = []
    for name, module in unet.named_modules():
        hit = _resolve(name, module) if name and _matches(name, targets) else None
        if hit is not None and hit[0] not in names:
            names.append(hit[0])
    if not names:
        raise ValueError(f"target_names(): no Linear/Conv2d matches {targets!r}")
    return names


def finetune(model, images: np.ndarray, captions: Sequence[str], method: str = "dora", rank: int = 4,
             alpha: float | None = None, steps: int = 100, lr: float = 1e-3, batch_size: int = 4,
             snapshot_every: int = 10, targets=DEFAULT_TARGETS, seed: int = 0,
             callback: Callable[[int, float], None] | None = None) -> dict:
    """Denoising fine-tuning of model.unet (eps/v loss, Ho et al. 2020 Eq. 14) on images [N, 3, H, W] in [-1, 1].

    method 'full' trains every UNet weight, 'lora'/'dora' only an adapter of `rank` on `targets` (alpha defaults to
    rank). The text encoder stays frozen. Returns {'w0', 'snapshots' {step: {layer: W'}}, 'loss', 'names', 'params'}.
    The model is changed in place: pass a fresh copy for each method.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {METHODS}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(captions) != images.shape[0]:
        raise ValueError(f"finetune(): need images [N, 3, H, W] and N captions, got {images.shape} and {len(captions)}")
    if steps < 1 or snapshot_every < 1:
        raise ValueError("finetune(): steps and snapshot_every must be >= 1")
    unet = model.unet
    names = target_names(unet, targets)
    w0 = layer_weights(unet, names)
    for p in model.text_encoder.parameters():
        p.stop_grad()
    if method == "full":
        params = [p for p in unet.parameters()]
        for p in params:
            p.start_grad()
    else:
        inject(unet, targets=targets, kind=method, rank=rank, alpha=float(rank if alpha is None else alpha), seed=seed)
        params = trainable_parameters(unet)
    opt = jt.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    with jt.no_grad():
        context_all = model.encode(list(captions)).numpy()
    snapshots, losses = {0: w0}, []
    for step in range(1, steps + 1):
        idx = rng.integers(0, images.shape[0], size=batch_size)
        x_t, t, target = noised_batch(model.schedule, images[idx], rng)
        loss = denoising_loss(unet, x_t, t, jt.array(context_all[idx]), target).mean()
        opt.step(loss)
        losses.append(float(loss.item()))
        if callback is not None:
            callback(step, losses[-1])
        if step % snapshot_every == 0 or step == steps:
            snapshots[step] = layer_weights(unet, names)
    return {"w0": w0, "snapshots": snapshots, "loss": np.asarray(losses), "names": names,
            "params": int(sum(int(np.prod(p.shape)) for p in params))}
