"""Every lesson is a pair: NN_name.py (percent format, edited) and NN_name.ipynb (executed, shown)."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PY = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
IPYNB = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_lessons_and_every_one_is_paired():
    assert PY, "no lessons found"
    assert [p.stem for p in PY] == [p.stem for p in IPYNB]


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_pair_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    text, nb = jupytext.read(py), jupytext.read(ipynb)
    assert _cells(text) == _cells(nb), f"{py.name} and {ipynb.name} differ: run `make notebooks`"


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_notebook_was_executed_in_order(py):
    nb = jupytext.read(py.with_suffix(".ipynb"))
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "stored outputs must come from one top-to-bottom run"
