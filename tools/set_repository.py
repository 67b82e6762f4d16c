"""Point the book at its public repository: repository link, launch buttons (Binder, Colab), download.

Usage: python tools/set_repository.py https://github.com/OWNER/REPO [BRANCH]

The published site's workflow runs this with the repository it runs in, so the buttons always point at
the real repository; a local build without it simply has no repository or launch buttons (rather than
buttons pointing somewhere wrong).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parent.parent / "_config.yml"


def set_repository(url: str, branch: str = "main", config: Path = CONFIG) -> dict:
    data = yaml.safe_load(config.read_text())
    data["repository"] = {"url": url.rstrip("/"), "path_to_book": "", "branch": branch}
    data.setdefault("html", {}).update(use_repository_button=True, use_issues_button=True, use_download_button=True)
    data["launch_buttons"] = {"notebook_interface": "classic", "binderhub_url": "https://mybinder.org",
                              "colab_url": "https://colab.research.google.com"}
    config.write_text("# Written by tools/set_repository.py\n" + yaml.safe_dump(data, sort_keys=False))
    return data


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not sys.argv[1].startswith("https://"):
        sys.exit(__doc__)
    set_repository(*sys.argv[1:])
