"""normlib.lab.timing and normlib.lab.bench: the byte model, the timer, and the suite's JSON (on one tiny case)."""

import json
import os
import platform
import subprocess
import sys

import torch

from normlib.lab import bench as bench_suite
from normlib.lab import timing as bench


def test_byte_model():
    assert bench.model_bytes(1000, 4, "forward") == 8000
    assert bench.model_bytes(1000, 2, "forward+backward") == 10000


def test_benchmark_times_the_function_it_is_given():
    calls = []
    timing = bench.benchmark(lambda: calls.append(1), "cpu", threads=1, min_run_time=0.05)
    assert calls and timing.median_s > 0 and timing.runs >= 1 and timing.threads == 1
    assert "ms" in str(timing)


def test_suite_writes_every_figure_with_its_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_suite, "_cases", lambda quick, device: [("layer_norm", (64, 128), None),
                                                                     ("group_norm", (4, 32, 4, 4), 8)])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda device, nbytes=0: 10.0)
    monkeypatch.setattr(bench_suite, "copy_bandwidth", lambda device: 10.0)
    monkeypatch.setattr(bench_suite, "hold_freed_memory", lambda: True)  # not in the test process
    # other test modules turn Triton's interpreter on for the whole session, which adds normlib-triton
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "bench.json"
    report = bench_suite.run(quick=True, device="cpu", out=str(out), progress=False)
    assert json.loads(out.read_text()) == report
    for key in ("device", "cpu", "torch", "triton", "date", "threads", "byte_model", "copy_bandwidth_GBps", "compiled",
                "timing", "allocators"):
        assert key in report
    assert list(report["allocators"]) == ["held"]
    impls = {r["impl"] for r in report["results"]}
    assert impls == {"torch", "normlib", "normlib-compiled"}
    assert len(report["results"]) == 2 * 3 * 2  # cases x implementations x modes
    for r in report["results"]:
        assert r["median_ms"] > 0 and r["allocator"] == "held"
        assert r.get("groups") == (8 if r["op"] == "group_norm" else None)
        expected = bench.model_bytes(torch.Size(r["shape"]).numel(), 4, r["mode"]) / (r["median_ms"] / 1e3) / 1e9
        assert abs(r["GBps"] - expected) < 1e-6 * expected
        assert abs(r["fraction_of_copy"] - r["GBps"] / 10.0) < 1e-9


def test_hold_freed_memory_applies_on_glibc():
    """In a separate process: it changes the allocator of the whole process it runs in."""
    out = subprocess.run([sys.executable, "-c", "from normlib.lab.timing import hold_freed_memory as h; print(h())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == str(glibc)


def test_compare_times_each_function_in_every_round():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def fn():
            calls[name] += 1
        return fn

    timings = bench.compare({"a": counter("a"), "b": counter("b")}, "cpu", rounds=3, min_run_time=0.01)
    assert set(timings) == {"a", "b"} and all(t.runs == 3 and t.median_s > 0 for t in timings.values())
    assert calls["a"] >= 3 and calls["b"] >= 3


def test_cli_runs_both_allocators_in_their_own_processes(tmp_path):
    """The command a user runs: one file with each case under both allocator settings."""
    out = tmp_path / "both.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no interpreted Triton cases
    subprocess.run([sys.executable, "-m", "normlib.lab.bench", "--quick", "--ops", "rms_norm", "--threads", "1",
                    "--repeats", "2", "--out", str(out)], check=True, capture_output=True, env=env)
    report = json.loads(out.read_text())
    assert set(report["allocators"]) == {"default", "held"} and report["repeats"] == 2
    for r in report["results"]:
        assert len(r["runs_ms"]) == 2 and r["median_ms"] == sum(r["runs_ms"]) / 2
    seen = {(r["allocator"], r["impl"], r["mode"], tuple(r["shape"])) for r in report["results"]}
    assert len(seen) == len(report["results"]) == 2 * 3 * 2 * 2  # allocators x implementations x modes x widths
    assert {r["op"] for r in report["results"]} == {"rms_norm"}


def test_profile_ops_lists_the_operators_a_function_runs():
    x = torch.randn(64, 256)
    ops = bench.profile_ops(lambda: torch.nn.functional.layer_norm(x.exp(), [256]), runs=2)
    names = [op.name for op in ops]
    assert "aten::native_layer_norm" in names and "aten::exp" in names
    assert all(op.calls >= 1 and op.self_ms > 0 for op in ops)
    assert [op.self_ms for op in ops] == sorted((op.self_ms for op in ops), reverse=True)


def test_profile_ops_leaves_the_deterministic_setting_as_it_was():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        ops = bench.profile_ops(lambda: torch.nn.functional.layer_norm(torch.randn(8, 16), [16]), runs=1)
        assert "aten::fill_" not in [op.name for op in ops]
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
