"""gdlib.sd's Stable Diffusion models against diffusers / transformers on tiny random pipelines (parity extra),
and the loader's errors on broken folders (no torch needed).

The parity fixture builds, with diffusers and transformers, an SD 1.x-like and an SD 2.x-like pipeline with random
weights (every parameter re-drawn, norms' affines included), saves it with StableDiffusionPipeline.save_pretrained,
loads the folder with gdlib.sd.loader.load_pipeline and compares each component and a 4-step DDIM image on the same
inputs. Run with `-s` to see the differences: max |ours - ref| and that over max |ref| ("relative").
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib.sd import loader as L  # noqa: E402
from gdlib.sd import pipeline as P  # noqa: E402
from gdlib.sd.tiny import DOWN, UP, write_tiny_folder, write_tokenizer_files  # noqa: E402,F401

PROMPTS = ["a watercolor painting of a cat", "a pixel painting of a castle by the sea"]
# SD 1.x: conv proj_in/proj_out, one head count, quick_gelu CLIP, epsilon, pad with <|endoftext|>, vocab.json+merges.txt.
# SD 2.x: linear projections, per-block heads, upcast_attention, gelu (OpenCLIP), v-prediction, pad "!", tokenizer.json.
VARIANTS = {
    "sd1": dict(unet=dict(attention_head_dim=8, use_linear_projection=False, norm_num_groups=32),
                vae_groups=32, hidden_act="quick_gelu", pad="<|endoftext|>", prediction_type="epsilon", vocab_files=True),
    "sd2": dict(unet=dict(attention_head_dim=(4, 8), use_linear_projection=True, norm_num_groups=8, upcast_attention=True),
                vae_groups=8, hidden_act="gelu", pad="!", prediction_type="v_prediction", vocab_files=False),
}
RTOL = 2e-5        # per component: max |ours - ref| / max |ref|, float32 (measured <= 1.7e-6)
IMAGE_ATOL = 2e-5  # 4-step DDIM image in [0, 1] (measured <= 2.6e-6)


def compare(tag: str, ours, ref, rtol: float | None = RTOL, atol: float | None = None) -> float:
    """Print max |ours - ref| and its ratio to max |ref|; assert the stated tolerance."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{tag}: shape {ours.shape} vs {ref.shape}"
    err = float(np.abs(ours - ref).max())
    rel = err / max(float(np.abs(ref).max()), 1e-30)
    print(f"\n{tag}: max abs diff {err:.3e}, relative {rel:.3e} (max |ref| {np.abs(ref).max():.3g})", flush=True)
    if rtol is not None:
        assert rel <= rtol, f"{tag}: relative difference {rel:.3e} > {rtol}"
    if atol is not None:
        assert err <= atol, f"{tag}: max abs difference {err:.3e} > {atol}"
    return err


# ----- parity against diffusers / transformers ----------------------------------------------------------
@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(variant, diffusers pipeline, gdlib StableDiffusion) from the same saved folder."""
    torch = pytest.importorskip("torch", reason="parity extra not installed: pip install -e .[parity]")
    diffusers = pytest.importorskip("diffusers", reason="parity extra not installed: pip install -e .[parity]")
    transformers = pytest.importorskip("transformers", reason="parity extra not installed: pip install -e .[parity]")
    name, v = request.param, VARIANTS[request.param]
    root = tmp_path_factory.mktemp(name)
    write_tokenizer_files(root / "tok", v["pad"])
    tok = transformers.CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"),
                                     pad_token=v["pad"], model_max_length=77)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                          sample_size=16, down_block_types=DOWN, up_block_types=UP, **v["unet"])
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=v["vae_groups"], sample_size=32)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act=v["hidden_act"], bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1, prediction_type=v["prediction_type"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (unet, vae, text):
            for pname, p in model.named_parameters():  # every weight random, norm affines away from (1, 0)
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
                else:
                    p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            model.eval()
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = root / "pipeline"
    pipe.save_pretrained(folder, safe_serialization=True)
    if v["vocab_files"]:  # as hub folders ship them; sd2 keeps transformers 5's tokenizer.json only
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(root / "tok" / f, folder / "tokenizer" / f)
    return name, pipe, L.load_pipeline(folder), torch


@pytest.mark.parity
def test_text_encoder_matches_transformers(pair):
    name, pipe, ours, torch = pair
    prompts = PROMPTS + ["", "don't stop: it's the cat's toy, " * 12]   # the last one is truncated
    ids = ours.tokenizer.encode(prompts)
    ref_ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids.tolist() == ref_ids
    with torch.no_grad():
        ref = pipe.text_encoder(torch.from_numpy(ids), output_hidden_states=True)
    with jt.no_grad():
        out = ours.text_encoder(ids)
    compare(f"[{name}] text encoder last_hidden_state", out.last_hidden_state.numpy(), ref.last_hidden_state.numpy())
    compare(f"[{name}] text encoder pooler_output", out.pooler_output.numpy(), ref.pooler_output.numpy())
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for k, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        compare(f"[{name}] text encoder hidden_states[{k}]", a.numpy(), b.numpy())


SPECIAL_PROMPTS = ["don't stop: it's the cat's toy!", "A!B", "! !! !!!", "hi ! there", "x<|endoftext|>y",
                   "a <|startoftext|> b", "x <|endoftext|>!y", "x<|ENDOFTEXT|>y", "Hi<|EndOfText|>!", "don't!s",
                   "a cat! " * 40]   # the last one is truncated


@pytest.mark.parity
def test_special_tokens_inside_a_prompt(pair):
    """transformers splits the special tokens (BOS, EOS, pad) out of the raw text before normalising: with SD 2.x's
    pad "!" every "!" in a prompt is the pad id (0 in real SD 2.x), and an upper-case "<|ENDOFTEXT|>" is no match
    (it becomes byte-level pieces); gdlib.sd.tokenizer gives the same ids for SD 1.x and SD 2.x."""
    name, pipe, ours, torch = pair
    ids = ours.tokenizer.encode(SPECIAL_PROMPTS).tolist()
    ref = pipe.tokenizer(SPECIAL_PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    for p, a, b in zip(SPECIAL_PROMPTS, ids, ref):
        assert a == b, f"[{name}] {p!r}: {ours.tokenizer.tokenize(p)} vs {pipe.tokenizer.tokenize(p)}"
    bang = ours.tokenizer.encoder["!"]
    if VARIANTS[name]["pad"] == "!":
        assert ids[2][1:7] == [bang] * 6 and ours.tokenizer.encoder[ours.tokenizer.pad_token] == bang
    else:
        assert ids[2][1] == ours.tokenizer.encoder["!</w>"]   # SD 1.x: "!" is ordinary text


def test_special_tokens_follow_the_folder_config(tmp_path):
    """A token the folder's config marks `normalized` (real SD 1.x / 2.x tokenizer_config.json: bos/eos/unk as
    AddedToken dicts with normalized true) is matched after lower-casing; a plain string is matched case-sensitively,
    and a later declaration of the same token wins (SD 1.x's pad "<|endoftext|>" string after eos's dict)."""
    from gdlib.sd.tokenizer import CLIPTokenizer
    def added(c):
        return {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}
    for pad, want_eos in (("!", True), ("<|endoftext|>", False)):
        write_tokenizer_files(tmp_path / pad, pad)
        (tmp_path / pad / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
             "unk_token": added("<|endoftext|>"), "pad_token": pad, "model_max_length": 77}))
        tok = CLIPTokenizer.from_folder(tmp_path / pad)
        want = {"<|startoftext|>": True, "<|endoftext|>": want_eos, **({"!": False} if pad == "!" else {})}
        assert tok.special_tokens == want   # what transformers 5 reads from these files (checked by hand)
        eos = tok.encoder["<|endoftext|>"]
        assert (tok.encode("x<|ENDOFTEXT|>y")[0][2] == eos) == want_eos


@pytest.mark.parity
def test_unet_matches_diffusers(pair):
    name, pipe, ours, torch = pair
    rng = np.random.default_rng(2)
    cases = [((2, 4, 16, 16), np.array([981, 321]), 77),   # per-sample timesteps, full context
             ((1, 4, 15, 13), np.array(500), 5)]              # odd size: diffusers' forward_upsample_size path
    for shape, t, m in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        ctx = rng.standard_normal((shape[0], m, 32)).astype(np.float32)
        with torch.no_grad():
            ref = pipe.unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
        with jt.no_grad():
            out = ours.unet(jt.array(x), t, jt.array(ctx)).numpy()
        compare(f"[{name}] unet {shape} t={t.tolist()}", out, ref)


@pytest.mark.parity
def test_vae_matches_diffusers(pair):
    name, pipe, ours, torch = pair
    rng = np.random.default_rng(3)
    img = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    z = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        dist = pipe.vae.encode(torch.from_numpy(img)).latent_dist
        dec = pipe.vae.decode(torch.from_numpy(z)).sample.numpy()
    with jt.no_grad():
        post = ours.vae.encode(jt.array(img))
        ours_dec = ours.vae.decode(jt.array(z)).numpy()
    compare(f"[{name}] vae encode mean", post.mean.numpy(), dist.mean.numpy())
    compare(f"[{name}] vae encode logvar", post.logvar.numpy(), dist.logvar.numpy())
    compare(f"[{name}] vae decode", ours_dec, dec)
    assert ours.vae.scaling_factor == pipe.vae.config.scaling_factor


@pytest.mark.parity
def test_four_step_ddim_image_matches_diffusers(pair):
    name, pipe, ours, torch = pair
    assert ours.schedule.prediction_type == VARIANTS[name]["prediction_type"]
    latents = np.random.default_rng(4).standard_normal((2, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = pipe(prompt=PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=4, guidance_scale=3.0,
                   output_type="np").images
    img = P.sample(ours, PROMPTS, latents, steps=4, guidance_scale=3.0)
    assert img.shape == ref.shape == (2, 32, 32, 3)
    inside = float(np.mean((ref > 1e-3) & (ref < 1 - 1e-3)))   # not a clamped, saturated picture
    print(f"\n[{name}] image: std {np.std(ref):.3f}, fraction of unclamped pixels {inside:.2f}", end="")
    assert 0.01 < float(np.std(ref)) and inside > 0.5 and not np.allclose(ref[0], ref[1])  # prompts matter
    compare(f"[{name}] 4-step DDIM image (guidance 3.0)", img, ref, rtol=None, atol=IMAGE_ATOL)


@pytest.mark.parity
@pytest.mark.parametrize("sampler, scheduler, kw", [
    ("euler", "EulerDiscreteScheduler", {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
])
def test_other_samplers_match_diffusers_schedulers(pair, sampler, scheduler, kw):
    """The same pipeline with diffusers' scheduler swapped (built from the folder's scheduler_config.json, as after
    from_pretrained) and gdlib.sd.pipeline.sample with the matching gdlib sampler: the same images (deterministic
    samplers; the noise of ancestral ones differs). This folder's config sets timestep_spacing ("leading")."""
    import diffusers
    name, pipe, ours, torch = pair
    latents = np.random.default_rng(5).standard_normal((2, 4, 16, 16)).astype(np.float32)
    original = pipe.scheduler
    file_config = json.loads((ours.folder / "scheduler" / "scheduler_config.json").read_text())
    pipe.scheduler = getattr(diffusers, scheduler).from_config(file_config, **kw)
    try:
        with torch.no_grad():
            ref = pipe(prompt=PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=6, guidance_scale=3.0,
                       output_type="np").images
    finally:
        pipe.scheduler = original
    img = P.sample(ours, PROMPTS, latents, steps=6, guidance_scale=3.0, sampler=sampler,
                   karras=bool(kw.get("use_karras_sigmas")))
    ddim = P.sample(ours, PROMPTS, latents, steps=6, guidance_scale=3.0)
    assert np.abs(img - ddim).max() > 1e-3           # really another sampler
    compare(f"[{name}] 6-step {scheduler}{' (Karras)' if kw.get('use_karras_sigmas') else ''} image", img, ref,
            rtol=None, atol=IMAGE_ATOL)


@pytest.mark.parity
def test_euler_on_a_config_without_timestep_spacing(tmp_path):
    """A folder whose scheduler config lacks timestep_spacing (SD 1.5's and SD 2.1's hub configs): diffusers' Euler
    then uses its own default ("linspace") and starts from x_T * sigma_max; gdlib.sd.pipeline.sample does the same."""
    torch = pytest.importorskip("torch", reason="parity extra not installed: pip install -e .[parity]")
    diffusers = pytest.importorskip("diffusers", reason="parity extra not installed: pip install -e .[parity]")
    from gdlib.sd.tiny import write_tiny_folder

    folder = write_tiny_folder(tmp_path / "pipe", sample_size=8)
    assert "timestep_spacing" not in json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    dpipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    dpipe.set_progress_bar_config(disable=True)
    dpipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(dpipe.scheduler.config)
    assert dpipe.scheduler.config.timestep_spacing == "linspace"
    latents = np.random.default_rng(6).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = dpipe(prompt=["a cat"], latents=torch.from_numpy(latents), num_inference_steps=6, guidance_scale=3.0,
                    output_type="np").images
    img = P.sample(L.load_pipeline(folder), ["a cat"], latents, steps=6, guidance_scale=3.0, sampler="euler")
    compare("[tiny, no timestep_spacing] 6-step EulerDiscreteScheduler image", img, ref, rtol=None, atol=IMAGE_ATOL)


def test_rb_hook_needs_a_discrete_sampler(gd_folder):
    ours = L.load_pipeline(gd_folder)
    latents = np.zeros((1, *ours.latent_shape), np.float32)
    with pytest.raises(ValueError, match="ddim or ddpm"):
        P.sample(ours, "a cat", latents, steps=2, sampler="euler", x0_transform=lambda x0, eps, t, i: x0)
    with pytest.raises(ValueError, match="unknown sampler"):
        P.sample(ours, "a cat", latents, steps=2, sampler="heun")


@pytest.mark.parity
def test_dora_names_and_outputs_line_up_with_peft(pair):
    """gdlib.adapters.inject on the loaded UNet adapts exactly the layers peft adapts on diffusers' UNet for
    to_q/to_k/to_v/to_out.0, and with the same DoRA weights (B != 0, m perturbed) the outputs agree."""
    import copy

    from gdlib import adapters
    peft = pytest.importorskip("peft", reason="parity extra not installed: pip install -e .[parity]")
    name, pipe, ours, torch = pair
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pm = peft.get_peft_model(copy.deepcopy(pipe.unet), peft.LoraConfig(r=2, lora_alpha=2, target_modules=targets,
                                                                        use_dora=True, lora_dropout=0.0))
    tmods = {n: m for n, m in pm.base_model.model.named_modules() if hasattr(m, "lora_A")}
    unet = L.load_unet(ours.folder)
    names = adapters.inject(unet, targets=tuple(targets), kind="dora", rank=2, alpha=2)
    assert sorted(names) == sorted(tmods) and len(names) == 4 * 2 * 4   # 4 transformers (down 1, mid 1, up 2) x attn1/attn2 x 4
    g, layers = torch.Generator().manual_seed(5), adapters.adapted_layers(unet)
    with torch.no_grad():
        for n, tl in tmods.items():
            tl.lora_B["default"].weight.copy_(0.3 * torch.randn(tl.lora_B["default"].weight.shape, generator=g))
            mv = tl.lora_magnitude_vector["default"].weight
            mv.mul_(1 + 0.2 * torch.randn(mv.shape, generator=g))
            layers[n].lora_A.update(jt.array(tl.lora_A["default"].weight.numpy()))
            layers[n].lora_B.update(jt.array(tl.lora_B["default"].weight.numpy()))
            layers[n].magnitude.update(jt.array(mv.numpy().reshape(-1)))
    rng = np.random.default_rng(6)
    x, ctx = rng.standard_normal((2, 4, 16, 16)).astype(np.float32), rng.standard_normal((2, 7, 32)).astype(np.float32)
    t = np.array([700, 40])
    with torch.no_grad():
        ref = pm(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
        base = pipe.unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    with jt.no_grad():
        out = unet(jt.array(x), t, jt.array(ctx)).numpy()
    assert np.abs(ref - base).max() > 1e-2   # the adapter really changes the output
    compare(f"[{name}] unet with DoRA (peft) on to_q/to_k/to_v/to_out.0", out, ref)


# ----- the loader's errors (no torch) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def gd_folder(tmp_path_factory):
    """A tiny SD folder written by gdlib itself (gdlib.sd.tiny: random weights, no torch), in the older formats hub
    folders still have: an fp16 VAE variant with the old attention names, a text encoder under `text_model.` with
    position_ids, a PNDMScheduler config."""
    return write_tiny_folder(tmp_path_factory.mktemp("gdsd") / "pipe", sample_size=8, legacy=True)


def _copy(gd_folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(gd_folder, dst)
    return dst


def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_gdlib_folder_loads_and_samples(gd_folder):
    pipe = L.load_pipeline(gd_folder)
    assert pipe.schedule.steps_offset == 1 and pipe.schedule.prediction_type == "epsilon"
    assert pipe.schedule.clip_sample is False and pipe.vae_scale_factor == 2
    from safetensors.numpy import load_file
    vae_file = load_file(str(gd_folder / "vae" / "diffusion_pytorch_model.fp16.safetensors"))
    np.testing.assert_array_equal(pipe.vae.state_dict()["decoder.mid_block.attentions.0.to_out.0.weight"].numpy(),
                                  vae_file["decoder.mid_block.attentions.0.proj_attn.weight"].astype(np.float32))
    text_file = load_file(str(gd_folder / "text_encoder" / "model.safetensors"))
    np.testing.assert_array_equal(pipe.text_encoder.state_dict()["embeddings.token_embedding.weight"].numpy(),
                                  text_file["text_model.embeddings.token_embedding.weight"])
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    img = P.sample(pipe, "a cat", latents, steps=2, guidance_scale=2.0)
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


def test_missing_unet_folder_is_named(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    shutil.rmtree(d / "unet")
    with pytest.raises(ValueError, match=r"component folder unet/ is missing"):
        L.load_pipeline(d)


def test_missing_model_index_is_named(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    (d / "model_index.json").unlink()
    with pytest.raises(ValueError, match="model_index.json is missing"):
        L.load_pipeline(d)


def test_unsupported_block_type_is_named(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    _edit_json(d / "unet" / "config.json", down_block_types=["SimpleCrossAttnDownBlock2D", "DownBlock2D"])
    with pytest.raises(ValueError, match=r"down_block_types\[0\]='SimpleCrossAttnDownBlock2D' is not supported"):
        L.load_pipeline(d)


def test_unsupported_config_field_is_named(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    _edit_json(d / "unet" / "config.json", class_embed_type="timestep")
    with pytest.raises(ValueError, match="class_embed_type='timestep' is not supported"):
        L.load_pipeline(d)
    d2 = _copy(gd_folder, tmp_path / "b")
    _edit_json(d2 / "text_encoder" / "config.json", hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        L.load_pipeline(d2)


def test_missing_weight_file_is_named(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    (d / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(d / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors is missing.*pickled weights"):
        L.load_pipeline(d)


def test_weight_name_mismatch_lists_names(gd_folder, tmp_path):
    from safetensors.numpy import load_file, save_file
    d = _copy(gd_folder, tmp_path)
    path = d / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(str(path))
    w["conv_in.weight_renamed"] = w.pop("conv_in.weight")
    save_file(w, str(path))
    with pytest.raises(ValueError, match=r"1 missing \['conv_in.weight'\], 1 unexpected \['conv_in.weight_renamed'\]"):
        L.load_pipeline(d)


def test_sdxl_layout_is_refused(gd_folder, tmp_path):
    d = _copy(gd_folder, tmp_path)
    _edit_json(d / "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    with pytest.raises(ValueError, match="text_encoder_2"):
        L.load_pipeline(d)
