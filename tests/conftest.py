import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build the book once per test session with warnings as errors; return the finished process.

    Its ``baseurl`` is the site's address. Where ``_config.yml`` names none (every build but the publishing
    workflow's), the book is built as if published at ``http://127.0.0.1:PORT/`` (a free port, ``local_port``),
    so that the site carries normlib's wheel and its downloadable lessons install it from there, as the
    published site's do (book/_ext/lesson_downloads.py): a test serves the site on that port and installs.
    """
    jb = Path(sys.executable).parent / "jupyter-book"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    baseurl, local_port, extra = config.get("html", {}).get("baseurl"), None, []
    if not baseurl:
        local_port = _free_port()
        baseurl = f"http://127.0.0.1:{local_port}/"
        config.setdefault("html", {})["baseurl"] = baseurl
        extensions = config.get("sphinx", {}).get("local_extensions", {})  # relative to the config file
        extensions.update({name: str(ROOT / folder) for name, folder in extensions.items()})
        local_config = tmp_path_factory.mktemp("book-config") / "_config.yml"
        local_config.write_text(yaml.safe_dump(config, sort_keys=False))
        extra = ["--config", str(local_config)]
    build = subprocess.run([str(jb), "build", str(ROOT), "-W", "-n", "--keep-going", *extra],
                           capture_output=True, text=True, timeout=1200, cwd=ROOT)
    build.baseurl, build.local_port = baseurl, local_port
    return build
