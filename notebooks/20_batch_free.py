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
# # Normalization without batch statistics
#
# BatchNorm ties every sample to the others in its batch: with few samples per statistic it
# fails (the "choosing a norm" lesson), it behaves differently in training and evaluation, and
# in data-parallel training each device sees only its own samples' statistics unless they are
# synchronised (per-device statistics are the default). This lesson follows four ways to get what a norm
# gives without taking any statistic over the batch:
#
# 1. **Weight Standardization** {cite}`qiao2019micro`: normalise the *weights* of each filter, and
#    pair it with GroupNorm, so that nothing depends on the batch;
# 2. **Weight normalization** {cite}`salimans2016weight`: reparametrise each weight vector as a
#    length times a direction; it normalises the weights, not the activations;
# 3. **no norm at all** in a deep residual network, made trainable by starting each residual
#    branch at zero (SkipInit {cite}`de2020batch`, Fixup {cite}`zhang2019fixup`);
# 4. **Dynamic Tanh** {cite}`zhu2025transformers`: replace a Transformer's LayerNorm by an
#    element-wise $\gamma \tanh(\alpha x) + \beta$.
#
# Each is built from its formula and checked against a reference; then an experiment asks what it
# buys at this book's scale. Every trained statement is checked against the runs when the notebook
# runs, and all of them are about early training (a few hundred steps).

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
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.convnets import ConvNet
from normlib.lab.data import fashion_mnist
from normlib.lab.ghostbn import ghost_bn
from normlib.lab.models import he_init
from normlib.lab.train import fit
from normlib.lab.transformer import TinyTransformer, sorting_batch, train

lab.setup()
data = fashion_mnist()  # 8,000 training and 2,000 test images, class-balanced
print(f"data: {data.name}, {len(data[0]):,} training and {len(data[2]):,} test images")

# %% [markdown]
# ## 1. Weight Standardization
#
# A convolution's output channel $o$ is computed with its filter $W_o$, the
# $C_\text{in} \times k_h \times k_w$ weights of its fan-in. Weight Standardization replaces each
# filter by its standardised version before the convolution:
#
# $$
# \begin{aligned}
# \mu_o &= \tfrac{1}{n} \textstyle\sum_j W_{oj}, \qquad
# \sigma_o^2 = \tfrac{1}{n} \textstyle\sum_j (W_{oj} - \mu_o)^2, \\
# \hat W_{oj} &= \frac{W_{oj} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}},
# \qquad n = C_\text{in} k_h k_w .
# \end{aligned}
# $$
#
# It is this book's one formula again, over the set $S_o$ of one filter's weights: a LayerNorm of
# the weight tensor, without affine. `normlib.nn.StdConv2d` (timm's arguments: `bias=False`,
# `eps=1e-6`, symmetric padding) computes it that way. Checked against the formula written out,
# and for what it promises: scaling a filter or shifting its weights does not change the output
# (exactly when $\epsilon = 0$; with timm's $\epsilon = 10^{-6}$ to within about
# $\epsilon / \sigma_o^2$, relative).

# %%
x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
ws = N.StdConv2d(3, 5, 3).double()
W = ws.weight.detach()
mu = W.mean(dim=(1, 2, 3), keepdim=True)
var = ((W - mu) ** 2).mean(dim=(1, 2, 3), keepdim=True)
W_hat = (W - mu) / torch.sqrt(var + 1e-6)
print(lab.cmp("StdConv2d = conv with the standardised filters", ws(x),
              F.conv2d(x, W_hat, padding=1), atol=1e-12))
ws.eps = 0.0  # for the exact invariance
with torch.no_grad():
    before = ws(x)
    ws.weight.mul_(7.0).add_(3.0)
    print(lab.cmp("eps = 0, filters x 7 + 3: the same output", ws(x), before, atol=1e-9))

# %% [markdown]
# Weight Standardization takes no statistic over activations, so on its own it does not control
# their scale; the paper pairs it with GroupNorm (GN), which takes its statistics inside each
# sample. Neither depends on the batch.
#
# ### WS + GN against BatchNorm, with few and many samples per statistic
#
# The design of the "choosing a norm" lesson: the optimizer batch stays at 32, 250 SGD steps
# (batch 32, learning rate 0.05, momentum 0.9, one epoch), and BatchNorm takes its statistics over
# ghost batches of $m$ samples inside it, $m = 2$ or $m = 32$ (the whole batch). Only $m$ changes.
# The network is `ConvNet` with convolutions of 8, 16 and 32 channels, its last convolution on
# feature maps pooled to $1 \times 1$: there a norm sees one value per channel and sample, as
# after a fully connected layer, so BatchNorm's statistics at $m = 2$ average two values (the case
# where that lesson found BatchNorm's cliff). On that $1 \times 1$ map a padded $3 \times 3$
# convolution uses only its centre tap; a `StdConv2d` still standardises each filter over all
# nine taps, eight of which never touch the data. The arms: BatchNorm at $m = 2$ and $m = 32$,
# GroupNorm (groups of 4 channels), and the same GroupNorm network with every convolution a
# `StdConv2d`. GN and WS + GN do not see $m$: trained once per seed. For a seed, all arms start
# from the same convolution weights and see the batches in the same order, so they are compared
# seed by seed (paired).

# %%
def standardize_convs(model):
    """Every nn.Conv2d of `model` replaced, in place, by a StdConv2d of its weights.

    Carries over kernel size, padding and bias only: enough for this ConvNet's
    convolutions (stride 1, no dilation, one group), not for every Conv2d.
    """
    for module in list(model.modules()):
        for name, conv in list(module.named_children()):
            if type(conv) is nn.Conv2d:
                ws = N.StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                 padding=conv.padding, bias=conv.bias is not None)
                ws.load_state_dict(conv.state_dict())
                setattr(module, name, ws)
    return model


def train_cnn(seed, norm="BN", m=32):
    """One ConvNet, 250 steps of batch 32; returns its test accuracy (a fraction)."""
    lab.seed_everything(seed)  # the initial weights; `seed` also orders the batches
    if norm == "BN":
        conv_norm = ghost_bn(N.BatchNorm2d, m)  # statistics over groups of m samples
    else:
        conv_norm = lambda c: N.GroupNorm(c // 4, c)  # noqa: E731
    model = ConvNet((8, 16, 32), conv_norm=conv_norm, last_map=1)
    if norm == "WS+GN":
        standardize_convs(model)
    history = fit(model, data, epochs=1, batch_size=32, lr=0.05, seed=seed,
                  progress=False)
    return {"test_acc": history["test_acc"][-1]}


SEEDS = (0, 1, 2)
cnn = evidence.sweep(train_cnn, {"norm": ["BN"], "m": [2, 32]}, seeds=SEEDS, desc="BN")
cnn_free = evidence.sweep(train_cnn, {"norm": ["GN", "WS+GN"]}, seeds=SEEDS,
                          desc="GN, WS+GN")

# %% [markdown]
# The raw numbers of this run, test accuracy in percent (mean ± standard error over the seeds);
# their digits differ between machines, the claims below do not:

# %% tags=["nbval-ignore-output"]
ARMS_CNN = {"BN, m=2": cnn.estimate("test_acc", m=2),
            "BN, m=32": cnn.estimate("test_acc", m=32),
            "GN": cnn_free.estimate("test_acc", norm="GN"),
            "WS+GN": cnn_free.estimate("test_acc", norm="WS+GN")}
print(evidence.table(["arm", "test accuracy (%)"],
                     [[k, f"{v.scaled(100):.1f}"] for k, v in ARMS_CNN.items()]))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy after 250 steps of a small ConvNet whose last norm sees one value per channel and sample: BatchNorm with statistics over m = 2 and m = 32 samples, GroupNorm and WS + GN, which do not depend on m (mean ± s.e. over 3 seeds; GN and WS + GN drawn at both m, trained once).", "name": "fig-20-ws"}, "image": {"alt": "Plot of test accuracy against samples per statistic, 2 and 32. BatchNorm's points are far lower at 2 than at 32. GroupNorm and WS plus GN are dashed horizontal lines with error bars, the same at both values of m, both between BatchNorm at 2 and BatchNorm at 32."}}
fig, ax = plt.subplots(figsize=(6, 3.6))
cnn.plot("test_acc", x="m", series="norm", ax=ax, scale=100, labels={"BN": "BatchNorm"},
         ls="none")  # only m = 2 and 32 were run: no line between them
for k, (name, colour) in enumerate((("GN", "C1"), ("WS+GN", "C2"))):
    e = ARMS_CNN[name].scaled(100)
    shift = 1.05 ** (k + 1)  # a little to the right: error bars apart
    ax.errorbar([2 * shift, 32 * shift], [e.mean] * 2, yerr=[e.sem] * 2, fmt="s--",
                color=colour, capsize=3, label=name + " (no m)")
ax.set(xscale="log", xticks=[2, 32], xticklabels=["2", "32"],
       xlabel="samples per BatchNorm statistic m",
       ylabel="test accuracy (%)\nmean ± s.e., 3 seeds")
ax.minorticks_off()
ax.legend(loc="lower right", fontsize=9)
fig.tight_layout()

# %%
evidence.claim("at m = 2, WS + GN beats BatchNorm by more than 5 points",
               ARMS_CNN["WS+GN"], ">", ARMS_CNN["BN, m=2"], margin=0.05, paired=True,
               unit=100)
evidence.claim("BatchNorm at m = 2 is more than 10 points below BatchNorm at m = 32",
               ARMS_CNN["BN, m=2"], "<", ARMS_CNN["BN, m=32"], margin=0.10, paired=True,
               unit=100)

# %% [markdown]
# With the whole batch of 32 the ranking turns round. The differences seed by seed, with their
# 90% intervals over the three seeds, then the claim:

# %% tags=["nbval-ignore-output"]
rows = []
for left, right in (("WS+GN", "BN, m=32"), ("WS+GN", "GN"), ("GN", "BN, m=32")):
    d = evidence.difference(ARMS_CNN[left], ARMS_CNN[right], paired=True)
    low, high = d.interval(0.90)
    rows.append([f"{left} minus {right}", f"{100 * d.value:+.1f}",
                 f"[{100 * low:+.1f}, {100 * high:+.1f}]"])
print(evidence.table(["test accuracy (points)", "mean", "90% interval"], rows))

# %%
evidence.claim("at m = 32, BatchNorm is ahead of WS + GN", ARMS_CNN["BN, m=32"], ">",
               ARMS_CNN["WS+GN"], paired=True, unit=100)

# %% [markdown]
# Where the batch gives BatchNorm two values per statistic, WS + GN is more than 5 points ahead
# of it: it does not see the batch. With the whole batch of 32, BatchNorm is ahead here. Whether
# Weight Standardization adds to GroupNorm is not claimed, although the table's second interval
# may exclude 0: a seed interval covers the spread between seeds, not the rounding differences
# between machines, and another floating-point configuration (ATen's default kernels) gave a
# difference near 0 for the same seeds, which train to other weights when rounded differently.
# The paper finds WS + GN ahead of GN, and level with or ahead of BatchNorm on ImageNet, after
# full training of ResNets; there WS + GN ran with 1 or 2 images per GPU, while the BatchNorm
# baseline had a large batch. These runs
# are 250 steps of a small network, where BatchNorm's speed in early training counts most (the
# "what BatchNorm buys" lesson). So this ranking is about early training at this scale; what
# survives a long run is exercise 1's question.
#
# ## 2. Weight normalization
#
# Weight normalization writes each output unit's weight vector as a length $g$ and a direction:
#
# $$
# w = g \, \frac{v}{\lVert v \rVert},
# $$
#
# and trains $g$ and $v$. The length of $w$ is then $|g|$, whatever $v$ is: the reparametrisation
# separates how large a weight vector is from where it points, which is what a norm does for the
# activations downstream of it (the "what BatchNorm buys" lesson). torch has it as
# `torch.nn.utils.parametrizations.weight_norm`, with `original0` $= g$ (one per output unit) and
# `original1` $= v$. Checked against the formula:

# %%
lin = nn.utils.parametrizations.weight_norm(nn.Linear(6, 4).double(), dim=0)
v = lin.parametrizations.weight.original1.detach()  # (4, 6)
with torch.no_grad():
    lin.parametrizations.weight.original0.mul_(
        torch.tensor([[0.5], [2.0], [1.0], [3.0]]))  # lengths other than |v|
    g = lin.parametrizations.weight.original0.detach()  # (4, 1)
w = g * v / v.norm(dim=1, keepdim=True)
x = torch.randn(5, 6, dtype=torch.float64)
print(lab.cmp("weight_norm's weight = g v / |v|", lin.weight, w, atol=1e-12))
print(lab.cmp("weight_norm's output", lin(x), x @ w.T + lin.bias, atol=1e-12))
print(lab.cmp("each row's length = g", lin.weight.norm(dim=1), g.flatten(), atol=1e-12))

# %% [markdown]
# What it does not give: it takes no statistic of the activations, so nothing holds their scale.
# A ReLU network with weight-normalised layers, bias-free, is positively homogeneous: multiply
# the input by 10 and every activation is multiplied by 10. The same network with a LayerNorm
# after each layer gives the same output for both. And with $g = 1$ (unit-length rows) each
# layer maps a random input of root mean square $r$ to one of about $r/\sqrt{2}$ after the ReLU:
# the activations shrink with depth unless $g$ is set from the data (the paper's data-dependent
# initialisation does that, once).

# %%
def wn_net(depth=12, width=64, ln=False, seed=0):
    """Bias-free ReLU MLP, weight-normalised layers, g = 1; ln: LayerNorm after each."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        layer = nn.utils.parametrizations.weight_norm(linear)
        nn.init.ones_(layer.parametrizations.weight.original0)  # g = 1: unit-length rows
        layers.append(layer)
        if ln:
            layers.append(N.LayerNorm(width, elementwise_affine=False))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


def rms_by_layer(net, x):
    """Root mean square of the activations after each ReLU."""
    out = []
    for layer in net:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            out.append(x.square().mean().sqrt().item())
    return out


x = torch.randn(512, 64, dtype=torch.float64)
plain, normed = wn_net(), wn_net(ln=True)
with torch.no_grad():
    print(lab.cmp("weight norm: net(10 x) = 10 net(x)", plain(10 * x), 10 * plain(x),
                  atol=1e-12))
    print(lab.cmp("weight norm + LayerNorm: net(10 x) = net(x)", normed(10 * x),
                  normed(x), atol=1e-9))
    nets = (("weight norm", plain), ("weight norm + LayerNorm", normed))
    rms = {(name, s): rms_by_layer(net, s * x) for name, net in nets for s in (1, 10)}

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Root mean square of the activations after each ReLU of a 12-layer bias-free MLP with weight-normalised layers (g = 1), for inputs of RMS 1 and 10, without and with a LayerNorm after each layer (one seeded draw of the weights and 512 Gaussian inputs).", "name": "fig-20-wn"}, "image": {"alt": "Log-scale plot of activation RMS against layer, 1 to 12. With weight norm alone, two parallel lines a factor of 10 apart fall steadily with depth. With LayerNorm after each layer both inputs give the same flat line. Dotted grey lines: the input RMS divided by the square root of 2 per layer, which the weight-norm lines follow."}}
fig, ax = plt.subplots(figsize=(6, 3.4))
layers_axis = np.arange(1, 13)
for (name, s), values in rms.items():
    style = "o-" if name == "weight norm" else "s--"
    ax.plot(layers_axis, values, style, label=f"{name}, input RMS {s}",
            color="C0" if s == 1 else "C1", alpha=1.0 if name == "weight norm" else 0.6)
for s in (1, 10):
    ax.plot(layers_axis, s * 2 ** (-layers_axis / 2), ":", color="0.5",
            label="input RMS / sqrt(2) per layer" if s == 1 else None)
ax.set(yscale="log", xlabel="layer", ylabel="activation RMS")
ax.legend(fontsize=8, loc="lower left")
fig.tight_layout()

# %% [markdown]
# Weight normalization separates each weight vector's length (the learned $g$) from its
# direction; the scale of what flows through the network stays the input's business, layer
# after layer.
# That is why the methods that drop activation norms in deep networks need something more: an
# initialisation that keeps the signal at the right scale, which is the next section.
#
# ## 3. A deep residual network without a norm
#
# A residual block adds a branch to its input, $x_{l+1} = x_l + f_l(x_l)$. Take
# $f_l(x) = W_l\,\mathrm{ReLU}(N(x))$, with $W_l$ He-initialised {cite}`he2015delving`, so that
# $\mathrm{Var}(f_l) = 2\,\mathbb{E}[\mathrm{ReLU}(z)^2] = \mathrm{Var}(z)$ for the branch input
# $z = N(x)$, and the branch is uncorrelated with $x_l$ at initialisation:
#
# $$
# \begin{aligned}
# \text{no norm } (z = x_l):&\quad \mathrm{Var}(x_{l+1}) = 2\,\mathrm{Var}(x_l), \\
# &\quad \mathrm{Var}(x_L) = 2^L \mathrm{Var}(x_0), \\
# \text{BatchNorm } (\mathrm{Var}(z) = 1):&\quad \mathrm{Var}(x_{l+1}) = \mathrm{Var}(x_l) + 1, \\
# &\quad \mathrm{Var}(x_L) = \mathrm{Var}(x_0) + L, \\
# \text{SkipInit } (\alpha_l = 0):&\quad \mathrm{Var}(x_L) = \mathrm{Var}(x_0).
# \end{aligned}
# $$
#
# Without a norm the signal doubles in variance at every block; BatchNorm in the branch makes each
# block add a unit of variance, so that the skip (identity) path dominates: block $l$'s branch
# adds about $1/l$ of the stream's variance, as if scaled by about $1/\sqrt{l}$, and a deep
# network starts close to a shallow one {cite}`de2020batch`. SkipInit gets that without a norm: each branch is
# multiplied by a learned scalar $\alpha_l$ that starts at 0, so the network starts as the
# identity. Fixup {cite}`zhang2019fixup` does the same by setting the last layer of each branch to
# zero and rescaling the others by the depth. Measured on a residual MLP on Fashion-MNIST
# (a linear stem to 64 features, $L$ blocks of width 64, a linear head), He initialisation in
# every arm:

# %%
class ResBlock(nn.Module):
    """x + f(x), f = Linear(ReLU(norm(x))); skipinit: x + alpha f(x), alpha = 0 first."""

    def __init__(self, width, norm=None, skipinit=False):
        super().__init__()
        self.norm = norm(width) if norm else nn.Identity()
        self.linear = nn.Linear(width, width)
        self.alpha = nn.Parameter(torch.zeros(())) if skipinit else None

    def forward(self, x):
        f = self.linear(torch.relu(self.norm(x)))
        return x + (f if self.alpha is None else self.alpha * f)


class ResMLP(nn.Module):
    """A linear stem, `depth` ResBlocks, ReLU and a linear head; He-initialised."""

    def __init__(self, depth, width=64, norm=None, skipinit=False):
        super().__init__()
        self.stem = nn.Linear(28 * 28, width)
        self.blocks = nn.ModuleList(ResBlock(width, norm, skipinit)
                                    for _ in range(depth))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(width, 10))
        he_init(self)

    def forward(self, x, return_stream=False):
        h = self.stem(x.flatten(1))
        stream = [h]
        for block in self.blocks:
            h = block(h)
            stream.append(h)
        return (self.head(h), stream) if return_stream else self.head(h)


RES_ARMS = {"BatchNorm": {"norm": N.BatchNorm1d}, "no norm": {},
            "SkipInit": {"skipinit": True}}
DEPTH0 = 32
records = []
for arm, kwargs in RES_ARMS.items():
    for seed in range(5):
        lab.seed_everything(seed)
        model = ResMLP(DEPTH0, **kwargs)
        with torch.no_grad():
            _, stream = model(data[0][512 * seed:512 * (seed + 1)], return_stream=True)
        var = [h.var().item() for h in stream]
        records += [{"arm": arm, "block": i, "seed": seed, "ratio": v / var[0],
                     "growth": (var[-1] / var[0]) ** (1 / DEPTH0),
                     "added": (var[-1] - var[0]) / DEPTH0} for i, v in enumerate(var)]
signal = evidence.Runs(records)
print(f"{len(RES_ARMS)} arms x 5 seeds, the variance after each of {DEPTH0} blocks")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Variance of the residual stream after each block of a 32-block residual MLP at initialisation, relative to the stem's output, with BatchNorm in each branch, with no norm, and with SkipInit (mean ± s.e. over 5 seeds, 512 images each). Dotted: 2^l, the doubling per block.", "name": "fig-20-signal"}, "image": {"alt": "Log-scale plot of stream variance against block, 0 to 32. Without a norm the variance climbs in a straight line on the log scale, doubling each block to a few billion. With BatchNorm it grows slowly, to about 20. With SkipInit it stays at 1."}}
fig, ax = plt.subplots(figsize=(6, 3.6))
signal.plot("ratio", x="block", series="arm", ax=ax, markersize=3)
blocks = np.arange(DEPTH0 + 1)
ax.plot(blocks, 2.0**blocks, ":", color="0.4", label="2^l")
ax.set(yscale="log", xlabel="block l",
       ylabel="Var(x_l) / Var(x_0)\nmean ± s.e., 5 seeds")
ax.legend(fontsize=9, loc="upper left")
fig.tight_layout()

# %%
evidence.claim("no norm: the variance doubles per block (geometric mean within 2 ± 0.2)",
               signal.estimate("growth", arm="no norm", block=0), "≈", 2.0, margin=0.2)
evidence.claim("BatchNorm: each block adds one unit of variance (within 1 ± 0.2)",
               signal.estimate("added", arm="BatchNorm", block=0), "≈", 1.0, margin=0.2)
print(lab.cmp("SkipInit: the last block's variance = the stem's output's",
              signal.estimate("ratio", arm="SkipInit", block=DEPTH0).values, [1.0] * 5,
              atol=0))

# %% [markdown]
# ### Training it
#
# The same network with 16 blocks, each arm from He initialisation, trained as in the first
# section (250 SGD steps, batch 32, learning rate 0.05, momentum 0.9), three seeds; the seed fixes
# the weights (the same in every arm; BatchNorm and $\alpha$ add no random parameters) and the
# batch order, so the arms are paired. A run whose loss becomes infinite or NaN ends at chance
# accuracy (10%).

# %%
def train_res(seed, arm):
    lab.seed_everything(seed)
    model = ResMLP(16, **RES_ARMS[arm])
    history = fit(model, data, epochs=1, batch_size=32, lr=0.05, seed=seed,
                  progress=False)
    return {"test_acc": history["test_acc"][-1],
            "finite": float(np.isfinite(history["loss"][-1]))}


res = evidence.sweep(train_res, {"arm": list(RES_ARMS)}, seeds=SEEDS,
                     desc="residual MLP")

# %% tags=["nbval-ignore-output"]
rows = []
for a in RES_ARMS:
    finite = int(sum(res.estimate("finite", arm=a).values))
    rows.append([a, f"{res.estimate('test_acc', arm=a).scaled(100):.1f}",
                 f"{finite} of {len(SEEDS)}"])
print(evidence.table(["arm", "test accuracy (%)", "runs with a finite loss"], rows))

# %%
acc_res = {a: res.estimate("test_acc", arm=a) for a in RES_ARMS}
evidence.claim("16 blocks, no norm, He init: training fails (test accuracy below 15%)",
               acc_res["no norm"], "<", 0.15, unit=100)
evidence.claim("SkipInit trains the same network: over 40 points above no norm",
               acc_res["SkipInit"], ">", acc_res["no norm"], margin=0.40, paired=True,
               unit=100)
evidence.claim("BatchNorm trains it too: over 20 points above no norm",
               acc_res["BatchNorm"], ">", acc_res["no norm"], margin=0.20, paired=True,
               unit=100)

# %% tags=["nbval-ignore-output"]
d = evidence.difference(acc_res["SkipInit"], acc_res["BatchNorm"], paired=True)
low, high = d.interval(0.90)
print(f"SkipInit minus BatchNorm: {100 * d.value:+.1f} points, "
      f"90% interval [{100 * low:+.1f}, {100 * high:+.1f}]")

# %% [markdown]
# Without a norm, He initialisation, the right start for a plain ReLU network, is the wrong one for
# a residual network: its output starts $2^{16}$ times too large in variance, and at this
# learning rate training diverges (whether a smaller one rescues it is exercise 2). A
# zero-initialised scalar on each branch is enough to train it at this learning rate, and
# BatchNorm trains it to more than 20 points above no norm. How SkipInit compares
# with BatchNorm over these 250 steps is the interval above (not claimed). At scale, matching
# BatchNorm's accuracy without it took more: NF-Nets {cite}`brock2021high` combine a scaled Weight
# Standardization (so each branch preserves the variance, as this section's arithmetic demands),
# residual branches scaled down at initialisation, and adaptive gradient clipping (unit-wise:
# each output unit's or filter's gradient row $G_i$ clipped relative to its weight row's norm,
# $\lVert G_i \rVert / \max(\lVert W_i \rVert, 10^{-3})$, in every layer except the final
# classifier) to allow the large batches and learning rates that BatchNorm had made possible.
#
# ## 4. Dynamic Tanh
#
# Zhu et al. {cite}`zhu2025transformers` looked at what LayerNorm does in trained Transformers.
# For one token its map is a straight line (slope $1/\sigma$ of that token); but with the
# points of many tokens plotted together, the input-output map has the S shape of a tanh: most
# values pass through a near-linear middle, and the few large ones, in tokens with a large
# $\sigma$, are squashed. They replace it by
#
# $$
# \mathrm{DyT}(x) = \gamma \odot \tanh(\alpha x) + \beta ,
# $$
#
# with $\alpha$ one learned scalar (initialised at 0.5) and $\gamma, \beta$ per channel, as
# LayerNorm's affine. No statistic at all: every element on its own. `normlib.nn.DynamicTanh`,
# checked against the formula:

# %%
dyt = N.DynamicTanh(8).double()
with torch.no_grad():
    dyt.alpha.fill_(0.7)
    dyt.weight.normal_()
    dyt.bias.normal_()
x = torch.randn(3, 5, 8, dtype=torch.float64)
print(lab.cmp("DynamicTanh = gamma tanh(alpha x) + beta", dyt(x),
              dyt.weight * torch.tanh(0.7 * x) + dyt.bias, atol=1e-12))
print("state_dict keys:", list(dyt.state_dict()))

# %% [markdown]
# ### The S shape in the book's own Transformer
#
# The pre-LN Transformer of the "LayerNorm and RMSNorm in a Transformer" lesson (4 blocks of width
# 32, the sorting task, 200 Adam steps at peak learning rate 0.01 with 50 warm-up steps), trained
# with LayerNorm and, from the same initial weights and batches, with DynamicTanh in every place
# of a LayerNorm. Five seeds each. For each LayerNorm model, the input and output of the last
# block's first LayerNorm on 256 sequences of the test task, after training and, as a control,
# at initialisation (the same weights before the first step):

# %%
DYT_SEEDS = (0, 1, 2, 3, 4)
probe, _ = sorting_batch(256, generator=torch.Generator().manual_seed(99))
FACTORIES = {"LayerNorm": N.LayerNorm, "DyT": N.DynamicTanh}


def in_and_out(model, layer):
    """Input and output of `layer` as the model runs the probe: (tokens, 32) arrays."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)) and None)
    with torch.no_grad():
        model(probe)
    handle.remove()
    return [t.reshape(-1, t.shape[-1]).numpy() for t in seen[0]]


def train_transformer(seed, norm):
    lab.seed_everything(seed)  # initial weights; `seed` also orders the batches
    model = TinyTransformer(16, 16, d_model=32, heads=4, layers=4, placement="pre",
                            norm=FACTORIES[norm])
    if norm == "LayerNorm":
        io_init = in_and_out(model, model.layers[-1].norm1)
    out = train(model, steps=200, lr=0.01, warmup=50, batch_size=16, seed=seed)
    record = {"test_acc": out["test_acc"]}
    if norm == "LayerNorm":
        record["io"] = in_and_out(model, model.layers[-1].norm1)
        record["io_init"] = io_init
    else:
        norms = {"attention (norm1)": [b.norm1 for b in model.layers],
                 "MLP (norm2)": [b.norm2 for b in model.layers], "final": [model.norm]}
        record |= {k: float(np.mean([n.alpha.item() for n in v]))
                   for k, v in norms.items()}
    return record


tf = evidence.sweep(train_transformer, {"norm": list(FACTORIES)}, seeds=DYT_SEEDS,
                    desc="Transformer")

# %% [markdown]
# Each point below is one element: a channel of a token, LayerNorm's input against its output
# before the affine, $\hat x = (x - \mu)/\sigma$ of its own token. Within a token the map is a
# straight line of slope $1/\sigma$; the tokens that hold the largest inputs have the largest
# $\sigma$, so their lines are flatter, and together the points bend like a tanh.
#
# How much they bend: the slope through 0 fitted to the 5% largest $|x|$, divided by the slope
# fitted to the middle half. Some bend appears for any tokens, even random ones (a token that
# holds a large value has a larger sample $\sigma$), so the ratio needs controls: the same
# LayerNorm at initialisation, and Gaussian tokens with each trained token's mean and $\sigma$
# (independent values, seeded).

# %%
def normalised(x):
    """LayerNorm without affine, per token (row)."""
    mu = x.mean(1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + 1e-5)


def bend(x):
    """Slope of x_hat / x through 0, the 5% largest |x| over the middle half."""
    xs, ys = x.ravel(), normalised(x).ravel()
    size = np.abs(xs)
    tail, middle = size >= np.quantile(size, 0.95), size <= np.quantile(size, 0.5)
    fit = [(xs[s] * ys[s]).sum() / (xs[s] ** 2).sum() for s in (tail, middle)]
    return fit[0] / fit[1]


def matched_gaussian(x, seed):
    """Gaussian tokens with the mean and standard deviation of each token (row) of x."""
    z = np.random.default_rng(seed).standard_normal(x.shape)
    return x.mean(1, keepdims=True) + x.std(1, keepdims=True) * z


ln_runs = tf.select(norm="LayerNorm").records
bends = evidence.Runs([
    {"seed": r["seed"], "trained": bend(r["io"][0]),
     "initialisation": bend(r["io_init"][0]),
     "Gaussian, matched": bend(matched_gaussian(r["io"][0], r["seed"]))}
    for r in ln_runs])

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Input against normalised output (before the affine) of the last block's first LayerNorm in the trained 4-block Transformer, seed 0, every channel of 4,096 tokens; colour: the token's standard deviation. The dashed curve is the least-squares fit a tanh(b x) to the points (b on a log-spaced grid).", "name": "fig-20-s-shape"}, "image": {"alt": "Scatter plot of LayerNorm output against input. Points lie along a band that is steepest near zero and bends flatter for large positive and negative inputs, where the points come from tokens with a large standard deviation. A dashed tanh curve follows the band."}}
x_in = ln_runs[0]["io"][0]
xs, ys = x_in.ravel(), normalised(x_in).ravel()
sigma = np.repeat(x_in.std(1), x_in.shape[1])


def tanh_fit(b):
    """The best a for a tanh(b x), and its squared error."""
    t = np.tanh(b * xs)
    a = (ys * t).sum() / (t**2).sum()
    return ((ys - a * t) ** 2).sum(), a, b


_, a_best, b_best = min(tanh_fit(b) for b in np.geomspace(0.01, 3, 60))
fig, ax = plt.subplots(figsize=(6, 3.8))
points = ax.scatter(xs, ys, c=sigma, s=1, cmap="viridis", rasterized=True)
grid = np.linspace(x_in.min(), x_in.max(), 200)
ax.plot(grid, a_best * np.tanh(b_best * grid), "--", color="C3",
        label=f"{a_best:.2f} tanh({b_best:.2f} x)")
fig.colorbar(points, ax=ax, label="the token's standard deviation")
ax.set(xlabel="LayerNorm input x", ylabel="(x - mu) / sigma")
ax.legend(loc="lower right")
fig.tight_layout()

# %% [markdown]
# The ratio per seed (mean ± s.e. over the five seeds), then the claim:

# %% tags=["nbval-ignore-output"]
print(evidence.table(["tokens", "slope of the largest 5% / of the middle half"],
                     [[k, f"{bends.estimate(k):.2f}"]
                      for k in ("trained", "initialisation", "Gaussian, matched")]))

# %%
evidence.claim("training bends the map: the tail/middle slope ratio is lower than at "
               "initialisation", bends.estimate("trained"), "<",
               bends.estimate("initialisation"), paired=True)

# %% [markdown]
# Training bends the map more than it was bent at initialisation (the claim), but the bend is
# mild, and it is the bend that the tokens' different standard deviations alone produce:
# Gaussian tokens with each token's mean and $\sigma$ bend about as much or more (the table's
# last line; not claimed either way). So the S shape here comes from which tokens hold the
# large values, not from a shape of the values within a token. The paper's large models show
# tokens whose few huge values flatten the curve into a clear tanh; a small model on a
# synthetic task has fewer such outliers.
#
# ### Training with DynamicTanh
#
# The same budget for both (200 steps, the same schedule, initial weights and batches per seed):

# %% tags=["nbval-ignore-output"]
acc_tf = {n: tf.estimate("test_acc", norm=n) for n in FACTORIES}
d = evidence.difference(acc_tf["DyT"], acc_tf["LayerNorm"], paired=True)
low, high = d.interval(0.90)
print(evidence.table(["norm", "per-token test accuracy (%)"],
                     [[n, f"{e.scaled(100):.1f}"] for n, e in acc_tf.items()]))
print(f"DyT minus LayerNorm: {100 * d.value:+.1f} points, "
      f"90% interval [{100 * low:+.1f}, {100 * high:+.1f}]")

# %%
evidence.claim("DyT matches LayerNorm to within 5 points of test accuracy",
               acc_tf["DyT"], "≈", acc_tf["LayerNorm"], margin=0.05, paired=True,
               unit=100)

# %% [markdown]
# And where $\alpha$ went from its initial 0.5, averaged over the four blocks (per seed):

# %% tags=["nbval-ignore-output"]
ALPHAS = ("attention (norm1)", "MLP (norm2)", "final")
dyt_runs = tf.select(norm="DyT")
print(evidence.table(["DyT before", "trained alpha"],
                     [[k, f"{dyt_runs.estimate(k):.2f}"] for k in ALPHAS]))

# %%
evidence.claim("the final DyT's alpha rose above its initial 0.5 by more than 0.1",
               dyt_runs.estimate("final"), ">", 0.5, margin=0.1)
evidence.claim("the MLP DyTs' alpha fell below 0.5",
               dyt_runs.estimate("MLP (norm2)"), "<", 0.5)

# %% [markdown]
# At this scale DyT trains the sorting Transformer as well as LayerNorm to within the claimed
# margin, over 200 steps. Its $\alpha$ moves away from 0.5 in different directions in different
# places: it is the one scale DyT has, and it plays the part of LayerNorm's $1/\sigma$, but it is
# the same for every token. What LayerNorm adapts per token, DyT learns once per layer; the tanh
# then does for the rare large values what a large $\sigma$ did. The paper reports DyT matching
# LayerNorm on large vision and language models, with $\alpha$'s initial value to be tuned for
# the largest language models; this lesson shows neither.
#
# ## Summary
#
# | method | normalises | statistics over the batch? | what this lesson showed |
# |---|---|---|---|
# | Weight Standardization + GN | each filter's weights, and each sample's activations | no | over 5 points ahead of BatchNorm at 2 values per statistic; behind it at 32 (250 steps) |
# | weight normalization | separates each weight vector's length (learned) from its direction | no | activations keep the input's scale: no control |
# | SkipInit (Fixup: exercise 3) | nothing: branches start at zero | no | a 16-block residual MLP trains without a norm (250 steps, learning rate 0.05) |
# | Dynamic Tanh | nothing: an element-wise tanh | no | matches LayerNorm to within 5 points on the sorting Transformer (200 steps) |
#
# ## Exercises
#
# 1. Train the four ConvNet arms for five epochs instead of one (three seeds). Does BatchNorm
#    stay ahead of WS + GN at $m = 32$? Then put `StdConv2d` under BatchNorm (WS + BN): does it
#    change BatchNorm's accuracy at $m = 32$, or its cliff at $m = 2$?
# 2. Train the residual MLP without a norm at a learning rate ten times smaller. Does it train?
#    Compare its activations' scale at the output with SkipInit's.
# 3. Implement Fixup for `ResBlock`. The full method also zero-initialises the classifier,
#    adds scalar biases and a scalar multiplier to each branch, and rescales a branch's $m$
#    layers by $L^{-1/(2m-2)}$; with this block's single layer ($m = 1$) it reduces to zeroing
#    the branch's linear layer instead of using $\alpha$. Is the network at initialisation the
#    same function as SkipInit's? Are the gradients at initialisation the same (which
#    parameters get a nonzero gradient in each)?
# 4. Implement unit-wise adaptive gradient clipping: before each step, for each output unit's
#    weight row $W_i$ and its gradient row $G_i$, scale $G_i$ by
#    $\lambda \max(\lVert W_i \rVert, 10^{-3}) / \lVert G_i \rVert$ when
#    $\lVert G_i \rVert / \max(\lVert W_i \rVert, 10^{-3}) > \lambda$, in every layer but the
#    head. Does it let the residual MLP without a norm train?
# 5. Train the Transformer with DyT at `alpha_init_value` 0.1 and 2. Where does $\alpha$ end, and
#    what happens to the accuracy?
# 6. Plot the S shape of the first block's LayerNorm instead of the last one's. Is it as bent?
