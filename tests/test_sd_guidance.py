"""RB-Modulation and AFA on a Stable Diffusion folder (gdlib.sd.guidance) and `gdlib generate --base FOLDER`, on a
tiny random folder (gdlib.sd.tiny; no torch). The weights are random, so these check the mechanics: Psi's form and
gradient, that the control lowers its own objective step by step, that plain sampling is untouched, that AFA
wrappers come off, and the command's files and refusals."""
from __future__ import annotations

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import cli  # noqa: E402
from gdlib import guidance as G  # noqa: E402
from gdlib.config import RBConfig  # noqa: E402
from gdlib.sd import guidance as SG  # noqa: E402
from gdlib.sd import loader as L  # noqa: E402
from gdlib.sd import pipeline as P  # noqa: E402
from gdlib.sd.tiny import write_tiny_folder  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("sdg") / "pipe", sample_size=8)


@pytest.fixture(scope="module")
def pipe(folder):
    return L.load_pipeline(folder)


def refs(pipe, n: int = 2, seed: int = 3) -> np.ndarray:
    """Striped reference images [n, 3, H, W] in [-1, 1] at the folder's size."""
    size = pipe.latent_shape[1] * pipe.vae_scale_factor
    yy = np.arange(size)[None, :, None] * np.ones((1, 1, size))
    rng = np.random.default_rng(seed)
    x = np.stack([np.sin(yy * (1 + k) + rng.uniform(0, 3, (3, 1, 1))) for k in range(n)])
    return x.astype(np.float32)


def test_decoder_gram_descriptor(pipe):
    psi = SG.DecoderGram(pipe.vae)
    z = jt.array(np.random.default_rng(0).standard_normal((2, *pipe.latent_shape)).astype(np.float32))
    e = psi(z)
    chans = [m.shape[1] for m in psi.features(z)]
    assert tuple(e.shape) == (2, sum(c * c for c in chans))
    np.testing.assert_allclose((e.numpy() ** 2).sum(1), 1.0, rtol=1e-4)   # unit per block / sqrt(L)
    with jt.enable_grad():
        psi_ref = G.reference_embedding(psi, SG.reference_latents(pipe, refs(pipe)))
        g = jt.grad(G.cosine_style_loss(psi(z), psi_ref), z)
    assert np.abs(g.numpy()).max() > 0
    assert SG.DecoderGram(pipe.vae, blocks=[0])(z).shape[1] == chans[0] ** 2
    with pytest.raises(ValueError, match="up blocks"):
        SG.DecoderGram(pipe.vae, blocks=[7])
    with pytest.raises(ValueError, match="latents"):
        psi(np.zeros((1, 3, 8, 8), np.float32))


def test_control_lowers_its_objective_and_plain_sampling_is_untouched(pipe):
    latents = np.random.default_rng(1).standard_normal((2, *pipe.latent_shape)).astype(np.float32)
    prompts = ["a watercolor painting of a cat", "a pixel painting of a castle"]
    plain = P.sample(pipe, prompts, latents, steps=4, guidance_scale=3.0)
    same = SG.stylize(pipe, prompts, refs(pipe), steps=4, guidance_scale=3.0, control=False, latents=latents)
    np.testing.assert_array_equal(same, plain)            # no control, no AFA: exactly the pipeline
    cfg = RBConfig(lam_style=10.0, eta=0.2, num_iter=3, tau=None)
    styled, hist = SG.stylize(pipe, prompts, refs(pipe), steps=4, guidance_scale=3.0, config=cfg, latents=latents,
                              return_history=True)
    active = [h for h in hist if h["active"]]
    assert len(active) == 4 - 1 or len(active) == 4      # lr = eta (1 - i / N) > 0 on every step
    assert all(h["style_after"] < h["style_before"] for h in active), [(h["style_before"], h["style_after"]) for h in active]
    assert np.abs(styled - plain).max() > 1e-3
    assert styled.shape == plain.shape and styled.min() >= 0 and styled.max() <= 1


def test_afa_changes_the_images_and_comes_off(pipe):
    latents = np.random.default_rng(2).standard_normal((1, *pipe.latent_shape)).astype(np.float32)
    plain = P.sample(pipe, "a cat", latents, steps=3, guidance_scale=3.0)
    afa = SG.stylize(pipe, "a cat", refs(pipe, 1), steps=3, guidance_scale=3.0, control=False, afa=True,
                     latents=latents)
    assert np.abs(afa - plain).max() > 1e-4
    assert not G.afa_modules(pipe.unet)
    np.testing.assert_array_equal(P.sample(pipe, "a cat", latents, steps=3, guidance_scale=3.0), plain)
    with pytest.raises(ValueError, match="style references must be images"):
        SG.stylize(pipe, "a cat", np.zeros((1, 3, 5, 5), np.float32), steps=2)


def test_generate_on_an_sd_folder(folder, tmp_path, capsys):
    from gdlib.toyworld.export import export_challenge

    export_challenge(tmp_path / "toy", styles=["watercolor"], per_style=3, size=16, max_prompts=2)
    style = str(tmp_path / "toy" / "00")
    lora_file = tmp_path / "lora" / "w.safetensors"
    assert cli.main(["train-style", style, "--base", str(folder), "--out", str(lora_file), "--steps", "2",
                     "--batch", "2", "--captions", "dreambooth", "--adapter", "lora", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "pred"
    assert cli.main(["generate", style, "--base", str(folder), "--adapter", str(lora_file), "--out", str(out),
                     "--sample-steps", "3", "--afa", "--no-progress"]) == 0
    text = capsys.readouterr().out
    pngs = sorted((out / "00").glob("*.png"))
    assert len(pngs) == 2 and "RB-Modulation (VAE-decoder Gram)" in text and "+ AFA" in text
    assert "CFG 7.5" in text and "'a sks painting of a {object}'" in text
    from PIL import Image
    assert Image.open(pngs[0]).size == (16, 16)
    # what the SD path cannot do is one line on stderr, exit 2
    assert cli.main(["generate", style, "--base", str(folder), "--out", str(out), "--psi", "csd"]) == 2
    assert "VAE decoder" in capsys.readouterr().err
    orphan = tmp_path / "orphan.safetensors"
    orphan.write_bytes(lora_file.read_bytes())
    assert cli.main(["generate", style, "--base", str(folder), "--out", str(out), "--adapter", str(orphan)]) == 2
    assert "card" in capsys.readouterr().err
