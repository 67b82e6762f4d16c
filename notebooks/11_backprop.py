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
# # Backprop through a norm, by hand
#
# Autograd differentiates the normalization for us, but it pays for it: it records every intermediate
# of the forward pass and keeps them for the backward. Deriving the gradient by hand shows *what* the
# gradient of a norm is (a projection, as we will see) and gives a backward pass that keeps almost
# nothing. We do it the way the CS231n course notes do {cite}`cs231n-notes`: the computational graph
# first, one node at a time in NumPy, checked against finite differences; then the compact formula;
# then a `torch.autograd.Function`.

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

import numpy as np
import torch

from normlib import functional as NF
from normlib import lab
from normlib import manual as M
from normlib import reference as R

lab.setup()

# %% [markdown]
# ## The graph
#
# For one set $S$ of $m$ elements (one channel over the batch, for BatchNorm):
#
# $$
# \begin{aligned}
# \mu &= \tfrac{1}{m}\textstyle\sum x, \\
# x_\mu &= x - \mu, \\
# s &= x_\mu^2, \\
# \sigma^2 &= \tfrac{1}{m}\textstyle\sum s, \\
# \mathrm{std} &= \sqrt{\sigma^2 + \epsilon}, \\
# \rho &= 1/\mathrm{std}, \\
# \hat{x} &= x_\mu\, \rho, \\
# y &= \gamma \hat{x} + \beta .
# \end{aligned}
# $$
#
# Each line is one node of the graph, computed from the nodes above it. Backprop visits the nodes in
# reverse, multiplying by each node's local derivative. Note that $x$
# reaches the output by three paths (directly, through $\mu$, and through $\sigma^2$), and $x_\mu$ by
# two; their gradients add up.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The computational graph of a norm for one set $S$. The input $x$ reaches $\\hat{x}$ by three paths: directly into $x_\\mu$ (blue), through the mean $\\mu$ (orange), and through the variance $\\sigma^2$ (green, which starts from $x_\\mu$). Backprop adds the gradients of the three paths.", "name": "fig-11-graph"}, "image": {"alt": "A graph of boxes joined by arrows, left to right: x to x minus mu to x hat to y. A blue arrow goes from x straight to x minus mu, an orange path from x through mu to x minus mu, and a green path from x minus mu through s, sigma squared, std and rho to x hat. Gamma and beta join at y."}}
import matplotlib.pyplot as plt

nodes = {"x": (0, 0), "mu": (1.4, 1.1), "x_mu": (2.8, 0), "s": (3.6, -1.2),
         "var": (5.0, -1.2), "std": (6.4, -1.2), "rho": (7.8, -1.2), "x_hat": (8.6, 0),
         "y": (10.2, 0), "gb": (10.2, 1.1)}
names = {"x": "$x$", "mu": "$\\mu$", "x_mu": "$x_\\mu$", "s": "$s$",
         "var": "$\\sigma^2$", "std": "std", "rho": "$\\rho$", "x_hat": "$\\hat{x}$",
         "y": "$y$", "gb": "$\\gamma, \\beta$"}
paths = {"direct": ("tab:blue", [("x", "x_mu")]),
         "through the mean": ("tab:orange", [("x", "mu"), ("mu", "x_mu")]),
         "through the variance": ("tab:green", [("x_mu", "s"), ("s", "var"),
                                                ("var", "std"), ("std", "rho"),
                                                ("rho", "x_hat")]),
         "shared": ("0.3", [("x_mu", "x_hat"), ("x_hat", "y"), ("gb", "y")])}
fig, ax = plt.subplots(figsize=(7, 2.8))
for key, (px, py) in nodes.items():
    ax.text(px, py, names[key], ha="center", va="center", fontsize=11,
            bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "0.4"})
for label, (color, edges) in paths.items():
    for i, (a, b) in enumerate(edges):
        ax.annotate("", xy=nodes[b], xytext=nodes[a],
                    arrowprops={"arrowstyle": "->", "color": color, "lw": 1.6,
                                "shrinkA": 14, "shrinkB": 14})
        if i == 0:  # one legend entry per path
            ax.plot([], [], color=color, lw=1.6, label=label)
ax.set(xlim=(-0.6, 10.8), ylim=(-1.8, 1.7))
ax.axis("off")
ax.legend(loc="upper left", fontsize=9, frameon=False, ncol=2,
          bbox_to_anchor=(0.0, 1.12))
fig.tight_layout()

# %% [markdown]
# Here is `normlib.reference.normalize_backward`, which walks that graph backwards:

# %%
print(inspect.getsource(R.normalize_backward))

# %% [markdown]
# ## Checked against finite differences
#
# The numerical gradient $\frac{f(x + h) - f(x - h)}{2h}$ of $L = \sum y \odot \partial L/\partial y$,
# element by element, against the analytic one. With CS231n's relative error
# $\frac{|a - b|}{|a| + |b|}$ {cite}`cs231n-notes`, $10^{-7}$ or less means the gradient is right
# for a smooth function; in float64 it is what we test:

# %%
print(inspect.getsource(R.numeric_grad))

# %%
rng = np.random.default_rng(0)
x, dy = rng.normal(1, 2, (6, 3, 2)), rng.normal(size=(6, 3, 2))
gamma, beta = rng.normal(1, 0.5, 3), rng.normal(size=3)
dx, dgamma, dbeta = R.batch_norm_backward(dy, x, gamma)
numeric = {
    "dx": R.numeric_grad(lambda x: R.batch_norm(x, gamma, beta), x.copy(), dy),
    "dgamma": R.numeric_grad(lambda g: R.batch_norm(x, g, beta), gamma.copy(), dy),
    "dbeta": R.numeric_grad(lambda b: R.batch_norm(x, gamma, b), beta.copy(), dy),
}
for (name, num), analytic in zip(numeric.items(), (dx, dgamma, dbeta), strict=True):
    small = R.rel_error(analytic, num) < 1e-7
    print(f"BatchNorm {name:<7} relative error < 1e-7: {small}")

# %% [markdown]
# ## The compact formula
#
# Collapsing the graph (with $\hat{g} = \gamma \odot \partial L / \partial y$ and
# $\rho = 1/\sqrt{\sigma^2 + \epsilon}$) gives
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial x}
#   &= \frac{\rho}{m}\Big(m\,\hat{g} - \sum_S \hat{g} - \hat{x} \sum_S \hat{g}\,\hat{x}\Big), \\
# \frac{\partial L}{\partial \gamma} &= \sum \frac{\partial L}{\partial y} \odot \hat{x}, \\
# \frac{\partial L}{\partial \beta} &= \sum \frac{\partial L}{\partial y} .
# \end{aligned}
# $$
#
# Read it as a projection: from the upstream gradient $\hat{g}$ it removes its mean over $S$ and its
# component along $\hat{x}$, then scales by $\rho$. Those are exactly the two directions in which $x$
# can move without changing $\hat{x}$ (shifting all of $S$, scaling all of $S$), so the gradient has
# no component along them. Numerically, with a negligible $\epsilon = 10^{-20}$: $\epsilon$ makes
# $\hat{x}$'s variance slightly less than 1, and the second identity then holds only approximately.
# ($\epsilon = 0$ is what the algebra wants, but torch, and normlib with it, refuse $\epsilon \le 0$
# in training.)

# %%
xt = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
yt = NF.batch_norm(xt, None, None, training=True, eps=1e-20)
(yt * torch.randn_like(yt)).sum().backward()
x_hat = yt.detach()
print("per channel, summed over the batch (rounded to 12 decimals):")
print("  dL/dx        ", np.round(xt.grad.sum(0).numpy(), 12) + 0.0)
print("  dL/dx * x_hat", np.round((xt.grad * x_hat).sum(0).numpy(), 12) + 0.0)

# %% [markdown]
# ## One autograd Function for every norm
#
# `normlib.manual` implements this backward once, in a `torch.autograd.Function` whose forward saves
# only the input $x$, $\gamma$ and the statistics $\mu, \sigma^2$ (one number per set); the backward
# forms $\rho$ and $\hat{x}$ again from them. Each norm is a choice of the dimensions $S$ (and
# RMSNorm drops the centring term). Its backward:

# %%
print(inspect.getsource(M._NormAffine.backward))

# %% [markdown]
# In the spirit of "Becoming a Backprop Ninja", part 4 of Karpathy's makemore series
# {cite}`karpathy2022ninja`, each hand-derived gradient is compared with two others, in float32:
# autograd differentiating `normlib.functional` (the composition of tensor ops), and torch's own
# native backward (`torch.nn.functional`, one fused kernel per norm, derived by torch's authors). The
# question is whether they agree to float32 precision (here: within $10^{-5}$ plus $10^{-4}$ of the
# value), not whether their last bits coincide: each computes the same quantity in a different order
# of floating-point operations, and whether the rounding happens to come out the same varies from
# machine to machine.

# %%
x4, p6 = (16, 6, 4, 4), (6,)
cases = {  # name: (call with weight w and bias b, input shape, parameter shape)
    "batch_norm": (lambda f, x, w, b: f.batch_norm(x, None, None, w, b, True), x4, p6),
    "layer_norm": (lambda f, x, w, b: f.layer_norm(x, [6, 4, 4], w, b), x4, (6, 4, 4)),
    "instance_norm": (lambda f, x, w, b: f.instance_norm(x, weight=w, bias=b), x4, p6),
    "group_norm": (lambda f, x, w, b: f.group_norm(x, 3, w, b), x4, p6),
    "rms_norm": (lambda f, x, w, b: f.rms_norm(x, [16], w), (8, 4, 16), (16,)),
}
libs = {"manual": M, "functional": NF, "native": torch.nn.functional}
print("manual against autograd through normlib.functional, and against torch's native")
print("backward (ok: torch.allclose, atol=1e-5, rtol=1e-4; - : RMSNorm has no bias)")
print(f"{'':<15}{'vs autograd':<26}{'vs torch native':<26}")
print(f"{'':<15}" + f"{'dx':<8}{'dgamma':<8}{'dbeta':<10}" * 2)
for name, (call, shape, pshape) in cases.items():
    tensors = [torch.randn(shape) * 2 + 1, torch.randn(pshape) + 1]
    if name != "rms_norm":  # RMSNorm has no bias
        tensors.append(torch.randn(pshape))
    grads = {}
    for label, lib in libs.items():
        leaves = [t.clone().requires_grad_() for t in tensors]
        y = call(lib, *leaves, *([None] if name == "rms_norm" else []))
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(grad_y)
        grads[label] = [t.grad for t in leaves] + [None] * (3 - len(leaves))
    line = f"{name:<15}"
    for other in ("functional", "native"):
        verdicts = ["-" if g is None else
                    "ok" if torch.allclose(g, a, atol=1e-5, rtol=1e-4) else "DIFFERENT"
                    for g, a in zip(grads["manual"], grads[other], strict=True)]
        line += f"{verdicts[0]:<8}{verdicts[1]:<8}{verdicts[2]:<10}"
    print(line.rstrip())

# %% [markdown]
# `tests/test_manual.py` also runs `torch.autograd.gradcheck` in float64 on every one.
#
# ## What the backward keeps
#
# `torch.autograd.graph.saved_tensors_hooks` lets us see every tensor autograd stores for the backward.
# For a BatchNorm over a `(32, 64, 16, 16)` activation (2 MiB in float32):

# %%
def saved_for_backward(fn):
    sizes = []

    def pack(t):  # called once for every tensor autograd saves
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return len(sizes), sum(sizes)


F = torch.nn.functional
x = torch.randn(32, 64, 16, 16, requires_grad=True)
w, b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
implementations = {
    "normlib.manual": lambda: M.batch_norm(x, None, None, w, b, training=True),
    "normlib.functional": lambda: NF.batch_norm(x, None, None, w, b, training=True),
    "torch (native kernel)": lambda: F.batch_norm(x, None, None, w, b, True),
}
for label, fn in implementations.items():
    count, nbytes = saved_for_backward(fn)
    print(f"{label:<22} saves {count:>2} tensors, {nbytes / 2**20:6.2f} MiB")

# %% [markdown]
# The composition of tensor ops keeps several full-size intermediates; the hand-written Function keeps
# one full-size tensor (the input $x$) plus per-channel vectors, as does torch's own fused kernel.
# Both recompute $\hat{x}$ in the backward, which costs one cheap elementwise pass and saves a whole
# activation's worth of memory. For a deep network the activations saved for the backward dominate
# memory, so this matters as much as speed.
#
# ## Exercises
#
# 1. Derive the compact formula from the graph above: write $\partial L/\partial \sigma^2$ and
#    $\partial L/\partial \mu$, then substitute.
# 2. Show that without centring (RMSNorm) the gradient is orthogonal to $\hat{x}$ but no longer sums to
#    zero. Check it numerically with `normlib.manual.rms_norm`.
# 3. In eval mode the statistics are constants. Write the backward pass of BatchNorm in eval mode. Which
#    of the three paths from $x$ to $y$ are left?
