"""The built site as a reader meets it, in a real browser (Chromium or Chrome, driven by Playwright), offline.

Pages are served from _build/html on a local port and every request to anything else is blocked.

Every page, at 1280 px: MathJax rendered, every image loaded, no console errors, internal links resolve,
axe-core finds no serious or critical accessibility violations.
Every page, at 1280 px and on a 390 px phone: no display equation, figure, code block or table is clipped
(a block may scroll inside its own box; nothing is cut off or pushes the page sideways), and no equation
shows TeX as text. At 1280 px, besides: every display equation fits the page, code and printed output fit
(lines of about 88 characters), and figures are sharp and shown at their own size.
Every page's text: no test-harness markers (NBVAL), no finished progress bars; every figure has a caption
and alt text that describes it.
As a reader: the phone menu opens and a link in it goes to its page; on the desktop there is one search
box and the menu button hides and shows the sidebar; the colour mode follows the system; there is a favicon.

The browser: $CHROME_BIN if set (the publishing workflow points it at the Google Chrome of GitHub's
ubuntu-24.04 image, whose apt chromium is only a stub for a snap), else Debian's `chromium`.
Screenshots of every page at both widths go to _build/screenshots.
"""

import functools
import http.server
import os
import re
import shutil
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from test_book import toc_files

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
AXE = Path(os.environ.get("AXE_CORE_JS", Path(sys.prefix) / "axe-core" / "axe.min.js"))  # $(VENV)/axe-core
PAGES = [Path(f).with_suffix(".html").as_posix() for f in toc_files()]
LESSON_PAGES = [p for p in PAGES if p.startswith("notebooks/")]
DESKTOP, PHONE = 1280, 390
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
               "--disable-component-update", "--disable-sync", "--disable-quic"]


def browser_path() -> str:
    """$CHROME_BIN, else the first Chromium or Chrome on PATH, else Debian's path."""
    if os.environ.get("CHROME_BIN"):
        return os.environ["CHROME_BIN"]
    for name in ("chromium", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return "/usr/bin/chromium"


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
    path = browser_path()
    if not Path(path).is_file():
        pytest.fail(f"No browser at {path}: the browser tests cannot run. `make test` installs Debian's chromium "
                    "when run as root; install it, or set CHROME_BIN to a Chrome or Chromium, and re-run.")
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing at {AXE}: `make test` fetches it with npm")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


def _open(browser, site, page_path, width=DESKTOP, **context_options):
    phone = width < 600
    context = browser.new_context(viewport={"width": width, "height": 844 if phone else 900},
                                  is_mobile=phone, has_touch=phone, **context_options)
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
    if "math notranslate" in (HTML / page_path).read_text():
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
        page.evaluate("MathJax.startup.promise")
    return context, page, blocked, errors


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


@pytest.mark.parametrize("page_path", PAGES)
def test_page_in_a_real_browser(browser, site, page_path):
    context, page, blocked, errors = _open(browser, site, page_path)
    try:
        if "math notranslate" in (HTML / page_path).read_text():  # the page has math: MathJax typeset all of it
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
    finally:
        context.close()


# What a reader sees of each block: a function of one argument (desktop or not) that returns the problems.
LAYOUT_JS = "\n".join(line for line in (Path(__file__).parent / "site_layout.js").read_text().splitlines()
                      if not line.startswith("//"))


PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="
EQUATION = ('<mjx-container display="true" style="display:block;overflow-x:{}">'
            '<span style="display:inline-block;width:{}px">{}</span></mjx-container>')
SYNTHETIC = f"""<!doctype html><html><body style="margin:0"><main><article class="bd-article" style="width:600px">
{EQUATION.format("hidden", 1000, "CUT EQUATION")}
{EQUATION.format("auto", 1000, "WIDE EQUATION")}
{EQUATION.format("auto", 300, "SHORT EQUATION")}
<div class="highlight"><pre style="overflow-x:auto;width:580px">{{long_line}}</pre></div>
<div class="highlight"><pre style="overflow:hidden;width:580px">{{long_line}}</pre></div>
<img alt="a wide picture" style="width:2000px;height:10px" src="{PIXEL}">
</article></main></body></html>"""


def test_the_layout_check_tells_clipped_from_scrolling_blocks(browser):
    """The checker itself, on a page built to fail it: a block cut by a box that hides overflow, a block that
    scrolls inside its box, one that fits, and a picture that runs off the page."""
    context = browser.new_context(viewport={"width": 700, "height": 600})
    try:
        page = context.new_page()
        page.set_content(SYNTHETIC.format(long_line="x" * 200))
        phone, desktop = page.evaluate(LAYOUT_JS, False), page.evaluate(LAYOUT_JS, True)
    finally:
        context.close()
    clipped = [p for p in phone if "clipped" in p]
    assert any("display equation clipped" in p and "CUT EQUATION" in p for p in clipped), phone
    assert any("code block clipped" in p and "its box hides" in p for p in clipped), phone
    assert any("figure clipped" in p and "off the page" in p for p in clipped), phone
    assert not any("WIDE EQUATION" in p or "SHORT EQUATION" in p for p in clipped), "scrolling is not clipping"
    assert any("display equation wider than the page" in p and "WIDE EQUATION" in p for p in desktop), desktop
    assert not any("SHORT EQUATION" in p for p in desktop), desktop
    assert any("code or output wider than the page" in p and "200 characters" in p for p in desktop), desktop


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
@pytest.mark.parametrize("page_path", PAGES)
def test_page_reads_well(browser, site, page_path, width):
    """Nothing clipped or pushed off the page, at 1280 px and on a phone; on the desktop no sideways scrolling."""
    context, page, _, _ = _open(browser, site, page_path, width)
    try:
        _shot(page, f"{Path(page_path).stem}-{width}")
        problems = page.evaluate(LAYOUT_JS, width == DESKTOP)
        assert not problems, f"{page_path} at {width} px:\n" + "\n".join(problems)
    finally:
        context.close()


FILE_NAME = re.compile(r"[\w.-]*\.(png|jpe?g|gif|svg|webp)|[0-9a-f]{16,}|image|img|figure|png|output", re.I)
TQDM_BAR = re.compile(r"\d+%\|[^|\n]{0,100}\|\s*\d+/\d+")


@pytest.mark.parametrize("page_path", PAGES)
def test_page_text_has_no_harness_noise_and_every_figure_is_described(built_book, page_path):
    from bs4 import BeautifulSoup

    assert built_book.returncode == 0
    soup = BeautifulSoup((HTML / page_path).read_text(), "html.parser")
    article = soup.select_one("article.bd-article") or soup.body
    text = article.get_text()
    problems = []
    if "NBVAL" in text:
        line = next(li for li in text.splitlines() if "NBVAL" in li)
        problems.append(f"a test-harness marker is visible: {line.strip()!r} "
                        '(tag the cell instead: # %% tags=["nbval-ignore-output"])')
    for bar in TQDM_BAR.findall(text)[:3]:
        problems.append(f"a finished progress bar is shown: {bar!r} (leave progress bars out of stored outputs)")
    blank = [pre for pre in article.select(".cell_output pre") if not pre.get_text().strip()]
    if blank:
        problems.append(f"{len(blank)} empty output box(es): a cleared progress bar's blank line is shown")
    for img in article.find_all("img"):
        alt = (img.get("alt") or "").strip()
        name = img.get("src", "").split("/")[-1]
        if not alt or FILE_NAME.fullmatch(alt) or len(alt.split()) < 3:
            problems.append(f"figure {name} has no alt text that describes it (alt={alt!r})")
        figure = img.find_parent("figure")
        caption = figure.find("figcaption") if figure else None
        if caption is None or not caption.get_text(strip=True):
            problems.append(f"figure {name} ({alt[:50]!r}) has no caption")
    assert not problems, f"{page_path}:\n" + "\n".join(problems)


def test_phone_menu_opens_and_its_links_navigate(browser, site):
    """On a 390 px phone: the menu button opens the table of contents, and a lesson in it opens."""
    start, target = LESSON_PAGES[0], LESSON_PAGES[1]
    context, page, _, errors = _open(browser, site, start, PHONE)
    try:
        toggle = page.locator("button.primary-toggle:visible")
        assert toggle.count() == 1, f"expected one visible menu button on a phone, found {toggle.count()}"
        toggle.click()
        menu = page.locator("#pst-primary-sidebar-modal[open], .bd-sidebar-primary:visible").first
        menu.wait_for(state="visible", timeout=5000)
        link = menu.locator(f'a[href$="{Path(target).name}"]').first
        assert link.is_visible(), f"the open menu shows no link to {target}"
        _shot(page, f"menu-open-{PHONE}")
        link.click()
        page.wait_for_url(f"**/{target}", timeout=10000)
        page.locator("article.bd-article h1").first.wait_for(state="visible", timeout=5000)
        assert not errors, f"console errors: {errors}"
    finally:
        context.close()


def test_desktop_header_has_one_search_box_and_the_menu_button_works(browser, site):
    context, page, _, errors = _open(browser, site, LESSON_PAGES[0], DESKTOP)
    try:
        searches = page.locator(".search-button-field:visible")
        assert searches.count() == 1, f"{searches.count()} search boxes are visible; there should be one"
        sidebar = page.locator(".bd-sidebar-primary")
        assert sidebar.is_visible()
        toggle = page.locator("button.primary-toggle:visible")
        assert toggle.count() == 1, f"expected one visible menu button, found {toggle.count()}"
        toggle.click()
        page.wait_for_timeout(500)
        hidden = not sidebar.is_visible() or sidebar.bounding_box()["width"] < 5
        assert hidden, "the menu button did not hide the sidebar"
        toggle.click()
        page.wait_for_timeout(500)
        assert sidebar.is_visible() and sidebar.bounding_box()["width"] > 100, "the menu button did not bring it back"
        assert not errors, f"console errors: {errors}"
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colour_mode_follows_the_system(browser, site, scheme):
    context, page, _, _ = _open(browser, site, PAGES[0], DESKTOP, color_scheme=scheme)
    try:
        assert page.evaluate("document.documentElement.dataset.theme") == scheme
    finally:
        context.close()


def test_every_page_has_a_favicon(built_book):
    assert built_book.returncode == 0
    for page_path in PAGES:
        source = (HTML / page_path).read_text()
        match = re.search(r'<link rel="icon" href="([^"]+)"', source)
        assert match, f"{page_path} has no favicon"
        assert (HTML / page_path).parent.joinpath(match.group(1)).resolve().is_file(), match.group(1)
