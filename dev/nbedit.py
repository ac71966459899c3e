"""Edit notebook cells in place by index (outputs stay stripped): python dev/nbedit.py NB.ipynb < edits.py

Used from other scripts: `from nbedit import set_cell, insert_cell, load, save`."""
from __future__ import annotations

import sys

import nbformat


def load(path):
    return nbformat.read(path, as_version=4)


def save(nb, path):
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, path)


def set_cell(nb, i, source, kind=None):
    if kind is not None and nb.cells[i].cell_type != kind:
        raise ValueError(f"cell {i} is {nb.cells[i].cell_type}, not {kind}")
    nb.cells[i].source = source.strip("\n")


def insert_cell(nb, i, source, kind="code"):
    cell = nbformat.v4.new_code_cell(source.strip("\n")) if kind == "code" else \
        nbformat.v4.new_markdown_cell(source.strip("\n"))
    nb.cells.insert(i, cell)


if __name__ == "__main__":
    print(__doc__, file=sys.stderr)
