"""The requirements install on a newcomer's machine: they resolve from PyPI alone.

A machine of this project's finds a local CPU wheel of torch first (pip's find-links); a laptop or a GitHub
runner has only PyPI, where torch 2.13.0 for Linux is the CUDA build and pins its own triton. So resolve
each requirements file with `pip install --isolated --dry-run` against PyPI and no other source or
configuration, as on a fresh machine; and, with uv (which resolves for another platform), for macOS and
Windows. These tests need PyPI (as installing does).
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
FILES = ["requirements-book.txt", "requirements.txt"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        name, version = re.match(r"([A-Za-z0-9_.-]+)==([^;\s]+)", line).groups()
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _clean_env() -> dict[str, str]:
    """No pip configuration of this machine's: no config files, no PIP_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def test_every_requirement_is_pinned_once_and_the_light_set_has_no_torch():
    book, full = _pins(ROOT / FILES[0]), _pins(ROOT / FILES[1])
    assert "-r requirements-book.txt" in (ROOT / FILES[1]).read_text(), "the full set includes the light set"
    assert not set(book) & set(full), f"pinned in both files: {set(book) & set(full)}"
    assert {"jupyter-book", "django-static-mathjax"} <= set(book)
    assert not {"torch", "triton", "numpy", "matplotlib", "playwright"} & set(book), "make book needs no torch"
    assert full["torch"] == "2.13.0"
    triton = next(line for line in (ROOT / FILES[1]).read_text().splitlines() if line.startswith("triton=="))
    assert 'platform_system == "Linux"' in triton, "there is no triton for macOS or Windows"


@pytest.mark.parametrize("requirements", FILES)
def test_requirements_resolve_from_pypi_alone(requirements, tmp_path):
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                          "--quiet", "--disable-pip-version-check", "--index-url", PYPI, "--report", str(report),
                          "-r", requirements], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"{requirements} does not resolve from PyPI alone:\n{run.stderr[-4000:]}"
    installs = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i
                for i in json.loads(report.read_text())["install"]}
    hosts = {re.sub(r"^https?://([^/]+)/.*", r"\1", i["download_info"]["url"]) for i in installs.values()}
    assert hosts <= {"files.pythonhosted.org"}, f"resolved from somewhere other than PyPI: {hosts}"
    pins = _pins(ROOT / requirements)
    versions = {n: i["metadata"]["version"] for n, i in installs.items()}
    wrong = {n: v for n, v in versions.items() if n in pins and v != pins[n]}
    assert not wrong, f"resolved other versions than pinned: {wrong}"
    if requirements == "requirements.txt" and platform.system() == "Linux":
        assert installs["torch"]["metadata"]["version"] == "2.13.0"
        assert installs["triton"]["metadata"]["version"] == "3.7.1", "PyPI's torch 2.13.0 pins triton 3.7.1"


@pytest.mark.parametrize("target", ["aarch64-apple-darwin", "x86_64-pc-windows-msvc"])
@pytest.mark.parametrize("requirements", FILES)
def test_requirements_resolve_on_macos_and_windows(requirements, target, tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is missing: it is in requirements.txt (make test installs it)"
    env = _clean_env() | {"MACOSX_DEPLOYMENT_TARGET": "14.0"}  # torch 2.13.0's macOS wheels: macOS 14 and later
    run = subprocess.run([uv, "pip", "compile", "--quiet", "--no-config", "--no-header", "--index-url", PYPI,
                          "--python-version", platform.python_version(), "--python-platform", target,
                          requirements, "-o", str(tmp_path / "resolved.txt")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{requirements} does not resolve for {target}:\n{run.stderr[-4000:]}"
    resolved = (tmp_path / "resolved.txt").read_text()
    got = {re.sub(r"[-_.]+", "-", m[0]).lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", resolved, re.M)}
    pins = _pins(ROOT / requirements)
    wrong = {n: v for n, v in got.items() if n in pins and v != pins[n]}
    assert not wrong, f"resolved other versions than pinned: {wrong}"
    if requirements == "requirements.txt":
        assert "torch==2.13.0" in resolved and "triton==" not in resolved
