"""The built site as a reader meets it: Debian's Chromium, driven by Playwright, offline.

Pages are served from _build/html on a local port and every request to anything else is blocked.
For every page: MathJax rendered, every image loaded, no console errors, internal links resolve, and
axe-core finds no serious or critical accessibility violations. Screenshots go to _build/screenshots.
"""

import functools
import http.server
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
from test_book import toc_files

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
AXE = Path(os.environ.get("AXE_CORE_JS", ROOT / ".venv" / "axe-core" / "axe.min.js"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = [Path(f).with_suffix(".html").as_posix() for f in toc_files()]
SCREENSHOTS = {"book/intro.html": "landing", "notebooks/02_batchnorm.html": "lesson-batchnorm",
               "notebooks/10_dropout.html": "lesson-dropout"}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(built_book):
    assert built_book.returncode == 0, "the book did not build"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed ({CHROMIUM} missing): the browser tests cannot run. "
                    "`make test` installs Debian's chromium when run as root; install it and re-run.")
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing at {AXE}: `make test` fetches it with npm")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--no-first-run", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _open(browser, site, page_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    blocked, errors = [], []

    def route(r):
        if r.request.url.startswith(site):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site}/{page_path}", wait_until="networkidle")
    return context, page, blocked, errors


@pytest.mark.parametrize("page_path", PAGES)
def test_page_in_a_real_browser(browser, site, page_path):
    context, page, blocked, errors = _open(browser, site, page_path)
    try:
        source = (HTML / page_path).read_text()
        if "math notranslate" in source:  # the page has math: MathJax must have typeset all of it
            page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
            page.evaluate("MathJax.startup.promise")
            assert page.locator("mjx-container").count() > 0, "MathJax rendered nothing"
            prose = page.evaluate("(() => { const m = document.querySelector('main').cloneNode(true);"
                                  " m.querySelectorAll('pre, code').forEach(e => e.remove());"
                                  " return m.textContent; })()")
            assert "$$" not in prose and "\\frac" not in prose, "raw TeX left in the text"
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.src)")
        assert not broken, f"images that did not load: {broken}"
        assert not blocked, f"the page asked for outside resources: {blocked}"
        assert not errors, f"console errors: {errors}"
        hrefs = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
        for href in {h.split("#")[0] for h in hrefs if h.startswith(site)}:
            target = HTML / urllib.parse.unquote(urllib.parse.urlparse(href).path).lstrip("/")
            if target.is_dir():
                target = target / "index.html"
            assert target.is_file(), f"internal link to a missing page: {href}"
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [f"{v['id']} ({v['impact']}): {v['help']} -- e.g. {v['nodes'][0]['target']}"
                   for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert not serious, "accessibility violations:\n" + "\n".join(serious)
        if page_path in SCREENSHOTS:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{SCREENSHOTS[page_path]}.png"), full_page=False)
    finally:
        context.close()
