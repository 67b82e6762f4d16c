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
# # Writing the fused kernel
#
# The speed lesson ended with an argument: a norm is memory-bound, so the fastest implementation reads
# $x$ once and writes $y$ once, and every extra pass over memory costs time. `normlib.kernels` is that
# argument written down: Triton {cite}`tillet2019triton` kernels for LayerNorm, RMSNorm, GroupNorm,
# BatchNorm and Dropout, forward and backward. Triton's own fused LayerNorm tutorial
# {cite}`triton-layernorm-tutorial` shows the forward and backward of one norm on a GPU; this lesson
# reads normlib's kernels as they stand in the library, runs each of them here against
# `normlib.functional` and torch, and counts the bytes each one moves.
#
# A Triton kernel is a Python function that one *program* runs; the launch says how many programs run,
# and `tl.program_id(0)` tells a program which one it is. Inside, `tl.arange`, `tl.load`, `tl.store`
# and `tl.sum` work on blocks of values held in registers. On a GPU the programs run in parallel, and
# each block is spread over the threads of a thread block. Without a GPU, Triton's **interpreter**
# (`TRITON_INTERPRET=1`) runs the same kernel code on CPU tensors, one program after the other, with
# NumPy: slow, but the arithmetic is the kernel's own, which is what the checks below need.

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

# %% [markdown]
# The interpreter has to be switched on before Triton compiles anything, that is before `normlib.kernels`
# is imported (its `@triton.jit` decorators read the setting). With a GPU we leave it off, and the same
# cells run the compiled kernels on the GPU:

# %%
import inspect
import os
import re
import textwrap

import matplotlib.pyplot as plt
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before normlib.kernels is imported

import normlib.functional as NF  # noqa: E402
from normlib import kernels, lab  # noqa: E402
from normlib.lab import timing  # noqa: E402
from normlib.lab.bench import recorded  # noqa: E402

lab.setup()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
TF = torch.nn.functional
print("the kernels run", "compiled, on the GPU" if ON_GPU
      else "in Triton's interpreter, on the CPU")


def show(fn, width=88):
    """Print a function's source as it stands in normlib, rewrapped to the page: lines
    continued after a comma joined, then broken at commas; an inline comment that does
    not fit goes above its line."""
    source = re.sub(r",\n\s+", ", ", inspect.getsource(getattr(fn, "fn", fn)))
    for line in source.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        code, _, comment = line.partition("  # ")
        if len(line) > width and code.strip() and comment:
            print(textwrap.fill(comment, width, initial_indent=indent + "# ",
                                subsequent_indent=indent + "# "))
            line = code
        if line.lstrip().startswith("#"):
            print(textwrap.fill(line.lstrip()[2:], width, initial_indent=indent + "# ",
                                subsequent_indent=indent + "# "))
            continue
        while len(line) > width and ", " in line[:width]:
            cut = line.rindex(", ", 0, width) + 1
            print(line[:cut])
            line = indent + "    " + line[cut:].lstrip()
        print(line)


# %% [markdown]
# ## The row kernel: LayerNorm and RMSNorm
#
# LayerNorm and RMSNorm normalize each row of an `(M, N)` view of the input. The kernel runs one program
# per row and holds the whole row in registers: a block of `BLOCK` values, the next power of two at or
# above $N$, with a mask switching off the columns past the end of the row (a *ragged* row). Having read
# the row once, it computes the mean and $1/\sigma$ from the registers, normalizes, applies
# $\gamma, \beta$ and writes $y$: one read of $x$, one write of $y$, the byte model's minimum. The
# statistics are accumulated in float32 (`ACC`; float64 for float64 input), whatever the input's dtype.
#
# One detail is the first lesson's numerics: the moments are taken of $x - K$, with $K$ the row's first
# element. It changes nothing in exact arithmetic, keeps the sums small when a row sits far from zero,
# and makes a constant row exact: every $x - K$ is $0$, so the mean is exactly $K$ and the normalized
# row exactly zero. `CENTER` is False for RMSNorm, which uses no mean. The kernel, as `normlib/kernels.py`
# has it:

# %%
show(kernels._row_fwd)

# %% [markdown]
# It is launched with one program per row, `_row_fwd[(rows,)](x, y, weight, bias, mean, rstd, ...)`,
# and saves `mean` and `rstd` (one number per row each) for the backward.
#
# ## The backward: the compact formula, and column sums as partial sums
#
# The backprop lesson derived LayerNorm's backward in one line. With $g = \gamma \odot \partial L/\partial y$
# and $\hat{x}$ the normalized row of $N$ values,
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial x} &= \frac{1}{\sigma}\Big(g - \overline{g} - \hat{x}\,\overline{g\hat{x}}\Big),\\
# \frac{\partial L}{\partial \gamma} &= \sum_{\text{rows}} \frac{\partial L}{\partial y} \odot \hat{x}, \qquad
# \frac{\partial L}{\partial \beta} = \sum_{\text{rows}} \frac{\partial L}{\partial y},
# \end{aligned}
# $$
#
# where the bars are means over the row (RMSNorm drops the $\overline{g}$ term). $\partial L/\partial x$
# is a row computation like the forward: read $x$ and $\partial L/\partial y$, write
# $\partial L/\partial x$. The parameter gradients are not: they are sums *down the columns*, over every
# row. One program per row cannot add its row into $\partial L/\partial\gamma$ directly, since all the
# programs would write to the same $N$ numbers at once (atomic additions would work, in an order that
# changes from run to run; Triton's tutorial takes a lock on a few shared buffers). normlib's backward runs
# a fixed number $P$ of programs instead, four per multiprocessor on a GPU (four on the CPU). Program $p$
# takes rows $p, p + P, p + 2P, \dots$, keeps its own running $\partial\gamma, \partial\beta$ in
# registers, and writes them once, as row $p$ of a $(P, N)$ float32 buffer; torch then adds up the $P$
# rows. Nothing is shared between programs, and the result is the same on every run:

# %%
show(kernels._row_bwd)

# %% [markdown]
# ## Run it here: the row kernels against normlib.functional and torch
#
# Each check below runs the kernel forward and backward on small inputs and compares its output and its
# gradients (of $x$, $\gamma$ and $\beta$) with `normlib.functional` and with torch, in float32 and in
# float64. The rows have 37 columns (a ragged row: `BLOCK` is 64, so 27 columns are masked off), sit far
# from zero (mean 5), and one of them is constant:

# %%
def inputs(shape, dtype, params=2, constant=None):
    """x (with one constant row or channel where asked) and the parameters, seeded."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype) * 3 + 5
    if constant is not None:
        x[constant] = 4.25
    width = shape[-1] if len(shape) == 2 else shape[1]
    ps = [torch.randn(width, dtype=dtype) for _ in range(params)]
    return [t.to(DEVICE).requires_grad_() for t in (x, *ps)]


def forward_backward(fn, tensors):
    """fn's output and the gradients of all its inputs, for a fixed seeded dy."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    y.backward(dy.to(y.device))
    return [y] + [t.grad for t in leaves]


def check(name, call, tensors, others=(("normlib", NF), ("torch", TF))):
    """The kernel's output and gradients against normlib.functional's and torch's, each
    relative to its largest value (a gradient summed over rows is large), in one line."""
    atol = 1e-12 if tensors[0].dtype == torch.float64 else 1e-4
    ours = forward_backward(lambda *t: call(kernels, *t), tensors)
    what = ", ".join(["y", "dx", "dgamma", "dbeta"][:len(ours)])
    for other, lib in others:
        theirs = forward_backward(lambda *t, lib=lib: call(lib, *t), tensors)
        scales = [max(b.abs().max().item(), 1.0) for b in theirs]
        got = torch.cat([(a / s).flatten() for a, s in zip(ours, scales, strict=True)])
        want = torch.cat([(b / s).flatten()
                          for b, s in zip(theirs, scales, strict=True)])
        print(lab.cmp(f"{name} vs {other}: {what}", got, want, atol=atol))


for dtype in (torch.float32, torch.float64):
    tag = "f32" if dtype == torch.float32 else "f64"
    x, w, b = inputs((6, 37), dtype, constant=2)
    check(f"LayerNorm {tag}", lambda lib, x, w, b: lib.layer_norm(x, [37], w, b),
          [x, w, b])
    check(f"RMSNorm {tag}", lambda lib, x, w: lib.rms_norm(x, [37], w), [x, w])

# %% [markdown]
# (In float32 the tolerance is $10^{-4}$ of the largest value: torch's float32 LayerNorm is not exact
# on the constant row, where $1/\sigma = 1/\sqrt{\epsilon} \approx 316$ magnifies the last bit of its
# mean, and its $\partial L/\partial\gamma$ carries that.) And the constant row, exactly: its normalized values are zero, so LayerNorm's output there is
# $\beta$ bit for bit, and the row's mean is exactly the constant:

# %%
x, w, b = inputs((6, 37), torch.float32, constant=2)
with torch.no_grad():
    y = kernels.layer_norm(x, [37], w, b)
print(lab.cmp("constant row: y == beta", y[2], b, atol=0))
print(lab.cmp("constant row: y == beta (normlib)",
              NF.layer_norm(x, [37], w, b)[2].detach(), b, atol=0))

# %% [markdown]
# ## The set kernel: GroupNorm and BatchNorm
#
# GroupNorm and BatchNorm normalize *sets* that are not rows. In an `(N, C, H, W)` tensor, GroupNorm's set
# for sample $n$ and group $g$ is $C/G$ channels of $H W$ values each, and since a sample's channels are
# stored one after the other, that is one contiguous run of memory. BatchNorm's set for channel $c$ is
# the $H W$ values of that channel in every sample: $N$ runs of $H W$ contiguous values, $C H W$ apart.
# Both are the same shape of thing: a set made of $A$ *slabs* of $L$ contiguous values, the slabs a
# fixed stride apart. The set kernel runs one program per set, visits each slab in chunks of `BLOCK`
# values (at most 1024), so that a set of any size works, and sweeps the set three times: the mean
# (of $x - K$ again, $K$ the set's first element), the variance (squared deviations from that mean:
# the two-pass algorithm of the first lesson), and normalize-and-write:

# %%
show(kernels._set_fwd)

# %% [markdown]
# The wrappers only say where the slabs are: `(sets, A, L, set stride, slab stride, ...)`. For a small
# `(2, 6, 3, 5)` tensor, the offsets the kernel visits for each set are exactly the elements of the set
# as the formulas define it:

# %%
n, c, h, w_ = 2, 6, 3, 5
flat = torch.arange(n * c * h * w_).reshape(n, c, h, w_)
groups = 3
# sets, A (slabs), L (slab length), set stride, slab stride: as in normlib.kernels
layouts = {
    "GroupNorm G=3": (n * groups, c // groups, h * w_, c // groups * h * w_, h * w_),
    "BatchNorm": (c, n, h * w_, h * w_, c * h * w_),
}
for name, (sets, A, L, base_mul, outer) in layouts.items():
    visited = [sorted(s * base_mul + a * outer + i for a in range(A) for i in range(L))
               for s in range(sets)]
    if name == "BatchNorm":
        want = [sorted(flat[:, s].flatten().tolist()) for s in range(sets)]
    else:
        want = [sorted(flat[s // groups, s % groups * (c // groups):][:c // groups]
                       .flatten().tolist()) for s in range(sets)]
    print(f"{name:<14} {sets} sets of {A} slabs x {L} values:",
          "the sets' elements" if visited == want else "WRONG elements")

# %% [markdown]
# The backward kernel takes the same slabs: one sweep for the two sums the compact formula needs
# ($\sum g$ and $\sum g\hat{x}$) together with each channel's part of $\partial\gamma, \partial\beta$
# (again written as partial sums, one per set and channel, added up afterwards: per channel over the
# samples for GroupNorm, over the slabs for BatchNorm), and one sweep to write $\partial L/\partial x$:

# %%
show(kernels._set_bwd)

# %% [markdown]
# The checks, forward and backward, in float32 and float64: GroupNorm with 4 groups on a set of
# $2 \times 33 \times 33 = 2178$ values (three chunks of the 1024-value block, the last one ragged), one
# constant channel; BatchNorm with running statistics, whose update must match too:

# %%
for dtype in (torch.float32, torch.float64):
    tag = "f32" if dtype == torch.float32 else "f64"
    x, w, b = inputs((2, 8, 33, 33), dtype, constant=(slice(None), 3))
    check(f"GroupNorm {tag}", lambda lib, x, w, b: lib.group_norm(x, 4, w, b), [x, w, b])
    running = {}

    def bn(lib, x, w, b, running=running, dtype=dtype):
        stats = running.setdefault(lib.__name__,
                                   (torch.zeros(8, dtype=dtype, device=DEVICE),
                                    torch.ones(8, dtype=dtype, device=DEVICE)))
        return lib.batch_norm(x, *stats, w, b, training=True, momentum=0.3)

    check(f"BatchNorm {tag}", bn, [x, w, b])
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for i, stat in enumerate(("running_mean", "running_var")):
        print(lab.cmp(f"BatchNorm {tag} {stat} vs torch",
                      running[kernels.__name__][i], running[TF.__name__][i], atol=atol))

# %% [markdown]
# ## Dropout without a stored mask
#
# Dropout keeps each value with probability $1 - p$ and scales it by $1/(1-p)$. torch draws the mask
# in the forward and keeps it for the backward, which multiplies $\partial L/\partial y$ by the same
# mask. normlib's kernel keeps a *seed* instead (one integer): `tl.rand(seed, offsets)` gives the same
# random number for the same seed and element index every time (a counter-based generator, Philox), so
# the backward draws the mask again. Dropout is linear and its own transpose, so the backward is the very
# same kernel, applied to $\partial L/\partial y$:

# %%
show(kernels._dropout_kernel)
print()
show(kernels._Dropout)

# %% [markdown]
# That the regenerated mask is the forward's: every gradient is zero exactly where the output was
# dropped, and $1/(1-p)$ elsewhere:

# %%
torch.manual_seed(0)
x = torch.randn(10_000, device=DEVICE, requires_grad=True)
y = kernels.dropout(x, 0.3)
y.backward(torch.ones_like(y))
dropped = y == 0
print(f"dropped {dropped.float().mean().item():.1%} of 10,000 values at p = 0.3")
print(lab.cmp("gradient zero where dropped", (x.grad == 0).float(), dropped.float(),
              atol=0))
print(lab.cmp("kept: y = x / 0.7", y[~dropped], x[~dropped] / 0.7, atol=1e-6))

# %% [markdown]
# What that saves is counted, not estimated: autograd's `saved_tensors_hooks` see every tensor a
# function keeps for its backward. torch's dropout keeps its mask, here on the CPU a scaled mask in the
# input's dtype (on a GPU, `torch.native_dropout`'s mask of one byte per value); normlib's kernel keeps
# nothing:

# %%
def saved_bytes(fn, x):
    """Bytes of the tensors autograd keeps for fn's backward."""
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: sizes.append(t.numel() * t.element_size()) or t, lambda t: t):
        fn(x)
    return sum(sizes)


x = torch.randn(2**16, device=DEVICE, requires_grad=True)
print(f"x: {x.numel() * x.element_size():,} bytes")
for name, fn in (("torch", lambda x: TF.dropout(x, 0.3, True)),
                 ("normlib.kernels", lambda x: kernels.dropout(x, 0.3))):
    print(f"{name:<16} keeps {saved_bytes(fn, x):>9,} bytes for the backward")

# %% [markdown]
# The mask costs memory held from the forward to the backward (in a network, one per dropout layer),
# and traffic: it is written once and read once. With $n$ values of $b$ bytes and a mask of $m$ bytes
# per value, torch's dropout moves $2nb + nm$ in the forward and as much in the backward; the
# regenerated mask moves $2nb$ each way. For float32 and a one-byte mask, that is $8n$ bytes instead
# of $9n$ each way, and no mask in memory at all.
#
# ## The byte model, kernel by kernel
#
# The speed lesson's byte model counts the least traffic a norm needs: the forward reads $x$ and writes
# $y$ (2 tensors), the backward reads $x$ and $\partial L/\partial y$ and writes
# $\partial L/\partial x$ (3). What the kernels above move can be read off their source: each `tl.load`
# or `tl.store` of a whole block of $x$, $y$, $\partial L/\partial y$ or $\partial L/\partial x$
# (offsets `cols`, `idx` or `offs`) is one pass over that tensor; the scalar loads of a row's first
# element or of its statistics are not. Counted by code:

# %%
TENSOR_ACCESS = re.compile(r"tl\.(load|store)\((X|Y|DY|DX) \+ [^,]*\b(cols|idx|offs)\b")


def passes(kernel):
    """Whole-tensor loads and stores in a kernel's source: its passes over memory."""
    return len(TENSOR_ACCESS.findall(inspect.getsource(kernel.fn)))


kernel_passes = {  # (forward, backward) of each operation, counted in its kernels
    "LayerNorm, RMSNorm": (passes(kernels._row_fwd), passes(kernels._row_bwd)),
    "GroupNorm, BatchNorm": (passes(kernels._set_fwd), passes(kernels._set_bwd)),
    "Dropout": (passes(kernels._dropout_kernel), passes(kernels._dropout_kernel)),
}
floor = {"LayerNorm, RMSNorm": (2, 3), "GroupNorm, BatchNorm": (2, 3), "Dropout": (2, 2)}
print(f"{'':<21}{'kernel':>14}{'floor':>14}   (passes: forward, backward)")
for op, (fwd, bwd) in kernel_passes.items():
    print(f"{op:<21}{fwd:>10}, {bwd:<3}{floor[op][0]:>10}, {floor[op][1]}")

# %% [markdown]
# - **The row kernels meet the floor**: two passes forward, three backward. The partial sums add a
#   $(P, N)$ float32 buffer for each of $\partial\gamma$ and $\partial\beta$, written by the kernel and
#   read by the sum: $4 \cdot 4PN$ bytes. With $P = 4 \times 132 = 528$ programs (an H100 SXM has 132
#   multiprocessors {cite}`nvidia2022h100`) and $M = 4096$ rows that is $528/4096$ of a tensor for each of the four accesses, half
#   a pass in float32 and a whole pass in bfloat16 (computed below): the price of avoiding atomics, and
#   the place to look first if the backward falls short of the bandwidth.
# - **The set kernels read $x$ three times in the forward** (the mean, the variance, the output), and
#   $x$ and $\partial L/\partial y$ twice in the backward. These are passes over one set at a time: a set
#   of 25,088 float32 values (a GroupNorm group, 8 groups, of a `(32, 64, 56, 56)` input: 100 KB) can
#   still be in the GPU's L2 cache when it is read again, so the model's count is the most they move, not what they
#   must move. Welford's algorithm {cite}`welford1962note` would fold the first two sweeps into one (an
#   exercise).
# - **Dropout** meets its floor, which is lower than a norm's: its backward needs only
#   $\partial L/\partial y$ in and $\partial L/\partial x$ out, with the mask regenerated.
#
# The speed lesson found the same accounting for the compiled formula on the CPU: compiled LayerNorm's
# backward reads $x$ and $\partial L/\partial y$ twice, five passes where the fused kernel needs three.
# In bytes, for the suite's largest LayerNorm, `(4096, 16384)`:

# %%
M, N = 4096, 16384
P = 4 * 132
for dtype, size in (("float32", 4), ("bfloat16", 2)):
    tensor = M * N * size
    # dgamma and dbeta partials, float32: written, then read by the sum
    partials = 4 * 4 * P * N
    print(f"{dtype:<9} one tensor {tensor / 2**20:5.0f} MiB; backward partial sums "
          f"{partials / 2**20:4.0f} MiB = {partials / tensor:.2f} of a tensor")

# %% [markdown]
# ## What the model predicts on a GPU
#
# The byte model turns into a time once a bandwidth is known: time $\ge$ bytes / bandwidth. The speed
# lesson measures bandwidth as a device-to-device copy, which is what a memory-bound kernel can hope to
# reach. An H100 SXM's memory is specified at 3.35 TB/s {cite}`nvidia2022h100`, which a copy does not
# quite reach; the recorded GPU results below carry the copy bandwidth measured with them. The floor for
# the suite's LayerNorm cases, float32, at a bandwidth of 3.35 TB/s:

# %%
SPEC_GBPS = 3350  # H100 SXM memory bandwidth, datasheet


def floor_ms(numel, size, tensors, gbps):
    return tensors * numel * size / (gbps * 1e9) * 1e3


for width in (1024, 4096, 16384):
    fwd = floor_ms(4096 * width, 4, 2, SPEC_GBPS)
    fwd_bwd = floor_ms(4096 * width, 4, 5, SPEC_GBPS)
    print(f"LayerNorm (4096, {width:>5}) float32: forward >= {fwd:.3f} ms,"
          f" forward+backward >= {fwd_bwd:.3f} ms")

# %% [markdown]
# At `(4096, 16384)` the forward moves 512 MiB, so no kernel can take less than 0.160 ms on that memory.
#
# ## Timing
#
# On a GPU, the cell below times the kernels against torch on the benchmark suite's quick LayerNorm,
# GroupNorm and Dropout cases (`normlib.lab.bench`, with CUDA events and the L2 cache flushed before each
# call), each checked against torch first. In the interpreter a time would measure NumPy running one
# program after another, so on the CPU the cell says so and times nothing:

# %% tags=["nbval-ignore-output"]
if ON_GPU:
    from normlib.lab import bench

    live = bench.run(device="cuda", size="quick",
                     ops=["layer_norm", "group_norm", "dropout"],
                     dtypes=[torch.float32], impls=["normlib-triton"], progress=False)
    print(f"{live['device']}: copy bandwidth {live['copy_bandwidth_GBps']:.0f} GB/s")
    for r in live["results"]:
        print(f"{r['op']:<11} {str(r['shape']):<15} {r['mode']:<17} {r['impl']:<15}"
              f"{r['median_ms']:8.3f} ms {r['fraction_of_copy']:5.0%} of copy")
else:
    print(f"{timing.device_name(DEVICE)}: no GPU here, nothing is timed "
          "(the interpreter is not a speed).")

# %% [markdown]
# The benchmark suite's recorded files ship with normlib (`normlib.lab.bench.recorded()`). A GPU's file
# (written by `python tools/gpu_run.py`, which first runs the kernel tests on the GPU) holds every norm
# and Dropout, float32 and bfloat16, forward and forward+backward, for torch and for normlib eager,
# compiled and Triton. What is recorded:

# %%
gpu_reports = {name: r for name, r in recorded().items() if r["device_type"] == "cuda"}
for name, r in gpu_reports.items():
    gpu = r.get("gpu") or {}
    print(f"{name}: {r['device']}, driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}, "
          f"torch {r['torch']}, triton {r['triton']}, {r['date']}")
if not gpu_reports:
    print("No GPU result is recorded yet: the files that ship with normlib come "
          "from CPUs,")
    print("which do not run the Triton kernels. The plot below appears once a "
          "GPU's file is.")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Recorded forward+backward of torch and of normlib's Triton kernels on a GPU, as a fraction of the copy bandwidth measured in the same run, for every case of the suite in float32 and bfloat16 (median of the runs).", "name": "fig-19-gpu"}, "image": {"alt": "A dot plot with one row per case of the benchmark suite and the percentage of copy bandwidth on the horizontal axis, squares for torch and circles for the Triton kernels, in float32 and bfloat16."}}
for r in gpu_reports.values():
    rows = [x for x in r["results"] if x["mode"] == "forward+backward"
            and x["impl"] in ("torch", "normlib-triton")]
    cases = sorted({(x["op"], tuple(x["shape"]), x.get("groups"), x["dtype"])
                    for x in rows})
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(cases) + 1.2))
    for impl, marker in (("torch", "s"), ("normlib-triton", "o")):
        got = {(x["op"], tuple(x["shape"]), x.get("groups"), x["dtype"]): x
               for x in rows if x["impl"] == impl}
        ax.plot([100 * got[c]["fraction_of_copy"] for c in cases], range(len(cases)),
                marker, mfc="none", label=impl)
    ax.set_yticks(range(len(cases)),
                  [f"{op} {'x'.join(map(str, s))}{f' G={g}' if g else ''} {d}"
                   for op, s, g, d in cases], fontsize=7)
    ax.set(xlabel="% of copy bandwidth", title=f"{r['device']}, forward+backward")
    ax.legend(loc="lower right")
    fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# 1. **Fuse a residual add.** Transformers compute `layer_norm(x + residual)` and keep `x + residual` for
#    the next block. Add a `R` pointer to `_row_fwd` that is loaded and added to `x` before the
#    statistics, and an output that stores the sum. Count the passes with `passes()`: what does the fused
#    kernel save over an add followed by the norm?
# 2. **RMSNorm's backward.** Derive $\partial L/\partial x$ for $y = \gamma \odot x / \mathrm{rms}(x)$ and
#    find the lines of `_row_bwd` with `CENTER` False that compute it. Why is there no $\overline{g}$
#    term?
# 3. **Welford in the set kernel.** Rewrite the first two sweeps of `_set_fwd` as one, merging the
#    chunks' counts, means and sums of squared deviations with Chan's formula {cite}`chan1983algorithms`.
#    How many passes does the forward make then, by `passes()`, and how many bytes does it save on the
#    suite's `(32, 64, 56, 56)` BatchNorm in float32?
# 4. **The partial sums.** Run the backward with $P$ = 1, 4 and 16 programs (change
#    `_backward_programs`) on a `(64, 37)` input. The gradients agree to rounding; which of them are
#    bit-for-bit the same, and why?
