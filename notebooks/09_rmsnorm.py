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
# # RMSNorm
#
# LayerNorm does two things: it re-centres each sample (subtracts the mean) and re-scales it (divides by
# the standard deviation). RMSNorm {cite}`zhang2019root` keeps only the re-scaling:
#
# $$
# \begin{aligned}
# \mathrm{RMS}(x) &= \sqrt{\frac{1}{m}\sum_{k=1}^m x_k^2 + \epsilon}, \\
# y &= \frac{x}{\mathrm{RMS}(x)} \odot \gamma ,
# \end{aligned}
# $$
#
# with no $\beta$. The argument of the paper is that re-scaling invariance is what matters for training
# and re-centring can be dropped, which saves a reduction and a subtraction. It is the norm of most
# current large language models, e.g. LLaMA {cite}`touvron2023llama`. In PyTorch it is
# `torch.nn.RMSNorm`, whose default `eps=None` needs care: it is the machine epsilon of the dtype the
# statistics are *computed* in, which is float32 for float16, bfloat16 and float32 input (and float64
# for float64 input), not the epsilon of the input's own dtype. A section below shows why.

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
import torch

import normlib
from normlib import functional as NF
from normlib import lab
from normlib.lab import evidence

lab.setup()

# %% [markdown]
# ## Checked against torch, and equal to LayerNorm on zero-mean input
#
# If every sample already has mean zero, then $\frac{1}{m}\sum_k x_k^2$ *is* the variance, and RMSNorm and
# LayerNorm (without affine parameters) agree:

# %%
x = torch.randn(8, 64, dtype=torch.float64) * 3 + 2
w = torch.randn(64, dtype=torch.float64)
print(lab.cmp("rms_norm: normlib vs torch", NF.rms_norm(x, [64], w),
              torch.nn.functional.rms_norm(x, [64], w), atol=1e-12))
centred = x - x.mean(-1, keepdim=True)
print(lab.cmp("RMSNorm vs LN, centred x", NF.rms_norm(centred, [64], eps=1e-5),
              NF.layer_norm(centred, [64], eps=1e-5), atol=1e-12))
print(lab.cmp("RMSNorm vs LN, raw x", NF.rms_norm(x, [64], eps=1e-5),
              NF.layer_norm(x, [64], eps=1e-5), atol=1e-12))

# %% [markdown]
# ## What it is invariant to
#
# Both norms are invariant to re-scaling a sample, $x \to a x$ ($a > 0$), up to the small effect of
# $\epsilon$. Only LayerNorm is invariant to shifting it, $x \to x + b$:

# %%
norms = {"LayerNorm": lambda t: NF.layer_norm(t, [64]),
         "RMSNorm": lambda t: NF.rms_norm(t, [64])}
print(f"{'':<11}{'x -> 5x':<12}{'x -> x + 3':<12}  (same output within 1e-4?)")
for name, f in norms.items():
    same = [torch.allclose(f(t), f(x), rtol=0, atol=1e-4) for t in (5 * x, x + 3)]
    words = ["invariant" if s else "changes" for s in same]
    print(f"{name:<11}{words[0]:<12}{words[1]:<12}")

# %% [markdown]
# In a Transformer the residual stream has no fixed mean to remove, and the layers after the norm have
# their own biases, so losing shift invariance costs little in practice, which is the trade the paper
# argues for.
#
# ## The default epsilon
#
# $\epsilon$ is there to avoid a division by zero, and it should be negligible next to the mean
# square of any real activation. The machine epsilon of bfloat16 is not: it is $2^{-7} \approx
# 0.0078$, while activations with an RMS of 0.01 have a mean square of $10^{-4}$. That is why torch's
# `eps=None` takes the epsilon of float32, the dtype in which it computes the statistics of half- and
# bfloat16 input. normlib follows the same rule. Both, in bfloat16, on activations with an RMS of
# about 0.01, next to what bfloat16's own epsilon would do:

# %%
x16 = (torch.randn(8, 1024) * 0.01).bfloat16()
print(f"float32 eps:  {torch.finfo(torch.float32).eps:.3g}")
print(f"bfloat16 eps: {torch.finfo(torch.bfloat16).eps:.3g}")
ours, theirs = normlib.nn.RMSNorm(1024).bfloat16(), torch.nn.RMSNorm(1024).bfloat16()
print(lab.cmp("bf16 eps=None normlib/torch", ours(x16), theirs(x16)))


def rms(t):
    return t.float().square().mean(-1).sqrt().mean().item()


bf16_eps = torch.finfo(torch.bfloat16).eps
with_bf16_eps = torch.nn.functional.rms_norm(x16, [1024], eps=bf16_eps)
print(f"RMS of the input:                     {rms(x16):.3f}")
print(f"RMS of the output, eps=None:          {rms(theirs(x16)):.2f}")
print(f"RMS of the output, bfloat16's eps:    {rms(with_bf16_eps):.2f}")

# %% [markdown]
# With float32's epsilon the output has RMS 1, as a norm's output should. With bfloat16's epsilon the
# "normalized" output would keep only about a tenth of that: $\epsilon$ would dominate the
# statistics of every small activation.
#
# ## How fast is it?
#
# Forward and backward of LayerNorm and RMSNorm on a `(4096, 1024)` float32 activation, torch's native
# modules and normlib's, on the GPU when there is one. The timing turns off the deterministic
# algorithms the lessons use (they fill every new tensor with NaN first, extra work torch does not do
# by default) and takes the gradients with `torch.autograd.grad`, so that no call adds into a `.grad`
# of the previous one. (Timings vary, so this cell's output is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
xb = torch.randn(4096, 1024, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
layers = {
    "torch LayerNorm": torch.nn.LayerNorm(1024),
    "torch RMSNorm": torch.nn.RMSNorm(1024),
    "normlib LayerNorm": normlib.nn.LayerNorm(1024),
    "normlib RMSNorm": normlib.nn.RMSNorm(1024),
}
torch.use_deterministic_algorithms(False)
for name, layer in layers.items():
    layer = layer.to(device)

    def step(layer=layer):
        return torch.autograd.grad(layer(xb), (xb, *layer.parameters()), dy)

    print(f"{name:<18} forward+backward: {benchmark(step, device)}")
torch.use_deterministic_algorithms(True, warn_only=True)  # as lab.setup() left it

# %% [markdown]
# The least memory the two norms must move is the same; the speed lesson measures how close each
# implementation gets to that bound.
#
# ## Why torch's RMSNorm is the slower one on the CPU
#
# On the CPU the timing above usually shows torch's RMSNorm well behind its LayerNorm, although RMSNorm
# does less arithmetic (several times its time, forward+backward, in the speed lesson's recorded
# results, which print the ratio at every width). The profiler says why: it lists the
# operators each call runs and the time spent in each (`normlib.lab.timing.profile_ops`, built on
# `torch.profiler`). Forward and backward of torch's two functions on the same `(4096, 1024)` float32
# tensor, on the CPU, with the operators that take 1% of the time or more:

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import profile_torch_layer_and_rms_norm

profiles = profile_torch_layer_and_rms_norm(4096, 1024)
for name in profiles:
    total = sum(op.self_ms for op in profiles[name])
    print(f"torch {name}: {total:.2f} ms"
          f" in {sum(op.calls for op in profiles[name]):.0f} operator calls")
    for op in profiles[name]:
        if op.self_ms >= 0.01 * total:
            print(f"  {op.name:<34} {op.calls:3.0f} calls {op.self_ms:7.3f} ms"
                  f" {op.self_ms / total:4.0%}")

# %% [markdown]
# LayerNorm is one fused kernel each way, `native_layer_norm` and `native_layer_norm_backward`: each
# reads its inputs once, row by row, and keeps a row in cache between the statistics and the output.
# RMSNorm, in the torch this book is tested with (2.13), is a *composite*: it goes through an operator
# named `_fused_rms_norm`, which on the CPU calls one tensor operator per step of the formula (`pow`,
# `mean`, `add_`, `rsqrt`, `mul`, `mul`), and its backward is autograd through those steps:
# multiplications (ten `mul` calls in all), sums, a division, powers and copies. Most of those read
# or write a full-size tensor, and each such pass costs a large fraction of what a whole fused
# LayerNorm kernel costs; the multiplications alone take more time than LayerNorm's two kernels
# together. Checked on the profile above:

# %%
def total_ms(ops, names=None):
    return sum(op.self_ms for op in ops if names is None or op.name in names)


def share(ops, names):
    return total_ms(ops, names) / total_ms(ops)


fused = {"aten::native_layer_norm", "aten::native_layer_norm_backward"}
rms = profiles["RMSNorm"]
evidence.claim("LayerNorm: its two fused kernels take over 90% of its operator time",
               share(profiles["LayerNorm"], fused), ">", 0.9)
calls = {op.name: op.calls for op in rms}
evidence.claim("RMSNorm: it runs _fused_rms_norm once and mul ten times",
               abs(calls.get("aten::_fused_rms_norm", 0) - 1)
               + abs(calls.get("aten::mul", 0) - 10), "<", 0.5)
evidence.claim("RMSNorm: over 15 calls to operators that take 1% of its time or more",
               sum(op.calls for op in rms if op.self_ms >= 0.01 * total_ms(rms)),
               ">", 15)
evidence.claim("RMSNorm: its multiplications alone take longer than LayerNorm's two "
               "kernels", total_ms(rms, {"aten::mul"}), ">",
               total_ms(profiles["LayerNorm"], fused))

# %% [markdown]
# normlib's RMSNorm is no better in eager mode (it, too, is a composition of tensor ops), but under
# `torch.compile` it becomes a few fused loops (one for the forward; two for the backward, whose
# $\partial L/\partial\gamma$ is a column sum); the speed lesson compares the two in its recorded
# results.
#
# ## Exercises
#
# 1. Derive $\partial y / \partial x$ for RMSNorm and compare it with LayerNorm's. Which terms disappear?
# 2. Below which RMS does `eps=None` (float32's epsilon) shrink the output of RMSNorm by more
#    than 1%? Answer from the formula, then check with float32 input. Do the same for `eps=1e-5`
#    and `eps=1e-6`, common explicit choices in language models.
# 3. Replace the LayerNorms of a small Transformer block by RMSNorm and compare the training curves.
