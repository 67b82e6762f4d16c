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
# # Training versus inference
#
# BatchNorm computes different functions in training and at inference: in training it normalizes with
# the statistics of the current batch, at inference with running averages $\hat{\mu}, \hat{\sigma}^2$
# that it kept during training. One of the source articles lists this as BatchNorm's fourth problem:
# the statistics used at inference are not the ones the network was trained with. This lesson measures
# how far the running averages are from the statistics they estimate, isolates what noisy statistics
# cost at inference and how many images a recalibration needs to remove that cost, turns the
# inference-time BatchNorm
# into a free operation by folding it into a neighbouring layer, and tests the advice about where
# BatchNorm belongs relative to the activation.

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
import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import normlib
from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.data import digits
from normlib.lab.models import LeNet
from normlib.lab.train import accuracy, fit, recalibrate_batchnorm

lab.setup()
data = digits()
x_tr, y_tr, x_te, y_te = data
SEEDS = range(6)
print(f"{len(x_tr)} training and {len(x_te)} test digits")

# %% [markdown]
# ## Running averages are estimates
#
# We train the BatchNorm LeNet on the digits with small batches (8) and a large momentum
# $\alpha = 0.5$: each update moves the running averages halfway to the current batch's statistics,
# so they weigh the last batches by $\tfrac12, \tfrac14, \tfrac18, \dots$, which is as noisy as an
# average of $(2 - \alpha)/\alpha = 3$ batches, 24 images. The momentum does not change training at all: in training mode
# BatchNorm normalizes with the batch statistics, so the weights come out the same for any momentum,
# and only the running averages differ.
#
# What do the running averages estimate? For the first BatchNorm, whose input depends on no other
# BatchNorm, we can compute it exactly: the mean and variance of its input over the whole training set,
# with the final weights (the *population* statistics). `normlib.lab.train.recalibrate_batchnorm`
# comes close to them another way: it resets every BatchNorm's running statistics and recomputes them
# as exact averages over one pass through the training data, without gradients and without changing
# a weight (PreciseBN {cite}`wu2021rethinking`). Using batches of the training batch size keeps them
# averages of the *batch* statistics the network was trained with; an average of within-batch
# variances misses how much the batch means vary, so a small gap to the population variance
# remains. Six networks (seeds), each measured both ways:

# %%
def relative_error(bn, z):
    """Median over channels of |running var - population var| / population var.

    `z` is the BatchNorm's input over the whole training set."""
    population_var = z.var((0, 2, 3))
    return ((bn.running_var - population_var).abs() / population_var).median().item()


models = {}


def train(seed):
    lab.seed_everything(seed)
    model = LeNet(conv_norm=lambda c: N.BatchNorm2d(c, momentum=0.5),
                  fc_norm=lambda c: N.BatchNorm1d(c, momentum=0.5))
    fit(model, data, epochs=6, batch_size=8, lr=0.02, seed=seed, progress=False)
    model.eval()
    with torch.no_grad():
        z = model.features[0](x_tr)  # the first BatchNorm's input, whole training set
    running = relative_error(model.features[1], z)
    running_acc = accuracy(model, x_te, y_te)
    recalibrate_batchnorm(model, x_tr, batch_size=8)
    models[seed] = model
    return {"running": running, "recalibrated": relative_error(model.features[1], z),
            "running_acc": running_acc}


stats = evidence.sweep(train, seeds=SEEDS, desc="LeNet + BatchNorm, batch 8")

# %% [markdown]
# The first BatchNorm's variances, as the median relative error over its 6 channels, for each network
# (the digits of a training run depend on the machine's rounding, so this cell's output is not
# compared):

# %% tags=["nbval-ignore-output"]
print("first BatchNorm: |variance - population variance| / population variance")
rows = [[r["seed"], f"{r['running']:.2%}", f"{r['recalibrated']:.2%}"]
        for r in stats.records]
print(evidence.table(["seed", "running averages", "recalibrated"], rows))

# %% [markdown]
# What the numbers say on average over the networks (one network can land closer), checked on every
# run of this lesson:

# %%
evidence.claim("the running variances miss the population's by more than 1%",
               stats.estimate("running"), ">", 0.01)
evidence.claim("the recalibrated variances match it to within 0.5%",
               stats.estimate("recalibrated"), "<", 0.005)

# %% [markdown]
# What recalibration computes is the population estimate of the BatchNorm paper's inference
# procedure (its Algorithm 2 {cite}`ioffe2015batch`): over the batches $B$ of one pass, the average of
# each batch's mean, $E_B[\mu_B]$, and of each batch's variance with Bessel's correction,
#
# $$
# \widehat{\mathrm{Var}}[x] = \frac{m}{m-1}\, E_B\big[\sigma_B^2\big],
# $$
#
# with $m$ the values each statistic is taken over (for the first BatchNorm, 8 images of 8×8 pixels:
# $m = 512$; the last batch of the pass holds the 5 images left over, so its $m$ is 320). PyTorch's
# momentum update moves towards the same corrected batch variances, but as an exponential average
# that weighs the last batches most, computed while the weights still change; with
# `momentum=None`, as `recalibrate_batchnorm` sets it, it becomes this plain average. Checked on the
# first BatchNorm of the first network:

# %%
first = models[0]
with torch.no_grad():
    per_batch = [first.features[0](x_tr[i:i + 8]) for i in range(0, len(x_tr), 8)]
batch_means = torch.stack([z.mean((0, 2, 3)) for z in per_batch])
corrected = torch.stack([z.var((0, 2, 3), correction=0) * m / (m - 1)
                         for z, m in ((z, z.numel() // z.shape[1]) for z in per_batch)])
print(lab.cmp("running_mean = E_B[mu_B]", first.features[1].running_mean,
              batch_means.mean(0), atol=1e-5))
print(lab.cmp("running_var = m/(m-1) E_B[var_B]", first.features[1].running_var,
              corrected.mean(0), atol=1e-4))

# %% [markdown]
# ## What noisy statistics cost, and recalibration recovers
#
# Does that noise matter for accuracy? To isolate it, we keep each trained network's weights and change
# only where its statistics come from: `recalibrate_batchnorm` on a random subset of $k$ training
# images, in batches of 8 as in training, for $k$ from 8 (a single batch, what running averages with a
# momentum near 1 hold) to the whole training set. Eight random subsets for each $k$ and network:

# %%
SIZES = (8, 32, 128, 512, len(x_tr))


def statistics_from(seed, k):
    """Test accuracy of network `seed`, statistics from k random training images.

    The mean over 8 random subsets (1 for the whole training set)."""
    model, gen = models[seed], torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(8 if k < len(x_tr) else 1):
        subset = torch.randperm(len(x_tr), generator=gen)[:k]
        recalibrate_batchnorm(model, x_tr[subset], batch_size=8)
        accs.append(accuracy(model, x_te, y_te))
    return sum(accs) / len(accs)


dose = evidence.sweep(statistics_from, {"k": SIZES}, seeds=SEEDS,
                      desc="statistics from k images")
# the last setting recalibrated every network on the whole training set

# Each network against itself: its accuracy minus its accuracy with statistics from all
# images.
with_all = {r["seed"]: r["value"] for r in dose.select(k=len(x_tr)).records}
change = evidence.Runs([{**r, "change": r["value"] - with_all[r["seed"]]}
                        for r in dose.records])

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy of the same trained networks with BatchNorm statistics from k training images, as the change from their accuracy with statistics from all of them (mean and standard error over six networks, each the mean of eight random subsets; the point at all images is zero by construction). The dashed line and its grey band are the change with the running averages training left behind (mean ± standard error over the six networks).", "name": "fig-12-statistics"}, "image": {"alt": "Line plot of the change in test accuracy against the number of training images the statistics come from, on a log axis from 8 to all 1,437. The change is most negative at 8 images and approaches zero as the number grows. A dashed horizontal line marks the change with the running averages."}}
fig, ax = plt.subplots(figsize=(6, 3.4))
change.plot("change", x="k", scale=100, ax=ax)
ax.containers[0].set_label("recalibrated on k images")
running = evidence.Runs([{"seed": r["seed"],
                          "change": r["running_acc"] - with_all[r["seed"]]}
                         for r in stats.records]).estimate("change")
ax.axhline(100 * running.mean, color="0.4", linestyle="--",
           label="running averages (momentum 0.5)")
ax.axhspan(100 * (running.mean - running.sem), 100 * (running.mean + running.sem),
           color="0.4", alpha=0.15, lw=0)
ax.set(xscale="log", xlabel="images the statistics come from, k",
       ylabel=f"test accuracy change (points)\nmean ± s.e., {len(SEEDS)} networks")
ax.set_xticks(SIZES, [str(k) for k in SIZES])
ax.minorticks_off()
ax.legend(loc="lower right")
fig.tight_layout()

# %% tags=["nbval-ignore-output"]
low, high = evidence.difference(running).interval(0.90)
print(f"running averages, change from all images' statistics: {running.scaled(100):.2f}"
      f" points\n(mean ± s.e. over {len(SEEDS)} networks; 90% interval"
      f" {100 * low:+.2f} to {100 * high:+.2f})")

# %%
evidence.claim("statistics from one batch of 8 images cost over 1 point of accuracy",
               change.estimate("change", k=8), "<", -0.01, unit=100)
evidence.claim("from 512 images on, more change accuracy by under 0.5 points",
               change.estimate("change", k=512), "≈", 0, margin=0.005, unit=100)
evidence.claim("the running averages cost less accuracy than one batch of 8 images",
               running, ">", change.estimate("change", k=8), paired=True, unit=100)

# %% [markdown]
# The weights were the same in every case, so the accuracy lost at small $k$ is the statistics' noise
# alone, and recalibrating on enough images recovers it. The running averages training left behind
# are one estimate per network, from its last few batches and from weights that were still changing,
# and where they land depends on which batches came last. Averaging about three batches, they cost
# less accuracy than the statistics of a single batch (checked as a paired comparison over the six
# networks). Whether
# they cost anything against the statistics of all images, the interval printed above says for
# this run; the lesson checks no claim about it.
#
# Recalibration costs one forward pass over part of the training set (here 512 images come within
# half a point of all of them, checked above) and is the standard step before deploying a BatchNorm network whose running
# statistics are in doubt {cite}`wu2021rethinking`: after training with small batches, after
# fine-tuning, or after averaging the weights of several checkpoints, where the
# averaged weights were never trained with any of the running statistics (stochastic weight
# averaging recomputes them with one pass over the training data for this reason
# {cite}`izmailov2018averaging`).
#
# ## Folding BatchNorm into the convolution
#
# At inference a BatchNorm is a fixed per-channel affine map. One of the source articles writes it as
#
# $$
# y = \frac{\gamma}{\sqrt{\hat{\sigma}^2 + \epsilon}}\, x
#     + \left(\beta - \frac{\gamma\, \hat{\mu}}{\sqrt{\hat{\sigma}^2 + \epsilon}}\right)
#   = s\, x + t ,
# $$
#
# with $s = \gamma / \sqrt{\hat{\sigma}^2 + \epsilon}$ and $t = \beta - s\, \hat{\mu}$. When $x = W u + b$
# is the output of a convolution or linear layer, the two merge into one layer:
#
# $$
# \begin{aligned}
# y &= s \odot (W u + b) + t \\
#   &= (s \odot W)\, u + \big(s \odot (b - \hat{\mu}) + \beta\big) \\
#   &= W' u + b' ,
# \end{aligned}
# $$
#
# where $s \odot W$ scales each output channel of $W$. `normlib.fold_batchnorms` does this for every
# Conv/Linear directly followed by a BatchNorm. On the first network (recalibrated):

# %%
model = models[0]
folded = normlib.fold_batchnorms(model)
print(folded.features)
with torch.no_grad():
    logits, folded_logits = model(x_te), folded(x_te)
print(lab.cmp("folded vs original logits", folded_logits, logits, atol=1e-4))
print(lab.cmp("predicted classes", folded_logits.argmax(1), logits.argmax(1)))

# %% [markdown]
# What it buys: the BatchNorm layers' work disappears. Timed on a batch of 256 digits (the GPU when there
# is one; timings vary, so this cell's output is not compared):

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
batch = x_te[:256].to(device)
print("device:", device_name(device))
timings = {}
for label, net in (("with BatchNorm", model), ("folded", folded)):
    net = net.to(device).eval()
    with torch.no_grad():
        timings[label] = benchmark(lambda net=net: net(batch), device)
    print(f"{label:<15} {timings[label]}")
speedup = timings["with BatchNorm"].median_s / timings["folded"].median_s
print(f"speed-up: {speedup:.2f}x")

# %% [markdown]
# On a model this small the saving is at most the BatchNorm layers' share of the time, and timings
# this short are noisy (compare the interquartile ranges with the difference of the medians); on real convolutional networks, where every convolution is followed by a
# BatchNorm, folding is standard in inference compilers.
#
# ## Folding a BatchNorm that follows the activation
#
# A BatchNorm placed after a ReLU cannot merge into the layer before it (the ReLU sits between), but it
# can merge into the layer *after* it. With $r$ the ReLU's output and $z = W (s \odot r + t) + b$ the next
# layer:
#
# $$
# \begin{aligned}
# z &= W (s \odot r + t) + b \\
#   &= (W \operatorname{diag}(s))\, r + (W t + b) \\
#   &= W' r + b' ,
# \end{aligned}
# $$
#
# so $s$ scales the *input* channels of $W$ and $W t$ joins the bias (for a convolution, $W t$ sums over
# the kernel too). In code:

# %%
def fold_into_next(bn, layer):
    """`layer` (Linear or Conv2d) with the eval-mode `bn` before it merged in.

    W' = W diag(s) and b' = W t + b, with s and t acting on the input channels."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - s * bn.running_mean
    shape = (1, -1) + (1,) * (layer.weight.dim() - 2)  # (1, C_in, 1, 1) for a Conv2d
    w_t = (layer.weight * t.reshape(shape)).flatten(1).sum(1)  # W t (over the kernel)
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        merged.weight.copy_(layer.weight * s.reshape(shape))
        merged.bias.copy_(layer.bias + w_t)
    return merged


def with_statistics(bn):
    """An eval-mode BatchNorm with random running statistics and affine parameters."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    return bn.eval()


torch.manual_seed(0)
f64 = torch.float64
lin1, lin2 = nn.Linear(20, 30, dtype=f64), nn.Linear(30, 10, dtype=f64)
bn = with_statistics(N.BatchNorm1d(30, dtype=f64))
r = torch.relu(lin1(torch.randn(64, 20, dtype=f64)))
merged = fold_into_next(bn, lin2)
print(lab.cmp("Linear-ReLU-BN-Linear folded", merged(r), lin2(bn(r)), atol=1e-12))

# %% [markdown]
# The same works for a convolution, with one catch: zero padding. The original network pads the
# BatchNorm's *output* with zeros; the folded convolution pads its input $r$, before the shift, so
# each padded zero stands in for $t$ instead of 0, and every output that touches the border changes.
# A convolution without padding folds exactly; with padding, only the interior survives:

# %%
bn2 = with_statistics(N.BatchNorm2d(8, dtype=f64))
images = torch.randn(4, 3, 10, 10, dtype=f64)
r = torch.relu(nn.Conv2d(3, 8, 3, padding=1, dtype=f64)(images))
inside = (..., slice(1, -1), slice(1, -1))  # all but the outermost ring of pixels
for padding in (0, 1):
    conv = nn.Conv2d(8, 4, 3, padding=padding, dtype=f64)
    want, got = conv(bn2(r)), fold_into_next(bn2, conv)(r)
    where = (...,) if padding == 0 else inside
    name = f"padding={padding}, {'everywhere' if padding == 0 else 'interior'}"
    print(lab.cmp(name, got[where], want[where], atol=1e-12))
border = (got - want).abs()
border[inside] = 0
evidence.claim("padding=1: outputs at the border differ by more than 0.01",
               border.max().item(), ">", 0.01)

# %% [markdown]
# (A correct fold for a padded convolution would pad with $-t/s$ per channel, which standard
# convolutions cannot do.) Anything between the BatchNorm and the next layer must also commute with
# the affine map: a max-pool does only where every $s$ is positive (a negative $\gamma$ turns a max
# into a min). So a BatchNorm directly after a convolution or linear layer always folds into it, and
# one after a ReLU folds into the next layer only when nothing but that layer follows and it does not
# zero-pad. In the LeNet below with the norm after the ReLU, a max-pool and a padded convolution
# follow each convolutional BatchNorm: only the fully connected one folds exactly.
#
# ## Before or after the activation?
#
# The BatchNorm paper {cite}`ioffe2015batch` (its section 3.2), and one of the source articles
# after it, argue that BatchNorm belongs after the convolution and *before* the non-linearity: the
# convolution's output is likely to be symmetric and non-sparse, which a mean and a variance describe
# well, while the output of a ReLU is skewed, with a spike of exact zeros, and its shape keeps
# changing during training. Whether that matters is an empirical question, so we test it: the same
# LeNet with the norm before and after each ReLU, 20 seeds each (an equivalence needs a narrow
# interval), batch size 32.

# %%
placed = {}


def train_placement(seed, placement):
    lab.seed_everything(seed)
    net = LeNet(conv_norm=N.BatchNorm2d, fc_norm=N.BatchNorm1d,
                norm_after_activation=placement == "after ReLU")
    history = fit(net, data, epochs=6, batch_size=32, lr=0.05, seed=seed,
                  progress=False)
    placed[seed, placement] = net
    return history["test_acc"][-1]


PLACEMENTS, PLACEMENT_SEEDS = ("before ReLU", "after ReLU"), range(20)
placement = evidence.sweep(train_placement, {"placement": PLACEMENTS},
                           seeds=PLACEMENT_SEEDS, desc="BatchNorm before/after ReLU")

# %% [markdown]
# First, what the first BatchNorm sees in each placement, on 256 training digits, in all the trained
# networks: before the ReLU, the convolution's output (exactly 0 only where its 3x3 window covers blank
# background, since a convolution followed by a norm has no bias of its own); after the ReLU, the ReLU
# of it.

# %%
def first_norm_input(net, where):
    """What the first BatchNorm of `net` sees on 256 training digits."""
    with torch.no_grad():
        z = net.features[0](x_tr[:256])
    return torch.relu(z) if where == "after ReLU" else z


seen = {p: [first_norm_input(placed[s, p], p) for s in PLACEMENT_SEEDS]
        for p in PLACEMENTS}
zeros = {p: evidence.estimate([(v == 0).float().mean().item() for v in values])
         for p, values in seen.items()}
evidence.claim("before the ReLU, under a sixth of the values are exactly 0",
               zeros["before ReLU"], "<", 1 / 6)
evidence.claim("after the ReLU, more of them are exactly 0 than before it",
               zeros["after ReLU"], ">", zeros["before ReLU"])

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Values entering the first BatchNorm of the trained networks of each placement, on 256 training digits: with the norm before the ReLU, the convolution's output; with the norm after it, the ReLU's output.", "name": "fig-12-placement-inputs"}, "image": {"alt": "Two histograms. Left, the convolution's output: positive and negative values, with a spike at zero from the blank background of the digits. Right, the ReLU's output: no negative values and a taller spike of exact zeros."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 2.8), sharey=True)
# the same bins on both sides, 0 in the middle of one
bins = torch.arange(-3.05, 3.6, 0.1).numpy()
for ax, (label, values) in zip(axes, seen.items(), strict=True):
    ax.hist(torch.cat(values).flatten().numpy(), bins=bins, density=True)
    ax.set(title=f"BatchNorm {label} sees", xlabel="value")
axes[0].set_ylabel("density")
fig.tight_layout()

# %% [markdown]
# Then the test accuracies (raw numbers of a training run: not compared):

# %% tags=["nbval-ignore-output"]
accs = {p: placement.estimate("value", placement=p).scaled(100) for p in PLACEMENTS}
rows = [[p, f"{acc.low:.1f}", f"{acc.high:.1f}", f"{acc:.1f}"]
        for p, acc in accs.items()]
header = ["test accuracy (%)", "lowest seed", "highest seed",
          f"mean ± s.e., {len(PLACEMENT_SEEDS)} seeds"]
print(evidence.table(header, rows))
d = evidence.difference(accs["before ReLU"], accs["after ReLU"])
low, high = d.interval(0.90)
print(f"before minus after: {d.value:+.1f} points, "
      f"90% interval [{low:+.1f}, {high:+.1f}]")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy of the LeNet with BatchNorm before or after each ReLU (mean and standard error over 20 seeds).", "name": "fig-12-placement"}, "image": {"alt": "Two points with error bars: the test accuracy with BatchNorm before the ReLU and after it."}}
fig, ax = plt.subplots(figsize=(4.5, 3))
placement.plot("value", x="placement", scale=100, ax=ax, linestyle="none")
ax.set(xlabel="", ylabel=f"test accuracy (%)\nmean ± s.e., {len(PLACEMENT_SEEDS)} seeds",
       xlim=(-0.5, 1.5))
fig.tight_layout()

# %%
before = placement.estimate("value", placement="before ReLU")
after = placement.estimate("value", placement="after ReLU")
evidence.claim("neither placement beats the other by 5 points of accuracy or more",
               before, "≈", after, margin=0.05, unit=100)

# %% [markdown]
# On this problem the two placements end within 5 points of each other (the 90% interval of the
# difference lies inside ±5 points). That is a coarse bound: with test errors of a few percent,
# 5 points is most of the error, so the experiment rules out only a large advantage for either
# placement, at one learning rate shared by both. Whether one of them is ahead by a point or two
# is not checked: the interval printed with the table above is this run's estimate, and it moves
# from machine to machine. The argument for placing BatchNorm before
# the non-linearity comes from the BatchNorm paper itself {cite}`ioffe2015batch`, and ResNet
# {cite}`he2016deep` follows it; this experiment tests one small network on one data set and says
# nothing about larger ones. Placing it before has one practical advantage shown above: it always
# folds into the layer before it, while a BatchNorm after the ReLU folds only into the next layer,
# and only when nothing but a linear layer without zero padding follows it.
#
# ## Exercises
#
# 1. Recalibrate with `batch_size=len(x_tr)` (one batch of everything). Does accuracy change? Why might
#    the average of batch statistics be a better choice than the full-data statistics, for the
#    BatchNorms after the first?
# 2. Fold a `Conv2d` followed by a `BatchNorm2d` in *training* mode by hand and compare outputs. Why
#    does `fold_batchnorm` refuse?
# 3. Make `fold_into_next` exact for a convolution with `padding=1`: pad $r$ yourself with $-t/s$ per
#    channel and use `padding=0`.
# 4. Repeat the placement experiment at batch size 4.
