"""The benchmark suite, ``python -m normlib.lab.bench``: every norm, every implementation, one JSON file.

Implementations: ``torch`` (torch's native kernels), ``normlib`` (normlib.functional, eager, backward by
autograd), ``normlib-compiled`` (normlib.manual, the hand-derived backward, under
``torch.compile(fullgraph=True)``; compile time excluded; dropout has no hand-written backward and compiles
normlib.functional's) and, on a GPU, ``normlib-triton`` (normlib.kernels). Each is checked against torch
before it is timed. Forward+backward is one call of ``torch.autograd.grad`` for the input and the
parameters (no gradient accumulation into ``.grad``, which would add traffic of its own). The
implementations of one case are timed interleaved (:func:`normlib.lab.timing.compare`), so that what else
the machine does meanwhile is spread over all of them rather than landing on one.

On the CPU the suite runs under two allocator settings, each in a fresh process (``--repeats`` runs it
several times): with the allocator as a user gets it (``default``) and with glibc keeping freed memory
(``held``, :func:`normlib.lab.timing.hold_freed_memory`).
The first is what a training loop sees when each step allocates large tensors afresh; the second shows
the kernels alone, without the page faults.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as TF

from normlib import functional as NF
from normlib import manual as NM
from normlib.lab.timing import (
    compare,
    copy_bandwidth,
    cpu_details,
    default_device,
    device_name,
    gpu_details,
    hold_freed_memory,
    model_bytes,
)

ALLOCATORS = {
    "default": "the platform's allocator as it comes (glibc: blocks over its mmap threshold, at most 32 MiB, "
               "mapped fresh on each allocation and returned to the system when freed)",
    "held": "glibc keeping freed memory in the process (normlib.lab.timing.hold_freed_memory)",
    "cuda": "PyTorch's CUDA caching allocator",
}


SIZES = ("full", "quick", "tiny")


def _cases(size: str, device: torch.device):
    """(op, shape, number of groups or None) for every case of the suite, at one of :data:`SIZES`.

    ``"tiny"`` only checks that the suite runs (Triton's interpreter on the CPU gets through it in seconds).
    """
    if size == "tiny":
        yield from [("layer_norm", (3, 40), None), ("rms_norm", (3, 40), None),
                    ("batch_norm", (2, 3, 3, 3), None), ("group_norm", (2, 4, 3, 3), 2),
                    ("instance_norm", (2, 3, 3, 3), None), ("dropout", (2000,), None)]
        return
    quick = size == "quick"
    m = 1024 if quick else 4096
    widths = (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384)
    images = [(16, 64, 32, 32)] if quick else [(32, 64, 56, 56), (8, 256, 28, 28), (64, 32, 32, 32)]
    for n in widths:
        yield "layer_norm", (m, n), None
        yield "rms_norm", (m, n), None
    for shape in images:
        yield "batch_norm", shape, None
        for groups in (8, 32):
            yield "group_norm", shape, groups
        yield "instance_norm", shape, None
    yield "dropout", (4 * 2**20,) if quick else (16 * 2**20,), None


def _call(lib, op: str, x: torch.Tensor, params: dict, groups: int | None = None):
    """Run ``op`` from ``lib`` (torch.nn.functional, normlib.functional or normlib.kernels) on ``x``."""
    if op in ("layer_norm", "rms_norm"):
        n = x.shape[-1]
        extra = (params["w"], params["b"]) if op == "layer_norm" else (params["w"],)
        return getattr(lib, op)(x, [n], *extra)
    if op == "batch_norm":
        return lib.batch_norm(x, None, None, params["w"], params["b"], True)
    if op == "group_norm":
        return lib.group_norm(x, groups, params["w"], params["b"])
    if op == "instance_norm":
        if not hasattr(lib, "instance_norm"):  # normlib.kernels: InstanceNorm is GroupNorm, a group per channel
            return lib.group_norm(x, x.shape[1], params["w"], params["b"])
        return lib.instance_norm(x, weight=params["w"], bias=params["b"])
    if op == "dropout":
        return lib.dropout(x, 0.5, True)
    raise ValueError(op)


def _step(fn, mode: str, x: torch.Tensor, params: dict, leaves: list, dy: torch.Tensor):
    """One call of ``fn`` to time: the forward under ``no_grad``, or forward and backward."""
    if mode == "forward":
        def step():
            with torch.no_grad():
                fn(x, params)
    else:
        def step():
            torch.autograd.grad(fn(x, params), leaves, dy)
    return step


IMPLS = ("torch", "normlib", "normlib-compiled", "normlib-triton")
RESULTS = Path(__file__).resolve().parent / "results"  # recorded runs, shipped with normlib.lab


def recorded() -> dict[str, dict]:
    """The committed benchmark results (``normlib/lab/results/*.json``), by file name without extension."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def _write(report: dict, out: str | None) -> None:
    """Write ``report`` as JSON to ``out`` (nothing when None), making its folder if needed."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))


def _triton_kernels(device: torch.device):
    """:mod:`normlib.kernels` where its kernels can run on ``device`` (a GPU, or the CPU under Triton's
    interpreter, ``TRITON_INTERPRET=1`` set before the import), else None."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        from normlib import kernels
    except ImportError:  # no triton
        return None
    return kernels


def run(quick: bool = False, device: str | None = None, out: str | None = None, progress: bool = True,
        allocator: str | None = None, ops: list[str] | None = None, repeats: int = 1,
        dtypes: list[torch.dtype] | None = None, size: str | None = None, impls: list[str] | None = None,
        min_run_time: float = 0.1, rounds: int = 5) -> dict:
    """Run the suite in this process; write and return the results (see the module docstring).

    ``allocator`` (CPU): ``"held"`` makes glibc keep freed memory first (for the rest of the process),
    ``"default"`` leaves the allocator alone; default ``"held"``. On a GPU it is ``"cuda"``. ``ops``: only
    these operations (default: all). ``repeats``: each case is timed that many times in this process
    (``runs_ms``, their median is ``median_ms``). ``dtypes``: default float32, and bfloat16 on a GPU.
    ``size``: one of :data:`SIZES` (default ``"quick"`` when ``quick``, else ``"full"``). The Triton kernels
    are timed as ``normlib-triton`` on a GPU, and on the CPU under ``TRITON_INTERPRET=1`` (to check that
    the suite runs, not for speed). ``impls``: only these implementations (default: all; torch is always
    timed, as the reference). ``min_run_time``: seconds each implementation is timed per round on the CPU;
    ``rounds``: rounds of :func:`normlib.lab.timing.compare`.
    The report is written after every case, marked ``"complete": False`` until the last, so that a run
    cut short keeps what it measured.
    """
    from tqdm import tqdm

    device = torch.device(device) if device else default_device()
    size = size or ("quick" if quick else "full")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    if device.type == "cuda":
        allocator = "cuda"
    else:
        allocator = allocator or "held"
        if allocator not in ("held", "default"):
            raise ValueError(f"allocator must be 'held' or 'default' on the CPU, not {allocator!r}")
        if allocator == "held" and not hold_freed_memory():
            raise RuntimeError("cannot make this platform's allocator hold freed memory (not glibc)")
    dtypes = dtypes or [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    libs = {"torch": TF, "normlib": NF, "normlib-compiled": None}
    kernels = _triton_kernels(device)
    if kernels is not None:
        libs["normlib-triton"] = kernels
    if impls is not None:
        unknown = set(impls) - set(IMPLS)
        if unknown:
            raise ValueError(f"unknown implementations {sorted(unknown)}; known: {IMPLS}")
        libs = {name: lib for name, lib in libs.items() if name == "torch" or name in impls}
    bandwidth = copy_bandwidth(device)
    results = []
    report = _provenance(device, size, repeats, rounds, allocator, bandwidth, libs, results)
    cases = [(op, shape, groups, dtype) for op, shape, groups in _cases(size, device) for dtype in dtypes
             if ops is None or op in ops]
    for op, shape, groups, dtype in tqdm(cases, desc="normlib.bench", disable=not progress):
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
        width = shape[-1] if op in ("layer_norm", "rms_norm") else (shape[1] if len(shape) > 1 else 1)
        params = {"w": torch.randn(width, device=device, dtype=dtype, requires_grad=True),
                  "b": torch.randn(width, device=device, dtype=dtype, requires_grad=True)}
        dy = torch.randn_like(x)
        torch._dynamo.reset()
        fns = {}
        for impl, lib in libs.items():
            if impl == "normlib-compiled":
                lib = NF if op == "dropout" else NM
                fns[impl] = torch.compile(lambda x, p, op=op, lib=lib, g=groups: _call(lib, op, x, p, g),
                                          fullgraph=True)
            else:
                fns[impl] = lambda x, p, lib=lib, op=op, g=groups: _call(lib, op, x, p, g)
            if op != "dropout":  # check before timing (dropout's masks differ by design)
                with torch.no_grad():
                    want = _call(TF, op, x, params, groups).float()
                    got = fns[impl](x, params).float()
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
                if not torch.allclose(got, want, atol=tol, rtol=tol):
                    raise AssertionError(f"{impl} {op} {shape} {dtype} disagrees with torch")
        leaves = [x] + {"dropout": [], "rms_norm": [params["w"]]}.get(op, [params["w"], params["b"]])
        for mode in ("forward", "forward+backward"):
            steps = {impl: _step(fn, mode, x, params, leaves, dy) for impl, fn in fns.items()}
            for step in steps.values():
                step()  # warm-up, and compilation for the compiled variant
            runs = [compare(steps, device, rounds=rounds, min_run_time=min_run_time) for _ in range(repeats)]
            for impl in steps:
                runs_s = [run[impl].median_s for run in runs]
                median_s = statistics.median(runs_s)
                gbps = model_bytes(x.numel(), x.element_size(), mode) / median_s / 1e9
                row = {"op": op, "impl": impl, "mode": mode, "dtype": str(dtype).removeprefix("torch."),
                       "shape": list(shape), "allocator": allocator, "median_ms": median_s * 1e3,
                       "iqr_ms": runs[0][impl].iqr_s * 1e3, "runs_ms": [t * 1e3 for t in runs_s], "GBps": gbps,
                       "fraction_of_copy": gbps / bandwidth}
                if groups is not None:
                    row["groups"] = groups
                results.append(row)
        report["complete"] = (op, shape, groups, dtype) == cases[-1]
        _write(report, out)
    if not cases:
        _write(report, out)
    return report


def _provenance(device: torch.device, size: str, repeats: int, rounds: int, allocator: str, bandwidth: float,
                libs: dict, results: list) -> dict:
    """The report's header: where, with what and how the figures in ``results`` were measured."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "cpu": cpu_details(), "gpu": gpu_details(device) if device.type == "cuda" else None,
        "triton": triton_version,
        "triton_interpreted": "normlib-triton" in libs and device.type == "cpu",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "quick": size != "full",
        "size": size, "repeats": repeats,
        "byte_model": "forward: read x + write y; forward+backward: + read x, dy, write dx (5 x numel x bytes)",
        "copy_bandwidth_GBps": bandwidth,
        "compiled": "torch.compile(fullgraph=True) of normlib.manual (normlib.functional for dropout)",
        "timing": f"implementations of a case interleaved, {rounds} rounds; median over the rounds of each round's "
                  "median (normlib.lab.timing.compare)"
                  + ("; on CUDA, CUDA events around each call, the L2 cache flushed before each"
                     if device.type == "cuda" else ""),
        "allocators": {allocator: ALLOCATORS[allocator]},
        "complete": False,
        "results": results,
    }


def run_allocators(allocators: list[str], quick: bool = False, threads: int | None = None,
                   out: str | None = None, ops: list[str] | None = None, repeats: int = 1) -> dict:
    """The CPU suite ``repeats`` times per allocator setting, each run in a fresh process (the setting is
    process-wide and cannot be undone), the settings alternating; one report with all results.

    Each result row carries its setting, the per-run medians (``runs_ms``, in the order of the runs, so
    that two implementations' ratio can be taken run by run) and their median (``median_ms``). Separate
    runs are what shows how much a figure moves on a machine: within one process the rounds agree closely,
    but from one process to the next a case can change by tens of percent (where its buffers land in
    memory, what the rest of a shared host is doing).
    """
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for allocator in allocators:
                path = Path(tmp) / f"{allocator}-{repeat}.json"
                command = [sys.executable, "-m", "normlib.lab.bench", "--device", "cpu", "--allocator", allocator,
                           "--out", str(path), "--summary", "none"]
                command += ["--quick"] if quick else []
                command += ["--threads", str(threads)] if threads else []
                command += ["--ops", ",".join(ops)] if ops else []
                subprocess.run(command, check=True)
                reports.append(json.loads(path.read_text()))
    report = dict(reports[0])
    report["copy_bandwidth_GBps"] = statistics.median(r["copy_bandwidth_GBps"] for r in reports)
    report["allocators"] = {a: d for r in reports for a, d in r["allocators"].items()}
    report["repeats"] = repeats
    merged: dict[tuple, dict] = {}
    for r in reports:
        for row in r["results"]:
            key = (row["allocator"], row["op"], row["impl"], row["mode"], row["dtype"], tuple(row["shape"]),
                   row.get("groups"))
            merged.setdefault(key, {**row, "runs_ms": []})["runs_ms"].append(row["median_ms"])
    bandwidth = report["copy_bandwidth_GBps"]
    for row in merged.values():
        row["median_ms"] = statistics.median(row["runs_ms"])
        row.pop("iqr_ms", None)
        nbytes = model_bytes(math.prod(row["shape"]), torch.empty(0, dtype=getattr(torch, row["dtype"])).element_size(),
                             row["mode"])
        row["GBps"] = nbytes / (row["median_ms"] / 1e3) / 1e9
        row["fraction_of_copy"] = row["GBps"] / bandwidth
    report["results"] = list(merged.values())
    _write(report, out)
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m normlib.lab.bench [--quick | --tiny] [--device cuda] [--threads N] [--allocator both]
    [--repeats N] [--ops OPS] [--dtypes DTYPES] [--out FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m normlib.lab.bench", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (a few minutes on a laptop CPU)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes: checks that the suite runs (a dry run), times nothing worth keeping")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    parser.add_argument("--allocator", default="both", choices=("both", "default", "held"),
                        help="CPU: which allocator settings to run (default: both, each in its own process)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="whole runs of each case (CPU, both allocators: each in a fresh process; "
                             "otherwise in this process); the median is recorded (default: 1)")
    parser.add_argument("--ops", default=None, help="only these operations, comma-separated (default: all)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated, e.g. float32,bfloat16 (default: float32, and bfloat16 on a GPU)")
    parser.add_argument("--impls", default=None,
                        help=f"only these implementations, comma-separated, of {', '.join(IMPLS)} (default: all "
                             "that run on the device; torch always)")
    parser.add_argument("--min-run-time", type=float, default=0.1,
                        help="CPU: seconds each implementation is timed per round (default: 0.1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of interleaved timing per case and run (default: 5)")
    parser.add_argument("--out", default=None, help="where to write the JSON (default: print a summary only)")
    parser.add_argument("--summary", default="table", choices=("table", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    ops = args.ops.split(",") if args.ops else None
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")] if args.dtypes else None
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    if device.type == "cpu" and args.allocator == "both":
        if dtypes or args.tiny or args.impls or args.min_run_time != 0.1 or args.rounds != 5:
            parser.error("--dtypes, --tiny, --impls, --min-run-time and --rounds need one allocator setting "
                         "on the CPU (--allocator held)")
        report = run_allocators(["default", "held"], quick=args.quick, threads=args.threads, out=args.out, ops=ops,
                                repeats=args.repeats)
    else:
        allocator = None if args.allocator == "both" else args.allocator
        report = run(device=str(device), out=args.out, allocator=allocator, ops=ops, repeats=args.repeats,
                     dtypes=dtypes, size=size, impls=args.impls.split(",") if args.impls else None,
                     min_run_time=args.min_run_time, rounds=args.rounds)
    if args.summary == "none":
        return
    print(f"{report['device']}, torch {report['torch']}, copy bandwidth {report['copy_bandwidth_GBps']:.1f} GB/s")
    for r in report["results"]:
        case = f"{r['shape']}" + (f" G={r['groups']}" if "groups" in r else "")
        print(f"{r['op']:<14}{r['impl']:<18}{r['mode']:<18}{r['dtype']:<10}{r['allocator']:<9}{case:<26}"
              f"{r['median_ms']:>9.3f} ms {r['GBps']:>8.1f} GB/s {100 * r['fraction_of_copy']:>5.0f}% of copy")


if __name__ == "__main__":
    main()
