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


# The book's code boxes hold 89 characters of monospace text at the desktop width (1280 px); a longer line
# makes the box scroll sideways, which tests/test_site.py's browser check reports for visible cells. This
# is the same rule, checked in a second for every code cell (hidden ones are one click away) and every text
# output, so a long line is found before the book is built.
CODE_BOX_CHARS = 89


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_code_and_text_output_lines_fit_the_code_box(py):
    nb = jupytext.read(py.with_suffix(".ipynb"))
    long = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        texts = [("code", cell.source)]
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/html" in data or "image/png" in data:
                continue
            texts.append(("output", out.get("text") or data.get("text/plain") or ""))
        for kind, text in texts:
            text = "".join(text) if isinstance(text, list) else text
            long += [f"cell {i} {kind}, {len(line)} characters: {line[:70]!r}"
                     for line in text.splitlines() if len(line) > CODE_BOX_CHARS]
    assert not long, (f"{py.stem}: lines longer than {CODE_BOX_CHARS} characters scroll sideways on the "
                      "site:\n" + "\n".join(long))
