"""tools/gpu_run.py, the one command for a GPU, dry-run on the CPU: Triton's interpreter, quick tests, tiny shapes.

A GPU is lent rarely and briefly: this runs the same steps here, so that the command is known to work first.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("triton", reason="triton is in requirements.txt; without it there are no kernels")


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "tools" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_result_file_is_named_after_the_gpu():
    assert _tool().result_name("NVIDIA H100 80GB HBM3") == "cuda-nvidia-h100-80gb-hbm3"


def test_dry_run_takes_every_step_and_writes_a_result_file(tmp_path):
    lesson = tmp_path / "lesson" / "01_a.py"  # stands in for a lesson: plain Python, with a figure
    lesson.parent.mkdir()
    lesson.write_text("# %%\nimport matplotlib.pyplot as plt\n\n"
                      "plt.plot([1, 2])\nprint('lesson ran:', plt.get_backend())\n")
    done = subprocess.run([sys.executable, "tools/gpu_run.py", "--dry-run", "--results", str(tmp_path),
                           "--select", "against_torch", "--lessons", str(lesson)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in ("== environment", "== kernel tests (interpreter, quick scope): ok", "== lesson 01_a.py: ok",
                 "lesson ran: agg", "== benchmark suite: ok"):
        assert line.lower() in done.stdout.lower()
    report = json.loads((tmp_path / "dry-run.json").read_text())
    assert report["complete"] and report["triton_interpreted"] and report["repeats"] == 2
    for key in ("device", "torch", "triton", "date", "copy_bandwidth_GBps", "results"):
        assert report[key]
    rows = report["results"]
    assert {r["impl"] for r in rows} == {"torch", "normlib-triton"}
    assert {r["op"] for r in rows} == {"layer_norm", "instance_norm", "dropout"}
    assert {r["dtype"] for r in rows} == {"bfloat16"} and {r["mode"] for r in rows} == {"forward", "forward+backward"}
    assert all(len(r["runs_ms"]) == 2 and r["fraction_of_copy"] > 0 for r in rows)


def test_without_a_gpu_it_says_so(tmp_path):
    done = subprocess.run([sys.executable, "tools/gpu_run.py", "--results", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert done.returncode != 0 and "no CUDA device" in done.stderr


def test_a_spent_budget_skips_what_is_left(tmp_path):
    done = subprocess.run([sys.executable, "tools/gpu_run.py", "--dry-run", "--results", str(tmp_path),
                           "--budget-minutes", "0.0001"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 124 and "the budget is spent" in done.stdout
    assert "== kernel tests" not in done.stdout and "== benchmark suite" not in done.stdout
    assert "no result file was written" in done.stdout
