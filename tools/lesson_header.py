"""Make the first code cell of every lesson the standard install cell, so that a lesson runs on its own.

Usage:
    python tools/lesson_header.py [notebooks/NN_name.py ...]        write or refresh the cell
    python tools/lesson_header.py --repository https://github.com/OWNER/REPO   ... and name where normlib lives
    python tools/lesson_header.py --check                            exit 1 if a lesson lacks the cell

Without paths it edits every ``notebooks/[0-9][0-9]_*.py``. It edits the ``.py`` side of each pair only:
run ``make notebooks`` afterwards to carry the cell into the ``.ipynb`` (and execute it). Running it again
changes nothing.

The cell (tagged ``remove-cell``: the site does not show it; a downloaded notebook and Colab run it) does
nothing where ``normlib`` imports, so nbval sees no output. Where it does not (Colab, a notebook downloaded
from the site), it installs ``NORMLIB`` with pip. ``NORMLIB`` is where normlib comes from:

* in the committed lessons, ``None`` until the repository's public address is known; then
  ``--repository URL`` sets it to ``normlib[lab] @ git+URL`` in every lesson (commit that: Colab opens the
  committed notebook from GitHub, and ``tools/set_repository.py`` turns the Colab button on only then);
* in the notebooks the published site offers for download, the site build (``book/_ext/lesson_downloads.py``,
  when ``html.baseurl`` is set) replaces it with the wheel of normlib that it puts into the site itself.

While ``NORMLIB`` is ``None`` and normlib is missing, the cell stops with a message saying so.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "notebooks"

CELL_HEADER = '# %% tags=["remove-cell"]'
NORMLIB_LINE = re.compile(r"^NORMLIB = (.*)$", re.MULTILINE)
TEMPLATE = '''\
# Run this lesson anywhere (Colab, a download): installs normlib when it is missing.
import importlib.util
import subprocess
import sys

# Where pip gets normlib: set by tools/lesson_header.py and in the site's downloads.
NORMLIB = {source}
if importlib.util.find_spec("normlib") is None:
    if NORMLIB is None:
        raise ModuleNotFoundError("normlib: pip install it from the book's repository")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", NORMLIB], check=True)
    importlib.invalidate_caches()
'''


def render(source: str | None) -> str:
    """The cell's code for a given source (a pip requirement, or None)."""
    if source is not None and ('"' in source or "\\" in source or "\n" in source):
        raise ValueError(f"not a plain pip requirement: {source!r}")
    return TEMPLATE.format(source="None" if source is None else f'"{source}"')


def render_cell(source: str | None) -> str:
    """The cell as it stands in a jupytext percent file: header line, code, one blank line."""
    return f"{CELL_HEADER}\n{render(source)}\n"


def source_for_repository(url: str) -> str:
    return f"normlib[lab] @ git+{url.rstrip('/')}"


def _cells(text: str) -> list[tuple[int, int]]:
    """(start, end) line indices of each ``# %%`` cell of a percent-format file."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("# %%")]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(lines)], strict=True)]


def _is_code(header: str) -> bool:
    return not re.match(r"# %% *\[(markdown|md|raw)\]", header)


def first_code_cell(text: str) -> tuple[int, int, str] | None:
    """The first code cell as (start line, end line, its text including the header line)."""
    lines = text.split("\n")
    for start, end in _cells(text):
        if _is_code(lines[start]):
            return start, end, "\n".join(lines[start:end])
    return None


def current_source(cell_text: str) -> tuple[bool, str | None]:
    """(True, NORMLIB's value) if the cell is an install cell, else (False, None)."""
    match = NORMLIB_LINE.search(cell_text)
    if not match:
        return False, None
    return True, ast.literal_eval(match.group(1))


def apply(text: str, source: str | None = None, keep_source: bool = True) -> str:
    """The lesson with the standard install cell as its first code cell."""
    first = first_code_cell(text)
    if first is None:
        raise ValueError("the lesson has no code cell")
    start, end, cell = first
    lines = text.split("\n")
    is_header, existing = current_source(cell)
    if source is None and keep_source:
        source = existing
    new = render_cell(source).rstrip("\n").split("\n") + [""]
    if is_header:
        lines[start:end] = new
    else:
        lines[start:start] = new
    return "\n".join(lines)


def check(text: str) -> str | None:
    """None if the lesson's first code cell is the standard cell, else what is wrong."""
    first = first_code_cell(text)
    if first is None:
        return "no code cell"
    _, _, cell = first
    is_header, source = current_source(cell)
    if not is_header:
        return "its first code cell is not the install cell"
    if cell.rstrip("\n") != render_cell(source).rstrip("\n"):
        return "its install cell differs from the standard one"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--repository", help="https://github.com/OWNER/REPO: install normlib from there")
    parser.add_argument("--source", help="any pip requirement for normlib (instead of --repository)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a lesson lacks the cell")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(LESSONS.glob("[0-9][0-9]_*.py"))
    source = args.source or (source_for_repository(args.repository) if args.repository else None)
    failed = 0
    for path in paths:
        text = path.read_text()
        if args.check:
            problem = check(text)
            if problem:
                print(f"{path}: {problem}")
                failed += 1
            continue
        new = apply(text, source)
        if new != text:
            path.write_text(new)
            print(f"{path}: install cell written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
