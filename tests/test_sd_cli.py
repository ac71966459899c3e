"""`gdlib sample --checkpoint FOLDER` and `gdlib train-style --base FOLDER` on a Stable Diffusion diffusers folder (a
tiny random one written by gdlib.sd.tiny): the commands route to gdlib.sd, write a diffusers LoRA file + card, and
refuse what they cannot do in one line."""
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
    # what the SD path cannot do is one line on stderr, exit 2
    assert cli.main(["train-style", style, "--base", str(sd_folder), "--out", str(out), "--steps", "1"]) == 2
    assert "use --captions instance or --captions dreambooth" in capsys.readouterr().err
    assert cli.main(["train-style", style, "--base", str(sd_folder), "--out", str(tmp_path / "x.bin"),
                     "--captions", "instance"]) == 2
    assert ".safetensors" in capsys.readouterr().err
