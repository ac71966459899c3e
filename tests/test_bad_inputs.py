"""The bad-input census: every kind of odd image and prompt file either loads right or fails with a clear error
naming the file (README, "Bad input"). PIL and NumPy only: no model needed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gdlib import imageio


def _rgb_of(x):
    return (x[:, x.shape[1] // 2, x.shape[2] // 2] + 1) * 127.5


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))        # stored: left half blue, right half red
    exif = im.getexif()
    exif[0x0112] = 6                             # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "cat.jpg", exif=exif, quality=95)
    x = imageio.load_image(tmp_path / "cat.jpg", size=16)
    top, bottom = (x[:, 1, 8] + 1) * 127.5, (x[:, -2, 8] + 1) * 127.5
    assert top[2] > 200 and top[0] < 60          # displayed upright: the blue half is on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_sixteen_bit_png_keeps_its_grey_levels(tmp_path):
    a = np.full((32, 32), 32768, np.uint16)      # mid grey in 16 bits (PIL's own RGB conversion clips it to white)
    Image.fromarray(a).save(tmp_path / "cat.png")
    assert Image.open(tmp_path / "cat.png").mode.startswith("I;16")
    assert np.allclose(_rgb_of(imageio.load_image(tmp_path / "cat.png")), 128, atol=2)


def test_cmyk_palette_transparency_grey_and_tiny_images(tmp_path):
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "a.jpg")           # CMYK red
    r = _rgb_of(imageio.load_image(tmp_path / "a.jpg"))
    assert r[0] > 200 and r[1] < 60 and r[2] < 60
    p = Image.new("P", (20, 20), 0)
    p.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    p.save(tmp_path / "b.png", transparency=0)                                       # index 0 is transparent
    assert np.allclose(_rgb_of(imageio.load_image(tmp_path / "b.png")), 255, atol=1)  # composited over white
    Image.new("L", (10, 10), 100).save(tmp_path / "c.png")
    assert np.allclose(_rgb_of(imageio.load_image(tmp_path / "c.png")), 100, atol=1)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "d.png")
    x = imageio.load_image(tmp_path / "d.png", size=32)
    assert x.shape == (3, 32, 32) and np.allclose(_rgb_of(x), [10, 200, 30], atol=2)


@pytest.mark.parametrize("kind", ["zero_bytes", "truncated", "text", "bomb"])
def test_unreadable_images_are_a_clear_error_naming_the_file(tmp_path, kind, monkeypatch):
    path = tmp_path / "cat.png"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "text":
        path.write_text("this is not an image")
    else:
        Image.new("RGB", (100, 100)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # a 10,000-pixel image is a bomb at this limit
    with pytest.raises(ValueError) as e:
        imageio.load_image(path)
    assert str(path) in str(e.value)
    assert ("refusing" in str(e.value)) == (kind == "bomb")


def test_file_names_must_be_object_words(tmp_path):
    for name in ("my cat.png", "猫.png"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        Image.new("RGB", (8, 8)).save(d / name)
        with pytest.raises(ValueError, match="rename"):
            imageio.load_image_folder(d)


@pytest.mark.parametrize("content,match", [
    (b"{not json", "not valid JSON"),
    (b"", "the file is empty"),
    ("{\"0\": \"cat\"}".encode("utf-16"), "not UTF-8"),
    (b"[\"cat\", \"car\"]", "not a list"),
    (json.dumps({"0": "猫"}, ensure_ascii=False).encode(), "single English object words"),
    (b"{\"0\": \"red car\"}", "red car"),
])
def test_bad_prompt_files_name_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "prompt.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        imageio.read_prompts(path)
    assert str(path) in str(e.value)


def test_good_prompt_files_load(tmp_path):
    path = tmp_path / "prompt.json"
    path.write_bytes("\ufeff{\"0\": \"Cat\", \"1\": \"car\"}".encode("utf-8"))   # a BOM and capitals are fine
    assert imageio.read_prompts(path) == {"0": "cat", "1": "car"}


def test_writers_are_atomic_a_failed_write_keeps_the_old_file(tmp_path):
    """write_atomic: a writer that dies half-way leaves the previous file intact and no temporary behind."""
    from gdlib.checkpoint import write_atomic, write_text_atomic

    path = write_text_atomic(tmp_path / "card.json", '{"old": 1}\n')

    def dies_half_way(tmp):
        tmp.write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, dies_half_way)
    assert path.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    """safetensors creates its files 0600; written through write_atomic they get 0666 minus the umask like any file."""
    import os

    from gdlib.checkpoint import save_tensors

    old = os.umask(0o022)
    try:
        path = save_tensors(tmp_path / "w.safetensors", {"a": np.zeros(2, np.float32)})
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
