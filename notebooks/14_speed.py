# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How fast is a norm?
#
# A normalization layer does a handful of arithmetic operations per element: a few additions and
# multiplications for the statistics, one subtraction, one multiplication, maybe a fused multiply-add
# for $\gamma, \beta$. Modern processors do hundreds of those in the time it takes to fetch one element
# from memory, so a norm's speed is set by how many bytes it moves, not by how much it computes: it is
# **memory-bound**. This lesson makes that precise with a byte model, measures the memory bandwidth of
# the machine running it, and reads the benchmark results of `python -m normlib.lab.bench` against both.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import normlib
import normlib.lab.timing
from normlib import lab
from normlib.lab.timing import BYTES_PER_PASS, benchmark, copy_bandwidth, default_device, device_name, model_bytes

lab.seed_everything(0)

# %% [markdown]
# ## The byte model and the roofline
#
# The least traffic a norm can get away with: the forward reads $x$ once and writes $y$ once; the backward
# reads $x$ and $\partial L/\partial y$ and writes $\partial L/\partial x$. With $n$ elements of $b$ bytes:
#
# $$
# \text{forward: } 2nb \qquad\qquad \text{forward + backward: } (2 + 3)\,nb .
# $$
#
# (Parameters and per-set statistics are tiny by comparison. An implementation that reads $x$ twice,
# once for the statistics and once to normalize, moves more, unless the second read hits a cache.)
# The best possible time is then bytes / bandwidth, and the fraction of the bandwidth an implementation
# achieves is how close it gets to the roofline. For a `(4096, 4096)` float32 LayerNorm:

# %%
n, b = 4096 * 4096, 4
for mode, tensors in BYTES_PER_PASS.items():
    print(f"{mode:<17} moves at least {model_bytes(n, b, mode) / 2**20:6.0f} MiB ({tensors} x {n * b / 2**20:.0f} MiB)")

# %% [markdown]
# ## The bandwidth of this machine
#
# The reference point is a plain copy (`dst.copy_(src)`, reading and writing 256 MiB each), measured by
# `normlib.lab.timing.copy_bandwidth` on whatever device runs this notebook (the GPU when there is one).
# Timings vary from run to run, so this cell's output is not checked:

# %%
# NBVAL_IGNORE_OUTPUT
device = default_device()
live_bandwidth = copy_bandwidth(device)
print(f"{device_name(device)}: copy bandwidth {live_bandwidth:.1f} GB/s")

# %% [markdown]
# A live measurement of one case: LayerNorm forward and backward on `(4096, 4096)` float32, torch's
# kernel against normlib's eager composition of tensor ops (`normlib.functional`, backward by autograd) and
# `normlib.manual` (the hand-derived backward of lesson 11) under `torch.compile`. On the CPU we first ask
# glibc to keep freed memory (`normlib.lab.timing.hold_freed_memory`): otherwise every call that allocates a
# tensor over 32 MiB pays for fresh pages from the operating system, and we would be timing page faults.

# %%
# NBVAL_IGNORE_OUTPUT
if device.type == "cpu":
    normlib.lab.timing.hold_freed_memory()
x = torch.randn(4096, 4096, device=device, requires_grad=True)
w, bias = torch.ones(4096, device=device, requires_grad=True), torch.zeros(4096, device=device, requires_grad=True)
dy = torch.randn_like(x)
compiled = torch.compile(normlib.manual.layer_norm, fullgraph=True)
for name, fn in (("torch", torch.nn.functional.layer_norm), ("normlib", normlib.functional.layer_norm),
                 ("normlib compiled", compiled)):
    def step(fn=fn):
        return torch.autograd.grad(fn(x, [4096], w, bias), (x, w, bias), dy)

    step()  # warm-up (and compilation)
    t = benchmark(step, device)
    gbps = model_bytes(x.numel(), 4, "forward+backward") / t.median_s / 1e9
    print(f"{name:<17} {t}  {gbps:6.1f} GB/s = {100 * gbps / live_bandwidth:3.0f}% of copy")

# %% [markdown]
# ## Recorded results
#
# `python -m normlib.lab.bench --out FILE` runs the whole suite (LayerNorm and RMSNorm at 4096 rows and
# 1,024 to 16,384 columns; BatchNorm, GroupNorm and InstanceNorm on three image-shaped tensors; dropout;
# forward and forward+backward; every implementation checked against torch before it is timed) and
# writes every figure with the device, versions and date. The files in `book/data/bench/` are committed;
# the cells below only read them, so their output is checked like any other.

# %%
ROOT = Path("..") if Path("../book").is_dir() else Path(".")
reports = [json.loads(p.read_text()) for p in sorted((ROOT / "book" / "data" / "bench").glob("*.json"))]
for r in reports:
    print(f"{r['device']} | torch {r['torch']} | triton {r['triton']} | {r['date']} | "
          f"threads {r['threads']} | copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s | {len(r['results'])} figures")
    print(f"  compiled: {r['compiled']} | allocator: {r['allocator']}")

# %% [markdown]
# LayerNorm and RMSNorm, forward+backward, as a fraction of the copy bandwidth against the row width:

# %%
def select(report, **where):
    return [r for r in report["results"] if all(r[k] == v for k, v in where.items())]


fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
report = reports[0]
for ax, op in zip(axes, ("layer_norm", "rms_norm"), strict=True):
    for impl in ("torch", "normlib", "normlib-compiled", "normlib-triton"):
        rows = sorted(select(report, op=op, impl=impl, mode="forward+backward", dtype="float32"),
                      key=lambda r: r["shape"][1])
        if rows:
            ax.plot([r["shape"][1] for r in rows], [100 * r["fraction_of_copy"] for r in rows], marker="o", label=impl)
    ax.set(title=f"{op}, forward+backward, float32", xlabel="row width N", xscale="log")
    ax.set_xticks([1024, 2048, 4096, 8192, 16384], ["1k", "2k", "4k", "8k", "16k"])
    ax.minorticks_off()
axes[0].set_ylabel("% of copy bandwidth")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %%
print(f"{'op':<14}{'shape':<20}{'mode':<18}" + "".join(f"{i:>18}" for i in ("torch", "normlib", "normlib-compiled")))
for op in ("layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "dropout"):
    shapes = {tuple(r["shape"]) for r in select(report, op=op)}
    for shape in [max(shapes, key=lambda s: torch.Size(s).numel())]:  # the largest tensor of each op
        for mode in ("forward", "forward+backward"):
            cells = []
            for impl in ("torch", "normlib", "normlib-compiled"):
                rows = select(report, op=op, impl=impl, mode=mode, dtype="float32", shape=list(shape))
                cells.append(f"{rows[0]['median_ms']:8.2f} ms {100 * rows[0]['fraction_of_copy']:3.0f}%" if rows else "")
            print(f"{op:<14}{str(list(shape)):<20}{mode:<18}" + "".join(f"{c:>18}" for c in cells))

# %% [markdown]
# The CPU target this project set itself: compiled normlib, forward+backward, within 1.2x of torch's
# native kernels for LayerNorm, RMSNorm, BatchNorm and GroupNorm. Every recorded float32 shape, on every
# recorded CPU:

# %%
TARGET = 1.2
for report in (r for r in reports if r["device_type"] == "cpu"):
    print(report["device"])
    verdicts = []
    for op in ("layer_norm", "rms_norm", "batch_norm", "group_norm"):
        for shape in sorted({tuple(r["shape"]) for r in select(report, op=op)}):
            ms = {impl: select(report, op=op, impl=impl, mode="forward+backward", dtype="float32",
                               shape=list(shape))[0]["median_ms"] for impl in ("torch", "normlib-compiled")}
            ratio = ms["normlib-compiled"] / ms["torch"]
            verdicts.append(ratio <= TARGET)
            print(f"  {op:<12}{str(list(shape)):<20} torch {ms['torch']:8.2f} ms   compiled {ms['normlib-compiled']:8.2f} ms"
                  f"   {ratio:4.2f}x  {'meets' if ratio <= TARGET else 'misses'} the target")
    print(f"  {sum(verdicts)} of {len(verdicts)} shapes within {TARGET}x of torch")

# %% [markdown]
# How to read these numbers:
#
# - **Eager normlib is slow on the CPU**: each tensor op reads and writes the whole tensor, so a
#   composition of ten ops moves ten times the bytes of the model. That is the price of writing a norm
#   as tensor ops, and why libraries ship fused kernels.
# - **Compiling fuses the ops** into a few loops over memory, with no change to the code. The compiled
#   variant compiles `normlib.manual`, whose backward is written so that it compiles well: the sums the
#   backward needs are taken once per "cell" (per channel for BatchNorm, per sample and channel for
#   GroupNorm) and shared by $\partial L/\partial x$ and the parameter gradients, and the column sums of
#   LayerNorm's $\partial L/\partial\gamma$ are taken over blocks of rows, in the order memory is laid out.
# - **Where compiled normlib still trails torch**, it is mostly the backward moving more bytes than torch's
#   hand-fused CPU kernels: the compiler will not put a reduction along rows (the statistics) and one along
#   columns ($\partial L/\partial\gamma$) in the same loop, so it reads $x$ and $\partial L/\partial y$ twice.
# - **Dropout on the CPU** is bound by generating random numbers, not by memory: every implementation
#   draws one Bernoulli sample per element, and that dominates.
# - **Above 100% of copy** means the tensor fit in a cache: the copy was measured on 256 MiB, far larger
#   than any cache. The byte model is a floor for tensors that live in main memory.
# - **The GPU** is where the Triton kernels (`normlib.kernels`) matter; the suite times them as
#   `normlib-triton` when it runs on one. The recorded results listed above say which devices they
#   come from: run `python -m normlib.lab.bench --out book/data/bench/<device>.json` on a GPU to add its file.
#
# ## Exercises
#
# 1. Count the bytes moved by `normlib.functional.layer_norm` in eager mode, op by op. How close is the
#    measured time to that count divided by the copy bandwidth?
# 2. Why does `instance_norm` compiled reach higher GB/s than `batch_norm` on the same tensor? (Hint: where
#    are the elements of one set in memory?)
# 3. Run `python -m normlib.lab.bench --quick` with `--threads 1` and with all your cores. Which operations
#    scale with threads, and why do memory-bound operations stop scaling early?
