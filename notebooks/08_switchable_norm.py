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
# # Switchable Normalization
#
# Which norm should a layer use? Switchable Normalization {cite}`luo2019switchable` lets each layer learn
# it. It computes the InstanceNorm, LayerNorm and BatchNorm statistics of its input and mixes them with
# learned importance weights, separately for the mean and the variance:
#
# $$
# \begin{aligned}
# w &= \mathrm{softmax}(\lambda), \qquad w' = \mathrm{softmax}(\lambda'), \\
# \mu &= \sum_{k \in \{IN, LN, BN\}} w_k\, \mu_k, \\
# \sigma^2 &= \sum_{k \in \{IN, LN, BN\}} w'_k\, \sigma_k^2, \\
# y &= \gamma\, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta ,
# \end{aligned}
# $$
#
# where $\lambda, \lambda'$ are three learned logits each (the *importance logits*). The three sets of
# statistics cost little more than one: the LN and BN moments follow from the IN moments. With
# $\mu_{nc}, \sigma^2_{nc}$ the per-sample, per-channel (IN) moments, the law of total variance gives
#
# $$
# \begin{aligned}
# \mu_{LN,n} &= \overline{\mu_{nc}}^{\,c}, \\
# \sigma^2_{LN,n} &= \overline{\sigma^2_{nc}}^{\,c} + \overline{(\mu_{nc} - \mu_{LN,n})^2}^{\,c},
# \end{aligned}
# $$
#
# and the same over $n$ for BN. (The often-quoted form $\overline{\sigma^2 + \mu^2} - \mu_{LN}^2$ is
# algebraically equal but subtracts two large numbers; normlib uses the form above.) In evaluation the BN
# part uses running statistics, like BatchNorm.
#
# Which running statistics? normlib's Switchable Norm keeps BatchNorm's: moving averages of the BN
# mean and unbiased variance, with momentum 0.1. The paper's released code has a switch for this,
# `using_moving_average`. On, it keeps moving averages too. Off, its running statistics are only
# sums, reset before use: after each epoch it resets them, runs 200 training mini-batches through
# the network in training mode without changing a weight, and uses the average of their BN means
# and mean squares (a *batch average*: the recalibration that Wu and Johnson study as PreciseBN
# {cite}`wu2021rethinking`); its ImageNet configurations come in both versions. This lesson uses normlib's moving averages
# throughout.

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
import torch
from torch import nn

from normlib import functional as F
from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.data import fashion_mnist
from normlib.lab.models import LeNet, ghost
from normlib.lab.train import fit

lab.setup()

# %% [markdown]
# ## One-hot importance is IN, LN or BN exactly
#
# Setting the importance logits to $(+\infty, -\infty, -\infty)$ (here $\pm 10^4$, whose softmax is
# exactly one-hot in float64) turns the layer into one of the three norms. Checked against torch:

# %%
x = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 2 + 1


def one_hot(layer, k):
    """``layer`` with both sets of importance logits one-hot on choice ``k``."""
    logits = torch.full_like(layer.mean_weight, -1e4)
    logits[k] = 1e4
    with torch.no_grad():
        layer.mean_weight.copy_(logits)
        layer.var_weight.copy_(logits)
    return layer


reference = {
    "IN": torch.nn.functional.instance_norm(x),
    "LN": torch.nn.functional.layer_norm(x, x.shape[1:]),
    "BN": torch.nn.functional.batch_norm(x, None, None, training=True),
}
for k, name in enumerate(("IN", "LN", "BN")):
    sn = one_hot(N.SwitchableNorm2d(4).double(), k)
    print(lab.cmp(f"one-hot {name} vs torch {name}", sn(x), reference[name],
                  atol=1e-10))

# %% [markdown]
# ## After a fully connected layer
#
# A fully connected layer's output, shape $(N, C)$, has no positions to average over, so there is no
# IN statistic. The paper's released code then mixes only LN (each sample's $C$ features) and BN (each
# feature over the batch), with two logits each. normlib's `SwitchableNorm1d` needs a length dimension,
# so the lesson writes that two-way layer here, from the same formula and normlib's one moments
# function; BatchNorm's own function keeps its running statistics.

# %%
class SwitchableNormFC(nn.Module):
    """Switchable Normalization of (N, C) features: LN and BN, in that order."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(2))
        self.var_weight = nn.Parameter(torch.ones(2))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.eps, self.momentum = eps, momentum

    def importance(self):
        """Softmax importance weights (w_mean, w_var), each in the order (LN, BN)."""
        w_mean = torch.softmax(self.mean_weight.detach(), 0)
        return w_mean, torch.softmax(self.var_weight.detach(), 0)

    def forward(self, x):
        mu_ln, var_ln = F.moments(x, [1])  # (N, 1): each sample's features
        if self.training:
            mu_bn, var_bn = F.moments(x, [0])  # (1, C): each feature over the batch
            # BatchNorm's function, for its update of the running statistics only
            F.batch_norm(x.detach(), self.running_mean, self.running_var,
                         training=True, momentum=self.momentum)
        else:
            mu_bn, var_bn = self.running_mean, self.running_var
        w, v = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        mu = w[0] * mu_ln + w[1] * mu_bn
        var = v[0] * var_ln + v[1] * var_bn
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


h = torch.randn(8, 6, dtype=torch.float64) * 3 + 2
bn = torch.nn.BatchNorm1d(6).double()
sn_bn = one_hot(SwitchableNormFC(6).double(), 1)
print(lab.cmp("one-hot LN vs torch LN", one_hot(SwitchableNormFC(6).double(), 0)(h),
              torch.nn.functional.layer_norm(h, (6,)), atol=1e-10))
print(lab.cmp("one-hot BN vs torch BN", sn_bn(h), bn(h), atol=1e-10))
print(lab.cmp("running_var", sn_bn.running_var, bn.running_var, atol=1e-12))
print(lab.cmp("eval: one-hot BN vs BN", sn_bn.eval()(h), bn.eval()(h), atol=1e-10))

# %% [markdown]
# ## What does a network choose?
#
# The paper reports that the choice differs from layer to layer and that BN's share falls when the
# batches are small {cite}`luo2019switchable`: batch statistics from 2 samples are mostly noise. We test
# that on LeNet and Fashion-MNIST {cite}`xiao2017fashion` (4,000 training and 1,000 test images), with a
# Switchable Norm after both convolutions (`SwitchableNorm2d`) and after the first fully connected layer
# (`SwitchableNormFC`). To vary only how many samples each batch statistic sees, every run keeps the
# optimizer batch (32), the SGD (momentum 0.9, learning rate 0.05) and the number of steps (one epoch)
# fixed, and the layers take their batch statistics over **ghost batches** {cite}`hoffer2017train` of
# $g = 2, 8$ or $32$ consecutive samples of that batch.
#
# The importance logits are a handful of numbers per layer (six in a convolution's, four in the fully
# connected one's), and at the learning rate of the weights they move slowly in a run this short. So
# we also give them a learning rate of their own, 10 times larger. With plain SGD and no weight decay,
# multiplying a parameter's gradient by 10 is exactly a 10 times larger learning rate for it (momentum
# included), which a gradient hook does without touching the training loop. Runs with the factor 1 are
# the control: they show which way the weights move at the ordinary rate.

# %%
data = fashion_mnist(n_train=4000, n_test=1000)
print(f"data: {data.name}, {len(data[0])} training and {len(data[2])} test images")

BATCH, LR, SEEDS = 32, 0.05, (0, 1, 2)
LAYERS = ("conv1", "conv2", "fc")


def switchable_layers(model):
    kinds = (N.SwitchableNorm2d, SwitchableNormFC)
    return [m for m in model.modules() if isinstance(m, kinds)]


def train_one(seed, g, factor):
    lab.seed_everything(seed)
    model = LeNet(conv_norm=ghost(N.SwitchableNorm2d, g),
                  fc_norm=ghost(SwitchableNormFC, g), image_size=28)
    for name, p in model.named_parameters():
        if name.endswith(("mean_weight", "var_weight")):  # the importance logits
            p.register_hook(lambda grad: grad * factor)
    history = fit(model, data, epochs=1, batch_size=BATCH, lr=LR, seed=seed,
                  progress=False)
    out = {"test_acc": history["test_acc"][-1]}
    for layer_name, layer in zip(LAYERS, switchable_layers(model), strict=True):
        w_mean, w_var = layer.importance()  # BN is the last entry of each
        out[f"{layer_name} mean"] = w_mean[-1].item()
        out[f"{layer_name} var"] = w_var[-1].item()
    return out


grid = {"g": [2, 8, 32], "factor": [10, 1]}
runs = evidence.sweep(train_one, grid, seeds=SEEDS, desc="SN")

# %% [markdown]
# Robustness to small batches means something only next to a norm that is not robust. So BatchNorm
# (ghost batches of $g$ in all three layers) and GroupNorm (2 groups in the convolutions, 4 in the
# fully connected layer; it takes no batch statistics, so one run per seed serves every $g$) train
# with the same data, SGD, learning rate, batches and initial weights as the switchable runs (the
# norms draw no random numbers, so a seed gives every arm the same start).

# %%
PLAIN = {"BN": (N.BatchNorm2d, N.BatchNorm1d),
         "GN": (lambda c: N.GroupNorm(2, c), lambda f: N.GroupNorm(4, f))}


def train_plain(seed, norm, g):
    lab.seed_everything(seed)
    conv, fc = PLAIN[norm]
    if norm == "BN":
        conv, fc = ghost(conv, g), ghost(fc, g)
    model = LeNet(conv_norm=conv, fc_norm=fc, image_size=28)
    history = fit(model, data, epochs=1, batch_size=BATCH, lr=LR, seed=seed,
                  progress=False)
    return {"test_acc": history["test_acc"][-1]}


bn_runs = evidence.sweep(lambda seed, g: train_plain(seed, "BN", g), {"g": [2, 32]},
                         seeds=SEEDS, desc="BN")
gn_runs = evidence.sweep(lambda seed: train_plain(seed, "GN", None), seeds=SEEDS,
                         desc="GN")

# %% [markdown]
# ## BN's share, layer by layer
#
# BN's importance weight at the end of training (its share of the mean and of the variance), mean ±
# standard error over the seeds. A convolution's three weights start at $1/3$ each, the fully
# connected layer's two at $1/2$.

# %% tags=["nbval-ignore-output"]
GS = runs.values_of("g")
for factor in (10, 1):
    sub = runs.select(factor=factor)
    rows = []
    for stat in ("mean", "var"):
        for layer in LAYERS:
            ests = [sub.estimate(f"{layer} {stat}", g=g) for g in GS]
            rows.append([f"{layer} {stat}"] + [f"{e:.2f}" for e in ests])
    accs = [sub.estimate("test_acc", g=g).scaled(100) for g in GS]
    rows.append(["test acc. (%)"] + [f"{e:.1f}" for e in accs])
    print(f"importance logits at {factor}x the learning rate: BN's share")
    print(evidence.table(["layer, stat"] + [f"g={g}" for g in GS], rows), "\n")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "BN's importance weight after one epoch against the number of samples per batch statistic, for the mean (left) and the variance (right), per layer; importance logits at 10 times the learning rate. Dotted lines mark the starting values, 1/3 for the convolutions and 1/2 for the fully connected layer.", "name": "fig-08-share"}, "image": {"alt": "Two panels with BN's share on the vertical axis and samples per statistic (2, 8, 32, log scale) on the horizontal axis, one line with error bars per layer. The fully connected layer's line rises steeply with the samples per statistic in both panels, from near zero at 2 samples. The two convolution lines stay in a band well away from zero and do not fall towards zero at 2 samples."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.7), sharey=True)
sub = runs.select(factor=10)
for ax, stat in zip(axes, ("mean", "var"), strict=True):
    for i, layer in enumerate(LAYERS):
        ests = [sub.estimate(f"{layer} {stat}", g=g) for g in GS]
        ax.errorbar(GS, [e.mean for e in ests], yerr=[e.sem for e in ests],
                    marker="o", capsize=3, color=f"C{i}", label=layer)
    for start in (1 / 3, 1 / 2):
        ax.axhline(start, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(GS, [str(g) for g in GS])
    ax.minorticks_off()
    ax.set(xlabel="samples per batch statistic, g", ylim=(0, 1),
           title=f"BN's share of the {'mean' if stat == 'mean' else 'variance'}")
axes[0].set_ylabel(f"importance (mean ± s.e., {len(SEEDS)} seeds)")
axes[1].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs show, each statement checked against them (Fashion-MNIST):

# %%
def share(layer, stat, g, factor=10):
    return runs.estimate(f"{layer} {stat}", g=g, factor=factor)


def fall(layer, stat, factor):
    """How much BN's share drops from g=32 to g=2, per seed."""
    low, high = share(layer, stat, 2, factor), share(layer, stat, 32, factor)
    pairs = zip(high.values, low.values, strict=True)
    return evidence.estimate([h - lo for h, lo in pairs])


evidence.claim("fc: BN's share of the mean falls by over 0.5 from g=32 to g=2",
               fall("fc", "mean", 10), ">", 0.5)
evidence.claim("fc: BN's share of the variance falls by over 0.4 from g=32 to g=2",
               fall("fc", "var", 10), ">", 0.4)
evidence.claim("fc, g=2: BN's share of the mean below a third (it starts at a half)",
               share("fc", "mean", 2), "<", 1 / 3)
evidence.claim("fc, g=2: BN's share of the variance below 0.25",
               share("fc", "var", 2), "<", 0.25)
evidence.claim("fc, g=32: BN's share of the mean above 0.75",
               share("fc", "mean", 32), ">", 0.75)
evidence.claim("fc, g=8: BN's share of the mean above g=2",
               share("fc", "mean", 8), ">", share("fc", "mean", 2), paired=True)
evidence.claim("fc, g=8: BN's share of the mean below g=32",
               share("fc", "mean", 8), "<", share("fc", "mean", 32), paired=True)
evidence.claim("conv2: BN's share of the variance is higher at g=2 than at g=32",
               share("conv2", "var", 2), ">", share("conv2", "var", 32), paired=True)
evidence.claim("control, 1x rate: fc's BN share of the mean falls by over 0.3",
               fall("fc", "mean", 1), ">", 0.3)
evidence.claim("control, 1x rate: that fall is smaller than at 10x",
               fall("fc", "mean", 1), "<", fall("fc", "mean", 10), paired=True)
drift = max(abs(r[f"{layer} {stat}"] - 1 / 3) for r in runs.select(factor=1).records
            for layer in ("conv1", "conv2") for stat in ("mean", "var"))
evidence.claim("control, 1x rate: the convolutions' weights stay within 0.05 of 1/3, "
               "in every run", drift, "<", 0.05)

# %% [markdown]
# And the accuracy, set beside BatchNorm and GroupNorm trained the same way (test accuracy in
# percent, eval mode, mean ± standard error over the seeds):

# %% tags=["nbval-ignore-output"]
def test_acc(g, factor=10):
    return runs.estimate("test_acc", g=g, factor=factor).scaled(100)


bn_acc = {g: bn_runs.estimate("test_acc", g=g).scaled(100) for g in (2, 32)}
gn_acc = gn_runs.estimate("test_acc").scaled(100)
rows = [["SN, logits at 10x", f"{test_acc(2):.1f}", f"{test_acc(32):.1f}"],
        ["SN, logits at 1x", f"{test_acc(2, 1):.1f}", f"{test_acc(32, 1):.1f}"],
        ["BN", f"{bn_acc[2]:.1f}", f"{bn_acc[32]:.1f}"],
        ["GN (no batch statistics)", f"{gn_acc:.1f}", f"{gn_acc:.1f}"]]
print(evidence.table(["norm", "g=2", "g=32"], rows))

# %%
def drop(accs_32, accs_2):
    """Per seed: test accuracy at g=32 minus g=2."""
    pairs = zip(accs_32.values, accs_2.values, strict=True)
    return evidence.Estimate(tuple(h - lo for h, lo in pairs), seeds=accs_2.seeds)


sn_drop, bn_drop = drop(test_acc(32), test_acc(2)), drop(bn_acc[32], bn_acc[2])
evidence.claim("BN loses more than 10 points from g=32 to g=2",
               bn_drop, ">", 10)
evidence.claim("SN loses over 10 points less than BN from g=32 to g=2",
               bn_drop, ">", sn_drop, margin=10, paired=True)
evidence.claim("g=2: SN beats BN by over 10 points", test_acc(2), ">", bn_acc[2],
               margin=10, paired=True)

# %% [markdown]
# Does the 10x rate for the logits, which makes the switch show, change the accuracy at $g = 2$?
# The paired difference (1x minus 10x) and its 90% interval:

# %% tags=["nbval-ignore-output"]
rate = evidence.difference(test_acc(2, 1), test_acc(2, 10), paired=True)
low, high = rate.interval(0.90)
print(f"g=2, 1x minus 10x: {rate.value:.1f} points, "
      f"90% interval [{low:.1f}, {high:.1f}]")

# %%
assert low < 0 < high, "the interval now excludes 0: the text must change"
print("g=2: the 90% interval of the difference includes 0: these runs cannot tell")

# %% [markdown]
# ## Reading the result
#
# The switching the paper describes happens here, but in one place: the fully connected layer. There a
# batch statistic over $g$ samples averages just $g$ values per feature, and at $g = 2$ BatchNorm of two
# values keeps little more than a sign (the Batch Renormalization lesson works this out). At $g = 2$ the
# layer gives most of the weight to LN (BN keeps under a third of the mean's weight, which started at a
# half, and under a quarter of the variance's); at $g = 8$ BN's share of the mean lies in between; at
# $g = 32$ most of the mean's weight is on BN.
#
# The convolutions are another matter. Their batch statistics pool $g \times H \times W$
# values per channel, hundreds even at $g = 2$ (conv2: $2 \times 14 \times 14 = 392$), so BN's
# statistics there are not noisy enough to give up. In conv2, BN's share of the variance even *rises*
# from $g = 32$ to $g = 2$ (in the table above), the opposite of the paper's trend, where
# BN's share falls as the batch shrinks. We have not found why. What the runs do show is that at
# the ordinary rate the convolutions' weights hardly move at all (every one stays within 0.05 of
# $1/3$ in every run), so the 1x runs cannot say whether the same drift would appear there given
# more steps (exercise 2). Note also that the paper's small batches hit layers with far fewer
# values per statistic (exercise 4).
#
# At the ordinary learning rate the fully connected layer moves the same way, less far. The importance
# logits need a learning rate of their own, or much longer training, before a network's choice shows.
# The larger rate is a tool for seeing the choice, not a way to a better network: whether it
# changes the test accuracy at $g = 2$, three seeds cannot tell (the 90% interval of the
# difference, printed above, includes zero).
#
# **Robust to small batches, relative to what?** BatchNorm trained the same way loses more than 10
# points from $g = 32$ to $g = 2$, and Switchable Norm (logits at 10x) loses over 10 points less than
# that. In the fully connected layer it shifts weight to LN where the batch statistics fail, both in
# training and in the running averages that evaluation uses; that is the robustness the paper
# claims. GroupNorm, which takes no batch statistics, is unaffected by $g$ by construction; its level
# is in the table, at a learning rate and group count not tuned for it, and these runs state no
# ranking between it and Switchable Norm.
#
# For ResNet-50 on ImageNet (8 GPUs, batch statistics taken on each GPU) the paper reports top-1
# accuracy with 32 images per GPU of 76.4% (BN), 75.9% (GN) and 76.9% (SN), and with 2 images per
# GPU of 65.3% (BN), 75.9% (GN) and 75.6% (SN) {cite}`luo2019switchable`: at 2 images per GPU, SN
# keeps most of its accuracy but does not beat GroupNorm.
#
# ## Exercises
#
# 1. Show that $\sigma^2_{LN}$ computed from the IN moments with the total-variance formula equals
#    `x.var((1, 2, 3), unbiased=False)`, and find an input where the $E[x^2] - E[x]^2$ form loses all
#    precision in float32.
# 2. The fully connected layer drops BN at $g = 2$, the convolutions do not. Train with $g = 2$ for three
#    epochs at the ordinary learning rate (`factor=1`): do the convolutions' weights start to move, and
#    which way? Is BN's share in the fully connected layer still falling at the end?
# 3. Put a plain `BatchNorm1d` after the fully connected layer and keep Switchable Norm in the
#    convolutions. What does that do to the test accuracy at $g = 2$ and at $g = 32$?
# 4. A ResNet's later convolutions work on small feature maps (7x7 at the end of ResNet-50). How many
#    values does a batch statistic pool there at 2 images per GPU, and what would you expect SN to
#    choose in those layers?
