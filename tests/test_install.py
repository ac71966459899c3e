"""A wheel built from the repository carries every shipped weight file, and an installed copy finds them from
anywhere (no editable checkout, no data/ folder beside it)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_and_finds_every_weight_file(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
    src = tmp_path / "src"
    for f in filter(None, files):  # a clean copy of the tracked tree: the build never writes into the checkout
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("gdlib-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gdlib" / "data").rglob("*") if p.is_file())
    assert any(s.endswith("base/base.safetensors") for s in shipped)
    assert [s for s in shipped if s not in names] == []
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)              # a wheel is the installed layout, zipped
    code = ("import gdlib, gdlib.pipeline as p, gdlib.models.evaluators as e, gdlib.style as s;"
            "m = p.TextToImage.load(); ev = e.load_evaluators(); csd = s.load_csd();"
            "print(gdlib.__file__); print(p.DEFAULT_BASE); print(m.num_parameters())")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr[-3000:]
    pkg, base, n = run.stdout.split("\n")[-4:-1]
    assert pkg.startswith(str(site)) and base.startswith(str(site)) and int(n) > 1_000_000
