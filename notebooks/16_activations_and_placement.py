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
# # Activations, pooling, and where the norm goes
#
# A norm never works alone: in the convolutional networks that descend from LeNet
# {cite}`lecun1998gradient` it sits between a linear layer or convolution, an activation and a
# pooling layer (LeNet itself had none). This lesson builds the activations
# and poolings the source articles list from their formulas, checks them against `torch.nn`, and then
# tests two claims about how they interact with BatchNorm:
#
# - BatchNorm helps a sigmoid network because it "pulls pre-activations back into the range where the
#   sigmoid is sensitive", so gradients do not vanish;
# - BatchNorm belongs after the linear layer and before the activation, because "the output of a ReLU
#   is not Gaussian".

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

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from normlib import lab
from normlib.fold import fold_batchnorm
from normlib.lab import activations as A
from normlib.lab import evidence
from normlib.lab.data import digits, fashion_mnist
from normlib.lab.models import norm_mlp
from normlib.lab.train import fit

lab.setup()
SEEDS = (0, 1, 2)

# %% [markdown]
# ## Activations from their formulas
#
# | name | $f(z)$ | $f'(z)$ |
# |---|---|---|
# | ReLU {cite}`nair2010rectified` | $\max(0, z)$ | $1[z > 0]$ |
# | Leaky ReLU {cite}`maas2013rectifier` | $\max(0,z) + a\min(0,z)$, $a = 0.01$ | $1$ or $a$ |
# | PReLU {cite}`he2015delving` | the same, $a$ learned (starts at 0.25) | $1$ or $a$ |
# | Sigmoid | $\sigma(z) = 1/(1+e^{-z})$ | $\sigma(z)(1-\sigma(z))$ |
# | Tanh | $\tanh z$ | $1 - \tanh^2 z$ |
# | SiLU {cite}`elfwing2018sigmoid,ramachandran2017searching` | $z\,\sigma(z)$ | $\sigma(z)(1 + z(1-\sigma(z)))$ |
# | GELU {cite}`hendrycks2016gaussian` | $z\,\Phi(z)$ | $\Phi(z) + z\,\varphi(z)$ |
#
# $\Phi$ and $\varphi$ are the standard normal CDF and density; GELU also has a tanh form,
# $\tfrac12 z\,(1 + \tanh(\sqrt{2/\pi}\,(z + 0.044715 z^3)))$. Two facts worth seeing in the
# derivatives: the sigmoid's is at most $\tfrac14$ (at $z = 0$) and vanishes for large $|z|$, and
# tanh, $\tanh z = 2\sigma(2z) - 1$, is a rescaled sigmoid whose derivative reaches 1.
#
# Three statements of the source articles need correcting. PReLU does not learn a slope for the
# positive side: it learns $a$, the slope of the *negative* side, and keeps 1 for $z > 0$
# {cite}`he2015delving`. SiLU does not keep positive activations from growing: for large $z$ it is
# $z$ itself, unbounded like ReLU (its derivative, above, overshoots 1 before settling there). And
# GELU did not reach Transformers through BERT: GPT-1 used it first {cite}`radford2018improving`,
# some months before BERT {cite}`devlin2019bert`.
#
# NumPy versions with their derivatives are in `normlib.lab.activations`; here is the file's
# sigmoid, written so that $e^{-z}$ cannot overflow:

# %%
print(inspect.getsource(A.sigmoid))
print(inspect.getsource(A.silu_grad))

# %% [markdown]
# The same formulas in torch, checked against `torch.nn` (values) together with the NumPy versions
# (values and derivatives; torch's derivatives from autograd through `torch.nn`), in float64:

# %%
TORCH_FORMULAS = {
    "ReLU": lambda z: z.clamp(min=0),
    "LeakyReLU": lambda z: torch.where(z > 0, z, 0.01 * z),
    "PReLU": lambda z: torch.where(z > 0, z, 0.25 * z),
    "Sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    "Tanh": lambda z: (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z)),
    "SiLU": lambda z: z / (1 + torch.exp(-z)),
    "GELU": lambda z: z * 0.5 * (1 + torch.erf(z / 2**0.5)),
    "GELU (tanh)": lambda z: (
        0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z**3)))
    ),
}
MODULES = {
    "ReLU": nn.ReLU(),
    "LeakyReLU": nn.LeakyReLU(),
    "PReLU": nn.PReLU().double(),
    "Sigmoid": nn.Sigmoid(),
    "Tanh": nn.Tanh(),
    "SiLU": nn.SiLU(),
    "GELU": nn.GELU(),
    "GELU (tanh)": nn.GELU(approximate="tanh"),
}

z = torch.linspace(-8, 8, 1601, dtype=torch.float64, requires_grad=True)
for name, module in MODULES.items():
    f, df = A.ACTIVATIONS[name]
    out = module(z)
    (grad,) = torch.autograd.grad(out.sum(), z)
    zn = z.detach().numpy()
    print(
        lab.cmp(
            f"{name}, torch formula", TORCH_FORMULAS[name](z.detach()), out, atol=1e-12
        )
    )
    print(lab.cmp(f"{name}, NumPy", f(zn), out, atol=1e-12))
    print(lab.cmp(f"{name}, NumPy f'", df(zn), grad, atol=1e-12))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The activations (left) and their derivatives (right), from the NumPy formulas; the legend, below, covers both panels.", "name": "fig-16-activations"}, "image": {"alt": "Two line plots over z from -4 to 4. Left: ReLU and its leaky variants are straight lines bent at zero; sigmoid rises from 0 to 1 and tanh from -1 to 1; SiLU and GELU follow ReLU for large z but dip slightly below zero for negative z. Right: the derivatives; the sigmoid's peaks at one quarter at zero, tanh's at one, and SiLU's and GELU's overshoot one before settling."}}
zs = np.linspace(-4, 4, 801)
fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.8))
for name, (f, df) in A.ACTIVATIONS.items():
    style = {"ls": "--"} if name in ("PReLU", "GELU (tanh)") else {}
    left.plot(zs, f(zs), label=name, **style)
    right.plot(zs, df(zs), label=name, **style)
left.set(xlabel="z", ylabel="f(z)", ylim=(-1.5, 4))
right.set(xlabel="z", ylabel="f'(z)", ylim=(-0.2, 1.2))
fig.legend(*left.get_legend_handles_labels(), fontsize=10, ncol=4,
           loc="lower center")
fig.tight_layout(rect=(0, 0.16, 1, 1))
plt.show()

# %% [markdown]
# ## Pooling
#
# A $k\times k$ pooling with stride $k$ replaces each window $W$ of a channel by one number:
# $\max_{(i,j)\in W} x_{ij}$ (max pooling) or $\frac{1}{k^2}\sum_{(i,j)\in W} x_{ij}$ (average pooling).
# Global average pooling takes the whole map as one window, turning `(N, C, H, W)` into `(N, C)`.
# The gradients follow from the formulas: average pooling hands each position $\frac{1}{k^2}$ of its
# window's gradient; max pooling hands the whole gradient to the position of the maximum and zero to
# the rest (the first maximum, when several positions tie, as torch does).

# %%
torch.manual_seed(0)
# 7 rows: the last one is dropped, as torch drops it
x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
dy = torch.randn(2, 3, 3, 3, dtype=torch.float64)
xn, dyn = x.detach().numpy(), dy.numpy()
for name, ours, back, theirs in (
    ("max pool", A.max_pool2d, A.max_pool2d_backward, F.max_pool2d),
    ("avg pool", A.avg_pool2d, A.avg_pool2d_backward, F.avg_pool2d),
):
    y = theirs(x, 2)
    (dx,) = torch.autograd.grad(y, x, dy)
    print(lab.cmp(f"{name}", ours(xn, 2), y, atol=1e-12))
    print(lab.cmp(f"{name}, gradient", back(dyn, xn, 2), dx, atol=1e-12))
print(
    lab.cmp(
        "global avg pool",
        A.global_avg_pool2d(xn),
        F.adaptive_avg_pool2d(x, 1).flatten(1),
        atol=1e-12,
    )
)

# %% [markdown]
# Max pooling's routing, on one 4x4 map with a gradient of 1 from each of the four windows:

# %%
small = np.array([[1, 5, 2, 0], [3, 4, 8, 1], [0, 2, 6, 6], [9, 1, 3, 2]], float)
small = small[None, None]
print("input:\n", small[0, 0].astype(int))
print("max pool:\n", A.max_pool2d(small)[0, 0].astype(int))
print(
    "gradient:\n", A.max_pool2d_backward(np.ones((1, 1, 2, 2)), small)[0, 0].astype(int)
)

# %% [markdown]
# Each window sends its whole gradient to one position: three quarters of the positions get no
# gradient at all from a 2x2 max pooling, while average pooling gives every position a quarter.
#
# The source articles credit pooling with three things: fewer parameters, less overfitting, and
# invariance to small shifts. The first is arithmetic: pooling has no parameters of its own, and a
# 2x2 pooling divides the inputs of a fully connected layer after it by 4. In the LeNet-style network
# below (two 2x2
# poolings before the first fully connected layer), that layer's weights are counted with and without
# the poolings:

# %%
fc_in = {"with both poolings": 16 * 7 * 7, "without them": 16 * 28 * 28}
for label, n_in in fc_in.items():
    print(f"first fully connected layer, {label:<19} "
          f"{nn.Linear(n_in, 120).weight.numel():>9,}")

# %% [markdown]
# The other two are not tested in this lesson: whether fewer parameters means less overfitting
# depends on the data and the training (the BatchNorm lesson's regularisation experiment shows how
# such a claim has to be set up), and a max pooling's output is unchanged by a shift only when every
# shifted window still has the same maximum: a one-pixel shift moves values out of each window and
# others in, so whether the output survives depends on the image (a shift by a multiple of the
# stride just shifts the output).
#
# ## Saturation, measured
#
# The argument of the source article: in a deep sigmoid network the pre-activations drift towards the
# flat ends of the sigmoid, where $\sigma' \approx 0$, so the gradient vanishes in the lower layers;
# BatchNorm pulls them back to mean 0 and variance 1, where the sigmoid is sensitive (Glorot and Bengio
# studied the saturation of deep sigmoid networks {cite}`glorot2010understanding`). Measure both
# halves on an MLP with six hidden layers of 128 units on the digits: the share of pre-activations
# in the flat region ($|z| > 3$, where $\sigma'(z) < 0.05$), the forward signal (each unit's standard
# deviation over the batch, averaged over a layer's units: what varies with the input), and the norm
# of each layer's weight gradient, at initialisation and after 3 epochs. The initial weights of the hidden layers are
# multiplied by a factor $s$: 1 is PyTorch's default, 8 makes large pre-activations from the start.

# %%
digit_data = digits()
DEEP = [64] + [128] * 6 + [10]
ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def layer_report(model, x, y):
    """Per hidden layer: share of pre-activations with |z| > 3 and their spread over the
    batch (each unit's std, mean over units); per Linear: weight-gradient norm.
    """
    pre = []
    hooks = [
        m.register_forward_hook(lambda m, inp, out: pre.append(inp[0].detach()))
        for m in model
        if isinstance(m, (nn.Sigmoid, nn.Tanh))
    ]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    grads = [m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)]
    sats = [(z.abs() > 3).float().mean().item() for z in pre]
    return sats, grads, pre, [z.std(0, correction=0).mean().item() for z in pre]


def saturation_run(seed, act, norm, scale, epochs=3):
    lab.seed_everything(seed)
    model = norm_mlp(
        DEEP, nn.BatchNorm1d if norm == "BN" else None, activation=ACTS[act]
    )
    with torch.no_grad():
        for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
            layer.weight.mul_(scale)
    x, y = digit_data[0][:512], digit_data[1][:512]
    sat0, grad0, _, spread0 = layer_report(model, x, y)
    hist = fit(
        model,
        digit_data,
        epochs=epochs,
        batch_size=64,
        lr=0.1,
        momentum=0.9,
        seed=seed,
        progress=False,
    )
    model.train()
    sat1, grad1, _, _ = layer_report(model, x, y)
    return {
        "sat_init": sat0,
        "grad_init": grad0,
        "sat_end": sat1,
        "grad_end": grad1,
        "max_sat_init": max(sat0),
        "max_sat_end": max(sat1),
        "grad_ratio": grad0[0] / grad0[-2],
        "spread": spread0,
        "spread_ratio": spread0[-1] / spread0[0],
        "test_acc": hist["test_acc"][-1],
    }


CASES = [
    ("sigmoid", "none", 1.0),
    ("sigmoid", "BN", 1.0),
    ("sigmoid", "none", 8.0),
    ("sigmoid", "BN", 8.0),
    ("tanh", "none", 1.0),
    ("tanh", "BN", 1.0),
]
saturation = evidence.Runs(
    [
        r
        for act, norm, scale in CASES
        for r in evidence.sweep(
            saturation_run,
            {"act": [act], "norm": [norm], "scale": [scale]},
            seeds=SEEDS,
            progress=False,
        ).records
    ]
)
print(f"{len(saturation)} runs")

# %% [markdown]
# This run's numbers: the largest share of saturated pre-activations over the layers, the ratio of the
# last hidden layer's forward signal to the first's and of the first layer's gradient norm to the
# last hidden layer's, both at initialisation, and test accuracy:

# %% tags=["nbval-ignore-output"]
rows = []
for act, norm, scale in CASES:
    sel = {"act": act, "norm": norm, "scale": scale}
    rows.append(
        [
            f"{act}, {norm}, s={scale:g}",
            f"{saturation.estimate('max_sat_init', **sel).scaled(100):.1f}",
            f"{saturation.estimate('max_sat_end', **sel).scaled(100):.1f}",
            f"{saturation.estimate('spread_ratio', **sel).mean:.1e}",
            f"{saturation.estimate('grad_ratio', **sel).mean:.1e}",
            f"{saturation.estimate('test_acc', **sel).scaled(100):.1f}",
        ]
    )
print(
    evidence.table(
        ["network", "sat% init", "sat% end", "signal last/1st", "grad 1st/last",
         "test %"],
        rows,
    )
)


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Deep sigmoid and tanh networks on the digits: the weight-gradient norm of each layer at initialisation (left) and after 3 epochs (right), with and without BatchNorm, default initial scale (mean over 3 seeds; bars: s.e.).", "name": "fig-16-gradients"}, "image": {"alt": "Two plots of gradient norm on a log scale against layer number. At initialisation the sigmoid network without BatchNorm has gradients that fall by orders of magnitude from the last layer to the first; with BatchNorm the sigmoid and tanh curves are nearly flat. The tanh network without BatchNorm has nearly flat but smaller gradients. After training the sigmoid network without BatchNorm still has tiny gradients in its first layers."}}
def mean_sem(curves):
    a = np.asarray(curves)
    return a.mean(0), a.std(0, ddof=1) / np.sqrt(len(a))


fig, axes = plt.subplots(1, 2, figsize=(7, 3.8), sharey=True)
for act, norm, scale in [c for c in CASES if c[2] == 1.0]:
    runs = saturation.select(act=act, norm=norm, scale=scale).records
    for ax, key in zip(axes, ("grad_init", "grad_end"), strict=True):
        mean, sem = mean_sem([r[key] for r in runs])
        ax.errorbar(
            np.arange(1, len(mean) + 1),
            mean,
            yerr=sem,
            marker="o",
            capsize=3,
            label=f"{act}, {norm}",
            ls="-" if norm == "BN" else "--",
        )
for ax, title in zip(axes, ("at initialisation", "after 3 epochs"), strict=True):
    ax.set(yscale="log", xlabel="layer (1 = input side)", title=title)
axes[0].set_ylabel("weight-gradient norm")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Pre-activations of each hidden layer of the sigmoid network at initialisation on 512 training images, for initial scales 1 and 8, with and without BatchNorm (one seed); boxes: quartiles, line: median, whiskers: 1st and 99th percentiles; shaded: the flat region of the sigmoid, |z| > 3.", "name": "fig-16-preact"}, "image": {"alt": "Four panels of box plots of pre-activation values per layer. Without BatchNorm at scale 1 the values are narrow around zero; at scale 8 the boxes widen and the whiskers reach well into the shaded flat region. With BatchNorm both scales give the same unit-spread boxes, inside the sensitive region."}}
fig, axes = plt.subplots(1, 4, figsize=(7, 3.7), sharey=True)
for ax, (norm, scale) in zip(
    axes, [("none", 1.0), ("none", 8.0), ("BN", 1.0), ("BN", 8.0)], strict=True
):
    lab.seed_everything(0)
    model = norm_mlp(
        DEEP, nn.BatchNorm1d if norm == "BN" else None, activation=nn.Sigmoid
    )
    with torch.no_grad():
        for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
            layer.weight.mul_(scale)
    _, _, pre, _ = layer_report(model, digit_data[0][:512], digit_data[1][:512])
    ax.boxplot([z.flatten().numpy() for z in pre], whis=(1, 99), showfliers=False)
    ax.axhspan(3, 40, color="0.85")
    ax.axhspan(-40, -3, color="0.85")
    ax.set(title=f"{norm}, s={scale:g}", xlabel="layer", ylim=(-25, 25))
axes[0].set_ylabel("pre-activation z")
fig.tight_layout()
plt.show()

# %% [markdown]
# The checks, on this run. The accuracy comparisons train every arm with one learning rate (0.1,
# momentum 0.9) for 3 epochs; they say what BatchNorm does in that setting, not that no setting
# trains the plain network (exercise 2 gives it a better start):


# %%
def sat(key, **sel):
    return saturation.estimate(key, act="sigmoid", **sel)


evidence.claim(
    "at the default scale, sigmoid pre-activations are not saturated (< 1% beyond 3)",
    sat("max_sat_init", norm="none", scale=1.0),
    "<",
    0.01,
)
evidence.claim(
    "its forward signal shrinks: the last hidden layer's spread is under 1/100 of "
    "the first's",
    sat("spread_ratio", norm="none", scale=1.0),
    "<",
    0.01,
)
# With BN the pre-activations are the BN's outputs: in training mode each unit has
# spread 1 over the batch (gamma = 1 at initialisation), in every layer, by construction.
for r in saturation.select(norm="BN").records:
    assert np.allclose(r["spread"], 1.0, atol=1e-3), (
        "BN's output has unit spread by construction")
print("with BN, every layer's spread is 1 "
      "(BatchNorm's output in training mode, gamma = 1)")
evidence.claim(
    "and the first layer's gradient is under 1/100 of the last hidden layer's",
    sat("grad_ratio", norm="none", scale=1.0),
    "<",
    0.01,
)
evidence.claim(
    "with BN the ratio is above 1/3: the gradient reaches the first layer",
    sat("grad_ratio", norm="BN", scale=1.0),
    ">",
    1 / 3,
)
evidence.claim(
    "at scale 8 without BN, over 20% of some layer's pre-activations saturate",
    sat("max_sat_init", norm="none", scale=8.0),
    ">",
    0.20,
)
evidence.claim(
    "... yet its gradient ratio is over 100x that at scale 1",
    sat("grad_ratio", norm="none", scale=8.0),
    ">",
    sat("grad_ratio", norm="none", scale=1.0).scaled(100),
)
for scale in (1.0, 8.0):
    evidence.claim(
        f"with BN at scale {scale:g}, under 2% saturate, at init and after training",
        max(
            sat("max_sat_init", norm="BN", scale=scale).high,
            sat("max_sat_end", norm="BN", scale=scale).high,
        ),
        "<",
        0.02,
    )
    margin = {1.0: 0.30, 8.0: 0.10}[scale]  # at s=8 the plain runs spread widely
    evidence.claim(
        f"the sigmoid network with BN beats it without by {100 * margin:.0f}+ points "
        f"(s={scale:g})",
        sat("test_acc", norm="BN", scale=scale),
        ">",
        sat("test_acc", norm="none", scale=scale),
        margin=margin,
        unit=100,
    )
evidence.claim(
    "tanh with BN also beats tanh without it",
    saturation.estimate("test_acc", act="tanh", norm="BN"),
    ">",
    saturation.estimate("test_acc", act="tanh", norm="none"),
    margin=0.02,
    unit=100,
)

# %% [markdown]
# With BN, the factor $s$ changes nothing in the forward pass: the Linear before each BN has no
# bias, and the BN divides the factor out ($\mathrm{BN}(sWx) = \mathrm{BN}(Wx)$ up to its
# $\epsilon$). So the BN rows at $s = 1$ and $s = 8$ have the same pre-activations and the same
# gradient ratio at initialisation. What $s$ changes is the size of the weight gradients ($1/s$), and
# so the effective learning rate of these scale-invariant weights ($1/s^2$). "BatchNorm removes the
# saturation at initialisation" is therefore true by construction; the check after training (in
# every run) is the one that measures something.
#
# The article's picture fits large weights, and it is not what happens at the start of training with
# the default initialisation. At PyTorch's default initialisation (Glorot and Bengio's "standard"
# one, $U[-1/\sqrt{n}, 1/\sqrt{n}]$) the sigmoid network starts *un*saturated, and its signal
# vanishes anyway, in both directions: forwards, each layer multiplies the input-dependent part of
# the signal by $\sigma' \le \tfrac14$ and by small weights, so the last hidden layer barely sees the
# input; backwards, the gradient shrinks by the same factors. BatchNorm cures both, not by moving
# pre-activations out of the flat region (at initialisation they are not there) but by dividing by
# the batch standard deviation: forwards, that restores each layer's spread to 1; backwards, the same
# $1/\sigma$ (the one that makes the layer scale invariant) scales the gradient back up. These runs do
# not test the article's actual claim, that pre-activations *drift* into the flat region during
# training: they measure saturation at initialisation and after only 3 epochs at one learning rate
# shared by all arms. (Glorot and Bengio, with the same weight initialisation, saw the top hidden
# layer of a sigmoid network saturate early in training {cite}`glorot2010understanding`.) With large
# initial weights the saturation is there from the start, and BatchNorm removes it; but even then
# the saturated network passes more gradient to its first layer than the unsaturated default one,
# because its weights are larger. At initialisation, saturation is one way to lose the gradient, not
# the main one here.
#
# ## Placement: before or after the activation, before or after pooling
#
# The article's rule is Linear/Conv → BN → activation, the placement of the BatchNorm paper
# {cite}`ioffe2015batch`; the other common choice is BN after the activation. With a max pooling in
# the block there is a third: conv → ReLU → pool → BN. The argument is the paper's (Section 3.2): the
# output of a nonlinearity changes its shape as training moves the weights, so fixing its first two
# moments would not remove that shift, whereas $Wx + b$ "is more likely to have a symmetric,
# non-sparse distribution, that is 'more Gaussian'". For a ReLU the difference is plain: fed a
# symmetric input, about half of its output is exactly zero, so a BN after the ReLU normalizes a
# skewed, sparse, moving target. Compare the three in a small LeNet-style network on 2,000
# Fashion-MNIST
# images {cite}`xiao2017fashion`, everything else fixed (SGD with momentum 0.9, batch 32, 3 epochs),
# at two learning rates, three seeds each. Along the way we follow what the first BatchNorm
# receives (its input, on 256 fixed training images), at initialisation and after each epoch: its
# share of exact zeros and its skewness $E[(x-\mu)^3]/\sigma^3$ per channel (0 for a symmetric
# distribution), averaged over the channels.

# %%
fashion = fashion_mnist(n_train=2000, n_test=1000)
probe_images = fashion[0][:256]


class PlacedLeNet(nn.Module):
    """LeNet for 28x28 input with BatchNorm placed 'before' or 'after'
    each ReLU, or 'after pool'.
    """

    def __init__(self, placement):
        super().__init__()
        self.placement = placement

        def conv_block(c_in, c_out):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=placement != "before")
            bn, relu, pool = nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)
            order = {
                "before": [conv, bn, relu, pool],
                "after": [conv, relu, bn, pool],
                "after pool": [conv, relu, pool, bn],
            }
            return order[placement]

        fc_bn = (
            [nn.Linear(784, 120, bias=False), nn.BatchNorm1d(120), nn.ReLU()]
            if placement == "before"
            else [nn.Linear(784, 120), nn.ReLU(), nn.BatchNorm1d(120)]
        )
        self.net = nn.Sequential(
            *conv_block(1, 6),
            *conv_block(6, 16),
            nn.Flatten(),
            *fc_bn,
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.net(x)


def input_of(model, layer, x):
    """What `layer` receives when `model` runs on x (in the model's current mode)."""
    seen = []
    hook = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def second_conv_input(model, x):
    """What the second convolution receives (in train mode, at initialisation)."""
    return input_of(model, [m for m in model.net if isinstance(m, nn.Conv2d)][1], x)


@torch.no_grad()
def bn_input_shape(model):
    """The first BN's input on the probe images (eval mode): zero share, mean
    skewness."""
    was_training = model.training
    model.eval()
    a = input_of(model,
                 model.net[[isinstance(m, nn.BatchNorm2d)
                            for m in model.net].index(True)],
                 probe_images)
    model.train(was_training)
    per_channel = a.transpose(0, 1).flatten(1)
    centred = per_channel - per_channel.mean(1, keepdim=True)
    skew = centred.pow(3).mean(1) / centred.pow(2).mean(1).pow(1.5)
    return (a == 0).float().mean().item(), skew.mean().item()


PLACEMENTS = ["before", "after", "after pool"]
PLACE_SEEDS = (0, 1, 2)
STEPS_PER_EPOCH = len(fashion[0]) // 32


def placement_run(seed, placement, lr, epochs):
    lab.seed_everything(seed)
    model = PlacedLeNet(placement)
    model.train()
    a = second_conv_input(model, probe_images)
    shapes = []

    def follow(step):
        if step % STEPS_PER_EPOCH == 0:
            shapes.append(bn_input_shape(model))

    hist = fit(
        model,
        fashion,
        epochs=epochs,
        batch_size=32,
        lr=lr,
        momentum=0.9,
        seed=seed,
        progress=False,
        on_step=follow,
    )
    shapes.append(bn_input_shape(model))
    return {
        "test_acc": hist["test_acc"][-1],
        "zeros": (a == 0).float().mean().item(),
        "mean": a.mean().item(),
        "min": a.min().item(),
        "bn_zeros": [z for z, _ in shapes],
        "bn_skew": [k for _, k in shapes],
        "skew_init": shapes[0][1],
        "skew_end": shapes[-1][1],
        "zeros_init": shapes[0][0],
        "zeros_end": shapes[-1][0],
    }


PLACE_LRS = [0.02, 0.1]
placed = evidence.sweep(
    placement_run,
    {"placement": PLACEMENTS, "lr": PLACE_LRS, "epochs": [3]},
    seeds=PLACE_SEEDS,
    desc="placements",
)

# %% [markdown]
# This run's numbers: test accuracy (%) by learning rate after 3 epochs; the difference "before"
# minus each other placement (points, with its 90% interval); what the second convolution receives
# at initialisation (share of exact zeros, mean); and the skewness of the first BN's input at
# initialisation and at the end (lr 0.1):

# %% tags=["nbval-ignore-output"]
print(placed.table("test_acc", "placement", "lr", scale=100))
for lr in PLACE_LRS:
    for other in PLACEMENTS[1:]:
        d = evidence.difference(placed.estimate("test_acc", placement="before", lr=lr),
                                placed.estimate("test_acc", placement=other, lr=lr))
        low, high = d.interval(0.90)
        print(f"lr {lr:g}, before - {other:<10}: {100 * d.value:+5.1f} "
              f"[{100 * low:+5.1f}, {100 * high:+5.1f}]")
print(
    evidence.table(
        ["BN placement", "zeros %", "mean", "BN input skew: init", "end"],
        [
            [
                p,
                f"{placed.estimate('zeros', placement=p, lr=0.1).scaled(100):.0f}",
                f"{placed.estimate('mean', placement=p, lr=0.1):.2f}",
                f"{placed.estimate('skew_init', placement=p, lr=0.1):.2f}",
                f"{placed.estimate('skew_end', placement=p, lr=0.1):.2f}",
            ]
            for p in PLACEMENTS
        ],
    )
)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "A LeNet-style network on 2,000 Fashion-MNIST images with BatchNorm before each ReLU, after it, or after the pooling. Left: test accuracy after 3 epochs at two learning rates. Right: skewness of what the first BatchNorm normalizes, averaged over its channels, at initialisation and after each epoch at learning rate 0.1 (mean ± s.e. over 3 seeds).", "name": "fig-16-placement"}, "image": {"alt": "Left: test accuracy for the three placements at learning rates 0.02 and 0.1, with error bars. Right: the skewness of the first BatchNorm's input over 3 epochs for the three placements; with BatchNorm before the ReLU it is that of a convolution's output, slightly negative, near zero, at initialisation; after the ReLU it is large and positive."}}
fig, (left, right) = plt.subplots(1, 2, figsize=(7, 4))
for k, p in enumerate(PLACEMENTS):
    ests = [placed.estimate("test_acc", placement=p, lr=lr).scaled(100)
            for lr in PLACE_LRS]
    left.errorbar(np.arange(len(PLACE_LRS)) + 0.12 * (k - 1), [e.mean for e in ests],
                  yerr=[e.sem for e in ests], marker="o", capsize=3, ls="none",
                  color=f"C{k}", label=p)
left.set(xticks=range(len(PLACE_LRS)), xticklabels=[f"{v:g}" for v in PLACE_LRS],
         xlim=(-0.5, len(PLACE_LRS) - 0.5), xlabel="learning rate",
         ylabel="test accuracy (%), 3 epochs")
left.legend(title="BN placement", fontsize=9)
for k, p in enumerate(PLACEMENTS):
    curves = np.array([r["bn_skew"] for r in placed.select(placement=p, lr=0.1).records])
    mean, sem = curves.mean(0), curves.std(0, ddof=1) / np.sqrt(len(curves))
    right.errorbar(np.arange(len(mean)), mean, yerr=sem, marker="o", capsize=3,
                   color=f"C{k}", label=p)
right.axhline(0, color="grey", lw=0.8, ls=":")
right.set(xlabel="epoch", ylabel="skewness of the first BN's input")
fig.tight_layout()
plt.show()

# %% [markdown]
# What holds by construction is checked, not claimed: a max pooling of a ReLU's output is never
# negative; a BatchNorm in training mode hands on each channel centred on its $\beta$ (0 at
# initialisation), so BN as the last thing before the next layer feeds it zero-mean values; and a
# centred channel has values below zero, which a max pooling keeps wherever a whole window is
# below the mean.

# %%
for r in placed.select(placement="before").records:
    assert r["min"] >= 0, "ReLU then max pooling: nothing negative"
for r in placed.select(placement="after pool").records:
    assert abs(r["mean"]) < 1e-5, "BN in training mode: each channel's mean is beta = 0"
for r in placed.select(placement="after").records:
    assert r["min"] < 0, "a centred channel has values below zero"
print("before: min >= 0; after pool: mean 0; after: values below zero (every run)")

# %%
evidence.claim(
    "BN before the ReLU feeds the next layer a quarter or more exact zeros (at init)",
    placed.estimate("zeros", placement="before", lr=0.1),
    ">",
    0.25,
)
evidence.claim(
    "BN after the ReLU feeds it under 1% zeros",
    placed.estimate("zeros", placement="after", lr=0.1),
    "<",
    0.01,
)
evidence.claim(
    "BN after the ReLU normalizes a quarter or more exact zeros (at init)",
    placed.estimate("zeros_init", placement="after", lr=0.1),
    ">",
    0.25,
)
evidence.claim(
    "... a skewed input: its skewness exceeds that of BN before the ReLU by > 0.5",
    placed.estimate("skew_init", placement="after", lr=0.1),
    ">",
    placed.estimate("skew_init", placement="before", lr=0.1),
    margin=0.5,
)


# %% [markdown]
# The distributions differ as the article says. BN before the ReLU hands the next layer one-signed
# values with many exact zeros (after the max pooling too), while a BN after the ReLU has to
# normalize such a distribution itself: a quarter or more exact zeros and a skewed shape at
# initialisation. The article's argument is that this shape keeps changing in training; the figure
# follows it epoch by epoch, but it varies from seed to seed more than three seeds can pin down, so
# we state nothing about its course.
#
# Does the placement change the accuracy? These runs are not built to rank the placements: with
# three seeds per arm, whether an interval printed above excludes zero can change from one machine
# to the next, and no claim about accuracy is checked. So we make none (exercise 4 asks for the runs
# that could). The article's rule rests here on what the BN has to normalize and, below, on what
# each placement allows at inference.
#
# Placing BN after the max pooling changes less than it seems: a per-channel affine map with
# $\gamma > 0$ is increasing, so it commutes with the max,
# $\max_W(\gamma x + \beta) = \gamma \max_W x + \beta$; only the set its statistics are taken over
# changes.

# %%
x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
g, b = (
    torch.rand(1, 3, 1, 1, dtype=torch.float64) + 0.5,
    torch.randn(1, 3, 1, 1, dtype=torch.float64),
)
print(
    lab.cmp(
        "pool(g x + b) = g pool(x) + b",
        F.max_pool2d(g * x + b, 2),
        g * F.max_pool2d(x, 2) + b,
        atol=1e-12,
    )
)
differs = not torch.allclose(F.max_pool2d(-g * x + b, 2), -g * F.max_pool2d(x, 2) + b)
print(f"{'... with g < 0':<28} {'differs' if differs else 'AGREES'}")

# %% [markdown]
# ## What each placement allows at inference
#
# At inference BatchNorm is a fixed per-channel affine map, $y = s \odot z + t$ with
# $s = \gamma/\sqrt{\sigma^2_{\text{run}} + \epsilon}$ and $t = \beta - s\,\mu_{\text{run}}$, and the
# inference lesson folds it into the layer *before* it. That needs the BN to come right after a linear
# layer: the "before" placement. With BN after the ReLU, the layer before is the ReLU, so it cannot
# fold backwards; it can fold *forwards* into the next convolution,
# $W' = W \odot s$ (over input channels) and $b' = b + \sum W t$, but only if that convolution pads with
# zeros nowhere: a zero on the border of the BN's output is not a zero after BN, it is $t$. Check both
# on a trained-looking BN (random running statistics), in float64:


# %%
def fold_into_next(bn, conv):
    """A copy of `conv` that computes conv(bn(x)) for an eval-mode BN in front of it."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - s * bn.running_mean
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        padding=conv.padding,
        bias=True,
    ).double()
    with torch.no_grad():
        folded.weight.copy_(conv.weight * s[None, :, None, None])
        shift = (conv.weight * t[None, :, None, None]).sum((1, 2, 3))
        folded.bias.copy_((conv.bias if conv.bias is not None else 0) + shift)
    return folded


torch.manual_seed(0)
bn = nn.BatchNorm2d(6).double().eval()
with torch.no_grad():
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.normal_()
x = torch.relu(torch.randn(2, 6, 10, 10, dtype=torch.float64))
for pad in (0, 1):
    conv = nn.Conv2d(6, 16, 3, padding=pad).double()
    with torch.no_grad():
        want, got = conv(bn(x)), fold_into_next(bn, conv)(x)
    if pad == 0:
        print(lab.cmp("fold forward, padding=0", got, want, atol=1e-12))
    else:
        print(
            f"{'fold forward, padding=1':<28} "
            f"{'differs' if not torch.allclose(got, want) else 'AGREES'}"
        )
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
        print(
            lab.cmp(
                "  ... away from the border", got[inner], want[inner], atol=1e-12
            )
        )

# %% [markdown]
# In LeNet's "after" placement a max pooling sits between the BN and the next convolution:
# conv → ReLU → BN → pool → conv. The fold forward has to pass through the pooling, and the
# commutation above says when it can: $\max_W(s x + t) = s \max_W x + t$ needs $s > 0$ in every
# channel, that is $\gamma_c / \sqrt{\sigma^2_c + \epsilon} > 0$, a positive $\gamma_c$. Then
# conv(pool(BN(x))) = conv'(pool(x)) with the folded conv'; one channel with $\gamma_c < 0$ breaks it:

# %%
conv = nn.Conv2d(6, 16, 3, padding=0).double()
with torch.no_grad():
    want = conv(F.max_pool2d(bn(x), 2))
    got = fold_into_next(bn, conv)(F.max_pool2d(x, 2))
print(lab.cmp("fold through max pool, gamma > 0", got, want, atol=1e-12))
flipped = nn.BatchNorm2d(6).double().eval()
flipped.load_state_dict(bn.state_dict())
with torch.no_grad():
    flipped.weight[2] = -flipped.weight[2]
    want = conv(F.max_pool2d(flipped(x), 2))
    got = fold_into_next(flipped, conv)(F.max_pool2d(x, 2))
print(f"{'... one gamma < 0':<28} "
      f"{'differs' if not torch.allclose(got, want) else 'AGREES'}")

# %% [markdown]
# And the "before" placement folds backwards with the library's `fold_batchnorm` (lesson 12):

# %%
conv = nn.Conv2d(6, 16, 3, padding=1, bias=False).double()
bn16 = nn.BatchNorm2d(16).double().eval()
with torch.no_grad():
    bn16.running_mean.normal_()
    bn16.running_var.uniform_(0.5, 2)
    want = bn16(conv(x))
    got = fold_batchnorm(conv, bn16)(x)
print(lab.cmp("fold backward (conv -> BN)", got, want, atol=1e-12))

# %% [markdown]
# So the placements are not equal at deployment: "before" always folds away; "after" folds only into
# an unpadded next layer (and LeNet's 3x3 convolutions pad), or into a fully connected layer, and
# through a max pooling only when no $\gamma_c$ is negative (training does not guarantee it).
#
# ## Summary
#
# - Every activation and pooling of the source articles, from its formula, agrees with `torch.nn` in
#   value and gradient; max pooling sends each window's gradient to one position.
# - At PyTorch's default initialisation a deep sigmoid network loses its signal, forwards and
#   backwards, without any saturation; BatchNorm restores both and, with large weights, removes the
#   saturation. Whether saturation develops during training, the article's claim, these short runs
#   do not test.
# - BN before or after the ReLU changes what the next layer sees (before: one-signed, with many
#   exact zeros; after: values of both signs, exactly centred in training mode only when BN comes
#   after the pooling) and what the BN itself normalizes (after the ReLU, a skewed input with many
#   exact zeros); BN before the ReLU, the placement of the BatchNorm paper and the article, is also
#   the placement that always folds away at inference. Short runs at two learning rates, three seeds
#   each, did not rank the placements by test accuracy.
#
# ## Exercises
#
# 1. Write PReLU as a module with a learnable slope $a$ per channel, and check its gradient with
#    respect to $a$ against `torch.nn.PReLU(num_parameters=C)`.
# 2. In the saturation experiment, initialise the sigmoid network without BN with Xavier/Glorot
#    uniform weights (`nn.init.xavier_uniform_`). Does the gradient ratio improve? Why does Xavier's
#    derivation not fit the sigmoid (hint: $\sigma(0) = \tfrac12$)?
# 3. Replace the sigmoid by tanh in the scale-8 case. Which share of pre-activations saturates, and
#    does BN still help by as much?
# 4. Run the placement experiment with six seeds, on 4,000 images and for 10 epochs instead of 3.
#    Can you rank the three placements now, and does the ranking depend on the learning rate?
# 5. Make `fold_into_next` exact with padding: what value would the convolution have to pad with?
#    Write a padded input that gives the same result as `conv(bn(x))` and check it with `lab.cmp`.
