"""The benchmark suite, ``python -m normlib.lab.bench``: every norm, every implementation, one JSON file.

Implementations: ``torch`` (torch's native kernels), ``normlib`` (normlib.functional, eager, backward by
autograd), ``normlib-compiled`` (normlib.manual, the hand-derived backward, under
``torch.compile(fullgraph=True)``; compile time excluded; dropout has no hand-written backward and compiles
normlib.functional's) and, on a GPU, ``normlib-triton`` (normlib.kernels). Each is checked against torch
before it is timed. Forward+backward is one call of ``torch.autograd.grad`` for the input and the
parameters (no gradient accumulation into ``.grad``, which would add traffic of its own).
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as TF

from normlib import functional as NF
from normlib import manual as NM
from normlib.lab.timing import benchmark, copy_bandwidth, default_device, device_name, hold_freed_memory, model_bytes


def _cases(quick: bool, device: torch.device):
    """(op, shape, function name, extra arguments) for every case of the suite."""
    m = 1024 if quick else 4096
    widths = (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384)
    images = [(16, 64, 32, 32)] if quick else [(32, 64, 56, 56), (8, 256, 28, 28), (64, 32, 32, 32)]
    for n in widths:
        yield "layer_norm", (m, n)
        yield "rms_norm", (m, n)
    for shape in images:
        yield "batch_norm", shape
        yield "group_norm", shape
        yield "instance_norm", shape
    yield "dropout", (4 * 2**20,) if quick else (16 * 2**20,)


def _call(lib, op: str, x: torch.Tensor, params: dict):
    """Run ``op`` from ``lib`` (torch.nn.functional, normlib.functional or normlib.kernels) on ``x``."""
    if op in ("layer_norm", "rms_norm"):
        n = x.shape[-1]
        extra = (params["w"], params["b"]) if op == "layer_norm" else (params["w"],)
        return getattr(lib, op)(x, [n], *extra)
    if op == "batch_norm":
        return lib.batch_norm(x, None, None, params["w"], params["b"], True)
    if op == "group_norm":
        return lib.group_norm(x, 32 if x.shape[1] % 32 == 0 else 1, params["w"], params["b"])
    if op == "instance_norm":
        return lib.instance_norm(x, weight=params["w"], bias=params["b"])
    if op == "dropout":
        return lib.dropout(x, 0.5, True)
    raise ValueError(op)


RESULTS = Path(__file__).resolve().parent / "results"  # recorded runs, shipped with normlib.lab


def recorded() -> dict[str, dict]:
    """The committed benchmark results (``normlib/lab/results/*.json``), by file name without extension."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def run(quick: bool = False, device: str | None = None, out: str | None = None, progress: bool = True) -> dict:
    """Run the suite; write and return the results (see the module docstring)."""
    from tqdm import tqdm

    device = torch.device(device) if device else default_device()
    held = hold_freed_memory() if device.type == "cpu" else False
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    impls = {"torch": TF, "normlib": NF}
    if device.type == "cuda":
        from normlib import kernels

        impls["normlib-triton"] = kernels
    bandwidth = copy_bandwidth(device)
    results = []
    cases = [(op, shape, dtype) for op, shape in _cases(quick, device) for dtype in dtypes]
    for op, shape, dtype in tqdm(cases, desc="normlib.bench", disable=not progress):
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
        width = shape[-1] if op in ("layer_norm", "rms_norm") else (shape[1] if len(shape) > 1 else 1)
        params = {"w": torch.randn(width, device=device, dtype=dtype, requires_grad=True),
                  "b": torch.randn(width, device=device, dtype=dtype, requires_grad=True)}
        dy = torch.randn_like(x)
        variants = dict(impls)
        variants["normlib-compiled"] = None
        for impl, lib in variants.items():
            if impl == "normlib-compiled":
                torch._dynamo.reset()
                lib = NF if op == "dropout" else NM
                compiled = torch.compile(lambda x, p, op=op, lib=lib: _call(lib, op, x, p), fullgraph=True)

                def fn(x, p, compiled=compiled):
                    return compiled(x, p)
            else:
                def fn(x, p, lib=lib, op=op):
                    return _call(lib, op, x, p)
            if op != "dropout":  # check before timing (dropout's masks differ by design)
                with torch.no_grad():
                    want = _call(TF, op, x, params).float()
                    got = fn(x, params).float()
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
                if not torch.allclose(got, want, atol=tol, rtol=tol):
                    raise AssertionError(f"{impl} {op} {shape} disagrees with torch")
            for mode in ("forward", "forward+backward"):
                if mode == "forward":
                    def step(fn=fn, x=x, params=params):
                        with torch.no_grad():
                            fn(x, params)
                else:
                    leaves = [x] + {"dropout": [], "rms_norm": [params["w"]]}.get(op, [params["w"], params["b"]])

                    def step(fn=fn, x=x, params=params, dy=dy, leaves=leaves):
                        torch.autograd.grad(fn(x, params), leaves, dy)
                step()  # warm-up, and compilation for the compiled variant
                timing = benchmark(step, device)
                gbps = model_bytes(x.numel(), x.element_size(), mode) / timing.median_s / 1e9
                results.append({"op": op, "impl": impl, "mode": mode, "dtype": str(dtype).removeprefix("torch."),
                                "shape": list(shape), "median_ms": timing.median_s * 1e3, "iqr_ms": timing.iqr_s * 1e3,
                                "GBps": gbps, "fraction_of_copy": gbps / bandwidth})
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "triton": triton_version, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "quick": quick,
        "byte_model": "forward: read x + write y; forward+backward: + read x, dy, write dx (5 x numel x bytes)",
        "copy_bandwidth_GBps": bandwidth,
        "compiled": "torch.compile(fullgraph=True) of normlib.manual (normlib.functional for dropout)",
        "allocator": "glibc with freed memory held (normlib.lab.timing.hold_freed_memory)" if held else "default",
        "results": results,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m normlib.lab.bench [--quick] [--device cuda] [--threads N] [--out FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m normlib.lab.bench", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (a few minutes on a laptop CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    parser.add_argument("--out", default=None, help="where to write the JSON (default: print a summary only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(quick=args.quick, device=args.device, out=args.out)
    print(f"{report['device']}, torch {report['torch']}, copy bandwidth {report['copy_bandwidth_GBps']:.1f} GB/s, "
          f"allocator: {report['allocator']}")
    for r in report["results"]:
        print(f"{r['op']:<14}{r['impl']:<18}{r['mode']:<18}{r['dtype']:<10}{str(r['shape']):<22}"
              f"{r['median_ms']:>9.3f} ms {r['GBps']:>8.1f} GB/s {100 * r['fraction_of_copy']:>5.0f}% of copy")


if __name__ == "__main__":
    main()
