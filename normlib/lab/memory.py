"""Page faults and memory traffic on the CPU, counted rather than asserted (the speed lesson).

glibc maps large blocks fresh from the operating system and unmaps them when they are freed, so a program
that creates large tensors on every call touches new pages on every call: each first touch of a page is a
*minor page fault*, in which the kernel finds and zeroes a page. :func:`faults_per_call` counts them with
``resource.getrusage`` (``ru_minflt``, the process's minor faults so far), and :func:`layer_norm_faults`
does it for torch's LayerNorm in a fresh process, under the allocator as a program gets it and with freed
memory held (:func:`normlib.lab.timing.hold_freed_memory`): that setting changes the whole process for good,
which is why each count runs in a process of its own.

:func:`reuse_bandwidths` tests why a norm can beat the copy baseline: it times a copy and torch's
LayerNorm forward on the same input every call, as a benchmark runs them, and cycling through several
inputs, so that only what the cache can keep from one call to the next differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import torch

__all__ = ["PAGE_SIZE", "faults_per_call", "layer_norm_faults", "minor_faults", "one_page_per_fault",
           "reuse_bandwidths"]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def one_page_per_fault() -> bool:
    """True where a minor fault maps one 4 KiB page: the page size is 4 KiB and transparent huge pages
    are not on for every mapping (Linux's ``always``, under which one fault may map 2 MiB)."""
    if PAGE_SIZE != 4096:
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" not in f.read()
    except OSError:
        return True  # no transparent huge pages


def minor_faults() -> int | None:
    """The minor page faults of this process so far, or None where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(fn: Callable[[], object], calls: int = 5, warmup: int = 2) -> float | None:
    """The mean number of minor page faults one call of ``fn`` causes, after ``warmup`` calls.

    None where the platform cannot count them.
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    for _ in range(warmup):
        fn()
    start = minor_faults()
    if start is None:
        return None
    for _ in range(calls):
        fn()
    return (minor_faults() - start) / calls


def _layer_norm_step(rows: int, width: int) -> Callable[[], object]:
    torch.manual_seed(0)
    x = torch.randn(rows, width, requires_grad=True)
    w = torch.ones(width, requires_grad=True)
    b = torch.zeros(width, requires_grad=True)
    dy = torch.randn(rows, width)
    return lambda: torch.autograd.grad(torch.nn.functional.layer_norm(x, [width], w, b), (x, w, b), dy)


def _fault_sequence(rows: int, width: int, hold: bool, calls: int) -> list[int] | None:
    torch.set_num_threads(1)
    if hold:
        from normlib.lab.timing import hold_freed_memory

        hold_freed_memory()
    step = _layer_norm_step(rows, width)
    counts = []
    for _ in range(calls):
        start = minor_faults()
        if start is None:
            return None
        step()
        counts.append(minor_faults() - start)
    return counts


def layer_norm_faults(rows: int, width: int, hold: bool, calls: int = 12) -> list[int] | None:
    """Minor page faults of each of ``calls`` calls of torch's LayerNorm forward+backward, in order.

    The calls run on one ``(rows, width)`` float32 input in a fresh Python process, with glibc's default
    allocator (``hold=False``) or with freed memory held (``hold=True``); the first calls also fault in
    the process's first use of that memory. None where the platform cannot count faults.
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    code = ("import json; from normlib.lab.memory import _fault_sequence; "
            f"print(json.dumps(_fault_sequence({int(rows)}, {int(width)}, {bool(hold)}, {int(calls)})))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reuse_bandwidths(sizes_mib: tuple[int, ...] = (16, 256), rotate: int = 8, rounds: int = 5,
                     min_run_time: float = 0.1) -> dict[tuple[str, str], dict[int, list[float]]]:
    """Byte-model GB/s of a copy and of torch's LayerNorm forward, on inputs reused or not, per size.

    For each size (MiB of one float32 tensor of 4096 rows), two operations, each run two ways:

    - ``"same"``: every call on the same input, as a benchmark usually runs (what a cache kept of it
      from the previous call is found there again);
    - ``"rotating"``: the calls cycle through ``rotate`` different inputs of that size (so ``rotate``
      times the bytes pass between two uses of one input, and nothing is left in cache).

    The operations are ``"copy"`` (``y.copy_(x)``, counted as 2 tensors, as
    :func:`normlib.lab.timing.copy_bandwidth` counts it) and ``"layer_norm"`` (forward, counted as 2
    tensors: the byte model's read of ``x`` and write of ``y``). The four of one size are timed
    interleaved, ``rounds`` times. Returns ``{(op, way): {size: [GB/s per round]}}``.
    """
    from normlib.lab.timing import benchmark

    if rotate < 2:
        raise ValueError(f"rotate must be at least 2, got {rotate}")
    ways = [(op, way) for op in ("copy", "layer_norm") for way in ("same", "rotating")]
    out: dict[tuple[str, str], dict[int, list[float]]] = {key: {} for key in ways}
    for mib in sizes_mib:
        rows, width = 4096, mib * 2**20 // (4 * 4096)
        fns = _reuse_calls([torch.empty(rows, width).uniform_() for _ in range(rotate)])
        for key in ways:
            out[key][mib] = []
        for r in range(rounds):
            for key in (ways if r % 2 == 0 else ways[::-1]):
                t = benchmark(fns[key], "cpu", min_run_time=min_run_time)
                out[key][mib].append(2 * rows * width * 4 / t.median_s / 1e9)
        del fns
    return out


def _reuse_calls(xs: list[torch.Tensor]) -> dict[tuple[str, str], Callable[[], object]]:
    """The four calls of :func:`reuse_bandwidths` over the inputs ``xs``: on ``xs[0]``, or cycling."""
    y, width, turn = torch.empty_like(xs[0]), xs[0].shape[-1], [0]

    def nxt() -> torch.Tensor:
        turn[0] = (turn[0] + 1) % len(xs)
        return xs[turn[0]]

    return {("copy", "same"): lambda: y.copy_(xs[0]),
            ("copy", "rotating"): lambda: y.copy_(nxt()),
            ("layer_norm", "same"): lambda: torch.nn.functional.layer_norm(xs[0], [width]),
            ("layer_norm", "rotating"): lambda: torch.nn.functional.layer_norm(nxt(), [width])}
