"""gdlib.sd.lora.load_diffusers_lora: a diffusers LoRA / DoRA file into gdlib's SD UNet.

Round trip (no torch): an adapter trained in gdlib, saved with save_diffusers_lora, loaded into a fresh pipeline
gives the same UNet output. Ecosystem (parity extra): a LoRA made and saved by diffusers itself (peft's add_adapter
+ StableDiffusionPipeline.save_lora_weights) loads into gdlib with diffusers' numbers."""
from __future__ import annotations

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import adapters  # noqa: E402
from gdlib.checkpoint import save_tensors  # noqa: E402
from gdlib.sd import loader as L  # noqa: E402
from gdlib.sd import lora  # noqa: E402
from test_sd_lora import ALPHA, RANK, TARGETS, run_both, trained, unet_inputs  # noqa: E402
from test_sd_models import RTOL, compare, gd_folder, pair  # noqa: E402,F401  (fixtures)


def unet_out(pipe) -> np.ndarray:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, *pipe.latent_shape[1:])).astype(np.float32)
    ctx = rng.standard_normal((2, 77, pipe.text_encoder.config.hidden_size)).astype(np.float32)
    with jt.no_grad():
        return pipe.unet(jt.array(x), np.array([900, 120]), jt.array(ctx)).numpy()


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_round_trip_gives_the_same_unet(gd_folder, tmp_path, kind):
    ours = trained(gd_folder, kind)
    path = lora.save_diffusers_lora(ours.unet, tmp_path / kind)
    fresh = L.load_pipeline(gd_folder)
    base = unet_out(fresh)
    names = lora.load_diffusers_lora(fresh.unet, path)
    assert sorted(names) == sorted(adapters.adapted_layers(ours.unet))
    layer = next(iter(adapters.adapted_layers(fresh.unet).values()))
    assert (layer.kind, layer.rank, layer.alpha) == (kind, RANK, ALPHA)   # alpha from the metadata, not = r
    want, got = unet_out(ours), unet_out(fresh)
    assert np.abs(want - base).max() > 1e-4          # the adapter changes the output ...
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)   # ... and the loaded one changes it the same way
    again = L.load_pipeline(gd_folder)
    lora.load_diffusers_lora(again.unet, tmp_path / kind, scale=0.0)  # the folder works too
    if kind == "lora":                    # LoRA at scale 0 is the base (DoRA's trained magnitude still acts)
        np.testing.assert_allclose(unet_out(again), base, rtol=0, atol=1e-5)


def test_files_it_cannot_load_are_clear_errors(gd_folder, tmp_path):
    pipe = L.load_pipeline(gd_folder)
    kohya = save_tensors(tmp_path / "kohya.safetensors", {"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight":
                                                          np.zeros((2, 8), np.float32)})
    with pytest.raises(ValueError, match="no diffusers LoRA keys"):
        lora.load_diffusers_lora(pipe.unet, kohya)
    other = save_tensors(tmp_path / "other.safetensors", {"unet.mid_block.nothing_here.to_q.lora_A.weight":
                                                          np.zeros((2, 8), np.float32),
                                                          "unet.mid_block.nothing_here.to_q.lora_B.weight":
                                                          np.zeros((8, 2), np.float32)})
    with pytest.raises(ValueError, match="another base model"):
        lora.load_diffusers_lora(pipe.unet, other)
    te = save_tensors(tmp_path / "te.safetensors", {"unet.a.lora_A.weight": np.zeros((2, 8), np.float32),
                                                    "text_encoder.b.lora_A.weight": np.zeros((2, 8), np.float32)})
    with pytest.raises(ValueError, match="UNet adapters only"):
        lora.load_diffusers_lora(pipe.unet, te)
    with pytest.raises(FileNotFoundError):
        lora.load_diffusers_lora(pipe.unet, tmp_path / "missing.safetensors")
    assert not adapters.adapted_layers(pipe.unet)    # nothing half-injected by a refused file


@pytest.mark.parity
def test_a_lora_saved_by_diffusers_loads_with_diffusers_numbers(pair, tmp_path):
    name, pipe, base, torch = pair
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), init_lora_weights=False))
    try:
        from diffusers import StableDiffusionPipeline
        StableDiffusionPipeline.save_lora_weights(
            tmp_path / "d", unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            unet_lora_adapter_metadata={"r": RANK, "lora_alpha": ALPHA, "target_modules": list(TARGETS)})
        x, t, ctx, tx = unet_inputs(torch)
        with torch.no_grad():
            ref = pipe.unet(*tx).sample.numpy()
    finally:
        pipe.unet.delete_adapters("default")
    ours = L.load_pipeline(base.folder)
    names = lora.load_diffusers_lora(ours.unet, tmp_path / "d")
    assert names
    with jt.no_grad():
        out = ours.unet(jt.array(x), t, jt.array(ctx)).numpy()
        plain = L.load_pipeline(base.folder).unet(jt.array(x), t, jt.array(ctx)).numpy()
    assert np.abs(ref - plain).max() > 1e-3      # diffusers' random LoRA really changes the UNet
    compare(f"[{name}] unet with a LoRA saved by diffusers, loaded by gdlib", out, ref, rtol=RTOL)
