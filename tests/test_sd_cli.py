"""`gdlib sample --checkpoint FOLDER` and `gdlib train-style --base FOLDER` on a Stable Diffusion diffusers folder (a
tiny random one written by gdlib.sd.tiny): the commands route to gdlib.sd, write a diffusers LoRA file + card, resume
from their checkpoint (the same adapter as an uninterrupted run), draw and cache prior-preservation class images, take
every caption mode, and refuse bad input in one line."""
import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import cli  # noqa: E402
from gdlib.sd.tiny import write_tiny_folder  # noqa: E402
from gdlib.toyworld.export import export_challenge  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("sdcli") / "pipe", sample_size=8)


def test_train_style_and_sample_on_an_sd_folder(sd_folder, tmp_path, capsys):
    from safetensors import safe_open

    export_challenge(tmp_path / "toy", styles=["watercolor"], per_style=3, size=16)
    style = str(tmp_path / "toy" / "00")
    out = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    args = ["train-style", style, "--base", str(sd_folder), "--out", str(out), "--steps", "3", "--batch", "2",
            "--captions", "dreambooth", "--adapter", "dora", "--no-progress"]
    assert cli.main(args) == 0
    with safe_open(str(out), "np") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") for k in keys)
    assert any(k.endswith("lora_magnitude_vector") for k in keys)          # DoRA's magnitude, as peft names it
    assert any(".to_out.0.lora_A" in k for k in keys) and not any(".conv" in k for k in keys)
    assert "lora_adapter_metadata" in meta
    card = json.loads((tmp_path / "lora" / "pytorch_lora_weights.card.json").read_text())
    assert card["inference_prompt"] == "a sks painting of a {object}" and card["steps"] == 3
    assert np.isfinite(card["metrics"]["fixed_set_loss_after"])
    png = tmp_path / "s.png"
    assert cli.main(["sample", "a sks painting of a cat", "--checkpoint", str(sd_folder), "--steps", "2",
                     "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and "CFG 7.5" in capsys.readouterr().out
    assert cli.main(["sample", "a cat", "--checkpoint", str(sd_folder), "--steps", "3", "--sampler", "dpmpp_2m",
                     "--out", str(png)]) == 0
    assert "3 dpmpp_2m steps" in capsys.readouterr().out
    # bad input is one line on stderr, exit 2
    assert cli.main(["train-style", style, "--base", str(sd_folder), "--out", str(tmp_path / "y.safetensors"),
                     "--prior-weight", "1", "--class-objects", "cat,\u732b"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ASCII" in err and "--class-objects" in err
    assert cli.main(["train-style", style, "--base", str(sd_folder), "--out", str(tmp_path / "x.bin"),
                     "--captions", "instance"]) == 2
    assert ".safetensors" in capsys.readouterr().err


def _finetune(folder, ckpt, steps, lr=1e-2):
    """gdlib.sd.finetune on a fresh pipeline of `folder`: 3 style images + 2 class images with one caption each."""
    from gdlib.sd.cli import image_size
    from gdlib.sd.finetune import finetune
    from gdlib.sd.loader import load_pipeline
    from gdlib.sd.lora import adapter_tensors

    pipe = load_pipeline(folder)
    size = image_size(pipe)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, size, size)).astype(np.float32)
    res = finetune(pipe, x[:3], ["a sks painting of a cat", "a sks painting of a car", "a sks painting of a tree"],
                   steps=steps, kind="dora", rank=2, alpha=2, lr=lr, batch_size=2, class_images=x[3:],
                   class_caption=["a painting of a cat", "a painting of a car"], prior_weight=0.5, seed=3,
                   ckpt=ckpt, checkpoint_every=2, log=lambda s: None)
    return res, adapter_tensors(pipe.unet, "")


def test_a_resumed_finetune_equals_an_uninterrupted_one(sd_folder, tmp_path):
    from gdlib.checkpoint import load_tensors

    full, want = _finetune(sd_folder, tmp_path / "a.ckpt.safetensors", 6)
    assert full.steps == 6 and full.resumed_at == 0 and len(full.losses) == 6 and all(full.prior_losses)
    first, _ = _finetune(sd_folder, tmp_path / "b.ckpt.safetensors", 3)
    assert first.steps == 3
    second, got = _finetune(sd_folder, tmp_path / "b.ckpt.safetensors", 6)
    assert second.resumed_at == 3 and second.steps == 6
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=k)
    print(f"\nresumed vs uninterrupted: largest difference {max(np.abs(got[k] - want[k]).max() for k in want):.1e}")
    np.testing.assert_allclose(second.losses, full.losses, rtol=1e-6)
    assert json.loads(load_tensors(tmp_path / "b.ckpt.safetensors")[1]["state"])["step"] == 6
    # another run's options: refused, naming what differs
    with pytest.raises(ValueError, match=r"other options: config\.lr 0\.01 -> 0\.02"):
        _finetune(sd_folder, tmp_path / "b.ckpt.safetensors", 8, lr=2e-2)


def test_prior_preservation_caches_class_images_and_resumes(sd_folder, tmp_path, capsys):
    export_challenge(tmp_path / "toy", styles=["watercolor"], per_style=3, size=16)
    style = str(tmp_path / "toy" / "00")
    out = tmp_path / "lora" / "style.safetensors"
    args = ["train-style", style, "--base", str(sd_folder), "--out", str(out), "--batch", "2", "--adapter", "lora",
            "--captions", "dreambooth", "--prior-weight", "1", "--class-images", "2", "--class-steps", "2",
            "--no-progress"]
    assert cli.main(args + ["--steps", "2"]) == 0
    cache = tmp_path / "lora" / "style.class_images"
    index = json.loads((cache / "class_images.json").read_text())
    assert len(index["files"]) == 2 and all((cache / f).is_file() for f in index["files"])
    assert index["guidance"] == 7.5 and index["steps"] == 2            # diffusers' CFG: --class-guidance not given
    objects = sorted(p.stem for p in (tmp_path / "toy" / "00" / "images").iterdir())
    assert index["prompts"] == [f"a painting of a {o}" for o in objects[:2]]
    card = json.loads((tmp_path / "lora" / "style.card.json").read_text())
    prior = card["prior_preservation"]
    assert (prior["weight"], prior["class_images"], prior["class_steps"], prior["cache_reused"]) == (1.0, 2, 2, False)
    assert card["steps"] == 2 and card["resumed"] is False
    assert (tmp_path / "lora" / "style.ckpt.safetensors").is_file()
    capsys.readouterr()
    # the same command with a larger budget: the cache is reused and training resumes at step 2
    assert cli.main(args + ["--steps", "3"]) == 0
    log = capsys.readouterr().out
    assert "reusing 2 class images" in log and "resumed from" in log and "at step 2" in log
    card = json.loads((tmp_path / "lora" / "style.card.json").read_text())
    assert card["prior_preservation"]["cache_reused"] is True
    assert card["steps"] == 3 and card["resumed"] is True and card["resumed_from_step"] == 2
    # other generation settings: drawn again, the cache replaced
    from gdlib.sd.finetune import generate_class_images
    from gdlib.sd.loader import load_pipeline
    x, reused = generate_class_images(load_pipeline(sd_folder), index["prompts"], cache, steps=3, guidance=2.0,
                                      log=lambda s: None)
    assert not reused and x.shape[0] == 2
    assert json.loads((cache / "class_images.json").read_text())["steps"] == 3


def test_decoupled_captions_on_an_sd_folder(sd_folder, tmp_path):
    export_challenge(tmp_path / "toy", styles=["watercolor"], per_style=3, size=16)
    out = tmp_path / "dec.safetensors"
    assert cli.main(["train-style", str(tmp_path / "toy" / "00"), "--base", str(sd_folder), "--out", str(out),
                     "--steps", "2", "--batch", "2", "--adapter", "lora", "--captions", "decoupled",
                     "--no-progress"]) == 0
    card = json.loads((tmp_path / "dec.card.json").read_text())
    from gdlib.toyworld import CATEGORY_OF
    objects = sorted(p.stem for p in (tmp_path / "toy" / "00" / "images").iterdir())
    category = CATEGORY_OF[objects[0]]
    assert card["caption_mode"] == "decoupled" and card["attributes"] == [category]
    assert card["captions"] == [f"{category} painting of {o}" for o in objects]
    assert card["inference_prompt"] == "painting of {object}" and out.is_file()
