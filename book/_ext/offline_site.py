"""Make the site work offline and load cleanly: local MathJax 3, no unused Thebe scripts, list roles
that assistive technology can follow in the bibliography, and folded cells named by their visible text.

MathJax: served from the site itself, so pages render their math offline and load no external script.

The MathJax 3 distribution comes from the pinned PyPI package ``django-static-mathjax`` (its ``es5``
folder, no Django needed). At build time the parts the pages use are staged into a static folder:
the ``tex-mml-chtml`` bundle, its fonts, and the components it can load on demand (TeX extensions,
the menu and its accessibility tools). ``mathjax_path`` in ``_config.yml`` points at the bundle.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PARTS = ["tex-mml-chtml.js", "output/chtml", "input/tex/extensions", "input/mml", "ui", "a11y", "adaptors",
         "sre", "core.js", "startup.js", "loader.js"]


def _mathjax_es5() -> Path:
    try:
        import mathjax  # the package django-static-mathjax installs
    except ImportError as e:  # pragma: no cover - a set-up error, reported plainly
        raise RuntimeError("MathJax is not installed: run `make book` (it installs requirements.txt)") from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise RuntimeError(f"no MathJax 3 bundle at {es5}")
    return es5


def _stage(app) -> None:
    es5 = _mathjax_es5()
    stage = Path(app.doctreedir).parent / "mathjax-static"
    target = stage / "mathjax"
    if not (target / "tex-mml-chtml.js").is_file():
        for part in PARTS:
            src = es5 / part
            if src.is_dir():
                shutil.copytree(src, target / part, dirs_exist_ok=True)
            elif src.is_file():
                (target / part).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / part)
    app.config.html_static_path.append(str(stage))


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    """The book has no live-code (Thebe) button, but sphinx-thebe still adds its scripts to every page,
    one of them twice (a JavaScript error: "Identifier 'THEBE_JS_URL' has already been declared"), and
    names a script on a CDN. Leave them out."""
    scripts = context.get("script_files")
    if scripts:
        context["script_files"] = [s for s in scripts
                                   if "thebe" not in str(s.filename) and "THEBE" not in s.attributes.get("body", "")]


def _bibliography_roles(app, pagename, templatename, context, doctree) -> None:
    """docutils marks the bibliography as a ``role="list"`` whose entries are ``role="doc-biblioentry"``;
    a list must contain list items (axe-core: aria-required-children, critical), so make them that."""
    body = context.get("body")
    if body and 'role="doc-biblioentry"' in body:
        context["body"] = body.replace('role="doc-biblioentry"', 'role="listitem"')


def _toggle_names(app, pagename, templatename, context, doctree) -> None:
    """myst-nb labels the summary of a folded cell (``hide-input``, ``hide-output``) "Toggle hidden content",
    while it shows "Show code cell source": the accessible name must contain the visible text (axe-core:
    label-content-name-mismatch, serious). Without the label the name is the visible text."""
    body = context.get("body")
    if body and '<summary aria-label="Toggle hidden content">' in body:
        context["body"] = body.replace('<summary aria-label="Toggle hidden content">', "<summary>")


def _refresh_static(app) -> None:
    """Sphinx 7.4 does not overwrite a static file already in the output folder (nor copy any when no page
    changed), so an edited stylesheet would not reach a rebuilt site: refresh the stale copies of the
    book's own static files."""
    out = Path(app.outdir) / "_static"
    for folder in app.config.html_static_path:
        source = Path(app.srcdir) / folder
        if not source.is_dir() or "mathjax-static" in str(folder):
            continue
        for f in source.rglob("*"):
            copy = out / f.relative_to(source)
            if f.is_file() and (not copy.is_file() or copy.read_bytes() != f.read_bytes()):
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, copy)


def _drop_blank_outputs(app, doctree, docname):
    """Remove stream outputs that hold only whitespace (what a progress bar leaves when it clears itself):
    on the page they would be empty boxes."""
    from docutils import nodes

    for block in list(doctree.findall(nodes.literal_block)):
        if block.astext().strip() or "output" not in block.get("classes", []):
            continue
        container = block.parent
        container.remove(block)
        if not container.children and container.parent is not None:
            container.parent.remove(container)


def setup(app):
    app.connect("doctree-resolved", _drop_blank_outputs)
    app.connect("builder-inited", _stage)
    app.connect("builder-inited", _refresh_static)
    app.connect("html-page-context", _toggle_names)
    app.connect("html-page-context", _drop_thebe, priority=900)
    app.connect("html-page-context", _bibliography_roles)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
