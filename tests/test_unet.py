"""Toy text-to-image model: tokenizer, text encoder, UNet, checkpoint round trip, CFG."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import toyworld  # noqa: E402
from gdlib.models.config import ModelConfig, TextConfig, UNetConfig  # noqa: E402
from gdlib.models.text import Tokenizer, UnknownWordsWarning  # noqa: E402
from gdlib.models.unet import UNet, depth_to_space, space_to_depth  # noqa: E402
from gdlib.pipeline import TextToImage, cfg_model  # noqa: E402


def tiny_config() -> ModelConfig:
    text = TextConfig(vocab=toyworld.vocabulary(), width=16, layers=1, heads=2, num_reserved=2)
    unet = UNetConfig(base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,), self_attn_resolutions=(8,),
                      heads=2, groups=4, context_dim=16)
    return ModelConfig(unet=unet, text=text)


def randomize(module, seed: int = 0, std: float = 0.2) -> None:
    """Replace zero-initialised weights so every path (incl. cross-attention) affects the output."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.update(jt.array(rng.normal(0, std, p.shape).astype(np.float32)))


@pytest.fixture(scope="module")
def model() -> TextToImage:
    jt.set_global_seed(0)
    m = TextToImage(tiny_config())
    randomize(m.unet)
    return m


def test_tokenizer_known_prompt_round_trip():
    tok = Tokenizer(TextConfig(vocab=toyworld.vocabulary()))
    p = toyworld.caption("pixel", "cat")
    ids = tok.encode(p, strict=True)
    assert ids.shape == (1, tok.config.max_length)
    assert tok.decode(ids[0]) == p
    assert ids[0, 0] == tok.ids["<bos>"] and ids[0, 7] == tok.ids["<eos>"] and ids[0, 8] == tok.ids["<pad>"]
    assert tok.encode("A Pixel painting, of a CAT!", strict=True).tolist() == ids.tolist()


def test_tokenizer_reports_unknown_words():
    tok = Tokenizer(TextConfig(vocab=toyworld.vocabulary()))
    with pytest.warns(UnknownWordsWarning, match=r"\['zebra'\]"):
        ids = tok.encode("a pixel painting of a zebra")
    assert ids[0, 6] == tok.ids["<unk>"]
    with pytest.raises(ValueError, match="zebra"):
        tok.encode("a pixel painting of a zebra", strict=True)
    assert tok.unknown_words("a <pad> cat") == ["<", "pad", ">"] or "pad" in tok.unknown_words("a <pad> cat")


def test_tokenizer_non_ascii_is_reported_not_crashing():
    tok = Tokenizer(TextConfig(vocab=toyworld.vocabulary()))
    # accents fold to ASCII: "cat" with a combining accent is still "cat"
    assert tok.encode("a pixel painting of a cát", strict=True).tolist() == tok.encode("a pixel painting of a cat").tolist()
    with pytest.raises(ValueError, match="猫"):
        tok.encode("a pixel painting of a 猫", strict=True)
    with pytest.warns(UnknownWordsWarning):
        tok.encode("a pixel painting of a 猫")
    with pytest.raises(ValueError, match="must be a str"):
        tok.encode([3])


def test_tokenizer_new_tokens_use_reserved_slots():
    tok = Tokenizer(TextConfig(vocab=toyworld.vocabulary(), num_reserved=2))
    n = tok.vocab_size
    ids = tok.add_tokens(["sks", "style_07"])
    assert tok.vocab_size == n and tok.free_slots() == 0 and len(set(ids)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tok.encode("a sks painting of a cat style_07")
    assert out[0, 2] == ids[0] and out[0, 7] == ids[1]
    assert tok.add_tokens(["sks"]) == [ids[0]]
    with pytest.raises(ValueError, match="no reserved slot"):
        tok.add_tokens(["another"])
    with pytest.raises(ValueError, match="single ASCII word"):
        tok.add_tokens(["two words"])


def test_tokenizer_truncates_long_prompts_with_a_warning():
    tok = Tokenizer(TextConfig(vocab=toyworld.vocabulary(), max_length=6))
    with pytest.warns(UserWarning, match="only the first 4 fit"):
        ids = tok.encode("a pixel painting of a cat")
    assert ids[0, -1] == tok.ids["<eos>"]


def test_space_to_depth_is_invertible_pixel_unshuffle():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = space_to_depth(jt.array(x), 2).numpy()
    assert y.shape == (2, 12, 4, 4)
    np.testing.assert_array_equal(y[:, 3 * 0 + 1 * 1], x[:, 0, 0::2, 1::2])  # channel c*4 + i*2 + j
    np.testing.assert_array_equal(depth_to_space(jt.array(y), 2).numpy(), x)


def test_config_json_round_trip_and_unknown_keys():
    c = tiny_config()
    assert ModelConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown config keys"):
        ModelConfig.from_json(c.to_json().replace('"groups"', '"grups"'))


def test_attention_modules_are_named_as_in_diffusers(model):
    names = [n for n, _ in model.unet.named_modules()]
    for suffix in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"):
        assert any(n.endswith(suffix) for n in names), suffix
    # cross-attention keys/values read the text context (width 16)
    k = [m for n, m in model.unet.named_modules() if n.endswith("attn2.to_k")][0]
    assert tuple(k.weight.shape) == (32, 16) or tuple(k.weight.shape)[1] == 16


def test_unet_shapes_and_text_dependence(model):
    rng = np.random.default_rng(1)
    x = jt.array(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    ctx_a = model.encode(["a pixel painting of a cat"] * 2)
    ctx_b = model.encode(["a neon painting of a car"] * 2)
    out_a = model.unet(x, 500, ctx_a).numpy()
    assert out_a.shape == (2, 3, 32, 32) and np.isfinite(out_a).all()
    out_b = model.unet(x, 500, ctx_b).numpy()
    assert np.abs(out_a - out_b).mean() > 1e-3  # the text changes the prediction
    out_t = model.unet(x, jt.array(np.array([10.0, 900.0], np.float32)), ctx_a).numpy()
    assert np.abs(out_t - out_a).mean() > 1e-3  # so does the timestep
    with pytest.raises(ValueError, match="context"):
        model.unet(x, 500, ctx_a[:1])


def test_unet_cross_attention_only_path_for_text_when_pooling_is_off():
    cfg = tiny_config()
    cfg.unet.pooled_text = False
    jt.set_global_seed(1)
    m = TextToImage(cfg)
    randomize(m.unet, seed=3)
    x = jt.array(np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32))
    a = m.unet(x, 100, m.encode("a pixel painting of a cat")).numpy()
    b = m.unet(x, 100, m.encode("a ink painting of a tree")).numpy()
    assert np.abs(a - b).mean() > 1e-4  # text reaches the image only through to_k / to_v here
    for n, mod in m.unet.named_modules():  # silence cross-attention: text no longer matters
        if n.endswith("attn2.to_v"):
            mod.weight.update(jt.zeros(mod.weight.shape))
    a = m.unet(x, 100, m.encode("a pixel painting of a cat")).numpy()
    b = m.unet(x, 100, m.encode("a ink painting of a tree")).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_save_load_round_trip_keeps_outputs_and_added_tokens(model, tmp_path):
    model.tokenizer.add_tokens(["sks"])
    path = model.save(tmp_path / "m.safetensors", {"note": "test"})
    loaded = TextToImage.load(path)
    assert loaded.tokenizer.ids["sks"] == model.tokenizer.ids["sks"]
    x = jt.array(np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32))
    p = "a sks painting of a cat"
    np.testing.assert_allclose(loaded.unet(x, 300, loaded.encode(p)).numpy(),
                               model.unet(x, 300, model.encode(p)).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        TextToImage.load(tmp_path / "missing.safetensors")
    (tmp_path / "w.pt").write_bytes(b"not a pickle we would load")
    with pytest.raises(ValueError, match="safetensors"):
        TextToImage.load(tmp_path / "w.pt")


def test_classifier_free_guidance_combines_cond_and_uncond(model):
    x = jt.array(np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32))
    ctx = model.encode(["a pixel painting of a cat", "a ink painting of a tree"])
    unc = model.encode([""])
    c = model.unet(x, 700, ctx).numpy()
    u = model.unet(x, 700, jt.concat([unc, unc], dim=0)).numpy()
    g = cfg_model(model, ctx, unc, 3.0)(x, 700).numpy()
    np.testing.assert_allclose(g, u + 3.0 * (c - u), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cfg_model(model, ctx, unc, 1.0)(x, 700).numpy(), c, rtol=1e-5, atol=1e-5)


def test_generate_runs_the_sampler_and_checks_input(model):
    from gdlib.pipeline import generate

    imgs = generate(model, ["a pixel painting of a cat"], num_inference_steps=2, guidance_scale=2.0, seed=0)
    assert imgs.shape == (1, 3, 32, 32) and imgs.dtype == np.float32
    assert imgs.min() >= -1 and imgs.max() <= 1
    again = generate(model, ["a pixel painting of a cat"], num_inference_steps=2, guidance_scale=2.0, seed=0)
    np.testing.assert_allclose(imgs, again, atol=1e-5)
    with pytest.raises(ValueError):
        generate(model, [], num_inference_steps=2)


@pytest.mark.parity
def test_pytorch_twin_matches_the_jittor_model(model):
    """bench/unet.py's PyTorch twin, with the Jittor weights copied in, computes the same eps_hat."""
    torch = pytest.importorskip("torch", reason="parity extra not installed: pip install -e .[parity]")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_unet", Path(__file__).parent.parent / "bench" / "unet.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    t_text, t_unet = bench.build_torch_twin(model.config, model.tokenizer.vocab_size)
    assert bench.copy_weights(model, t_text, t_unet) == len(model.text_encoder.state_dict()) + len(model.unet.state_dict())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([3.0, 801.0], np.float32)
    ids = model.tokenizer.encode(["a pixel painting of a cat", "a ink painting of a tree"])
    with torch.no_grad():
        ref = t_unet(torch.from_numpy(x), torch.from_numpy(t), t_text(torch.from_numpy(ids.astype(np.int64)))).numpy()
    out = model.unet(jt.array(x), jt.array(t), model.text_encoder(ids)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
