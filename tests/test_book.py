"""The book builds with warnings as errors, and every _toc.yml entry produced its page."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        if "root" in node:
            yield node["root"]
        for value in node.values():
            yield from _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_files(item)


def test_book_builds_without_warnings_and_has_every_page():
    jb = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jb), "build", str(ROOT), "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = ROOT / "_build" / "html"
    files = list(_toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())))
    assert len(files) >= 3
    missing = [f for f in files if not (html / Path(f).with_suffix(".html")).is_file()]
    assert not missing, f"no page built for {missing}"
    for f in files:
        page = (html / Path(f).with_suffix(".html")).read_text()
        assert "Traceback (most recent call last)" not in page, f"{f} shows a traceback"
