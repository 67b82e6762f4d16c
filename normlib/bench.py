"""The one timing helper every timing cell uses.

On CUDA: CUDA events around each call, warm-up first, the L2 cache flushed between repetitions,
median and interquartile range reported. On the CPU: ``torch.utils.benchmark.Timer`` with the
thread count set explicitly and ``blocked_autorange``, median reported. Correctness is the
caller's job: check the function's output before timing it.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Median time of one call and its spread, with where it was measured."""

    median_s: float
    iqr_s: float
    runs: int
    device: str
    threads: int | None

    def __str__(self) -> str:
        return f"{self.median_s * 1e3:.3f} ms (IQR {self.iqr_s * 1e3:.3f} ms, {self.runs} runs)"


def device_name(device: torch.device | str) -> str:
    """A readable name for ``device``: the GPU's name, or the CPU's architecture and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU: where the lessons' timing cells run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def benchmark(fn: Callable[[], object], device: torch.device | str = "cpu", *, threads: int | None = None,
              min_run_time: float = 0.5, reps: int = 50, warmup: int = 10) -> Timing:
    """Time ``fn()`` (a closure over its inputs) on ``device``.

    CPU: ``torch.utils.benchmark.Timer(num_threads=threads)`` (default: the current thread count)
    with ``blocked_autorange(min_run_time)``. CUDA: ``warmup`` calls, then ``reps`` calls each between
    two events, with a 256 MB buffer zeroed before each to flush the L2 cache.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _benchmark_cuda(fn, device, reps=reps, warmup=warmup)
    from torch.utils import benchmark as tb

    threads = threads or torch.get_num_threads()
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(m.median, q[2] - q[0], len(times), device_name(device), threads)


def _benchmark_cuda(fn: Callable[[], object], device: torch.device, *, reps: int, warmup: int) -> Timing:
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=device)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends, strict=True):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    times = sorted(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True))
    q = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), q[2] - q[0], reps, device_name(device), None)
