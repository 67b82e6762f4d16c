"""Point the book at its public repository: repository link, launch buttons (Binder, Colab), download.

Usage: python tools/set_repository.py https://github.com/OWNER/REPO [BRANCH] [--site-url https://...]

The published site's workflow runs this with the repository it runs in, so the buttons always point at
the real repository; a local build without it simply has no repository or launch buttons (rather than
buttons pointing somewhere wrong).

--site-url is the address the site is published at (GitHub Pages gives it): it becomes ``html.baseurl``,
and with it the site carries normlib's wheel and its downloadable notebooks install normlib from there
(``book/_ext/lesson_downloads.py``).

Colab opens a lesson as committed on GitHub, so its button is turned on only when the committed lessons'
install cell names where normlib comes from (``python tools/lesson_header.py --repository URL``, once, and
commit); otherwise the button would open a notebook that cannot install normlib, and this says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "_config.yml"
LESSONS = ROOT / "notebooks"


def lessons_install_source(lessons: Path = LESSONS) -> str | None:
    """The source every lesson's install cell names, or None if any lesson names none."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from lesson_header import current_source, first_code_cell
    finally:
        sys.path.pop(0)
    sources = set()
    for path in sorted(lessons.glob("[0-9][0-9]_*.py")):
        first = first_code_cell(path.read_text())
        sources.add(current_source(first[2])[1] if first else None)
    return sources.pop() if len(sources) == 1 else None


def set_repository(url: str, branch: str = "main", config: Path = CONFIG, site_url: str | None = None,
                   lessons: Path = LESSONS) -> dict:
    data = yaml.safe_load(config.read_text())
    url = url.rstrip("/")
    data["repository"] = {"url": url, "path_to_book": "", "branch": branch}
    html = data.setdefault("html", {})
    html.update(use_repository_button=True, use_issues_button=True, use_download_button=True)
    if site_url:
        html["baseurl"] = site_url.rstrip("/") + "/"
    data["launch_buttons"] = {"notebook_interface": "classic", "binderhub_url": "https://mybinder.org"}
    source = lessons_install_source(lessons)
    if source and url.split("://", 1)[-1] in source:
        data["launch_buttons"]["colab_url"] = "https://colab.research.google.com"
    else:
        prefix = "::warning::" if os.environ.get("GITHUB_ACTIONS") else "warning: "
        print(f"{prefix}no Colab button: the lessons' install cell does not name {url}. Run "
              f"`python tools/lesson_header.py --repository {url}`, then `make notebooks`, and commit.")
    config.write_text("# Written by tools/set_repository.py\n" + yaml.safe_dump(data, sort_keys=False,
                                                                                 allow_unicode=True))
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("branch", nargs="?", default="main")
    parser.add_argument("--site-url", default="")
    args = parser.parse_args()
    if not args.url.startswith("https://"):
        sys.exit(__doc__)
    set_repository(args.url, args.branch, site_url=args.site_url or None)
