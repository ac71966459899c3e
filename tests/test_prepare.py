"""gdlib prepare on a messy folder: what is kept, what is dropped and why, and the files it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gdlib import prepare
from gdlib.toyworld import render


def _img(obj: str, seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray(render(obj, "watercolor", seed, size=size))


@pytest.fixture()
def messy(tmp_path):
    src = tmp_path / "messy"
    src.mkdir()
    _img("cat", 1).save(src / "cat.png")
    _img("cat", 1).save(src / "cat_copy.jpg", quality=90)            # the same picture again, re-encoded
    _img("car", 2).save(src / "pixel_art_car_01.png")                 # a style word and a number in the name
    _img("tree", 3, size=16).save(src / "tree.png")                   # too small
    pano = Image.new("RGB", (300, 60), (200, 220, 255))
    pano.paste(_img("boat", 4, size=60), (120, 0))
    pano.save(src / "boat.png")                                       # a panorama
    rot = _img("house", 5).rotate(90, expand=True)          # stored turned left; EXIF 6 says "turn right to display"
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(src / "house.jpg", exif=exif, quality=95)
    Image.fromarray(render("apple", "watercolor", 6, size=64)).convert("CMYK").save(src / "Äpfel apple.jpg")
    (src / "notes.png").write_text("not an image")
    (src / "readme.txt").write_text("my style")
    return src


def test_prepare_keeps_the_good_images_and_says_why_it_dropped_the_others(messy, tmp_path):
    out = tmp_path / "style"
    logs = []
    report = prepare.prepare_folder(messy, out, prepare.PrepareConfig(style_words=["pixel"]), prompts=["cat", "dog"],
                                    progress=False, log=logs.append)
    kept = {d["object"]: d for d in report["kept"]}
    assert sorted(kept) == ["apple", "car", "cat", "house"]
    assert kept["car"]["source"] == "pixel_art_car_01.png" and "-> 'car'" in kept["car"]["notes"][0]
    assert any("EXIF" in n for n in kept["house"]["notes"]) and any("CMYK" in n for n in kept["apple"]["notes"])
    dropped = {d["source"]: d["reason"] for d in report["dropped"]}
    assert "near-duplicate of cat.png" in dropped["cat_copy.jpg"]
    assert "too small" in dropped["tree.png"] and "panorama" in dropped["boat.png"]
    assert "unreadable" in dropped["notes.png"] and "not an image file type" in dropped["readme.txt"]
    # files: square images at the model's size, metadata for trainers, prompts, the report
    for obj in kept:
        im = Image.open(out / "images" / f"{obj}.png")
        assert im.size == (32, 32) and im.mode == "RGB"
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert {(x["file_name"], x["text"]) for x in lines} == {(f"images/{o}.png", o) for o in kept}
    assert (out / "metadata.csv").read_text().splitlines()[0] == "file_name,text"
    assert json.loads((out / "prompt.json").read_text()) == {"0": "dog"}        # objects already shown are not asked
    assert "| notes.png | unreadable" in (out / "prepare_report.md").read_text()
    assert "kept 4 of 9 files" in logs[0]
    # the rotated house is upright again: its roof (top rows) is above its base, as in the unrotated render
    up = np.asarray(Image.open(out / "images" / "house.png").convert("L"), np.float32)
    ref = np.asarray(_img("house", 5).convert("L").resize((32, 32)), np.float32)
    assert np.abs(up - ref).mean() < np.abs(np.rot90(up, 1) - ref).mean()
    # the result loads as a style folder
    from gdlib import imageio
    assert sorted(imageio.load_image_folder(out / "images")["objects"]) == sorted(kept)


def test_prepare_refuses_to_overwrite_and_explains_empty_results(messy, tmp_path):
    out = tmp_path / "style"
    prepare.prepare_folder(messy, out, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="already holds files"):
        prepare.prepare_folder(messy, out, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="nothing in .* passed the filters"):
        prepare.prepare_folder(messy, tmp_path / "o2", prepare.PrepareConfig(min_size=1000), progress=False,
                               log=lambda s: None)
    with pytest.raises(FileNotFoundError):
        prepare.prepare_folder(tmp_path / "missing", tmp_path / "o3", progress=False)


def test_object_words_and_hashes():
    assert prepare.object_word("pixel_art_cat_03", ["pixel"]) == ("cat", "name 'pixel_art_cat_03' -> 'cat'")
    assert prepare.object_word("red car") == ("car", "name 'red car' -> 'car'")
    assert prepare.object_word("cat") == ("cat", "")
    assert prepare.object_word("猫")[0] is None and prepare.object_word("style_art")[0] is None
    a, b = _img("cat", 1), _img("fish", 9)
    assert prepare.hamming(prepare.dhash(a), prepare.dhash(a.resize((50, 50)))) <= 6
    assert prepare.hamming(prepare.dhash(a), prepare.dhash(b)) > 6


def test_cli_one_line_errors(tmp_path, capsys):
    assert prepare.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdlib prepare: error:") and err.count("\n") == 1
