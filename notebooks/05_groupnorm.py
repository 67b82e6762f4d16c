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
# # Group Normalization
#
# Group Normalization {cite}`wu2018group` splits the $C$ channels of each sample into $G$ groups of $C/G$
# consecutive channels and normalizes each group over its channels and positions:
#
# $$
# S_i = \{k : k_N = i_N,\ \lfloor k_C / (C/G) \rfloor = \lfloor i_C / (C/G) \rfloor\}, \qquad
# y = \gamma_c \frac{x - \mu_{ng}}{\sqrt{\sigma^2_{ng} + \epsilon}} + \beta_c .
# $$
#
# The statistics are per group, the learned $\gamma, \beta$ per **channel**. Like LayerNorm and
# InstanceNorm it never looks at other samples, so it works the same at any batch size, which is what
# it was designed for: detection and segmentation models that fit only one or two images per GPU.

# %%
import numpy as np
import torch

from normlib import lab
from normlib import nn as N
from normlib import reference as R

lab.seed_everything(0)

# %% [markdown]
# ## The grouping, in NumPy
#
# A reshape does it: `(N, C, H, W)` becomes `(N, G, C/G, H, W)`, and the moments are taken over the last
# three axes. `normlib.reference.group_norm` is exactly that:

# %%
x = np.random.default_rng(0).normal(1, 2, size=(2, 6, 4, 4))
G = 3
grouped = x.reshape(2, G, 6 // G, 4, 4)
mu, var = R.moments(grouped, (2, 3, 4))
print("statistics shape:", mu.shape, "-> one per (sample, group):", mu.size)
y = ((grouped - mu) / np.sqrt(var + 1e-5)).reshape(x.shape)
print(lab.cmp("by hand vs reference.group_norm", y, R.group_norm(x, G), atol=1e-12))
print(lab.cmp("reference vs torch.nn.GroupNorm", R.group_norm(x, G),
                  torch.nn.GroupNorm(G, 6, affine=False).double()(torch.from_numpy(x)), atol=1e-12))

# %% [markdown]
# ## The two extremes: LayerNorm and InstanceNorm
#
# With $G = 1$ the group is the whole sample (LayerNorm over $(C, H, W)$); with $G = C$ each group is one
# channel (InstanceNorm). One of the source articles says that with $G = C$ GroupNorm "becomes GN"; it
# becomes **IN**. Checked, including what happens to the learned parameters:

# %%
xt = torch.randn(4, 6, 5, 5) * 2 + 1
gn1, ln = N.GroupNorm(1, 6), N.LayerNorm([6, 5, 5])
gn6, inorm = N.GroupNorm(6, 6), N.InstanceNorm2d(6, affine=True)
print(lab.cmp("GroupNorm(1, C) vs LayerNorm(C,H,W)", gn1(xt), ln(xt), atol=1e-5))
print(lab.cmp("GroupNorm(C, C) vs InstanceNorm", gn6(xt), inorm(xt), atol=1e-5))
for name, layer in (("GroupNorm(1, 6)", gn1), ("LayerNorm([6, 5, 5])", ln), ("GroupNorm(6, 6)", gn6),
                    ("InstanceNorm2d(6, affine)", inorm)):
    shapes = [tuple(p.shape) for p in layer.parameters()]
    print(f"{name:<26} learns gamma, beta of shapes {shapes}")

# %% [markdown]
# The normalization agrees exactly (at initialization, with $\gamma = 1$, $\beta = 0$). The parameters do
# not: LayerNorm learns one $\gamma$ per **element** of `(C, H, W)`, GroupNorm one per channel. So
# `GroupNorm(1, C)` is "LayerNorm with per-channel affine", which is what most CNNs that say "LayerNorm"
# actually use, since it does not tie the layer to one image size.
#
# ## What each norm learns
#
# The number of learned parameters for a layer with $C = 64$ channels on $32 \times 32$ feature maps, read
# off the modules, next to the number of statistics each computes for a batch of $N = 8$:

# %%
C, H, W, N_BATCH = 64, 32, 32, 8
x64 = torch.randn(N_BATCH, C, H, W)
layers = {
    "BatchNorm2d(64)": (N.BatchNorm2d(C), (0, 2, 3)),
    "LayerNorm([64, 32, 32])": (N.LayerNorm([C, H, W]), (1, 2, 3)),
    "InstanceNorm2d(64, affine=True)": (N.InstanceNorm2d(C, affine=True), (2, 3)),
    "GroupNorm(32, 64)": (N.GroupNorm(32, C), None),
}
print(f"{'layer':<33}{'learned parameters':>20}{'statistics (N=8)':>18}")
for name, (layer, dims) in layers.items():
    if dims is None:  # GroupNorm: one statistic per (sample, group)
        stats = N_BATCH * layer.num_groups
    else:
        stats = x64.mean(dims).numel()
    print(f"{name:<33}{sum(p.numel() for p in layer.parameters()):>20,}{stats:>18,}")

# %% [markdown]
# One source article says LayerNorm "learns Batch groups of parameters", InstanceNorm "B×C" and
# GroupNorm "B×k". The table shows where that came from and why it is wrong: it is the *statistics*
# that are per sample (they are computed, not learned); the learned parameters are fixed by the
# layer's shape and the same for any batch size.
#
# ## Choosing G
#
# The GroupNorm paper found 32 groups (or 16 channels per group) a good default on ImageNet and showed
# that both extremes, $G = 1$ (LN) and $G = C$ (IN), were worse {cite}`wu2018group`. The groups also need
# $G \mid C$; normlib raises the same `ValueError` as torch when they do not:

# %%
for lib in (N, torch.nn):
    try:
        lib.GroupNorm(5, 64)
    except ValueError as e:
        print(f"{lib.__name__}: ValueError: {e}")

# %% [markdown]
# ## Exercises
#
# 1. Show numerically that GroupNorm's output for a sample does not depend on the batch.
# 2. For $C = 64$, list every valid $G$. Train the LeNet of the BatchNorm lesson with GroupNorm at a few of
#    them (its layers have 6 and 16 channels: which $G$ divide both?).
# 3. GroupNorm assumes that neighbouring channels belong together. Shuffle the channel order of a trained
#    network's feature maps (and its weights accordingly): does the GroupNorm output change?
