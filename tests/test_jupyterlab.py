"""`make lab` opens the lessons in JupyterLab, and jupytext keeps each pair in sync when either file is saved.

The test runs the real `make lab` (with --no-browser, a free port on 127.0.0.1 and a token) in a scratch
copy of one lesson's pair and jupytext.toml, talks to the server as JupyterLab's front end does (its REST
API), and shuts it down. Nothing but 127.0.0.1 is contacted.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSON = "01_one_formula"
START_LIMIT_S = 180  # a loaded 2-core machine takes a while to import JupyterLab's server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if "json" in response.headers.get("Content-Type", "")
                                     else raw.decode())


def _wait_until_up(lab: Lab, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`make lab` exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if lab.request("GET", "/api/status")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer within {START_LIMIT_S} s:\n{log.read_text()[-4000:]}")


def _markdown_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def test_make_lab_serves_the_lessons_and_keeps_each_pair_in_sync(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "jupytext.toml", repo)
    for suffix in (".py", ".ipynb"):
        shutil.copy(ROOT / "notebooks" / f"{LESSON}{suffix}", repo / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter_dirs = {f"JUPYTER{k}": str(tmp_path / v) for k, v in (
        ("_CONFIG_DIR", "config"), ("_RUNTIME_DIR", "runtime"), ("LAB_WORKSPACES_DIR", "workspaces"),
        ("LAB_SETTINGS_DIR", "settings"))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")} | jupyter_dirs
    flags = f"--no-browser --ServerApp.port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    log = tmp_path / "lab.log"
    # `make -o STAMP`: the environment is this one, already installed; make lab must not reinstall it.
    command = ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(repo), "-o", f"{sys.prefix}/.installed",
               "lab", f"VENV={sys.prefix}", f"LAB_FLAGS={flags}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token)
    try:
        _wait_until_up(lab, proc, log)
        status, page = lab.request("GET", "/lab")
        assert status == 200 and "JupyterLab" in page

        # The lesson, as the front end opens it.
        nb_path, py_path = f"/api/contents/notebooks/{LESSON}.ipynb", f"/api/contents/notebooks/{LESSON}.py"
        status, model = lab.request("GET", nb_path)
        stored = json.loads((repo / "notebooks" / f"{LESSON}.ipynb").read_text())
        assert status == 200 and model["type"] == "notebook"
        assert [c["source"] for c in model["content"]["cells"]] == \
            ["".join(c["source"]) for c in stored["cells"]]
        status, as_text = lab.request("GET", py_path)
        assert as_text["type"] == "notebook", "jupytext opens the .py as a notebook"

        # Saving either file writes both.
        notebook = model["content"]
        notebook["cells"].append(_markdown_cell("Saved from the notebook."))
        lab.request("PUT", nb_path, {"type": "notebook", "format": "json", "content": notebook})
        assert "# Saved from the notebook." in (repo / "notebooks" / f"{LESSON}.py").read_text()
        notebook["cells"].append(_markdown_cell("Saved from the script."))
        lab.request("PUT", py_path, {"type": "notebook", "format": "json", "content": notebook})
        saved = json.loads((repo / "notebooks" / f"{LESSON}.ipynb").read_text())
        assert "".join(saved["cells"][-1]["source"]) == "Saved from the script."
        outputs = [c.get("outputs") for c in saved["cells"] if c["cell_type"] == "code"]
        assert outputs == [c.get("outputs") for c in stored["cells"] if c["cell_type"] == "code"], \
            "saving keeps the stored outputs"

        status, _ = lab.request("POST", "/api/shutdown")
        assert status == 200
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the server still listens after its shutdown"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
