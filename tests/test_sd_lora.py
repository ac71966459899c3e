"""gdlib.sd.lora: a LoRA and a DoRA trained with gdlib.core on gdlib's SD UNet, saved so that diffusers / peft load
them, and the PyTorch UNet with the adapter loaded against gdlib's adapted UNet on the same inputs (parity extra).

Tolerance: max |ours - ref| / max |ref| <= RTOL (float32) for the UNet, IMAGE_ATOL for a 4-step DDIM image in [0, 1].
Run with `-s` to see the numbers.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import adapters, core  # noqa: E402
from gdlib.kernels import AdamW  # noqa: E402
from gdlib.sd import loader as L  # noqa: E402
from gdlib.sd import lora  # noqa: E402
from gdlib.sd import pipeline as P  # noqa: E402
from test_sd_models import IMAGE_ATOL, PROMPTS, RTOL, compare, gd_folder, pair  # noqa: E402,F401  (fixtures)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# every Linear and Conv2d of diffusers' UNet2DConditionModel: the resnets' 3x3 / 1x1 convs, the stride-2 down- and the
# up-sampler convs (`conv`), conv_in / conv_out, the transformers' proj_in / proj_out (1x1 conv in SD 1.x, Linear in
# SD 2.x), the feed-forward and time-embedding Linears, and the attention projections
ALL_LAYERS = TARGETS + ("conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "proj_in", "proj_out",
                        "ff.net.0.proj", "ff.net.2", "time_emb_proj", "linear_1", "linear_2")
TARGET_SETS = {"attention": TARGETS, "all-layers": ALL_LAYERS}
RANK, ALPHA = 2, 4.0      # scaling alpha / r = 2: a file that lost alpha would load at half strength


def trained(folder, kind: str, targets: tuple[str, ...] = TARGETS, steps: int = 3):
    """A fresh gdlib pipeline from `folder` with a `kind` adapter on `targets`, trained `steps` AdamW steps on two
    random 16-px latents with the tiny pipeline's captions (eps / v target of its schedule)."""
    ours = L.load_pipeline(folder)
    adapters.inject(ours.unet, targets=targets, kind=kind, rank=RANK, alpha=ALPHA, seed=0)
    opt = AdamW(adapters.trainable_parameters(ours.unet), lr=2e-2)
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    with jt.no_grad():
        ctx = P.encode_prompt(ours, PROMPTS).detach()
    losses = []
    for _ in range(steps):
        x_t, t, target = core.noised_batch(ours.schedule, x0, rng)
        loss = core.denoising_loss(ours.unet, x_t, t, ctx, target).mean()
        loss_val, _, updated = core.guarded_step(opt, loss, 1.0)
        assert updated
        losses.append(loss_val)
    assert all(np.isfinite(losses))
    for layer in adapters.adapted_layers(ours.unet).values():   # B left zero: that adapter would be a no-op
        assert np.abs(layer.lora_B.numpy()).max() > 1e-3
    return ours


def unet_inputs(torch):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, 32)).astype(np.float32)
    t = np.array([900, 120])
    return x, t, ctx, (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx))


def run_both(ours, torch_unet, torch):
    x, t, ctx, tx = unet_inputs(torch)
    with torch.no_grad():
        ref = torch_unet(*tx).sample.numpy()
    with jt.no_grad():
        out = ours.unet(jt.array(x), t, jt.array(ctx)).numpy()
    return out, ref


def check_names(ours, pipe, name: str, targets: tuple[str, ...]) -> int:
    """gdlib adapted exactly the diffusers modules `targets` names (peft's suffix rule), convs as convs; returns the
    number of adapted convolutions."""
    import torch
    want = {n: isinstance(m, torch.nn.Conv2d) for n, m in pipe.unet.named_modules()
            if n and any(n == t or n.endswith("." + t) for t in targets)}
    got = {n: len(l.lora_A.shape) == 4 for n, l in adapters.adapted_layers(ours.unet).items()}
    assert got == want, f"[{name}] adapted layers differ from diffusers': {sorted(set(got.items()) ^ set(want.items()))}"
    return sum(got.values())


@pytest.mark.parity
@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_lora_loads_in_diffusers(pair, tmp_path, targets):
    name, pipe, base, torch = pair
    ours = trained(base.folder, "lora", TARGET_SETS[targets])
    n_conv = check_names(ours, pipe, name, TARGET_SETS[targets])
    assert (n_conv > 0) == (targets != "attention")
    name = f"{name}, {targets}"
    path = lora.save_diffusers_lora(ours.unet, tmp_path / "lora")
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == ALPHA
    _, base_ref = run_both(base, pipe.unet, torch)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    try:
        out, ref = run_both(ours, pipe.unet, torch)
        assert np.abs(ref - base_ref).max() > 1e-3     # diffusers really applies the adapter
        compare(f"[{name}] unet with LoRA (diffusers load_lora_weights)", out, ref, rtol=RTOL)
        latents = np.random.default_rng(4).standard_normal((2, 4, 16, 16)).astype(np.float32)
        with torch.no_grad():
            img_ref = pipe(prompt=PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=4,
                           guidance_scale=3.0, output_type="np").images
        img = P.sample(ours, PROMPTS, latents, steps=4, guidance_scale=3.0)
        compare(f"[{name}] 4-step DDIM image with LoRA", img, img_ref, rtol=None, atol=IMAGE_ATOL)
    finally:
        pipe.unload_lora_weights()


@pytest.mark.parity
@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_dora_loads_in_peft_and_diffusers(pair, tmp_path, targets):
    peft = pytest.importorskip("peft", reason="parity extra not installed: pip install -e .[parity]")
    name, pipe, base, torch = pair
    ours = trained(base.folder, "dora", TARGET_SETS[targets])
    n_conv = check_names(ours, pipe, name, TARGET_SETS[targets])
    assert (n_conv > 0) == (targets != "attention")
    name = f"{name}, {targets}"
    folder = lora.save_peft_adapter(ours.unet, tmp_path / "peft")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(pipe.unet), str(folder))
    assert pm.peft_config["default"].use_dora and pm.peft_config["default"].lora_alpha == ALPHA
    _, base_ref = run_both(base, pipe.unet, torch)
    out, ref = run_both(ours, pm, torch)
    assert np.abs(ref - base_ref).max() > 1e-3
    compare(f"[{name}] unet with DoRA (peft PeftModel.from_pretrained)", out, ref, rtol=RTOL)
    # diffusers' own loader: the peft-format magnitude key turns use_dora on (diffusers 0.42)
    lora.save_diffusers_lora(ours.unet, tmp_path / "dora")
    pipe.load_lora_weights(str(tmp_path / "dora"))
    try:
        out2, ref2 = run_both(ours, pipe.unet, torch)
        compare(f"[{name}] unet with DoRA (diffusers load_lora_weights)", out2, ref2, rtol=RTOL)
    finally:
        pipe.unload_lora_weights()



def test_few_shot_finetune_lowers_the_loss(gd_folder):
    """gdlib.sd.finetune on the tiny SD folder gdlib writes itself (gdlib.sd.tiny, no torch): 3 images at
    32 px, LoRA on the attention projections with prior preservation, 12 steps on CPU; the loss on a fixed
    (noise, t) set goes down."""
    import time

    from gdlib.sd.finetune import finetune
    pipe = L.load_pipeline(gd_folder)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    images = np.stack([np.stack([np.sin(6 * xx + k), np.cos(5 * yy - k), xx * yy * 2 - 1]) for k in range(3)])
    images = (images + 0.05 * rng.standard_normal(images.shape)).clip(-1, 1).astype(np.float32)
    t0 = time.time()
    res = finetune(pipe, images, ["a painting of a cat"] * 3, steps=12, lr=1e-2, kind="lora", rank=4, alpha=4,
                   class_images=images[:1], class_caption="a painting", prior_weight=0.5)
    took = time.time() - t0
    print(f"\nfine-tune 12 steps: {took:.1f} s, fixed-set loss {res.eval_before:.4f} -> {res.eval_after:.4f}")
    assert res.eval_after < res.eval_before and len(res.losses) == 12 and np.isfinite(res.losses).all()
