"""The book builds with warnings as errors, and every _toc.yml entry produced its page."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files():
    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    yield node[key]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(dict.fromkeys(walk(yaml.safe_load((ROOT / "_toc.yml").read_text()))))


def test_book_builds_without_warnings_and_has_every_page(built_book):
    assert built_book.returncode == 0, built_book.stdout[-5000:] + built_book.stderr[-5000:]
    html = ROOT / "_build" / "html"
    files = toc_files()
    assert len(files) >= 3
    missing = [f for f in files if not (html / Path(f).with_suffix(".html")).is_file()]
    assert not missing, f"no page built for {missing}"
    for f in files:
        page = (html / Path(f).with_suffix(".html")).read_text()
        assert "Traceback (most recent call last)" not in page, f"{f} shows a traceback"


def test_every_lesson_is_in_the_book():
    lessons = {f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert lessons <= set(toc_files())


def test_set_repository_turns_on_repository_and_launch_buttons(tmp_path):
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from set_repository import set_repository
    finally:
        sys.path.pop(0)
    config = tmp_path / "_config.yml"
    shutil.copy(ROOT / "_config.yml", config)
    before = yaml.safe_load(config.read_text())
    assert "repository" not in before, "the committed config names no repository: the workflow sets it"
    set_repository("https://github.com/owner/repo/", config=config)
    after = yaml.safe_load(config.read_text())
    assert after["repository"]["url"] == "https://github.com/owner/repo"
    assert after["html"]["use_repository_button"] and after["launch_buttons"]["colab_url"]
    assert after["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert {k: v for k, v in after.items() if k not in ("repository", "html", "launch_buttons")} == \
        {k: v for k, v in before.items() if k not in ("repository", "html", "launch_buttons")}
