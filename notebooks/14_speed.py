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
# the machine running it, and reads the recorded results of the benchmark suite
# (`python -m normlib.lab.bench`) against both.

# %% tags=["remove-cell"]
# Run this lesson anywhere (Colab, a download): installs normlib when it is missing.
import importlib.util
import subprocess
import sys

# Where pip gets normlib: set by tools/lesson_header.py and in the site's downloads.
NORMLIB = None
if importlib.util.find_spec("normlib") is None:
    if NORMLIB is None:
        raise ModuleNotFoundError("normlib: pip install it from the book's repository")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", NORMLIB], check=True)
    importlib.invalidate_caches()

# %%
import matplotlib.pyplot as plt
import torch

import normlib
from normlib import lab
from normlib.lab import evidence, timing
from normlib.lab.bench import recorded
from normlib.lab.timing import BYTES_PER_PASS, model_bytes

lab.setup()

# %% [markdown]
# ## The byte model and the roofline
#
# The least traffic a norm can get away with: the forward reads $x$ once and writes $y$ once; the backward
# reads $x$ and $\partial L/\partial y$ and writes $\partial L/\partial x$. With $n$ elements of $b$ bytes:
#
# $$
# \begin{aligned}
# \text{forward: } & 2\,n b, \\
# \text{forward + backward: } & (2 + 3)\, n b .
# \end{aligned}
# $$
#
# (Parameters and per-set statistics are tiny by comparison. An implementation that reads $x$ twice,
# once for the statistics and once to normalize, moves more, unless the second read hits a cache.)
# The best possible time is then bytes / bandwidth, and the fraction of the bandwidth an implementation
# achieves is how close it gets to the roofline. For a `(4096, 4096)` float32 LayerNorm:

# %%
n, b = 4096 * 4096, 4
for mode, tensors in BYTES_PER_PASS.items():
    mib = model_bytes(n, b, mode) / 2**20
    print(f"{mode:<17} at least {mib:4.0f} MiB ({tensors} x {n * b / 2**20:.0f} MiB)")

# %% [markdown]
# ## The bandwidth of this machine
#
# The reference point is a plain copy (`dst.copy_(src)`, reading and writing 256 MiB each), measured by
# `normlib.lab.timing.copy_bandwidth` on whatever device runs this notebook (the GPU when there is one).
# On the CPU we first ask glibc to keep freed memory (`normlib.lab.timing.hold_freed_memory`):
# otherwise every call that allocates a tensor over 32 MiB pays for fresh pages from the operating
# system, and we would be timing page faults. Timings vary from run to run and machine to machine, so
# the output of the timing cells is not compared:

# %% tags=["nbval-ignore-output"]
device = timing.default_device()
if device.type == "cpu":
    timing.hold_freed_memory()
live_bandwidth = timing.copy_bandwidth(device)
print(f"{timing.device_name(device)}: copy bandwidth {live_bandwidth:.1f} GB/s")

# %% [markdown]
# A live measurement of one case: LayerNorm forward and backward on `(2048, 4096)` float32 (32 MiB per
# tensor, more than the caches of most CPUs), torch's kernel against normlib's eager composition of
# tensor ops (`normlib.functional`, backward by autograd) and `normlib.manual` (the hand-derived
# backward of the backprop lesson) under `torch.compile` (compilation excluded from the time; where
# `torch.compile` cannot build its code, on a machine without a C++ compiler for instance, the cell
# says so and goes on):

# %% tags=["nbval-ignore-output"]
x = torch.randn(2048, 4096, device=device, requires_grad=True)
w = torch.ones(4096, device=device, requires_grad=True)
bias = torch.zeros(4096, device=device, requires_grad=True)
dy = torch.randn_like(x)
compiled = torch.compile(normlib.manual.layer_norm, fullgraph=True)
variants = {"torch": torch.nn.functional.layer_norm,
            "normlib": normlib.functional.layer_norm, "normlib compiled": compiled}
for name, fn in variants.items():
    def step(fn=fn):
        return torch.autograd.grad(fn(x, [4096], w, bias), (x, w, bias), dy)

    try:
        step()  # warm-up (and compilation)
    except Exception as error:  # torch.compile needs a working C++ compiler on the CPU
        print(f"{name:<17} cannot run here ({type(error).__name__})")
        continue
    t = timing.benchmark(step, device)
    gbps = model_bytes(x.numel(), 4, "forward+backward") / t.median_s / 1e9
    print(f"{name:<17} {t.median_s * 1e3:7.2f} ms  {gbps:6.1f} GB/s"
          f" = {gbps / live_bandwidth:4.0%} of copy")

# %% [markdown]
# ## Recorded results
#
# `python -m normlib.lab.bench --out normlib/lab/results/NAME.json` runs the whole suite: LayerNorm and
# RMSNorm at 4096 rows and 1,024 to 16,384 columns; BatchNorm, GroupNorm and InstanceNorm on three
# image-shaped tensors; dropout; forward and forward+backward; every implementation checked against
# torch before it is timed. It writes every figure with the device, the versions and the date. The
# files in `normlib/lab/results/` ship with normlib and `normlib.lab.bench.recorded()` loads them, so
# the cells below need nothing but normlib; they only read the files, so their output is compared like
# any other. What was recorded, and where:

# %%
reports = recorded()
for name, r in reports.items():
    print(f"{name}: {r['device']}, {len(r['results'])} timings")
    print(f"  torch {r['torch']}, {r['date']}")
    print(f"  copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s")
    print(f"  allocator: {r['allocator']}")
cpu = next(r for r in reports.values() if r["device_type"] == "cpu")


def result(report, op, impl, mode, shape, dtype="float32"):
    """The one recorded result for this case."""
    case = (op, impl, mode, list(shape), dtype)
    [row] = [r for r in report["results"]
             if (r["op"], r["impl"], r["mode"], r["shape"], r["dtype"]) == case]
    return row


def shapes(report, op):
    return sorted({tuple(r["shape"]) for r in report["results"] if r["op"] == op},
                  key=lambda s: (len(s), s))


SHORT = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm", "batch_norm": "BatchNorm",
         "group_norm": "GroupNorm", "instance_norm": "InstanceNorm",
         "dropout": "Dropout"}


def label(op, shape):
    size = "x".join(map(str, shape)) if len(shape) > 1 else f"{shape[0] // 2**20}M"
    return f"{SHORT[op]} {size}"


# %% [markdown]
# LayerNorm and RMSNorm, forward+backward, as a fraction of the copy bandwidth against the row width:

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Recorded LayerNorm and RMSNorm forward+backward (float32, 4096 rows) on the CPU of the recorded results, as a fraction of that machine's copy bandwidth, for torch's kernels, eager normlib and compiled normlib.", "name": "fig-14-bandwidth"}, "image": {"alt": "Two line plots, LayerNorm and RMSNorm, of the percentage of copy bandwidth against the row width from 1k to 16k, one line per implementation."}}
IMPLS = {"torch": "torch", "normlib": "normlib (eager)",
         "normlib-compiled": "normlib compiled"}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), sharey=True)
for ax, op in zip(axes, ("layer_norm", "rms_norm"), strict=True):
    widths = [s[1] for s in shapes(cpu, op)]
    for impl, name in IMPLS.items():
        rows = [result(cpu, op, impl, "forward+backward", s) for s in shapes(cpu, op)]
        percent = [100 * r["fraction_of_copy"] for r in rows]
        ax.plot(widths, percent, marker="o", label=name)
    ax.set(title=SHORT[op], xlabel="row width", xscale="log")
    ax.set_xticks(widths, [f"{w // 1024}k" for w in widths])
    ax.minorticks_off()
axes[0].set_ylabel("% of copy bandwidth")
fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3,
           bbox_to_anchor=(0.5, 0.02))
fig.tight_layout()

# %% [markdown]
# Every case against torch, as the ratio of times (normlib / torch: below 1 is faster than torch),
# first forward+backward, then the forward alone:

# %%
def plot_ratios(report, mode):
    """One row per case: eager and compiled normlib's time over torch's (log scale)."""
    cases = [(op, s) for op in SHORT for s in shapes(report, op)]
    fig, ax = plt.subplots(figsize=(6, 5.6))
    ys = range(len(cases))[::-1]
    torch_ms = [result(report, op, "torch", mode, s)["median_ms"] for op, s in cases]
    styles = {"normlib": ("C1", "none"), "normlib-compiled": ("C2", "C2")}
    for impl, (color, fill) in styles.items():
        ratio = [result(report, op, impl, mode, s)["median_ms"] / t
                 for (op, s), t in zip(cases, torch_ms, strict=True)]
        ax.plot(ratio, ys, "o", color=color, mfc=fill, label=IMPLS[impl])
    ax.axvline(1.0, color="0.3", label="torch")
    ax.axvline(1.2, color="0.3", linestyle="--", label="1.2 x torch")
    ticks = [0.2, 0.5, 1, 2, 5, 10]
    ax.set(xscale="log", xlabel=f"{mode} time / torch's time", xlim=(0.1, 15))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(list(ys), [label(op, s) for op, s in cases])
    ax.grid(axis="y", color="0.9")
    ax.legend(loc="upper center", ncol=2, bbox_to_anchor=(0.4, -0.12))
    fig.tight_layout()


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Recorded forward+backward time of eager and compiled normlib relative to torch's kernels (float32) for every case of the suite on the recorded CPU, on a log scale. The solid line is torch's time, the dashed line 1.2 times it.", "name": "fig-14-ratio"}, "image": {"alt": "Dot plot with one row per case (LayerNorm and RMSNorm at five widths, BatchNorm, GroupNorm and InstanceNorm at three shapes, dropout) and the forward+backward time relative to torch on a logarithmic horizontal axis; open circles for eager normlib, filled circles for compiled normlib, a solid line at 1 and a dashed line at 1.2."}}
plot_ratios(cpu, "forward+backward")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The same for the forward pass alone.", "name": "fig-14-ratio-forward"}, "image": {"alt": "Dot plot with one row per case and the forward time of eager and compiled normlib relative to torch on a logarithmic horizontal axis, with a solid line at 1 and a dashed line at 1.2."}}
plot_ratios(cpu, "forward")

# %% [markdown]
# ## Compiled normlib against torch's kernels
#
# The goal for normlib on the CPU: compiled normlib, forward+backward, within 1.2x of torch's native
# kernels for LayerNorm, RMSNorm, BatchNorm and GroupNorm. A norm written from its formula as a few
# tensor ops should not have to be rewritten by hand to be usable: if the compiler gets within 20% of
# the hand-fused kernels, the code that explains the norm is also the code worth running. Every
# recorded float32 shape:

# %%
GOAL = 1.2
met = []
for op in ("layer_norm", "rms_norm", "batch_norm", "group_norm"):
    for s in shapes(cpu, op):
        ms = {impl: result(cpu, op, impl, "forward+backward", s)["median_ms"]
              for impl in ("torch", "normlib-compiled")}
        met.append((label(op, s), ms["normlib-compiled"] / ms["torch"]))
print(evidence.table(["forward+backward", "compiled / torch", f"within {GOAL}x"],
                     [[case, f"{ratio:.2f}", "yes" if ratio <= GOAL else "no"]
                      for case, ratio in met]))
within = sum(ratio <= GOAL for _, ratio in met)
print(f"{within} of {len(met)} cases within {GOAL}x of torch")

# %% [markdown]
# What the recorded results say, checked against the files each time the lesson runs (so the text
# below stays true of the results the package ships):

# %%
def ratios(op, impl, mode):
    return [result(cpu, op, impl, mode, s)["median_ms"]
            / result(cpu, op, "torch", mode, s)["median_ms"] for s in shapes(cpu, op)]


fused_ops = ("layer_norm", "group_norm")
all_ops = [op for op in SHORT if op != "dropout"]
slowest = min(min(ratios(op, "normlib", "forward+backward")) for op in fused_ops)
evidence.claim("eager normlib takes over 3x torch's time for LayerNorm and GroupNorm, "
               "forward+backward", slowest, ">", 3)
evidence.claim("compiling makes normlib faster than eager in every case but dropout",
               max(c / e for op in all_ops for mode in BYTES_PER_PASS
                   for c, e in zip(ratios(op, "normlib-compiled", mode),
                                   ratios(op, "normlib", mode), strict=True)), "<", 1)
evidence.claim("compiled RMSNorm and BatchNorm meet the goal at every shape",
               max(max(ratios(op, "normlib-compiled", "forward+backward"))
                   for op in ("rms_norm", "batch_norm")), "<", GOAL)
evidence.claim("eager RMSNorm's forward is within 1.3x of torch's at every width",
               max(ratios("rms_norm", "normlib", "forward")), "<", 1.3)
evidence.claim("compiled LayerNorm's forward is within 1.2x of torch at every width",
               max(ratios("layer_norm", "normlib-compiled", "forward")), "<", GOAL)
dropout = [r["fraction_of_copy"] for r in cpu["results"] if r["op"] == "dropout"]
evidence.claim("every dropout reaches under a tenth of the copy bandwidth",
                   max(dropout), "<", 0.1)

# %% [markdown]
# How to read these numbers:
#
# - **The goal is met at every shape of RMSNorm and BatchNorm**, and missed at some shapes of
#   LayerNorm and GroupNorm: the table above lists which.
# - **Eager normlib is slow where torch has a fused kernel**: each tensor op reads and writes the whole
#   tensor, so a composition of ten ops moves several times the bytes of the model. That is the price of
#   writing a norm as tensor ops, and why libraries ship fused kernels. Where eager normlib keeps up,
#   as in RMSNorm's forward, torch's own CPU path is not much more fused than normlib's.
# - **Compiling fuses the ops** into a few loops over memory, with no change to the code. The compiled
#   variant compiles `normlib.manual`, whose backward is written so that it compiles well: the sums the
#   backward needs are taken once per "cell" (per channel for BatchNorm, per sample and channel for
#   GroupNorm) and shared by $\partial L/\partial x$ and the parameter gradients, and the column sums of
#   LayerNorm's $\partial L/\partial\gamma$ are taken over blocks of rows, in the order memory is laid out.
# - **Where compiled LayerNorm trails torch, it is in the backward**: its forward is within the goal at
#   every width. The backward needs a reduction along rows (the statistics' gradient) and one along
#   columns ($\partial L/\partial\gamma$); torch's hand-fused CPU kernel does both in one pass over
#   memory, while the compiler will not put them in the same loop, so it reads $x$ and
#   $\partial L/\partial y$ twice.
# - **Dropout on the CPU** is bound by generating random numbers, not by memory: every implementation
#   draws one random number per element, and that dominates.
# - **Above 100% of copy** means the tensor fit in a cache: the copy was measured on 256 MiB, far larger
#   than any cache. The byte model is a floor for tensors that live in main memory.
# - **The GPU** is where the Triton kernels (`normlib.kernels`) matter; the suite times them as
#   `normlib-triton` when it runs on one. The recorded results listed above say which devices they come
#   from: run `python -m normlib.lab.bench --out normlib/lab/results/NAME.json` on a GPU to add its file.
#
# ## Exercises
#
# 1. Count the bytes moved by `normlib.functional.layer_norm` in eager mode, op by op. How close is the
#    measured time to that count divided by the copy bandwidth?
# 2. Compare compiled `instance_norm` and `batch_norm` on the same tensors in the recorded results.
#    Which moves its bytes faster, and why? (Hint: where are the elements of one set in memory?)
# 3. Run `python -m normlib.lab.bench --quick` with `--threads 1` and with all your cores. Which
#    operations scale with threads, and why do memory-bound operations stop scaling early?
