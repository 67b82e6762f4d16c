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
# \mathrm{RMS}(x) = \sqrt{\frac{1}{m}\sum_{k=1}^m x_k^2 + \epsilon}, \qquad y = \frac{x}{\mathrm{RMS}(x)} \odot \gamma ,
# $$
#
# with no $\beta$. The argument of the paper is that re-scaling invariance is what matters for training
# and re-centring can be dropped, which saves a reduction and a subtraction. It is the norm of most
# current large language models, e.g. LLaMA {cite}`touvron2023llama`. In PyTorch it is `torch.nn.RMSNorm`,
# where `eps=None` means the machine epsilon of the input's dtype.

# %%
import torch

import normlib
from normlib import functional as NF
from normlib import lab

lab.seed_everything(0)

# %% [markdown]
# ## Checked against torch, and equal to LayerNorm on zero-mean input
#
# If every sample already has mean zero, then $\frac{1}{m}\sum_k x_k^2$ *is* the variance, and RMSNorm and
# LayerNorm (without affine parameters) agree:

# %%
x = torch.randn(8, 64, dtype=torch.float64) * 3 + 2
w = torch.randn(64, dtype=torch.float64)
print(lab.cmp("normlib.nn.RMSNorm vs torch", NF.rms_norm(x, [64], w), torch.nn.functional.rms_norm(x, [64], w),
                  atol=1e-12))
centred = x - x.mean(-1, keepdim=True)
print(lab.cmp("RMSNorm vs LayerNorm, centred x", NF.rms_norm(centred, [64], eps=1e-5),
                  NF.layer_norm(centred, [64], eps=1e-5), atol=1e-12))
print(lab.cmp("RMSNorm vs LayerNorm, raw x", NF.rms_norm(x, [64], eps=1e-5), NF.layer_norm(x, [64], eps=1e-5),
                  atol=1e-12))

# %% [markdown]
# ## What it is invariant to
#
# Both norms are invariant to re-scaling a sample, $x \to a x$ ($a > 0$), up to the small effect of
# $\epsilon$. Only LayerNorm is invariant to shifting it, $x \to x + b$:

# %%
for name, f in (("LayerNorm", lambda t: NF.layer_norm(t, [64])), ("RMSNorm", lambda t: NF.rms_norm(t, [64]))):
    print(f"{name:<9}  scaled x 5: {lab.cmp('', f(5 * x), f(x), atol=1e-4).strip():<28}"
          f" shifted by 3: {lab.cmp('', f(x + 3), f(x), atol=1e-4).strip()}")

# %% [markdown]
# In a Transformer the residual stream has no fixed mean to remove, and the layers after the norm have
# their own biases, so losing shift invariance costs little in practice, which is the trade the paper
# argues for.
#
# ## How fast is it?
#
# Forward and backward of LayerNorm and RMSNorm on a `(4096, 1024)` float32 activation, torch's native
# modules and normlib's, on the GPU when there is one. (Timings vary, so this cell's output is not
# checked.)

# %%
# NBVAL_IGNORE_OUTPUT
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
for name, layer in layers.items():
    layer = layer.to(device)
    print(f"{name:<18} forward+backward: {benchmark(lambda layer=layer: layer(xb).backward(dy), device)}")

# %% [markdown]
# Both norms read and write the same amount of memory, which is what bounds their speed on a GPU; the
# speed lesson measures how close each implementation gets to that bound.
#
# ## Exercises
#
# 1. Derive $\partial y / \partial x$ for RMSNorm and compare it with LayerNorm's. Which terms disappear?
# 2. With `eps=None`, what epsilon does RMSNorm use for bfloat16 input? Why might that be a problem for
#    activations with a tiny RMS?
# 3. Replace the LayerNorms of a small Transformer block by RMSNorm and compare the training curves.
