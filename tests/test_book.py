"""The book builds with warnings as errors, every _toc.yml entry produced its page, and the pieces of the
book that are not lessons hold together: the landing table, the bibliography, the install cell every
lesson starts with, and the publishing workflow's repository and download set-up."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


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


def _import(folder: str, module: str):
    sys.path.insert(0, str(ROOT / folder))
    try:
        return __import__(module)
    finally:
        sys.path.pop(0)


def test_book_builds_without_warnings_and_has_every_page(built_book):
    assert built_book.returncode == 0, built_book.stdout[-5000:] + built_book.stderr[-5000:]
    files = toc_files()
    assert len(files) >= 3
    missing = [f for f in files if not (HTML / Path(f).with_suffix(".html")).is_file()]
    assert not missing, f"no page built for {missing}"
    for f in files:
        page = (HTML / Path(f).with_suffix(".html")).read_text()
        assert "Traceback (most recent call last)" not in page, f"{f} shows a traceback"


def test_every_lesson_is_in_the_book():
    lessons = {f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert lessons <= set(toc_files())


def test_landing_table_lists_the_lessons_in_the_sidebars_order():
    """book/intro.md's table of lessons: every lesson once, in _toc.yml's order (a new lesson goes into both)."""
    intro = (ROOT / "book" / "intro.md").read_text()
    table = re.findall(r"^\| \{doc\}`\.\./(notebooks/[^`]+)`", intro, re.MULTILINE)
    sidebar = [f for f in toc_files() if f.startswith("notebooks/")]
    assert table == sidebar, f"the landing table's lessons {table} are not the sidebar's {sidebar}"


# --- the bibliography -------------------------------------------------------------------------------------

def _citations(page: str):
    """(target id, text) of each in-text citation on a built page."""
    return re.findall(r'<a class="reference internal" href="(?:\.\./)*book/bibliography\.html#([^"]+)"[^>]*>(.*?)</a>',
                      page)


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", html).split())


def test_bibliography_labels_read_like_the_citations(built_book):
    """In the text "[Ioffe and Szegedy, 2015]"; in the list the same label, not "[IS15]"."""
    assert built_book.returncode == 0
    bib = (HTML / "book" / "bibliography.html").read_text()
    labels = {m[1]: _text(m[2]) for m in re.finditer(
        r'<div class="citation" id="([^"]+)"[^>]*>\s*<span class="label"><span class="fn-bracket">\[</span>(.*?)'
        r'<span class="fn-bracket">\]</span>', bib, re.S)}
    assert labels, "no entries found in the bibliography"
    assert all(re.search(r", (\d{4}[a-z]?|n\.d\.)$", label) for label in labels.values()), labels
    mismatched = []
    for f in toc_files():
        for target, text in _citations((HTML / Path(f).with_suffix(".html")).read_text()):
            if target in labels and _text(text) != labels[target]:
                mismatched.append(f"{f}: cited as {_text(text)!r}, listed as {labels[target]!r}")
    assert not mismatched, "\n".join(mismatched)


def test_bibliography_links_every_doi_and_arxiv_id(built_book):
    assert built_book.returncode == 0
    bib_source = (ROOT / "book" / "references.bib").read_text()
    page = (HTML / "book" / "bibliography.html").read_text()
    for doi in re.findall(r"^\s*doi\s*=\s*\{([^}]+)\}", bib_source, re.MULTILINE):
        assert f'href="https://doi.org/{doi}"' in page, f"doi {doi} is not a link"
    for arxiv in re.findall(r"^\s*eprint\s*=\s*\{([^}]+)\}", bib_source, re.MULTILINE):
        assert f'href="https://arxiv.org/abs/{arxiv}"' in page, f"arXiv {arxiv} is not a link"
    # arXiv papers are identified by eprint (a link), not only by a note
    assert not re.search(r"note\s*=\s*\{arXiv:", bib_source), "give arXiv ids as eprint = {...}"


def test_the_source_articles_are_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    sources = re.findall(r"@misc\{(source-[^,]+),", bib)
    assert len(sources) == 5, sources


# --- the install cell every lesson starts with (tools/lesson_header.py) ------------------------------------

@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_starts_with_the_install_cell(lesson):
    """A downloaded notebook or one opened in Colab installs normlib by itself: `python tools/lesson_header.py`."""
    header = _import("tools", "lesson_header")
    problem = header.check(lesson.read_text())
    assert problem is None, f"{lesson.name}: {problem}; run `python tools/lesson_header.py` then `make notebooks`"


def test_every_lesson_names_the_same_install_source():
    header = _import("tools", "lesson_header")
    sources = {header.current_source(header.first_code_cell(p.read_text())[2])[1] for p in LESSONS}
    assert len(sources) <= 1, f"the lessons install normlib from different places: {sources}"


LESSON = '''\
# %% [markdown]
# # A lesson

# %%
import normlib

normlib.__name__
'''


def test_lesson_header_tool_writes_the_cell_once_and_keeps_its_source(tmp_path):
    header = _import("tools", "lesson_header")
    lesson = tmp_path / "01_a.py"
    lesson.write_text(LESSON)
    assert header.check(LESSON) is not None
    assert header.main([str(lesson)]) == 0
    once = lesson.read_text()
    assert header.check(once) is None
    assert header.main([str(lesson)]) == 0 and lesson.read_text() == once, "a second run must change nothing"
    assert once.endswith(LESSON.split("# %%\n", 1)[1]) and once.count("import normlib") == 1
    header.main(["--repository", "https://github.com/owner/repo/", str(lesson)])
    header.main([str(lesson)])  # a run without --repository keeps the source
    assert header.current_source(header.first_code_cell(lesson.read_text())[2]) == \
        (True, "normlib[lab] @ git+https://github.com/owner/repo")
    assert header.main(["--check", str(lesson)]) == 0


def test_install_cell_is_silent_where_normlib_imports_and_clear_where_it_cannot_install():
    header = _import("tools", "lesson_header")
    code = header.render(None)
    namespace: dict = {}
    exec(compile(code, "<install cell>", "exec"), namespace)  # normlib imports here: nothing happens
    missing = code.replace('find_spec("normlib")', 'find_spec("normlib_that_is_not_there")')
    with pytest.raises(ModuleNotFoundError, match="pip install it"):
        exec(compile(missing, "<install cell>", "exec"), {})
    assert max(len(line) for line in code.splitlines()) <= 88


def test_site_downloads_install_normlib_from_the_site(tmp_path):
    """With html.baseurl set (the publishing workflow), the site carries normlib's wheel and every
    downloadable lesson's install cell points at it."""
    downloads = _import("book/_ext", "lesson_downloads")
    header = _import("tools", "lesson_header")
    out = tmp_path / "html"
    (out / "_sources" / "notebooks").mkdir(parents=True)
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# A lesson"]},
                    {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "outputs": [],
                     "execution_count": 1, "source": header.render(None).splitlines(keepends=True)}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (out / "_sources" / "notebooks" / "01_a.ipynb").write_text(json.dumps(nb))
    wheel, pointed = downloads.publish(out, "https://owner.github.io/repo/")
    assert wheel.parent == out / "_static" / "wheels" and len(pointed) == 1
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "normlib/__init__.py" in names and "normlib/lab/__init__.py" in names
    cell = json.loads(pointed[0].read_text())["cells"][1]
    assert f'NORMLIB = "normlib[lab] @ https://owner.github.io/repo/_static/wheels/{wheel.name}"' in \
        "".join(cell["source"])
    assert not (ROOT / "build").exists(), "building the wheel must leave no build/ folder in the tree"


def test_published_site_carries_normlib_and_its_downloads_install_it(built_book):
    """The site carries normlib's wheel and every downloadable lesson points at it (built_book gives the
    site an address: the published one in the publishing workflow, else a local one)."""
    assert built_book.returncode == 0
    wheels = list((HTML / "_static" / "wheels").glob("normlib-*.whl"))
    assert len(wheels) == 1, wheels
    source = f'NORMLIB = "normlib[lab] @ {built_book.baseurl.rstrip("/")}/_static/wheels/{wheels[0].name}"'
    for lesson in LESSONS:
        download = HTML / "_sources" / "notebooks" / f"{lesson.stem}.ipynb"
        code = [c for c in json.loads(download.read_text())["cells"] if c["cell_type"] == "code"]
        assert code and source in "".join(code[0]["source"]), f"{download.name} does not install the site's normlib"


def test_a_downloaded_lesson_installs_normlib_from_the_served_site(built_book, tmp_path):
    """End to end, as a reader who downloads a lesson: the site, built with a local address, is served on
    127.0.0.1; the lesson's install cell, run by a fresh environment that lacks normlib, pip-installs the wheel
    the site serves, and normlib imports and works. The environment borrows this one's packages (torch,
    numpy, the lab extra's) as a Colab runtime brings its own: pip must keep them and install normlib alone,
    with no package index (PIP_NO_INDEX). Not covered: installing torch itself from PyPI."""
    if built_book.local_port is None:
        pytest.skip("the publishing build: its address is the real site, not deployed yet (the test above "
                    "checks that its downloads point at its wheel)")
    assert built_book.returncode == 0
    import functools
    import http.server
    import sysconfig
    import threading
    import urllib.request

    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", built_book.local_port),
                                             functools.partial(Handler, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lesson = LESSONS[0].stem
        with urllib.request.urlopen(f"{built_book.baseurl}_sources/notebooks/{lesson}.ipynb", timeout=60) as r:
            notebook = json.loads(r.read())
        install_cell = "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])
        fresh = tmp_path / "fresh"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
        python = fresh / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "borrowed_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
        env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        missing = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('normlib'))"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
        assert missing.stdout.strip() == "None", "the fresh environment must lack normlib"
        check = install_cell + textwrap.dedent("""
            import torch
            import normlib
            import normlib.lab.data
            from normlib import nn as N
            x = torch.randn(8, 3, 4, 4)
            torch.testing.assert_close(N.BatchNorm2d(3)(x), torch.nn.BatchNorm2d(3)(x))
            print(normlib.__file__)
            print(torch.__file__)
        """)
        run = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        normlib_file, torch_file = map(Path, run.stdout.split()[-2:])
        assert normlib_file.is_relative_to(fresh), f"normlib is not from the fresh environment: {normlib_file}"
        assert not torch_file.is_relative_to(fresh), "pip replaced the environment's own torch"
        wheel = next((HTML / "_static" / "wheels").glob("normlib-*.whl")).name
        assert any(path.endswith(f"/_static/wheels/{wheel}") for path in requests), requests
    finally:
        server.shutdown()
        server.server_close()


# --- the publishing workflow's set-up (tools/set_repository.py) --------------------------------------------

def _lessons_with_source(folder: Path, source):
    header = _import("tools", "lesson_header")
    folder.mkdir()
    (folder / "01_a.py").write_text(header.apply(LESSON, source, keep_source=False))
    return folder


def test_set_repository_turns_on_repository_and_launch_buttons(tmp_path):
    set_repository = _import("tools", "set_repository").set_repository
    config = tmp_path / "_config.yml"
    shutil.copy(ROOT / "_config.yml", config)
    before = yaml.safe_load(config.read_text())
    if not config.read_text().startswith("# Written by tools/set_repository.py"):  # not in the workflow
        assert "repository" not in before, "the committed config names no repository: the workflow sets it"
        assert "baseurl" not in before.get("html", {}), "the committed config names no site address"
    lessons = _lessons_with_source(tmp_path / "named", "normlib[lab] @ git+https://github.com/owner/repo")
    set_repository("https://github.com/owner/repo/", config=config, site_url="https://owner.github.io/repo",
                   lessons=lessons)
    after = yaml.safe_load(config.read_text())
    assert after["repository"]["url"] == "https://github.com/owner/repo"
    assert after["html"]["use_repository_button"] and after["launch_buttons"]["colab_url"]
    assert after["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert after["html"]["baseurl"] == "https://owner.github.io/repo/"
    assert {k: v for k, v in after.items() if k not in ("repository", "html", "launch_buttons")} == \
        {k: v for k, v in before.items() if k not in ("repository", "html", "launch_buttons")}


def test_no_colab_button_while_the_lessons_cannot_install_normlib(tmp_path, capsys):
    set_repository = _import("tools", "set_repository").set_repository
    config = tmp_path / "_config.yml"
    shutil.copy(ROOT / "_config.yml", config)
    set_repository("https://github.com/owner/repo", config=config, lessons=_lessons_with_source(tmp_path / "l", None))
    after = yaml.safe_load(config.read_text())
    assert "colab_url" not in after["launch_buttons"] and after["launch_buttons"]["binderhub_url"]
    assert "lesson_header.py --repository https://github.com/owner/repo" in capsys.readouterr().out
