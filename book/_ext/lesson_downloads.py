"""The notebooks the published site offers for download install normlib from the site itself.

Every lesson starts with an install cell (``tools/lesson_header.py``) that pip-installs ``NORMLIB`` when
normlib is missing. When the site knows its own address (``html.baseurl`` in ``_config.yml``, which
``tools/set_repository.py --site-url`` sets in the publishing workflow), this extension, once the HTML is
written, builds normlib's wheel into ``_static/wheels/`` and points ``NORMLIB`` in every downloadable copy
of a lesson (``_sources/**/*.ipynb``) at it. A reader's downloaded notebook then installs exactly the
normlib that the site was built from, with nothing but pip. Without ``html.baseurl`` (a local build) the
downloads keep the committed value.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent
NORMLIB_LINE = re.compile(r"^NORMLIB = .*$")


def build_wheel(outdir: Path, project: Path = ROOT) -> Path:
    """Build normlib's wheel into ``outdir/_static/wheels`` and return its path.

    It is built from a copy of what the wheel needs, so that setuptools leaves no build/ folder in the
    working tree; with setuptools already installed (the test set pins it) pip needs no network for it.
    """
    target = outdir / "_static" / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("normlib-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "normlib-src"
        shutil.copytree(project / "normlib", src / "normlib",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (project / name).is_file():
                shutil.copy2(project / name, src / name)
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--wheel-dir", str(target), str(src)]
        offline = subprocess.run(pip + ["--no-build-isolation"], capture_output=True, text=True)
        if offline.returncode != 0:  # no setuptools here (the light set): let pip fetch it
            subprocess.run(pip, check=True)
    (wheel,) = target.glob("normlib-*.whl")
    return wheel


def point_notebook_at(notebook: Path, source: str) -> bool:
    """Set ``NORMLIB = "<source>"`` in the notebook's install cell; True if the notebook has one."""
    nb = json.loads(notebook.read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = text.split("\n")
        hits = [i for i, line in enumerate(lines) if NORMLIB_LINE.match(line)]
        if not hits:
            return False  # the first code cell is not the install cell
        lines[hits[0]] = f'NORMLIB = "{source}"'
        new = "\n".join(lines)
        cell["source"] = new.splitlines(keepends=True) if isinstance(cell["source"], list) else new
        notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        return True
    return False


def publish(outdir: Path, baseurl: str, project: Path = ROOT) -> tuple[Path, list[Path]]:
    """Put normlib's wheel into the site; point every downloadable lesson at it."""
    wheel = build_wheel(outdir, project)
    source = f"normlib[lab] @ {baseurl.rstrip('/')}/_static/wheels/{wheel.name}"
    pointed = [nb for nb in sorted((outdir / "_sources").rglob("*.ipynb")) if point_notebook_at(nb, source)]
    return wheel, pointed


def _build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html" or not app.config.html_baseurl:
        return
    wheel, pointed = publish(Path(app.outdir), app.config.html_baseurl)
    logger.info(f"normlib wheel {wheel.name}: {len(pointed)} downloadable lessons install it")


def setup(app):
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
