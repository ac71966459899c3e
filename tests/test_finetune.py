"""gdlib.finetune: few-shot style fine-tuning on a tiny random model (no shipped checkpoint needed)."""
import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import adapters, finetune as F, imageio, toyworld  # noqa: E402
from gdlib.toyworld.export import export_challenge  # noqa: E402
from conftest import tiny_model  # noqa: E402
from gdlib.finetune_cli import main_train_style  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenge")
    export_challenge(root, styles=["watercolor"], per_style=3, size=16, categories=["animal"])
    return root / "00"


def cfg(**kw) -> F.StyleConfig:
    base = dict(steps=3, batch_size=2, lr=5e-3, checkpoint_every=0, seed=0)
    base.update(kw)
    return F.StyleConfig(**base)


def _outputs(model, prompt):
    x = jt.array(np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32))
    t = jt.array(np.array([50.0, 600.0], np.float32))
    with jt.no_grad():
        return model.unet(x, t, model.encode([prompt] * 2, strict=True)).numpy()


def _write_images(d, names, size=16):
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in names:
        imageio.save_images(d, rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32), ["tmp"])
        (d / "tmp.png").rename(d / n)


# ---------------------------------------------------------------------------------------- bad input
def test_style_folder_loads_with_style_name(folder):
    ds = F.load_style_folder(folder, 16)
    assert ds["images"].shape == (3, 3, 16, 16) and ds["style"] == "watercolor" and ds["sid"] == "00"
    assert all(toyworld.CATEGORY_OF[o] == "animal" for o in ds["objects"]) and ds["prompts"]


def test_folder_with_zero_or_one_image(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        F.load_style_folder(tmp_path / "empty", 16)
    _write_images(tmp_path / "one" / "images", ["cat.png"])
    with pytest.raises(ValueError, match="at least 2 images"):
        F.load_style_folder(tmp_path / "one", 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        F.load_style_folder(tmp_path / "nowhere", 16)


def test_non_image_files_and_unreadable_images(tmp_path):
    d = tmp_path / "s" / "images"
    _write_images(d, ["cat.png", "fish.png"])
    (d / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"not images: \['notes.txt'\]"):
        F.load_style_folder(tmp_path / "s", 16)
    (d / "notes.txt").unlink()
    (d / "bird.png").write_text("not really a png")
    with pytest.raises(ValueError, match="cannot read image"):
        F.load_style_folder(tmp_path / "s", 16)


def test_duplicate_object_names(tmp_path):
    _write_images(tmp_path / "s" / "images", ["cat.png", "Cat.jpg", "fish.png"])
    with pytest.raises(ValueError, match=r"same object \['cat'\]"):
        F.load_style_folder(tmp_path / "s", 16)


def test_cjk_object_names(tmp_path):
    _write_images(tmp_path / "s" / "images", ["猫.png", "fish.png"])
    with pytest.raises(ValueError, match="猫"):
        F.load_style_folder(tmp_path / "s", 16)


def test_object_words_unknown_to_the_tokenizer(tmp_path):
    _write_images(tmp_path / "s" / "images", ["dog.png", "fish.png"])
    with pytest.raises(ValueError, match=r"\['dog'\]"):
        F.finetune_style(tmp_path / "s", None, cfg(), model=tiny_model(), progress=False)


def test_bad_options():
    with pytest.raises(ValueError, match="adapter"):
        F.finetune_style({}, None, cfg(adapter="ia3"), model=tiny_model(), progress=False)
    with pytest.raises(ValueError, match="steps must be"):
        F.finetune_style({}, None, cfg(steps=-1), model=tiny_model(), progress=False)


# ---------------------------------------------------------------------------------------- training + files
def test_decoupled_dora_with_prior_trains_only_adapter_and_new_token(folder, tmp_path):
    model = tiny_model()
    base_state = model.state()
    log = []
    # the category word "animal" is an ordinary word of the base (data version 2); the identifier "sks" is new
    res = F.finetune_style(folder, tmp_path / "style.safetensors", cfg(prior_weight=1.0, num_class_images=2,
                           class_steps=2, token="sks"), model=model, cache_dir=tmp_path / "cache", progress=False,
                           log=log.append)
    info = res["info"]
    assert info["captions"][0].startswith("sks animal painting of ") and info["new_tokens"] == ["sks"]
    assert F.style_prompt(info, "car") == "sks painting of car"
    assert all(np.isfinite(res["history"]["loss"])) and all(v is not None for v in res["history"]["prior_loss"])
    # base weights untouched except the new token's embedding row
    after = model.state()
    emb_key = "text_encoder.token_embedding.weight"
    aid = model.tokenizer.ids["sks"]
    for k, v in base_state.items():
        if k != emb_key:  # adapted layers keep their frozen weight under .base
            k2 = k if k in after else "{}.base.{}".format(*k.rsplit(".", 1))
            np.testing.assert_array_equal(after[k2], v, err_msg=k)
    keep = np.ones(len(v := after[emb_key]), bool)
    keep[aid] = False
    np.testing.assert_array_equal(v[keep], base_state[emb_key][keep])
    assert not np.allclose(v[aid], base_state[emb_key][aid])
    assert any(np.abs(layer.lora_B.numpy()).max() > 0 for layer in adapters.adapted_layers(model.unet).values())
    # the file reloads onto a fresh base to the same outputs; it is also a gdlib adapter file
    fresh = tiny_model()
    info2 = F.load_style(fresh, res["path"])
    np.testing.assert_allclose(_outputs(fresh, "sks animal painting of cat"), _outputs(model, "sks animal painting of cat"),
                               atol=1e-5)
    assert info2["caption_mode"] == "decoupled"
    tensors, meta = adapters.read_adapter(res["path"])
    assert meta["config"]["kind"] == "dora" and "token_embedding.sks" in tensors
    # class images were cached: a second run reads them back
    F.class_images(tiny_model(), [o for o in toyworld.OBJECTS], 2, 2, seed=0, cache_dir=tmp_path / "cache",
                   log=log.append)
    assert any("from cache" in m for m in log)


def test_adapter_for_another_base_model_is_rejected(folder, tmp_path):
    res = F.finetune_style(folder, tmp_path / "s.safetensors", cfg(caption_mode="dreambooth", adapter="lora"),
                           model=tiny_model(0), progress=False)
    other = tiny_model(1)
    with pytest.raises(ValueError, match="another base model"):
        F.load_style(other, res["path"])
    with pytest.raises(ValueError, match="not a gdlib style file"):
        p = tmp_path / "plain.safetensors"
        tiny_model(0).save(p)
        F.load_style(tiny_model(0), p)


def test_resume_continues_the_same_run(folder, tmp_path):
    straight = F.finetune_style(folder, tmp_path / "a.safetensors", cfg(steps=4, caption_mode="instance"),
                                model=tiny_model(), progress=False)
    F.finetune_style(folder, tmp_path / "b.safetensors", cfg(steps=2, caption_mode="instance"), model=tiny_model(),
                     progress=False)
    log = []
    resumed = F.finetune_style(folder, tmp_path / "b.safetensors", cfg(steps=4, caption_mode="instance"),
                               model=tiny_model(), progress=False, log=log.append)
    assert any("resumed" in m and "step 2" in m for m in log)
    assert resumed["info"]["token"] == "style_00" and resumed["info"]["captions"] == ["style_00"] * 3
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(_outputs(resumed["model"], "a style_00 painting of a car"),
                               _outputs(straight["model"], "a style_00 painting of a car"), atol=1e-4)
    with pytest.raises(ValueError, match="other options: config.lr 0.005 -> 0.001"):
        F.finetune_style(folder, tmp_path / "b.safetensors", cfg(steps=4, caption_mode="instance", lr=1e-3),
                         model=tiny_model(), progress=False)


def test_custom_diffusion_trains_only_cross_attention_kv_and_the_token(folder, tmp_path):
    model = tiny_model()
    before = model.state()
    res = F.finetune_style(folder, tmp_path / "kv.safetensors", cfg(adapter="custom", lr=1e-3, caption_mode="dreambooth"),
                           model=model, progress=False)
    after = model.state()
    changed = sorted(k for k in after if not np.array_equal(after[k], before[k]))
    assert changed and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) or "token_embedding" in k
                           for k in changed), changed
    assert any("attn2.to_k" in k for k in changed) and any("attn2.to_v" in k for k in changed)
    tensors, info = F.read_style(res["path"])
    assert info["adapter"] == "custom" and all(k.startswith(("unet.", "token_embedding.")) for k in tensors)
    fresh = tiny_model()
    F.load_style(fresh, res["path"])
    np.testing.assert_allclose(_outputs(fresh, "a sks painting of a car"), _outputs(model, "a sks painting of a car"),
                               atol=1e-5)


def test_joint_training_of_two_folders_gives_each_its_own_token(tmp_path):
    export_challenge(tmp_path / "two", styles=["watercolor", "mosaic"], per_style=3, size=16, categories=["animal", "animal"])
    a, b = tmp_path / "two" / "00", tmp_path / "two" / "01"
    with pytest.raises(ValueError, match="caption mode 'instance'"):
        F.finetune_style([a, b], None, cfg(adapter="custom"), model=tiny_model(), progress=False)
    model = tiny_model()
    res = F.finetune_style([a, b], tmp_path / "ab.safetensors", cfg(adapter="custom", lr=1e-3, caption_mode="instance"),
                           model=model, progress=False)
    info = res["info"]
    assert [c["token"] for c in info["concepts"]] == ["style_00", "style_01"]
    assert info["new_tokens"] == ["style_00", "style_01"] and len(info["captions"]) == 6
    assert sum("style_01" in c for c in info["captions"]) == 3
    assert F.style_prompt(info, "cat", concept="01") == "a style_01 painting of a cat"
    assert F.style_prompt(info, "cat") == "a style_00 painting of a cat"
    with pytest.raises(ValueError, match="no concept"):
        F.style_prompt(info, "cat", concept="07")
    fresh = tiny_model()
    loaded = F.load_style(fresh, res["path"])
    assert loaded["concepts"] == info["concepts"]
    for prompt in ("a style_00 painting of a car", "a style_01 painting of a car"):
        np.testing.assert_allclose(_outputs(fresh, prompt), _outputs(model, prompt), atol=1e-5)


def test_full_finetune_with_text_encoder_roundtrip(folder, tmp_path):
    model = tiny_model()
    before = model.state()
    res = F.finetune_style(folder, tmp_path / "full.safetensors", cfg(adapter="full", lr=1e-3,
                           caption_mode="dreambooth", train_text_encoder=True), model=model, progress=False)
    after = model.state()
    assert any(not np.array_equal(after[k], before[k]) for k in after if k.startswith("unet."))
    assert any(not np.array_equal(after[k], before[k]) for k in after if k.startswith("text_encoder.layers"))
    fresh = tiny_model()
    F.load_style(fresh, res["path"])
    np.testing.assert_allclose(_outputs(fresh, "a sks painting of a car"), _outputs(model, "a sks painting of a car"),
                               atol=1e-5)


def test_cli_train_style(folder, tmp_path, capsys):
    base = tiny_model().save(tmp_path / "base.safetensors")
    out = tmp_path / "cli.safetensors"
    rc = main_train_style([str(folder), "--out", str(out), "--base", str(base), "--steps", "2", "--batch", "2",
                             "--captions", "dreambooth", "--no-progress"])
    assert rc == 0 and out.is_file()
    assert "a sks painting of a {object}" in capsys.readouterr().out
    _, info = F.read_style(out)
    assert info["steps"] == 2 and info["base_path"] == str(base)
    card = json.loads((tmp_path / "cli.card.json").read_text())
    assert card["command"].startswith("gdlib train-style") and card["steps"] == 2
    rc = main_train_style([str(tmp_path / "missing"), "--out", str(out), "--base", str(base)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
