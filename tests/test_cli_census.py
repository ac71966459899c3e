"""Bad input through the real command line: exit code 2, ONE line on stderr naming the problem, no traceback, and
nothing written over (README, "Bad input")."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _gdlib(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gdlib.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("census")
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (d / "a_folder.safetensors").mkdir()
    style = d / "style" / "images"
    style.mkdir(parents=True)
    for o in ("cat", "fish"):
        Image.new("RGB", (40, 40), (200, 100, 50)).save(style / f"{o}.png")
    (style / "bird.png").write_text("not an image")
    (d / "style" / "prompt.json").write_text("{\"0\": \"car\"}")
    return d


CASES = {
    "sample, corrupt base": ("sample", "a pixel painting of a cat", "--checkpoint", "{d}/corrupt.safetensors",
                             "--out", "{d}/o1.png"),
    "sample, a folder as base": ("sample", "a cat", "--checkpoint", "{d}/a_folder.safetensors", "--out", "{d}/o2.png"),
    "train-style, missing folder": ("train-style", "{d}/nowhere", "--out", "{d}/s.safetensors"),
    "train-style, unreadable image": ("train-style", "{d}/style", "--out", "{d}/s2.safetensors", "--steps", "1"),
    "generate, corrupt adapter": ("generate", "{d}/style", "--adapter", "{d}/corrupt.safetensors", "--out", "{d}/p"),
    "score, missing predictions": ("score", "--pred", "{d}/nopred", "--ref", "{d}/style"),
    "train-base, bad channel mult": ("train-base", "--out", "{d}/tb", "--channel-mult", "one,two"),
    "sample, bad number": ("sample", "a cat", "--steps", "many"),
    "unknown command": ("fly",),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_on_stderr_and_exit_2(files, case):
    args = [a.format(d=files) for a in CASES[case]]
    before = sorted(p.name for p in files.rglob("*"))
    r = _gdlib(*args, cwd=files)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gdlib") and ": error: " in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in files.rglob("*")) == before        # nothing written (or left half-written)
