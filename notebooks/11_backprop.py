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
# nothing. We do it the way CS231n does: the computational graph first, one node at a time in NumPy,
# checked against finite differences; then the compact formula; then a `torch.autograd.Function`.

# %%
import inspect

import numpy as np
import torch

from normlib import functional as NF
from normlib import lab
from normlib import manual as M
from normlib import reference as R

lab.seed_everything(0)

# %% [markdown]
# ## The graph
#
# For one set $S$ of $m$ elements (one channel over the batch, for BatchNorm):
#
# $$
# \mu = \tfrac{1}{m}\textstyle\sum x \;\to\; x_\mu = x - \mu \;\to\; s = x_\mu^2 \;\to\;
# \sigma^2 = \tfrac{1}{m}\textstyle\sum s \;\to\; \mathrm{std} = \sqrt{\sigma^2 + \epsilon} \;\to\;
# \rho = 1/\mathrm{std} \;\to\; \hat{x} = x_\mu\, \rho \;\to\; y = \gamma \hat{x} + \beta .
# $$
#
# Backprop visits the nodes in reverse, multiplying by each node's local derivative. Note that $x$
# reaches the output by three paths (directly, through $\mu$, and through $\sigma^2$), and $x_\mu$ by
# two; their gradients add up. Here is `normlib.reference.normalize_backward`, which does exactly that:

# %%
print(inspect.getsource(R.normalize_backward))

# %% [markdown]
# ## Checked against finite differences
#
# The numerical gradient $\frac{f(x + h) - f(x - h)}{2h}$ of $L = \sum y \odot \partial L/\partial y$,
# element by element, against the analytic one; CS231n's relative error
# $\frac{|a - b|}{|a| + |b|}$ should be around $10^{-8}$ or below in float64:

# %%
print(inspect.getsource(R.numeric_grad))

# %%
rng = np.random.default_rng(0)
x, dy = rng.normal(1, 2, (6, 3, 2)), rng.normal(size=(6, 3, 2))
gamma, beta = rng.normal(1, 0.5, 3), rng.normal(size=3)
dx, dgamma, dbeta = R.batch_norm_backward(dy, x, gamma)
checks = {
    "dx": (dx, R.numeric_grad(lambda x: R.batch_norm(x, gamma, beta), x.copy(), dy)),
    "dgamma": (dgamma, R.numeric_grad(lambda g: R.batch_norm(x, g, beta), gamma.copy(), dy)),
    "dbeta": (dbeta, R.numeric_grad(lambda b: R.batch_norm(x, gamma, b), beta.copy(), dy)),
}
for name, (analytic, numeric) in checks.items():
    print(f"BatchNorm {name:<7} relative error < 1e-7: {R.rel_error(analytic, numeric) < 1e-7}")

# %% [markdown]
# ## The compact formula
#
# Collapsing the graph (with $\hat{g} = \gamma \odot \partial L / \partial y$ and $\rho = 1/\sqrt{\sigma^2 +
# \epsilon}$) gives
#
# $$
# \frac{\partial L}{\partial x} = \frac{\rho}{m}\Big(m\,\hat{g} - \sum_S \hat{g} - \hat{x} \sum_S \hat{g}\,\hat{x}\Big),
# \qquad \frac{\partial L}{\partial \gamma} = \sum \frac{\partial L}{\partial y} \odot \hat{x}, \qquad
# \frac{\partial L}{\partial \beta} = \sum \frac{\partial L}{\partial y} .
# $$
#
# Read it as a projection: from the upstream gradient $\hat{g}$ it removes its mean over $S$ and its
# component along $\hat{x}$, then scales by $\rho$. Those are exactly the two directions in which $x$ can
# move without changing $\hat{x}$ (shifting all of $S$, scaling all of $S$), so the gradient has no
# component along them. Numerically (with $\epsilon = 0$, since $\epsilon$ makes $\hat{x}$'s variance slightly
# less than 1 and the second identity then holds only approximately):

# %%
xt = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
yt = NF.batch_norm(xt, None, None, training=True, eps=0.0)
(yt * torch.randn_like(yt)).sum().backward()
x_hat = yt.detach()
print("sum of dL/dx over the batch, per channel:       ", np.round(xt.grad.sum(0).numpy(), 12) + 0.0)
print("sum of dL/dx * x_hat over the batch, per channel:", np.round((xt.grad * x_hat).sum(0).numpy(), 12) + 0.0)

# %% [markdown]
# ## One autograd Function for every norm
#
# `normlib.manual` implements this backward once, in a `torch.autograd.Function` whose forward saves only
# $\hat{x}$, $\rho$ and $\gamma$; each norm is a choice of the dimensions $S$ (and RMSNorm drops the
# centring term). Its backward:

# %%
print(inspect.getsource(M._NormAffine.backward))

# %% [markdown]
# A tiny `cmp` in the spirit of micrograd's "backprop ninja": is each hand-derived gradient exactly
# autograd's, close to it, or how far off? Autograd here differentiates `normlib.functional`, the
# composition of tensor ops, in float32:

# %%
def cmp(label, manual, auto):
    exact = torch.equal(manual, auto)
    close = torch.allclose(manual, auto, atol=1e-5, rtol=1e-4)
    print(f"{label:<16} exact: {exact!s:<5}  close: {close!s:<5}  max diff ok (< 1e-4): "
          f"{(manual - auto).abs().max().item() < 1e-4}")


cases = {
    "batch_norm": (lambda f, x, w, b: f.batch_norm(x, None, None, w, b, training=True), (16, 6, 4, 4), (6,)),
    "layer_norm": (lambda f, x, w, b: f.layer_norm(x, [6, 4, 4], w, b), (16, 6, 4, 4), (6, 4, 4)),
    "instance_norm": (lambda f, x, w, b: f.instance_norm(x, weight=w, bias=b), (16, 6, 4, 4), (6,)),
    "group_norm": (lambda f, x, w, b: f.group_norm(x, 3, w, b), (16, 6, 4, 4), (6,)),
    "rms_norm": (lambda f, x, w, b: f.rms_norm(x, [16], w), (8, 4, 16), (16,)),
}
for name, (call, shape, pshape) in cases.items():
    tensors = [torch.randn(shape) * 2 + 1, torch.randn(pshape) + 1] + ([torch.randn(pshape)] if name != "rms_norm"
                                                                        else [])
    grads = {}
    for label, lib in (("manual", M), ("functional", NF)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        y = call(lib, *leaves, *([None] if name == "rms_norm" else []))
        y.backward(torch.ones_like(y).normal_(generator=torch.Generator().manual_seed(1)))
        grads[label] = [t.grad for t in leaves]
    for param, g_manual, g_auto in zip(("dx", "dgamma", "dbeta"), grads["manual"], grads["functional"],
                                       strict=False):
        cmp(f"{name} {param}", g_manual, g_auto)

# %% [markdown]
# "close" rather than "exact": the two compute the same quantity in a different order of floating-point
# operations. `tests/test_manual.py` also runs `torch.autograd.gradcheck` in float64 on every one.
#
# ## What the backward keeps
#
# `torch.autograd.graph.saved_tensors_hooks` lets us see every tensor autograd stores for the backward.
# For a BatchNorm over a `(32, 64, 16, 16)` activation (2 MiB in float32):

# %%
def saved_for_backward(fn):
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        fn()
    return len(sizes), sum(sizes)


x = torch.randn(32, 64, 16, 16, requires_grad=True)
w, b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
for label, fn in (("normlib.manual", lambda: M.batch_norm(x, None, None, w, b, training=True)),
                  ("normlib.functional", lambda: NF.batch_norm(x, None, None, w, b, training=True)),
                  ("torch (native kernel)", lambda: torch.nn.functional.batch_norm(x, None, None, w, b, True))):
    count, nbytes = saved_for_backward(fn)
    print(f"{label:<22} saves {count:>2} tensors, {nbytes / 2**20:6.2f} MiB")

# %% [markdown]
# The composition of tensor ops keeps several full-size intermediates; the hand-written Function keeps
# one ($\hat{x}$) plus per-channel vectors, as does torch's own fused kernel (which keeps the input and
# recomputes $\hat{x}$). For a deep network the activations saved for the backward dominate memory, so
# this matters as much as speed.
#
# ## Exercises
#
# 1. Derive the compact formula from the graph above: write $\partial L/\partial \sigma^2$ and
#    $\partial L/\partial \mu$, then substitute.
# 2. Show that without centring (RMSNorm) the gradient is orthogonal to $\hat{x}$ but no longer sums to
#    zero. Check it numerically with `normlib.manual.rms_norm`.
# 3. In eval mode the statistics are constants. Write the backward pass of BatchNorm in eval mode. Which
#    of the three paths from $x$ to $y$ are left?
