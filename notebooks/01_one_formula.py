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
# # One formula, four norms
#
# BatchNorm {cite}`ioffe2015batch`, LayerNorm {cite}`ba2016layer`, InstanceNorm {cite}`ulyanov2016instance`
# and GroupNorm {cite}`wu2018group` look like four different layers. They are one formula. For every
# element $x_i$ of the input,
#
# $$
# \begin{aligned}
# \mu_i &= \frac{1}{m}\sum_{k \in S_i} x_k, \\
# \sigma_i &= \sqrt{\frac{1}{m}\sum_{k \in S_i} (x_k - \mu_i)^2 + \epsilon}, \\
# \hat{x}_i &= \frac{x_i - \mu_i}{\sigma_i}, \\
# y_i &= \gamma\, \hat{x}_i + \beta ,
# \end{aligned}
# $$
#
# where $S_i$ is the set of elements whose statistics $x_i$ shares and $m = |S_i|$. The four layers
# differ only in $S_i$. Index an image batch of shape $(N, C, H, W)$ by $i = (i_N, i_C, i_H, i_W)$:
#
# | norm | $S_i$ | in words |
# |---|---|---|
# | BatchNorm | $\{k : k_C = i_C\}$ | one channel, over the whole batch and all pixels |
# | LayerNorm | $\{k : k_N = i_N\}$ | one sample, over all its channels and pixels |
# | InstanceNorm | $\{k : k_N = i_N,\ k_C = i_C\}$ | one sample's one channel, over its pixels |
# | GroupNorm | $\{k : k_N = i_N,\ \lfloor k_C / (C/G) \rfloor = \lfloor i_C / (C/G) \rfloor\}$ | one sample's group of $C/G$ channels |
#
# ```{note}
# A widely shared write-up of this formula gives LayerNorm's set as $\{k_C = i_N\}$, comparing a
# channel index with a sample index. The set is $\{k_N = i_N\}$: everything that belongs to the same
# sample.
# ```
#
# This lesson draws the four sets, builds each norm in NumPy as nothing more than a choice of axes,
# checks every one against `torch.nn`, and counts what each layer learns.

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
import numpy as np
import torch

import normlib
from normlib import lab
from normlib import reference as R
from normlib.lab.viz import norm_set_mask, plot_norm_sets

lab.setup()

# %% [markdown]
# ## The four sets, drawn
#
# The classic picture {cite}`wu2018group`: a block with the batch axis $N$, the channel axis $C$, and
# the pixels $H, W$ flattened into one axis. The blue cubes are $S_i$ for the element in the front
# corner, $i = (0, 0)$. The mask of each set is computed by evaluating the set definitions above
# index by index (`normlib.lab.viz.norm_set_mask`), so the figure is the formula, not a drawing of it.

# %% mystnb={"figure": {"caption": "The set $S_i$ of each norm for the element $i = (0, 0)$, computed from the set definitions.", "name": "fig-01-sets"}, "image": {"alt": "Four 3-D blocks with axes N, C and H times W. BatchNorm shades one channel across the whole batch, LayerNorm one whole sample, InstanceNorm one channel of one sample, GroupNorm a group of channels of one sample."}}
fig = plot_norm_sets(n=6, c=6, hw=6, groups=3)

# %% [markdown]
# The size of each set is $m$, the number of values averaged. For a realistic layer the numbers are
# very different, and only BatchNorm's grows with the batch:

# %%
N, C, HW, G = 32, 64, 32 * 32, 8
for kind in ("batch", "layer", "instance", "group"):
    m = int(norm_set_mask(kind, N, C, HW, groups=G).sum())
    print(f"{kind:>8} norm: m = {m:>6,} values per statistic")

# %% [markdown]
# ## Each norm is a choice of axes
#
# In an array, "all elements that share $i_C$" means "reduce over every axis except $C$". So each
# norm is one call of the same function, `normlib.reference.moments(x, axes)`, with different axes:
#
# | norm | axes reduced for $(N, C, H, W)$ |
# |---|---|
# | BatchNorm | `(0, 2, 3)` |
# | LayerNorm | `(1, 2, 3)` (the trailing `normalized_shape`) |
# | InstanceNorm | `(2, 3)` |
# | GroupNorm | reshape to $(N, G, C/G, H, W)$, then `(2, 3, 4)` |
#
# Here is `moments`, the only place in the NumPy reference where a mean or a variance is computed:

# %%
import inspect

print(inspect.getsource(R.moments))

# %%
x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 6, 5, 5))

print("BatchNorm axes:   ", R.batch_norm_axes(x.ndim))
print("LayerNorm axes:   ", R.layer_norm_axes(x.ndim, 3))
print("InstanceNorm axes:", R.instance_norm_axes(x.ndim))
sets = {"batch": R.batch_norm_axes(x.ndim), "layer": R.layer_norm_axes(x.ndim, 3),
        "instance": R.instance_norm_axes(x.ndim)}
for name, axes in sets.items():
    mu, var = R.moments(x, axes)
    print(f"{name:>8}: one statistic per {mu.shape} -> {mu.size} means")
mu, var = R.moments(x.reshape(4, 3, 2, 5, 5), (2, 3, 4))
print(f"   group: one statistic per {mu.shape} -> {mu.size} means (G = 3)")

# %% [markdown]
# After normalization every set has mean 0 and variance 1 (up to $\epsilon$), which is a direct check
# that we reduced over the right axes:

# %%
x_hat = R.normalize(x, R.batch_norm_axes(x.ndim))
mu, var = R.moments(x_hat, R.batch_norm_axes(x.ndim))
print("BatchNorm output, per channel:")
print("  mean", np.round(mu.ravel(), 6) + 0.0)
print("  var ", np.round(var.ravel(), 4))

# %% [markdown]
# ## Checked against torch.nn
#
# The NumPy reference works in float64. We run the `torch.nn` layers in float64 on the same input,
# with random affine parameters, and compare. `normlib.cmp` prints *exact*, *close* (within the stated
# tolerance) or the largest difference.

# %%
xt = torch.from_numpy(x)
g6, b6 = torch.randn(2, 6, dtype=torch.float64)
g_ln, b_ln = torch.randn(2, 6, 5, 5, dtype=torch.float64)

bn = torch.nn.BatchNorm2d(6).double()
ln = torch.nn.LayerNorm([6, 5, 5]).double()
inorm = torch.nn.InstanceNorm2d(6, affine=True).double()
gn = torch.nn.GroupNorm(3, 6).double()
with torch.no_grad():
    affine = [(bn, g6, b6), (ln, g_ln, b_ln), (inorm, g6, b6), (gn, g6, b6)]
    for layer, g, b in affine:
        layer.weight.copy_(g)
        layer.bias.copy_(b)
    checks = [
        ("BatchNorm2d (training)", R.batch_norm(x, g6, b6), bn(xt)),
        ("LayerNorm([6, 5, 5])", R.layer_norm(x, (6, 5, 5), g_ln, b_ln), ln(xt)),
        ("InstanceNorm2d", R.instance_norm(x, g6, b6), inorm(xt)),
        ("GroupNorm(3, 6)", R.group_norm(x, 3, g6, b6), gn(xt)),
    ]
for name, ours, theirs in checks:
    print(lab.cmp(name, ours, theirs, atol=1e-12))

# %% [markdown]
# And GroupNorm's two extremes: with one group its set is the whole sample (LayerNorm over $(C, H, W)$),
# with one channel per group it is one channel of one sample (InstanceNorm).

# %%
print(lab.cmp("GN(G=1) vs LayerNorm", R.group_norm(x, 1),
              R.layer_norm(x, (6, 5, 5)), atol=1e-12))
print(lab.cmp("GN(G=C) vs InstanceNorm", R.group_norm(x, 6),
              R.instance_norm(x), atol=1e-12))

# %% [markdown]
# ## What each layer learns
#
# The statistics $\mu_i, \sigma_i$ are computed, not learned. What is learned is the affine pair
# $\gamma, \beta$, and its shape is fixed by the layer's constructor, never by the batch:
# BatchNorm, InstanceNorm (with `affine=True`) and GroupNorm learn one $\gamma$ and one $\beta$ per
# **channel**; LayerNorm learns one per element of `normalized_shape`.
#
# ```{note}
# A popular comparison of these layers says LayerNorm "learns Batch groups of parameters",
# InstanceNorm "B×C" and GroupNorm "B×k". That mixes up statistics with parameters. The counts below
# are read off the `torch.nn` modules themselves, at two batch sizes.
# ```

# %%
def learned(module):
    return sum(p.numel() for p in module.parameters())


C, H, W = 64, 32, 32
layers = {  # name: (module, the set its statistics are taken over)
    "BatchNorm2d(64)": (torch.nn.BatchNorm2d(C), "batch"),
    "LayerNorm([64, 32, 32])": (torch.nn.LayerNorm([C, H, W]), "layer"),
    "InstanceNorm2d(64)": (torch.nn.InstanceNorm2d(C), "instance"),
    "InstanceNorm2d(64, affine)": (torch.nn.InstanceNorm2d(C, affine=True), "instance"),
    "GroupNorm(8, 64)": (torch.nn.GroupNorm(8, C), "group"),
}
print(f"{'layer':<27}{'learned':>8}  {'stats N=2':>9}  {'stats N=32':>10}")
for name, (layer, kind) in layers.items():
    # All sets have one size, so the number of (mu, sigma) pairs is elements / |S_i|.
    stats = [n * C // int(norm_set_mask(kind, n, C, 1, groups=8).sum())
             for n in (2, 32)]
    print(f"{name:<27}{learned(layer):>8,}  {stats[0]:>9,}  {stats[1]:>10,}")


# %% [markdown]
# The "stats" columns count the distinct $(\mu, \sigma)$ pairs computed in one forward pass: they
# do grow with the batch for LN, IN and GN (one per sample, or per sample and channel or group), and
# this is probably where the claim in one of the source articles that LayerNorm learns "B groups" of
# parameters came from. The learned parameters do not grow.
#
# The same counts for normlib's own modules, which are drop-ins for these:

# %%
ours = {
    "BatchNorm2d(64)": normlib.nn.BatchNorm2d(C),
    "LayerNorm([64, 32, 32])": normlib.nn.LayerNorm([C, H, W]),
    "InstanceNorm2d(64)": normlib.nn.InstanceNorm2d(C),
    "InstanceNorm2d(64, affine)": normlib.nn.InstanceNorm2d(C, affine=True),
    "GroupNorm(8, 64)": normlib.nn.GroupNorm(8, C),
}
print(f"{'normlib.nn layer':<27}{'learned':>8}  {'state_dict keys as torch.nn':>27}")
for name, (layer, _) in layers.items():
    same = list(ours[name].state_dict()) == list(layer.state_dict())
    print(f"{name:<27}{learned(ours[name]):>8,}  {'same' if same else 'DIFFERENT':>27}")

# %% [markdown]
# ## Summary
#
# | norm | normalizes over | $m = \lvert S_i \rvert$ | learned $\gamma, \beta$ | uses the batch |
# |---|---|---|---|---|
# | BatchNorm | $N, H, W$, per channel | $NHW$ | $2C$ | yes |
# | LayerNorm | $C, H, W$, per sample | $CHW$ | $2 \times$ `normalized_shape` | no |
# | InstanceNorm | $H, W$, per sample and channel | $HW$ | $2C$ (`affine=True`) or 0 | no |
# | GroupNorm | $C/G$ channels and $H, W$, per sample | $(C/G)HW$ | $2C$ | no |
#
# (for an input of shape $(N, C, H, W)$; BatchNorm also keeps running statistics for evaluation.)
#
# ## Exercises
#
# 1. Write the set $S_i$ for LayerNorm applied to a text batch of shape $(B, T, D)$ with
#    `normalized_shape = D`. Which axes does `moments` reduce? Check with `R.layer_norm`.
# 2. Use `norm_set_mask` to show that for $G = C$ the GroupNorm set equals the InstanceNorm set
#    for every element $i$, not just $i = (0, 0)$.
# 3. Why does subtracting the mean make the bias of a preceding convolution useless in BatchNorm and
#    InstanceNorm? (Hint: add a constant to one channel of `x` and compare `R.batch_norm` before and
#    after.) A convolution's bias is one constant per channel, so it cancels only where every element
#    of $S_i$ lies in one channel. Repeat the test with `R.layer_norm` and with `R.group_norm(x, 3)`
#    (two channels per group): which part of the bias cancels there, and which part survives?
# 4. BatchNorm's $m$ is $NHW$. How small can the batch get before a 1×1 feature map (e.g. after global
#    pooling) has only one value per channel? What does `torch.nn.BatchNorm1d` do then in training?
