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
# # Normalization in low precision
#
# Large models are trained in 16-bit floating point, float16 or bfloat16, with float32 kept where
# precision matters {cite}`micikevicius2018mixed`. A norm is one of those places: it sums hundreds or
# thousands of values, subtracts two nearly equal numbers, and divides by a small one. This lesson
# finds where the statistics go wrong and why the cure is to compute them in float32; what $\epsilon$
# should be when the input is 16-bit; what `torch.autocast` does with norms; and how far each
# normlib layer is from a float64 reference in each dtype, beside torch's.
#
# A floating-point number with a $p$-bit significand has a relative spacing of
# $\epsilon = 2^{1-p}$ (the dtype's `eps`), and each addition, multiplication or division is rounded
# to the nearest representable number, an error of at most half a spacing:
#
# $$
# \operatorname{fl}(a \circ b) = (a \circ b)(1 + \delta), \qquad |\delta| \le u = \epsilon / 2 .
# $$

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
import inspect
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import normlib
from normlib import functional as NF
from normlib import lab
from normlib.lab import evidence
from normlib.lab.numerics import (
    chunked_welford,
    exact_moments,
    merge,
    naive_moments,
    relative_error,
    two_pass_moments,
    welford,
)

lab.setup()

# What this lesson says about torch's own kernels (autocast's lists, eps=None, its 16-bit
# BatchNorm) describes torch 2.13 and is checked there; on another torch it is shown, not
# checked.
CHECKED_TORCH = "2.13"
SAME_TORCH = torch.__version__.split("+")[0].rsplit(".", 1)[0] == CHECKED_TORCH
if not SAME_TORCH:
    print(f"torch {torch.__version__}: the statements about torch's own kernels "
          f"describe torch {CHECKED_TORCH}; they are shown here, not checked")


def torch_claim(*args, **kwargs):
    """A claim about torch's own kernels: checked on the torch the text describes."""
    if SAME_TORCH:
        evidence.claim(*args, **kwargs)


# %% [markdown]
# The three formats, as `torch.finfo` describes them ($p$: significant bits):

# %%
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def name(dtype):
    return str(dtype).removeprefix("torch.")


rows = []
for dtype in DTYPES:
    fi = torch.finfo(dtype)
    rows.append([name(dtype), fi.bits, round(-math.log2(fi.eps)) + 1, f"{fi.eps:.3g}",
                 f"{fi.max:.3g}", f"{fi.tiny:.3g}"])
print(evidence.table(["dtype", "bits", "p", "eps", "max", "smallest normal"], rows))

# %% [markdown]
# float16 has a fine spacing but a small range: nothing above 65504. bfloat16 has float32's range
# with only 8 significant bits, a spacing 8 times float16's. In both, an input with a large offset
# and a small spread loses detail as soon as it is stored, before any statistic is computed: near
# 1000 the spacing is 0.5 in float16 and 4 in bfloat16.

# %%
values = torch.tensor([1000.0, 1000.25, 1001.0, 1003.0])
for dtype in DTYPES:
    print(f"{name(dtype):<9} {values.to(dtype).tolist()}")

# %% [markdown]
# Everything below therefore measures an algorithm against the exact moments of the values the input
# *holds* in its dtype (`exact_moments`: float64 with exactly rounded sums), so that the error is
# the algorithm's, not the storage's.
#
# ## Three ways to compute a variance
#
# Over the $m$ values of one set $S$, the textbook formula, one pass over the data:
#
# $$
# \sigma^2 = \frac{1}{m}\sum_k x_k^2 - \Big(\frac{1}{m}\sum_k x_k\Big)^2 ;
# $$
#
# two passes, the mean first:
#
# $$
# \begin{aligned}
# \mu &= \frac{1}{m}\sum_k x_k, \\
# \sigma^2 &= \frac{1}{m}\sum_k (x_k - \mu)^2 ;
# \end{aligned}
# $$
#
# and Welford's single pass {cite}`welford1962note`, which updates a count $k$, a mean and the sum of
# squared deviations $M$ with each value:
#
# $$
# \begin{aligned}
# \delta &= x_k - \mu_{k-1}, \\
# \mu_k &= \mu_{k-1} + \delta / k, \\
# M_k &= M_{k-1} + \delta\,(x_k - \mu_k), \\
# \sigma^2 &= M_m / m .
# \end{aligned}
# $$
#
# Welford's moments of two disjoint parts $a$ and $b$ merge into those of the union
# {cite}`chan1983algorithms`, the formula the SyncBatchNorm lesson uses across processes:
#
# $$
# \begin{aligned}
# n &= n_a + n_b, \\
# \delta &= \mu_b - \mu_a, \\
# \mu &= \mu_a + \delta\, n_b / n, \\
# M &= M_a + M_b + \delta^2\, n_a n_b / n .
# \end{aligned}
# $$
#
# So a set can be cut into chunks, each read once by its own thread (or GPU block, or rank), and
# the chunks merged in a tree: statistics in a single read, which is how fast kernels compute them.
# `normlib.lab.numerics` implements all of them so that every rounding is pinned down: each function
# walks the last dimension one value at a time, every operation in a chosen dtype. Each step is one
# IEEE-754 operation, so what these functions return is the same to the last bit on any machine, and
# the tables below can print it; whatever goes through torch's own reductions, whose order of
# summation depends on the CPU, is checked with a margin instead. The merge:

# %%
print(inspect.getsource(merge))

# %% [markdown]
# In float64 all of them are the variance, checked against `torch.var`:

# %%
rng = np.random.default_rng(0)
x64 = torch.from_numpy(3 + 2 * rng.standard_normal((4, 1000)))
want = x64.var(-1, unbiased=False)
checks = {"E[x^2] - E[x]^2": naive_moments(x64)[1],
          "two-pass": two_pass_moments(x64)[1],
          "Welford": welford(x64).var,
          "Welford, 8 chunks": chunked_welford(x64, 8).var}
for label, var in checks.items():
    print(lab.cmp(f"{label} vs torch.var", var, want, atol=1e-12))

# %% [markdown]
# ## Cancellation: a large offset and a small spread
#
# Rows of 1,024 values with mean $\mu$ and standard deviation $\sigma = 1$, stored and summed in
# float32, for offsets from 1 to $10^4$. The relative error of each algorithm's variance (the
# largest over 16 rows); `normlib.functional.moments` is added for comparison:

# %%
z = rng.standard_normal((16, 1024))
OFFSETS = (1, 10, 100, 1_000, 10_000)
ALGORITHMS = {
    "E[x^2] - E[x]^2": lambda x, acc: naive_moments(x, acc)[1],
    "two-pass": lambda x, acc: two_pass_moments(x, acc)[1],
    "Welford": lambda x, acc: welford(x, acc).var,
    "Welford, 16 chunks": lambda x, acc: chunked_welford(x, 16, acc).var,
}
offset_err, normlib_err = {}, {}
for offset in OFFSETS:
    x = torch.from_numpy(offset + z).float()
    _, exact = exact_moments(x)
    for label, f in ALGORITHMS.items():
        error = relative_error(f(x, torch.float32), exact)
        offset_err[label, offset] = error.max().item()
    normlib_var = NF.moments(x, [-1])[1].squeeze(-1)
    normlib_err[offset] = relative_error(normlib_var, exact).max().item()
print(evidence.table(["mu / sigma"] + [str(o) for o in OFFSETS],
                     [[label] + [f"{offset_err[label, o]:.1e}" for o in OFFSETS]
                      for label in ALGORITHMS]))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Relative error of the variance of 1,024 float32 values against the offset of their mean (spread 1), for each algorithm computed in float32, beside normlib's moments. Dotted: the float32 eps times the squared offset.", "name": "fig-18-offset"}, "image": {"alt": "Log-log plot of relative error against the ratio of mean to spread. The E[x^2] - E[x]^2 line climbs steeply along the dotted eps times squared offset line and passes 100 percent error. Two-pass, Welford and chunked Welford stay far lower, rising only slowly; normlib's moments stay lowest and flat."}}
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for label in ALGORITHMS:
    ax.plot(OFFSETS, [offset_err[label, o] for o in OFFSETS], marker="o", label=label)
ax.plot(OFFSETS, [normlib_err[o] for o in OFFSETS], marker="s", ls="--",
        label="normlib moments")
eps32 = torch.finfo(torch.float32).eps
ax.plot(OFFSETS, [eps32 * o**2 for o in OFFSETS], color="grey", ls=":",
        label="eps x (mu/sigma)^2")
ax.set(xscale="log", yscale="log", xlabel="offset mu / spread sigma",
       ylabel="relative error of the variance")
ax.legend(fontsize=10)
fig.tight_layout()

# %%
evidence.claim("E[x^2] - E[x]^2 in float32 is off by > 100% at mu/sigma = 1000",
               offset_err["E[x^2] - E[x]^2", 1000], ">", 1.0)
careful = list(ALGORITHMS)[1:]  # all but E[x^2] - E[x]^2
evidence.claim("two-pass and Welford stay below 1e-3 at every offset up to 10^4",
               max(offset_err[a, o] for a in careful for o in OFFSETS), "<", 1e-3)
evidence.claim("normlib's moments stay below 1e-6 at every offset",
                   max(normlib_err.values()), "<", 1e-6)

# %% [markdown]
# $E[x^2] - E[x]^2$ subtracts two numbers near $\mu^2$, each carrying a rounding error of relative
# size $\epsilon$ or more; what survives the subtraction is $\sigma^2$ plus an error proportional to
# $\epsilon\mu^2$, a relative error proportional to $\epsilon(\mu/\sigma)^2$: the slope of the dotted
# line (the running sums put the measured line a constant factor above it). At an offset of a
# thousand times the spread, float32 has nothing left. The two-pass algorithm subtracts the mean
# *before* squaring, and Welford's update only ever handles deviations, so neither cancels.
# (Welford is a little less accurate than two passes here, but reads the data once.)
#
# normlib's `moments` (the one place normlib computes a mean and a variance) is two-pass, on the data
# shifted by its first value $K$: it computes the moments of $x - K$, whose offset is of the size of
# the spread, and adds $K$ back to the mean. That removes the offset before anything is summed, and
# torch's reductions sum in a tree of partial sums rather than one running sum, hence its flat line.
#
# ## Accumulating in 16 bits
#
# Now the values are stored in float16 or bfloat16 (mean 4, spread 1), and each algorithm runs either
# in the input's own dtype or in float32. A running sum is where 16 bits run out: the sum of $m$
# positive terms computed one at a time has a relative error of up to about $m\,u$
# {cite}`higham2002accuracy` (printed below for $m = 1024$). A bfloat16 sum of fours stops growing
# once it reaches 1024, where the spacing is 8 and $1024 + 4$ rounds back to 1024 (a tie, rounded to
# the even neighbour):

# %%
for dtype in DTYPES:
    s = torch.zeros((), dtype=dtype)
    for _ in range(1024):
        s = s + 4
    u = torch.finfo(dtype).eps / 2
    print(f"{name(dtype):<9} m u = {1024 * u:<9.2g} 1024 additions of 4: {s.item():g}")

half_err = {}
for dtype in (torch.float16, torch.bfloat16):
    x = torch.from_numpy(4 + z).to(dtype)
    _, exact = exact_moments(x)
    for acc in (dtype, torch.float32):
        for label, f in ALGORITHMS.items():
            half_err[label, dtype, acc] = relative_error(f(x, acc), exact).max().item()
columns = [(d, a) for d in (torch.float16, torch.bfloat16) for a in (d, torch.float32)]
print(evidence.table(["input, summed in"]
                     + [f"{name(d)}, {name(a)}".replace("float", "f")
                        for d, a in columns],
                     [[label] + [f"{half_err[label, d, a]:.1e}" for d, a in columns]
                      for label in ALGORITHMS]))

# %%
f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
evidence.claim("summed in bfloat16, two-pass is off by more than 100%",
               half_err["two-pass", bf16, bf16], ">", 1.0)
evidence.claim("summed in float16, every sequential algorithm is off by > 1%",
               min(half_err[a, f16, f16] for a in list(ALGORITHMS)[:3]), ">", 0.01)
evidence.claim("summed in float32, every algorithm is within 1e-4 for both inputs",
               max(half_err[a, d, f32] for a in ALGORITHMS for d in (f16, bf16)), "<",
               1e-4)
evidence.claim("in 16 bits, 16 merged chunks beat one sequential two-pass by > 5x",
                   max(half_err["Welford, 16 chunks", d, d] / half_err["two-pass", d, d]
                       for d in (f16, bf16)), "<", 0.2)
evidence.claim("in 16 bits, Welford on 16 merged chunks is within 2 eps of the dtype",
               max(half_err["Welford, 16 chunks", d, d] / torch.finfo(d).eps
                   for d in (f16, bf16)), "<", 2)

# %% [markdown]
# Accumulating in 16 bits ruins every sequential algorithm, the careful ones included: in bfloat16
# even the two-pass variance is off by more than 100%. Accumulating the *same 16-bit values* in float32 brings
# every algorithm, even $E[x^2] - E[x]^2$ at this small offset, within $10^{-4}$. That is why every
# serious implementation of a norm reads 16-bit inputs and computes its statistics in float32: torch's
# forward kernels do, and so does `normlib.functional` (statistics in float32, one rounding back to the
# input's dtype at the end). Merging chunks in a tree helps a great deal too, since each running sum
# is shorter and the tree adds partial sums of similar size: in float16, Welford's algorithm on 16
# chunks merged in a tree stays within 2 eps of the input's dtype, in bfloat16 too (checked above).
# That is why fast kernels that *must* stay in low precision reduce in trees; but 2 eps of bfloat16
# is about 1.6%, and summing in float32 does tens of thousands of times better.
#
# The other 16-bit failure is range. float16 overflows above 65504, so $x^2$ overflows for $|x| > 256$
# and a sum of squares long before that: 1,024 values of 16 already give $262144$. Large Transformers
# are known to have a few feature dimensions far larger than the rest
# {cite}`bondarenko2021understanding,dettmers2022llmint8`; one such feature in a token is enough.
# RMSNorm written naively in float16 against normlib's and torch's:

# %%
x = torch.from_numpy(rng.standard_normal((4, 1024))).to(torch.float16)
x[:, 7] = 300.0  # one outlier feature per token
reference = (x.double() / x.double().square().mean(-1, keepdim=True).sqrt())


def rms_norm_in_float16(x):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)


print("float16 x^2 of the outlier:", x[0, 7].square().item())
print("naive float16 RMSNorm, all zeros:", bool((rms_norm_in_float16(x) == 0).all()))
# outputs reach about 32, where one float16 spacing is 2**-5 = 0.03
print(lab.cmp("normlib rms_norm vs float64", NF.rms_norm(x, [1024]), reference, 0.05))
print(lab.cmp("torch rms_norm vs float64", torch.nn.functional.rms_norm(x, [1024]),
              reference, 0.05))

# %% [markdown]
# ## $\epsilon$ in half precision
#
# $\epsilon$ in a norm keeps $1/\sqrt{\sigma^2 + \epsilon}$ finite when a set is constant. It is
# meant to be negligible, and whether it is depends on the scale it is compared with.
# `torch.nn.RMSNorm` with `eps=None` takes "the machine epsilon", which could mean two things for a
# bfloat16 input: bfloat16's (0.0078) or float32's. An input whose RMS is 0.05 tells them apart: its
# mean square, 0.0025, is small next to the first and huge next to the second.

# %%
x = torch.from_numpy(rng.standard_normal((8, 256))).to(torch.bfloat16)
x = (x * 0.05 / x.float().square().mean(-1, keepdim=True).sqrt()).to(torch.bfloat16)
xd = x.double()
ms = xd.square().mean(-1, keepdim=True)
out = torch.nn.functional.rms_norm(x, [256])  # eps=None
# outputs stay below 4, where one bfloat16 spacing is 2**-6 = 0.016
for label, eps in (("float32's eps", torch.finfo(torch.float32).eps),
                   ("bfloat16's eps", torch.finfo(torch.bfloat16).eps)):
    gap = (out.double() - xd / (ms + eps).sqrt()).abs().max().item()
    print(f"torch = formula with {label:<14} (|diff| < 0.05): {gap < 0.05}")
print(lab.cmp("normlib vs torch, eps=None", NF.rms_norm(x, [256]), out, 0.05))


# %% [markdown]
# torch (2.13) uses float32's epsilon for float16, bfloat16 and float32 input, and normlib does the
# same.
# The reason is the one of the previous sections: the mean square is computed in float32, so
# $\epsilon$ only has to be negligible at float32's scale. The input's own epsilon would be a large
# number next to the mean square of small activations. With $y = x / \sqrt{r^2 + \epsilon}$ for an
# input of RMS $r$, the output's RMS is $r / \sqrt{r^2 + \epsilon}$ instead of 1:

# %%
def output_rms(r, eps=None):
    x = torch.from_numpy(rng.standard_normal((4, 256)))
    x = (x * r / x.square().mean(-1, keepdim=True).sqrt()).to(torch.bfloat16)
    y = NF.rms_norm(x, [256], eps=eps).double()
    return y.square().mean().sqrt().item()


RMS_IN = (0.01, 0.03, 0.1, 0.3, 1.0)
bf16_eps = torch.finfo(torch.bfloat16).eps
measured = {label: [output_rms(r, eps) for r in RMS_IN]
            for label, eps in (("eps=None", None), ("bfloat16's eps", bf16_eps))}
evidence.claim("eps=None: an input of RMS 0.01 comes out within 1% of RMS 1",
               measured["eps=None"][0], "≈", 1.0, margin=0.01)
evidence.claim("bfloat16's eps would shrink an input of RMS 0.1 to below 0.8",
                   measured["bfloat16's eps"][2], "<", 0.8)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "RMS of RMSNorm's output against the RMS of its bfloat16 input, for three choices of eps: curves from the formula, markers measured with normlib.", "name": "fig-18-eps"}, "image": {"alt": "Log-scale x axis of input RMS from 0.001 to 3. With float32's eps the output RMS stays at 1 down to the smallest inputs shown; with float16's eps it falls well below 1 for inputs of a few hundredths; with bfloat16's eps it already falls for inputs of a few tenths. Measured markers sit on the float32 curve for eps None and on the bfloat16 curve for bfloat16's eps."}}
r = np.logspace(-3, 0.5, 200)
fig, ax = plt.subplots(figsize=(6.5, 3.6))
COLORS = {torch.float32: "C0", torch.float16: "C1", torch.bfloat16: "C3"}
for dtype, color in COLORS.items():
    eps = torch.finfo(dtype).eps
    ax.plot(r, r / np.sqrt(r**2 + eps), color=color, label=f"eps = {name(dtype)}'s")
ax.plot(RMS_IN, measured["eps=None"], "o", color=COLORS[torch.float32],
        label="measured, eps=None")
ax.plot(RMS_IN, measured["bfloat16's eps"], "s", color=COLORS[torch.bfloat16],
        label="measured, bfloat16's")
ax.set(xscale="log", xlabel="RMS of the input", ylabel="RMS of the output",
       ylim=(0, 1.1))
ax.legend(fontsize=10, loc="lower right")
fig.tight_layout()

# %% [markdown]
# LayerNorm's default $\epsilon = 10^{-5}$ is a number, not a machine epsilon, and it is added to a
# float32 variance, so it is as negligible for 16-bit input as for float32. Had the variance been
# computed in float16, $10^{-5}$ would be a subnormal number there, and added to a variance near 1 it
# would vanish altogether.
#
# ## What `torch.autocast` does with norms
#
# Under `torch.autocast`, each operation has a policy: cast to the low-precision dtype (matrix
# products, convolutions), cast to float32, or leave the inputs alone. The policies differ between
# torch versions; what follows is torch 2.13's. Its dispatcher can list which devices register an
# autocast kernel for an operation (the policy itself is in torch's
# `aten/src/ATen/autocast_mode.h`); even a build without CUDA registers the CUDA ones:

# %%
def autocast_kernel(op, device):
    table = torch._C._dispatch_dump_table(f"aten::{op}").splitlines()
    line = next(row for row in table if row.startswith(f"Autocast{device}:"))
    return "passes through" if "fallthrough" in line else "autocast kernel"


ops = ("layer_norm", "group_norm", "rms_norm", "batch_norm", "instance_norm", "linear")
if SAME_TORCH:
    print(evidence.table(["op", "CUDA", "CPU"],
                         [[op, autocast_kernel(op, "CUDA"), autocast_kernel(op, "CPU")]
                          for op in ops]))

# %% [markdown]
# What a registered kernel does is in the source, not in this table, and this book runs no GPU, so
# the CUDA half of this section is read from torch 2.13's source, not run: there `layer_norm`,
# `group_norm` and `rms_norm` are in autocast's float32 list, so their inputs are cast to float32
# and they return float32; `batch_norm` and `instance_norm` pass through and run in the input's
# dtype (torch's kernels for them keep their statistics in float32 anyway); `linear` is in the
# low-precision list. On the CPU every norm passes through, which this machine does run. What that
# means for a layer after a `Linear`, on this CPU:

# %%
import warnings

linear = torch.nn.Linear(64, 64)
x = torch.randn(8, 64)
warnings.filterwarnings("ignore", "Mismatch dtype")  # torch: no fused kernel for it
with torch.autocast("cpu", dtype=torch.bfloat16):
    h = linear(x)
    print("Linear output:            ", h.dtype)
    for label, norm in (("torch.nn.LayerNorm", torch.nn.LayerNorm(64)),
                        ("normlib.nn.LayerNorm", normlib.nn.LayerNorm(64)),
                        ("torch.nn.RMSNorm", torch.nn.RMSNorm(64)),
                        ("normlib.nn.RMSNorm", normlib.nn.RMSNorm(64))):
        print(f"{label + ' of it:':<26}", norm(h).dtype)

# %% [markdown]
# A float32 parameter with a 16-bit input is allowed, and on the CPU the output keeps the input's dtype,
# for torch's layers and normlib's alike (torch's RMSNorm warns that it then cannot use its fused
# kernel; the warning is silenced above). Under CUDA autocast, by the policy above, torch's three norms
# on the float32 list hand float32 to the next layer; the arithmetic inside is float32 either way, and
# only the dtype passed on changes. normlib's layers follow the same policy, read from the same
# registrations: under CUDA autocast its LayerNorm, GroupNorm and RMSNorm cast to float32 and return
# float32, as torch's do (written from the policy and tested on the CPU by pretending it applies there;
# this book's machines have no GPU to run it).
#
# ## Every layer against float64
#
# Each normlib layer and its torch counterpart, with the same parameters in the same dtype as the
# input (mean 5, spread 2), against torch's layer run in float64 on the same stored values. The error is
# the largest $|y - y_{64}|$ in units of the dtype's eps; "rounding" is the error of rounding the
# float64 result itself to the dtype, the best any implementation can do.

# %%
gen = torch.Generator().manual_seed(0)
images = torch.randn(8, 16, 8, 8, generator=gen) * 2 + 5
tokens = torch.randn(64, 256, generator=gen) * 2 + 5
N, T = normlib.nn, torch.nn
LAYERS = {  # name: (normlib's, torch's, input)
    "BatchNorm2d": (lambda: N.BatchNorm2d(16), lambda: T.BatchNorm2d(16), images),
    "InstanceNorm2d": (lambda: N.InstanceNorm2d(16), lambda: T.InstanceNorm2d(16),
                       images),
    "GroupNorm": (lambda: N.GroupNorm(4, 16), lambda: T.GroupNorm(4, 16), images),
    "LayerNorm": (lambda: N.LayerNorm(256), lambda: T.LayerNorm(256), tokens),
    "RMSNorm": (lambda: N.RMSNorm(256), lambda: T.RMSNorm(256), tokens),
}
layer_err = {}
for layer, (ours, theirs, x) in LAYERS.items():
    for dtype in DTYPES:
        xd, eps = x.to(dtype), torch.finfo(dtype).eps
        want = theirs().double()(xd.double())
        rounding = (want.to(dtype).double() - want).abs().max() / eps
        layer_err[layer, dtype, "rounding"] = rounding.item()
        for impl, make in (("normlib", ours), ("torch", theirs)):
            got = make().to(dtype)(xd).double()
            layer_err[layer, dtype, impl] = ((got - want).abs().max() / eps).item()
print(f"{len(LAYERS)} layers x {len(DTYPES)} dtypes x (normlib, torch), training mode")

# %% tags=["nbval-ignore-output"]
IMPLS = ("rounding", "normlib", "torch")
for dtype in DTYPES:
    print(f"\n{name(dtype)}: max |error| / eps")
    print(evidence.table(["layer", *IMPLS],
                         [[layer] + [f"{layer_err[layer, dtype, i]:.2f}" for i in IMPLS]
                          for layer in LAYERS]))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Largest error of each layer's output against float64, in units of the dtype's eps, for normlib and torch, beside the error of rounding the float64 result itself (training mode, CPU). BN: BatchNorm2d, IN: InstanceNorm2d, GN: GroupNorm, LN: LayerNorm, RMS: RMSNorm.", "name": "fig-18-layers"}, "image": {"alt": "Three bar charts, one per dtype, with five layers each and three bars per layer: rounding, normlib and torch. In float16 and bfloat16 normlib's bars equal the rounding bars; torch's are equal for GroupNorm, LayerNorm and RMSNorm and taller for BatchNorm2d and InstanceNorm2d. In float32 both implementations are a few eps, above the rounding bars."}}
fig, axes = plt.subplots(1, 3, figsize=(7, 3.7))
positions = np.arange(len(LAYERS))
for ax, dtype in zip(axes, DTYPES, strict=True):
    for k, impl in enumerate(IMPLS):
        heights = [layer_err[layer, dtype, impl] for layer in LAYERS]
        ax.bar(positions + (k - 1) * 0.27, heights, width=0.27, label=impl)
    ax.set_xticks(positions, ["BN", "IN", "GN", "LN", "RMS"], fontsize=10)
    ax.set(title=name(dtype), ylabel="max |error| / eps" if dtype == DTYPES[0] else "")
fig.legend(*axes[0].get_legend_handles_labels(), fontsize=10, ncol=3, loc="lower center")
fig.tight_layout(rect=(0, 0.08, 1, 1))

# %%
half = (torch.float16, torch.bfloat16)
worst = max(layer_err[layer, d, "normlib"] / layer_err[layer, d, "rounding"]
            for layer in LAYERS for d in half)
evidence.claim("float16 and bfloat16: every normlib layer is within 1.25x of rounding",
               worst, "<", 1.25)
evidence.claim("float32: every normlib layer is within 8 eps of float64",
               max(layer_err[x, torch.float32, "normlib"] for x in LAYERS), "<", 8)
torch_worst = max(layer_err[x, d, "torch"] / layer_err[x, d, "rounding"]
                  for x in ("GroupNorm", "LayerNorm", "RMSNorm") for d in half)
torch_claim("16 bits: torch's GN, LN and RMSNorm are within 1.25x of rounding too",
            torch_worst, "<", 1.25)
ratio = min(layer_err[x, d, "torch"] / layer_err[x, d, "normlib"]
            for x in ("BatchNorm2d", "InstanceNorm2d") for d in half)
torch_claim("16 bits, CPU: torch's BN and IN are > 1.5x further than normlib's",
            ratio, ">", 1.5)

# %% [markdown]
# In 16 bits, normlib's output is as close to float64 as rounding the exact result allows: the
# statistics and the normalization are computed in float32, and the only 16-bit error is the final
# rounding. torch's GroupNorm, LayerNorm and RMSNorm do as well; its CPU BatchNorm and InstanceNorm
# (torch 2.13) end further away in 16 bits, more than 1.5 times as far as normlib. In float32 both
# are a few eps away: the sums themselves are rounded in float32 there.
#
# Where torch's extra error comes from: its 16-bit BatchNorm and InstanceNorm compute the statistics
# in float32 but round the batch mean and $1/\sigma$ to the input's dtype before normalising. A mean
# near 5 rounded to float16 moves by up to half a spacing there, $2^{-9}$, which after division by
# $\sigma = 2$ is one or two spacings of an output near 1. Written out, with and without that
# rounding, beside torch's output: the share of the 8,192 output values each formula gets identical.

# %%
def statistics_norm(x, dims, round_statistics):
    """(x - mean) / sqrt(var + eps) in float32, one rounding to x's dtype at the end;
    with round_statistics, mean and 1/sigma are rounded to x's dtype first."""
    xf = x.float()
    mean = xf.mean(dims, keepdim=True)
    inv_std = (xf.var(dims, unbiased=False, keepdim=True) + 1e-5).rsqrt()
    if round_statistics:
        mean, inv_std = mean.to(x.dtype).float(), inv_std.to(x.dtype).float()
    return ((xf - mean) * inv_std).to(x.dtype)


identical = {}
for label, layer, dims in (("BatchNorm2d", T.BatchNorm2d(16), (0, 2, 3)),
                           ("InstanceNorm2d", T.InstanceNorm2d(16), (2, 3))):
    for dtype in half:
        xd = images.to(dtype)
        y = layer.to(dtype)(xd)
        for rounded in (True, False):
            same = (statistics_norm(xd, dims, rounded) == y).float().mean().item()
            identical[label, name(dtype), rounded] = same

# %% tags=["nbval-ignore-output"]
print(evidence.table(["torch layer, dtype", "statistics rounded", "float32 statistics"],
                     [[f"{layer}, {dtype}", f"{identical[layer, dtype, True]:.1%}",
                       f"{identical[layer, dtype, False]:.1%}"]
                      for layer, dtype in dict.fromkeys(k[:2] for k in identical)]))

# %%
torch_claim("torch's 16-bit BN and IN: rounded statistics give > 85% identical outputs",
            min(v for k, v in identical.items() if k[2]), ">", 0.85)
torch_claim("statistics kept in float32 give under half identical outputs",
            max(v for k, v in identical.items() if not k[2]), "<", 0.5)

# %% [markdown]
# ## Three more pitfalls
#
# The statistics are not the only place 16 bits can bite. Three more, each in a few lines.
#
# **A float16 BatchNorm's running variance overflows.** A BatchNorm converted with `.half()` keeps its
# running statistics in float16 too. Inputs of spread 1,000 are harmless in float16 (they are far
# below 65504), and the output is computed with float32 statistics; but their variance, about $10^6$,
# enters the float16 `running_var` through the momentum update, $0.1 \times 10^6 > 65504$, and it
# becomes infinite. Evaluation then divides by infinity:

# %%
bn16 = torch.nn.BatchNorm1d(4).half()
x = (torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * 1000).half()
y_train = bn16(x)
print("training output finite:", bool(y_train.isfinite().all()))
print("running_var:", bn16.running_var.tolist())
print("eval output, all zero:", bool((bn16.eval()(x) == 0).all()))

# %% [markdown]
# The cure is the one mixed-precision training uses for every parameter and buffer: keep them in
# float32 (`torch.autocast` leaves the module's dtype alone) {cite}`micikevicius2018mixed`.
#
# **A bfloat16 $\gamma$ near 1 stops learning.** Below 1, bfloat16's spacing is $2^{-8} \approx 0.004$, so
# an update smaller than half of it, $0.002$, rounds back to the same number. A gain that starts at 1
# and receives a hundred SGD updates of $-10^{-3}$:

# %%
for dtype in (torch.bfloat16, torch.float32):
    gamma = torch.ones((), dtype=dtype)
    for _ in range(100):
        gamma = gamma - torch.tensor(1e-3, dtype=dtype)
    print(f"{name(dtype):<9} gamma after 100 updates of -0.001: {gamma.item():.4f}")

# %% [markdown]
# In bfloat16 not one of the hundred updates lands. Master weights in float32, with a 16-bit copy for
# the forward pass, are what keeps them {cite}`micikevicius2018mixed`.
#
# **The backward pass sums too.** The gradient of $\gamma$ is a sum over every token,
# $\partial L/\partial\gamma_j = \sum_i \partial y_{ij}\, \hat x_{ij}$, as long as the forward pass's
# statistics are over its features: over 4,096 tokens here, in float16. torch's LayerNorm backward
# summed one token at a time in float16 drifts like the running sums above. normlib's LayerNorm
# computes in float32 (its parameters are cast to float32 for the forward pass, so autograd sums
# their gradient in float32, with one rounding at the end); torch's, on this CPU, we measure. Each
# against the float64 sum, in units of float16's eps, relative to the largest $|\partial L/\partial\gamma_j|$:

# %%
gen = torch.Generator().manual_seed(1)
xs16 = torch.randn(4096, 256, generator=gen).half().requires_grad_()
dys16 = torch.randn(4096, 256, generator=gen).half()
ln16 = torch.nn.LayerNorm(256).half()
ln16(xs16).backward(dys16)
ours16 = normlib.nn.LayerNorm(256).half()
ours16(xs16).backward(dys16)
xd = xs16.detach().double()
x_hat = (xd - xd.mean(-1, keepdim=True)) / (xd.var(-1, unbiased=False, keepdim=True)
                                             + 1e-5).sqrt()
want = (dys16.double() * x_hat).sum(0)
terms = (dys16.double() * x_hat).half()  # each product rounded to float16 once
running = torch.zeros(256, dtype=torch.float16)
for row in terms:
    running = running + row
eps16 = torch.finfo(torch.float16).eps
scale = want.abs().max()
grad_err = {"normlib, float16 LayerNorm":
                (ours16.weight.grad.double() - want).abs().max() / scale,
            "torch, float16 LayerNorm":
                (ln16.weight.grad.double() - want).abs().max() / scale,
            "float16 running sum": (running.double() - want).abs().max() / scale}

# %% tags=["nbval-ignore-output"]
for label, err in grad_err.items():
    print(f"{label:<25} max |error| / max |dgamma|: {err / eps16:5.1f} eps")

# %%
evidence.claim("normlib's float16 LayerNorm gives dgamma within 1 float16 eps "
               "(relative)",
               grad_err["normlib, float16 LayerNorm"].item() / eps16, "<", 1)
evidence.claim("a float16 running sum over 4,096 tokens is more than 5 eps off",
               grad_err["float16 running sum"].item() / eps16, ">", 5)
torch_claim("torch 2.13's float16 LayerNorm on the CPU is more than 5 eps off too",
            grad_err["torch, float16 LayerNorm"].item() / eps16, ">", 5)

# %% [markdown]
# normlib's gradient is as close as one rounding allows. torch 2.13's CPU LayerNorm, whose forward
# pass was as accurate as normlib's, returns a $\gamma$ gradient about as far off as the float16
# running sum: somewhere on that path the sum over tokens is carried in 16 bits. (Measured here on
# the CPU; torch's GPU kernels are not run in this book.) The backward pass of a norm has sums of its
# own, and they need float32 as much as the forward statistics do.

# %% [markdown]
# ## One read or two?
#
# The two-pass algorithm reads every value twice, Welford's once; merged in chunks, Welford's is also
# accurate (the first section) and parallel. Does normlib's `moments` need it? In eager torch, no: every
# operation in `normlib.functional` is a separate pass over memory anyway, and the shifted two-pass
# moments in float32 are more accurate than Welford's. A single read pays off inside a fused kernel,
# where a norm is bound by the bytes it moves (speed lesson): torch's GPU kernels compute their
# statistics with Welford's update and Chan's merge for that reason. In normlib, that merge already
# lives in SyncBatchNorm, which combines the ranks' counts, means and $M$ exactly as `merge` does.
#
# ## How fast is it?
#
# LayerNorm and RMSNorm, forward and backward, on a `(1024, 1024)` activation in each dtype, torch's
# and normlib's (eager), on the GPU when there is one. A CPU may have no fast 16-bit arithmetic and
# convert every value. (Timings vary from run to run and machine to machine, so this cell's output
# is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
print("device:", device_name(device))
for dtype in DTYPES:
    xb = torch.randn(1024, 1024, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(xb)
    for label, layer in (("torch LayerNorm", T.LayerNorm(1024)),
                         ("normlib LayerNorm", N.LayerNorm(1024)),
                         ("torch RMSNorm", T.RMSNorm(1024)),
                         ("normlib RMSNorm", N.RMSNorm(1024))):
        layer = layer.to(device=device, dtype=dtype)
        timing = benchmark(lambda f=layer, x=xb, g=dy: f(x).backward(g), device,
                           min_run_time=0.2)
        print(f"{name(dtype):<9} {label:<18} {timing}")

# %% [markdown]
# A norm's time is its memory traffic (speed lesson), so the byte model predicts that on a GPU a
# 16-bit norm takes about half the time of a float32 one: every value read or written is half the
# bytes, and the float32 arithmetic inside is not what limits it. That is a prediction until a GPU
# run is recorded; the cell below plots torch's LayerNorm and RMSNorm in float32 and bfloat16 from a
# recorded CUDA benchmark file when the book ships one.

# %% tags=["nbval-ignore-output", "hide-input"] mystnb={"figure": {"caption": "When a GPU benchmark is recorded: torch's LayerNorm and RMSNorm, forward and backward, time in bfloat16 over time in float32, against the width of a (4096, width) input, on that GPU (0.5: half the time, as the byte model predicts). Without one, the figure says so.", "name": "fig-18-gpu"}, "image": {"alt": "Either a plot of the bfloat16-to-float32 time ratio against width for torch's LayerNorm and RMSNorm on a recorded GPU, with a dotted line at one half, or a panel saying that no GPU benchmark is recorded yet."}}
from normlib.lab import gpu_results

reports = gpu_results.cuda_reports()
fig, ax = plt.subplots(figsize=(6, 3.4))
if not reports:
    print("no GPU benchmark recorded: the 16-bit statement above is the byte model's "
          "prediction")
    ax.text(0.5, 0.5, "no GPU benchmark recorded yet", ha="center", va="center")
    ax.set_axis_off()
else:
    file, report = next(iter(reports.items()))
    print(f"recorded GPU benchmark {file}: {gpu_results.describe(report)}")
    for op, label in (("layer_norm", "torch LayerNorm"), ("rms_norm", "torch RMSNorm")):
        f32 = {r["shape"]: r["median_ms"] for r in gpu_results.series(report, op)}
        b16 = gpu_results.series(report, op, dtype="bfloat16")
        pairs = [(r["shape"][-1], r["median_ms"] / f32[r["shape"]]) for r in b16
                 if r["shape"] in f32]
        ax.plot(*zip(*pairs, strict=True), "o-", label=label)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(xscale="log", xlabel="width (input 4096 x width)", ylim=(0, 1.2),
           ylabel="bfloat16 time / float32 time", title=gpu_results.describe(report))
    ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# 1. Compute $E[x^2] - E[x]^2$ in float32 on $x - x_1$ (the data shifted by its first value, as
#    `normlib.functional.moments` does). How does its error depend on the offset now? What if the
#    first value is an outlier?
# 2. Write a Kahan (compensated) running sum in bfloat16 and use it in the two-pass variance. How
#    close does it get to summing in float32?
# 3. For which input RMS does RMSNorm with bfloat16's eps change the output's RMS by more than 1%?
#    Derive it from $r / \sqrt{r^2 + \epsilon}$, then check it with `output_rms`.
# 4. Run a `normlib.nn.LayerNorm` in float16 on a token with one feature of 300 and the rest of size
#    1. Is the output right? Why does the overflow of the naive RMSNorm above not happen here?
# 5. Time `two_pass_moments`, `welford` and `chunked_welford` on a `(16, 1024)` input. Which is
#    fastest here, and why does the answer say more about Python loops than about memory traffic?
#    What would decide it inside a fused GPU kernel?
