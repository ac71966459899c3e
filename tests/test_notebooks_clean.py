"""Every notebook in git is committed with outputs stripped and follows the course skeleton."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked_notebooks() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        return [ROOT / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        return sorted((ROOT / "notebooks").glob("*.ipynb"))


NOTEBOOKS = _tracked_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_stripped(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_skeleton(path):
    import re
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: name it NN_slug.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).lstrip().startswith("# "), \
        f"{path.name}: the first cell should be a markdown title"
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").lower()
    for part in ("learn", "summary", "exercise"):
        assert part in text, f"{path.name}: no '{part}' section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_paired_text_version_is_in_sync(path):
    """Each notebook has a jupytext percent-format twin (NN_slug.py) that reviews as a diff; they hold the same
    cells. After editing one, `jupytext --sync notebooks/*.ipynb` updates the other."""
    jupytext = pytest.importorskip("jupytext")
    py = path.with_suffix(".py")
    assert py.is_file(), f"{py.name} missing: run `jupytext --set-formats ipynb,py:percent {path}`"
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = jupytext.read(py)
    a = [(c["cell_type"], "".join(c["source"]).strip()) for c in nb["cells"]]
    b = [(c.cell_type, c.source.strip()) for c in text.cells]
    assert a == b, f"{path.name} and {py.name} differ: run `jupytext --sync {path}`"
