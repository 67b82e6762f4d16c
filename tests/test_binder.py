"""Binder builds the lessons' environment from binder/ (repo2docker's convention): CPU-only, with Fashion-MNIST.

What this machine can check: repo2docker's file conventions, that binder/requirements.txt pins what
requirements.txt pins (torch as PyTorch's CPU build) and resolves from PyPI without CUDA libraries, and that
postBuild installs normlib and makes sure of the data. What only Binder itself shows (PyTorch's CPU index,
the image's Ubuntu packages) is listed in the README.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
PYPI = "https://pypi.org/simple"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9_.-]+)==([^;\s]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_binder_uses_its_own_folder_and_repo2dockers_file_names():
    names = {p.name for p in BINDER.iterdir()}
    assert {"requirements.txt", "apt.txt", "postBuild", "runtime.txt"} <= names
    assert names <= {"requirements.txt", "apt.txt", "postBuild", "runtime.txt", "environment.yml", "start"}, names
    assert not (ROOT / "postBuild").exists(), "repo2docker ignores top-level set-up files once binder/ exists"
    assert re.fullmatch(r"python-3\.11\n?", (BINDER / "runtime.txt").read_text())
    assert "dataset-fashion-mnist" in (BINDER / "apt.txt").read_text().split()
    post_build = (BINDER / "postBuild").read_text()
    assert os.access(BINDER / "postBuild", os.X_OK) and post_build.startswith("#!/bin/bash")
    assert "pip install --no-deps -e ." in post_build and "python -m normlib.lab.data" in post_build


def test_binder_pins_the_tested_versions_and_a_cpu_torch():
    binder = _pins(BINDER / "requirements.txt")
    tested = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-book.txt")
    text = (BINDER / "requirements.txt").read_text()
    assert f"--extra-index-url {CPU_INDEX}" in text
    assert binder.pop("torch") == tested["torch"] + "+cpu"
    wrong = {n: (v, tested.get(n)) for n, v in binder.items() if tested.get(n) != v}
    assert not wrong, f"binder/requirements.txt pins other versions than requirements.txt: {wrong}"
    assert not [n for n in binder if n.startswith(("nvidia", "triton", "cuda"))]
    assert {"numpy", "matplotlib", "scikit-learn", "tqdm", "jupytext"} <= set(binder)


def test_binder_requirements_resolve_without_cuda(tmp_path):
    """Everything but torch from PyPI alone (PyPI's own torch would bring CUDA: that is why torch comes from
    the CPU index, which is not reachable from every test machine); the set is closed: nothing unpinned."""
    without_torch = tmp_path / "requirements.txt"
    without_torch.write_text("\n".join(line for line in (BINDER / "requirements.txt").read_text().splitlines()
                                       if not line.startswith(("--extra-index-url", "torch=="))))
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))} | {"PIP_CONFIG_FILE": os.devnull}
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                          "--quiet", "--disable-pip-version-check", "--index-url", PYPI, "--report", str(report),
                          "-r", str(without_torch)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    installed = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    pins = _pins(without_torch)
    assert installed == pins, f"resolved beyond or beside the pins: {set(installed) ^ set(pins)}"
