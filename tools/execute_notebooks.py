"""Write each lesson's .py into its .ipynb, execute it top to bottom on the CPU, store the outputs.

Usage: python tools/execute_notebooks.py notebooks/01_one_formula.py [...]

A cell may run for ``NORMLIB_CELL_TIMEOUT`` seconds (default 1800: a lesson's longest cell takes about a
minute on an idle two-core machine, many times that on a loaded one).

Progress bars print with carriage returns; the stored stream keeps only what a reader's screen would
show at the end (the final state of each bar), which is also what nbval compares.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)


def coalesce_streams(cell) -> None:
    """Merge consecutive outputs of the same stream and drop text a carriage return overwrote."""
    merged = []
    for out in cell.get("outputs", []):
        if merged and out.output_type == "stream" and merged[-1].output_type == "stream" \
                and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    for out in merged:
        if out.output_type == "stream":
            text = out.text.replace("\r\n", "\n")
            text = CARRIAGE_RETURN.sub("", text)
            out.text = re.sub(r"\r(?=\n|$)", "", text)
    cell.outputs = merged


def execute(py: Path) -> None:
    nb = jupytext.read(py)
    ipynb = py.with_suffix(".ipynb")
    start = time.perf_counter()
    timeout = int(os.environ.get("NORMLIB_CELL_TIMEOUT", "1800"))
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(py.parent)}}).execute()
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids and no timestamps: re-running changes only what changed
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            coalesce_streams(cell)
    jupytext.write(nb, ipynb, fmt="ipynb")
    nbformat.validate(nbformat.read(ipynb, as_version=4))
    print(f"{py} -> {ipynb.name} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # stored outputs come from the CPU
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        sys.exit("usage: execute_notebooks.py LESSON.py [...]")
    for path in paths:
        execute(path)
