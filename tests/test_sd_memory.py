"""gdlib.sd.memory on the tiny SD folder gdlib writes itself (no torch): attention slicing changes no number (outputs
and gradients, LoRA parameters included), and load_pipeline's dtype rule.

Tolerance: max |diff| <= 1e-5 over outputs and gradients. Run with `-s` to see the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import adapters  # noqa: E402
from gdlib.sd import loader as L  # noqa: E402
from gdlib.sd import memory  # noqa: E402
from test_sd_lora import ALL_LAYERS  # noqa: E402
from test_sd_models import gd_folder  # noqa: E402,F401  (fixture)

SLICE_ATOL = 1e-5


@pytest.fixture(scope="module")
def pipe(gd_folder):
    """The tiny pipeline with a LoRA on every Linear and Conv2d of its UNet, B made non-zero (a live adapter)."""
    p = L.load_pipeline(gd_folder)
    adapters.inject(p.unet, targets=ALL_LAYERS, kind="lora", rank=2, alpha=4.0, seed=0)
    rng = np.random.default_rng(1)
    for layer in adapters.adapted_layers(p.unet).values():
        layer.lora_B.update(jt.array(0.1 * rng.standard_normal(layer.lora_B.shape).astype(np.float32)))
    return p


def unet_loss_and_grads(p) -> list[np.ndarray]:
    """[loss, d loss / d x, d loss / d context, d loss / d each LoRA parameter] of an MSE on the tiny UNet."""
    rng = np.random.default_rng(2)
    x = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((2, 7, p.unet.config.cross_attention_dim)).astype(np.float32))
    target = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    loss = ((p.unet(x, np.array([900, 30]), ctx) - target) ** 2).mean()
    grads = jt.grad(loss, [x, ctx] + adapters.trainable_parameters(p.unet))
    return [loss.numpy()] + [g.numpy() for g in grads]


def vae_decode_and_grads(p) -> list[np.ndarray]:
    """[decoded image, d sum(image^2) / d z, d / d every decoder parameter] (the VAE is not frozen)."""
    z = jt.array(np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32))
    img = p.vae.decode(z)
    params = [v for v in p.vae.decoder.parameters() if not v.is_stop_grad()]
    return [img.numpy()] + [g.numpy() for g in jt.grad((img * img).sum(), [z] + params)]


def max_diffs(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """(max |diff|, max of |diff| / max |ref| per array) over a list of arrays."""
    assert len(ours) == len(ref)
    errs = [float(np.abs(a - b).max()) for a, b in zip(ours, ref)]
    rels = [e / max(float(np.abs(b).max()), 1e-30) for e, b in zip(errs, ref)]
    return max(errs), max(rels)


@pytest.mark.parametrize("slice_size, fused", [("auto", True), ("max", True), (3, True), ("max", False)])
def test_attention_slicing_changes_nothing(pipe, slice_size, fused, monkeypatch):
    """enable_attention_slicing on the UNet (2 heads) and the VAE (1 head), batch 2: chunks of the batch*heads axis
    (3 leaves a short last chunk) give the same outputs and gradients as the whole, with the fused attention kernel
    and with the reference (where the score matrix exists); disable_attention_slicing undoes it."""
    from gdlib.kernels import kernels_enabled
    from gdlib.sd import layers
    calls = []
    sliced = layers.sliced_attention
    monkeypatch.setattr(layers, "sliced_attention", lambda *a: calls.append(a[-1]) or sliced(*a))
    with kernels_enabled(fused):
        ref_unet, ref_vae = unet_loss_and_grads(pipe), vae_decode_and_grads(pipe)
        assert not calls
        pipe.enable_attention_slicing(slice_size)
        try:
            want = 1 if slice_size in ("auto", "max") else slice_size
            assert {m.slice_size for m in memory.attention_layers(pipe.unet)} == {want}
            assert {m.slice_size for m in memory.attention_layers(pipe.vae)} == {want}
            for tag, ours, ref in (("unet", unet_loss_and_grads(pipe), ref_unet),
                                   ("vae", vae_decode_and_grads(pipe), ref_vae)):
                err, rel = max_diffs(ours, ref)
                print(f"\nattention slicing {slice_size!r} ({'fused' if fused else 'reference'} attention), {tag} "
                      f"output and {len(ref) - 1} gradients: max abs diff {err:.2e}, relative {rel:.2e}")
                assert err <= SLICE_ATOL
            assert calls and set(calls) == {want}   # the sliced path really ran
        finally:
            pipe.disable_attention_slicing()
    assert {m.slice_size for m in memory.attention_layers(pipe.unet)} == {None}


def test_attention_slicing_rejects_bad_sizes(pipe):
    for bad in (0, "half", 1.5):
        with pytest.raises(ValueError, match="use a positive int, 'auto', 'max' or None"):
            memory.set_attention_slicing(pipe.unet, bad)
    assert {m.slice_size for m in memory.attention_layers(pipe.unet)} == {None}   # nothing half-set


def test_dtype_resolution(gd_folder, monkeypatch):
    """dtype=None: float32 everywhere (fp16 is opt-in under CUDA); float16 asked for on CPU is refused in one line."""
    assert L.resolve_dtype(None, cuda=True) == "float32" and L.resolve_dtype(None, cuda=False) == "float32"
    assert L.resolve_dtype("float32", cuda=True) == "float32" and L.resolve_dtype("fp16", cuda=True) == "float16"
    with pytest.raises(ValueError, match="dtype='bfloat16'"):
        L.resolve_dtype("bfloat16", cuda=True)
    with pytest.raises(ValueError, match="float16.* on the CPU is not supported"):
        L.load_pipeline(gd_folder, dtype="float16")
    p = L.load_pipeline(gd_folder, dtype=None)
    assert all(str(v.dtype) == "float32" for v in p.unet.state_dict().values())
