"""The one timing helper every timing cell uses (the suite, ``python -m normlib.lab.bench``, is built on it).

On CUDA: CUDA events around each call, warm-up first, the L2 cache flushed between repetitions,
median and interquartile range reported. On the CPU: ``torch.utils.benchmark.Timer`` with the
thread count set explicitly and ``blocked_autorange``, median reported. Correctness is the
caller's job: check the function's output before timing it (the suite does).

Norms and dropout are memory-bound, so speed is reported against a **byte model**, the least traffic
the operation needs: the forward reads ``x`` and writes ``y`` (2 tensors), the backward reads ``x`` and
``dy`` and writes ``dx`` (3 tensors); parameters and statistics are negligible. Achieved GB/s = model
bytes / median time, also given as a fraction of the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
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
    threads = torch.get_num_threads()
    return f"CPU ({platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


def cpu_details() -> dict[str, str | None]:
    """The CPU's model name and cache sizes, where the system says (Linux), for a benchmark's provenance."""
    details: dict[str, str | None] = {"model": platform.processor() or None, "L2": None, "L3": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    details["model"] = line.split(":", 1)[1].strip()
                    break
        for level in ("2", "3"):
            for index in range(6):
                base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
                if os.path.exists(base) and open(f"{base}/level").read().strip() == level:
                    details[f"L{level}"] = open(f"{base}/size").read().strip()
    except OSError:
        pass
    return details


def gpu_details(device: torch.device | str = "cuda") -> dict[str, object]:
    """The GPU's name, multiprocessors, memory, L2 cache, compute capability, CUDA version and driver
    (from ``nvidia-smi``, where it is on the path), for a benchmark's provenance."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                                capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    l2 = getattr(props, "L2_cache_size", 0)
    return {"name": props.name, "multiprocessors": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1), "L2_MiB": round(l2 / 2**20, 1) if l2 else None,
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda, "driver": driver}


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


def compare(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *, rounds: int = 5,
            min_run_time: float = 0.1, threads: int | None = None) -> dict[str, Timing]:
    """Time several functions that do the same work, interleaved: ``rounds`` rounds, each timing every
    function once (:func:`benchmark`, ``min_run_time`` each), in alternating order.

    Each function's result is the median over the rounds of its per-round median, its spread the
    interquartile range over the rounds. Timed one after the other instead, the functions would also be
    compared across whatever else changed on the machine in between (other processes, the memory
    traffic of a neighbour on a shared host, the clock): interleaving spreads such drifts over all of
    them, so their ratios are what stays stable from run to run.
    """
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in names:
            per_round[name].append(benchmark(fns[name], device, threads=threads, min_run_time=min_run_time,
                                             reps=max(5, 50 // rounds), warmup=2).median_s)
    out = {}
    for name, times in per_round.items():
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        out[name] = Timing(statistics.median(times), q[2] - q[0], len(times), device_name(device),
                           (threads or torch.get_num_threads()) if torch.device(device).type == "cpu" else None)
    return out


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


@dataclass(frozen=True)
class OpTime:
    """One operator in a :func:`profile_ops` listing: calls and self time per call of the profiled function."""

    name: str
    calls: float
    self_ms: float


@contextlib.contextmanager
def _quiet_stderr():
    """Send what C++ code writes to file descriptor 2 to /dev/null meanwhile (the profiler's own start and
    stop messages, which would otherwise land in a notebook's output)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Operators that allocate, reinterpret or dispatch but do no arithmetic of their own.
_NO_WORK = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::to", "aten::view", "aten::reshape",
            "aten::expand", "aten::as_strided", "aten::_unsafe_view", "aten::detach", "aten::resize_", "aten::t",
            "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::lift_fresh"}


def profile_ops(fn: Callable[[], object], runs: int = 5, warmup: int = 2) -> list[OpTime]:
    """The ATen operators ``fn()`` runs on the CPU, with their self time, from ``torch.profiler``.

    Averaged over ``runs`` calls after ``warmup``; sorted by self time, largest first. Operators that only
    allocate, reinterpret or dispatch (``aten::empty``, views, ``aten::to``) are left out. Profiled with
    deterministic algorithms off, torch's default (:func:`normlib.lab.setup` turns them on for the
    lessons; they fill every new tensor with NaN first, which would show as ``aten::fill_``).
    """
    from torch.profiler import ProfilerActivity, profile

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        for _ in range(warmup):
            fn()
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn()
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    rows = [OpTime(e.key, e.count / runs, e.self_cpu_time_total / 1e3 / runs) for e in prof.key_averages()
            if e.key.startswith("aten::") and e.key not in _NO_WORK]
    return sorted(rows, key=lambda r: -r.self_ms)


def profile_torch_layer_and_rms_norm(rows: int = 4096, width: int = 1024) -> dict[str, list[OpTime]]:
    """:func:`profile_ops` of torch's own LayerNorm and RMSNorm, forward+backward, on the same float32
    ``(rows, width)`` tensor on the CPU: what lessons 09 and 14 show of torch's CPU RMSNorm."""
    x = torch.randn(rows, width, requires_grad=True)
    w = torch.ones(width, requires_grad=True)
    dy = torch.randn_like(x)
    norms = {"LayerNorm": lambda: torch.nn.functional.layer_norm(x, [width], w),
             "RMSNorm": lambda: torch.nn.functional.rms_norm(x, [width], w)}
    return {name: profile_ops(lambda norm=norm: torch.autograd.grad(norm(), (x, w), dy))
            for name, norm in norms.items()}


def hold_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of handing it back to the OS; True if it did.

    By default glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it when freed,
    so each call that creates a large tensor pays for the kernel zeroing and mapping new pages: on a
    small machine that costs more than the norm itself, and a CPU benchmark then measures page faults.
    GPU allocators (PyTorch's caching allocator) and CPU allocators such as jemalloc keep freed blocks;
    this does the same for glibc (``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD = 1 GiB``). It changes the whole
    process, which is why only the benchmark CLI and the speed lesson call it. Elsewhere (not glibc) it
    does nothing and returns False.
    """
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


BYTES_PER_PASS = {"forward": 2, "forward+backward": 5}  # tensors of x's size moved, in the byte model


def model_bytes(numel: int, element_size: int, mode: str) -> int:
    """Bytes the byte model says ``mode`` must move for a tensor of ``numel`` elements."""
    return BYTES_PER_PASS[mode] * numel * element_size


def copy_bandwidth(device: torch.device | str = "cpu", nbytes: int = 256 * 2**20) -> float:
    """Measured device copy bandwidth in GB/s: ``dst.copy_(src)`` moves ``2 * nbytes``."""
    device = torch.device(device)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = benchmark(lambda: dst.copy_(src), device, min_run_time=1.0)
    return 2 * nbytes / timing.median_s / 1e9
