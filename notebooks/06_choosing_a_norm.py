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
# # Choosing a norm, by evidence
#
# The source articles end with rules of thumb: BatchNorm for CNNs trained with large batches,
# GroupNorm when batches are small, LayerNorm for sequences, InstanceNorm for style. The first two
# rest on one well-known figure: in the GroupNorm paper {cite}`wu2018group`, the ImageNet error of a
# ResNet-50 with BatchNorm rises as the images per GPU shrink from 32 to 2, while GroupNorm's error
# stays flat.
#
# This lesson measures that claim on a small CNN and asks *why* it holds. It builds an experiment
# that changes one thing only, the number of samples each BatchNorm statistic is taken over, and it
# finds what makes the extreme case so bad: where a statistic sees only two *values*, as after a
# fully connected layer (one value per sample) with two samples, BatchNorm turns every value it
# normalizes into $+1$ or $-1$. A BatchNorm2d on feature maps is another case: with two samples its
# statistics still average several values per sample, and in these short runs it loses far less.
# Values per statistic alone do not settle it, though: the paper's ResNet-50 loses about eleven
# points although even its fewest-valued statistics see 98 values. Every claim marked ✓ below is
# checked against the runs when the notebook runs; all of them are about the first 250 optimizer
# steps of training.

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
import html

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML

from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.convnets import ConvNet
from normlib.lab.data import fashion_mnist
from normlib.lab.ghostbn import GhostBatchNorm, ghost_bn
from normlib.lab.models import GhostNorm, LeNet, ghost, he_init
from normlib.lab.train import accuracy, fit, recalibrate_batchnorm

lab.setup()
data = fashion_mnist()  # 8,000 training and 2,000 test images, class-balanced
x_train, y_train, x_test, y_test = data
print(f"data: {data.name}, {len(x_train):,} training and {len(x_test):,} test images "
      f"of shape {tuple(x_train.shape[1:])}")

# %% [markdown]
# The data are Fashion-MNIST {cite}`xiao2017fashion`: 28×28 grey images of ten kinds of clothing,
# read from Debian's package `dataset-fashion-mnist` where it is installed, else downloaded once
# (30 MB, checked) into `~/.cache/normlib`. Offline, the loader stops with an error that says how to
# get the data; it uses the 8×8 digits instead only when asked (`NORMLIB_DATA_FALLBACK=digits`), and
# says so. Every claim below is about Fashion-MNIST.
#
# ## What to vary, and what to hold fixed
#
# The obvious experiment trains each norm at batch sizes 2 to 32 for the same number of epochs. It
# changes several things at once: each BatchNorm statistic is taken over fewer samples, but a batch
# of 2 also gives 16 times as many optimizer steps as a batch of 32, with noisier gradients, and
# the learning rate has to be rescaled. Any of these moves the test error, for every norm, and the
# result cannot say which one did.
#
# Hoffer et al. {cite}`hoffer2017train` isolate the first cause with *ghost batches*: the optimizer
# batch stays at 32 (so the gradient noise and the number of steps stay the same) while BatchNorm
# takes its statistics over groups of $m$ consecutive samples inside it. Only $m$ changes.
# `normlib.lab.models.GhostNorm` wraps a norm that way; in training it is exactly the norm applied
# to each group on its own. Its running statistics are updated once per group with a momentum
# scaled so that over one optimizer step they move as much as the plain norm's (10%), whatever the
# number of groups: only the batch statistics depend on $m$. For speed the runs below use
# `normlib.lab.ghostbn.GhostBatchNorm`, which computes the same thing for a BatchNorm in one call
# instead of one per group (checked here, outputs, gradients and running statistics):

# %%
x = torch.randn(32, 6, 28, 28)
bn = N.BatchNorm2d(6)
print(lab.cmp("ghost BN, groups of 4", GhostNorm(bn, 4)(x),
              torch.cat([bn(group) for group in x.split(4)])))
slow, fast = GhostNorm(N.BatchNorm2d(6), 4), GhostBatchNorm(N.BatchNorm2d(6), 4)
xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
dy = torch.randn_like(x)
slow(xs).backward(dy)
fast(xf).backward(dy)
print(lab.cmp("GhostBatchNorm vs GhostNorm: output", fast(x), slow(x), atol=1e-5))
print(lab.cmp("GhostBatchNorm vs GhostNorm: grad of x", xf.grad, xs.grad, atol=1e-5))
print(lab.cmp("GhostBatchNorm vs GhostNorm: running_var", fast.norm.running_var,
              slow.norm.running_var, atol=1e-5))

# %% [markdown]
# The other norms take their statistics inside each sample, so they cannot notice the groups. The
# four norms of this lesson, as placed after the first convolution, with and without ghost batches of
# two (InstanceNorm has no place after the fully connected layer: there each feature has one value
# per sample, nothing to take statistics over):

# %%
NORMS = {  # norm: (layer after each convolution, after the first fully connected layer)
    "BN": (N.BatchNorm2d, N.BatchNorm1d),
    "GN": (lambda c: N.GroupNorm(2, c), lambda f: N.GroupNorm(8, f)),
    "LN": (lambda c: N.GroupNorm(1, c), N.LayerNorm),
    "IN": (lambda c: N.InstanceNorm2d(c, affine=True), None),
    "none": (None, None),
}
NAMES = {"BN": "BatchNorm", "GN": "GroupNorm", "LN": "LayerNorm", "IN": "InstanceNorm",
         "none": "no norm"}
for name, (conv_norm, _) in NORMS.items():
    if conv_norm is not None:
        layer = conv_norm(6)
        same = torch.allclose(GhostNorm(layer, 2)(x), layer(x), rtol=0, atol=1e-6)
        print(f"{NAMES[name]:<12} same output with ghost batches of 2: {same}")

# %% [markdown]
# So GroupNorm (GN), LayerNorm (LN, here `GroupNorm(1, C)` on the convolutions, see the GroupNorm
# lesson) and InstanceNorm (IN) give the same network at every $m$: they need to be trained only
# once per seed, and they appear below as flat reference lines.
#
# ## How many values one statistic sees
#
# BatchNorm's mean and variance for a channel run over every value of that channel in the batch:
# $m \times H \times W$ values after a convolution with $H \times W$ feature maps, but only $m$
# values after a fully connected layer, whose features have one value per sample. Measured on the
# LeNet of this lesson (conv-norm-ReLU-pool twice, then a fully connected layer of 120 features
# with its norm, then two more fully connected layers), by recording what each BatchNorm receives:

# %%
def values_per_statistic(m):
    """What each BatchNorm receives with ghost batches of m: shape, values/channel."""
    model = LeNet(conv_norm=ghost(N.BatchNorm2d, m), fc_norm=ghost(N.BatchNorm1d, m),
                  image_size=28)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, inputs[0].shape)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, GhostNorm):
            module.norm.register_forward_hook(record(name))
    model(torch.randn(32, 1, 28, 28))
    return {name: (shape, shape.numel() // shape[1]) for name, shape in seen.items()}


small, large = values_per_statistic(2), values_per_statistic(32)
layers = zip(("conv 1", "conv 2", "fc 1"), small.items(), strict=True)
rows = [[after, "(m, " + ", ".join(map(str, shape[1:])) + ")", f"{n:,}",
         f"{large[name][1]:,}"] for after, (name, (shape, n)) in layers]
print(evidence.table(["BatchNorm after", "input", "m=2", "m=32"], rows))

# %% [markdown]
# At $m = 2$ the convolutions' statistics still average hundreds of values; the fully connected
# layer's average two.
#
# ## Two samples: every normalized value is ±1
#
# For one feature with values $x_1, x_2$ in a group of two:
#
# $$
# \begin{aligned}
# \mu &= \tfrac{1}{2}(x_1 + x_2), \\
# x_1 - \mu &= \tfrac{1}{2}(x_1 - x_2) = -(x_2 - \mu), \\
# \sigma^2 &= \tfrac{1}{2}\left[(x_1 - \mu)^2 + (x_2 - \mu)^2\right]
#           = \tfrac{1}{4}(x_1 - x_2)^2, \\
# \hat{x}_1 &= \frac{x_1 - \mu}{\sqrt{\sigma^2 + \epsilon}}
#           = \frac{\tfrac{1}{2}(x_1 - x_2)}{\sqrt{\tfrac{1}{4}(x_1 - x_2)^2 + \epsilon}}
#           \approx \operatorname{sign}(x_1 - x_2), \\
# \hat{x}_2 &= -\hat{x}_1 .
# \end{aligned}
# $$
#
# Whatever the two values are, the normalized pair is $(+1, -1)$ or $(-1, +1)$; only when they are
# closer than about $\sqrt{\epsilon}$ does $\epsilon$ pull it towards zero. After this layer, a
# feature says only *which of the two images had the larger value*: the magnitude is gone, and what
# an image's feature says depends on the other image it was paired with. In general, normalizing $m$
# values fixes their mean (0) and their mean square (1, up to $\epsilon$): two constraints, which at
# $m = 2$ leave nothing but a sign. Checked with `BatchNorm1d` on two samples of five features:

# %%
pair = torch.tensor([[3.0, -1.0, 0.5, 100.0, 0.2],
                     [1.0, 2.0, -7.0, -100.0, 0.201]], dtype=torch.float64)
normalized = N.BatchNorm1d(5).double()(pair)
print(normalized.detach().numpy().round(3))
half_gap = (pair[0] - pair[1]) / 2
print(lab.cmp("x_hat_1 = formula above", normalized[0],
              half_gap / torch.sqrt(half_gap**2 + 1e-5), atol=1e-12))
print(lab.cmp("x_hat_2 = -x_hat_1", normalized[1], -normalized[0]))

# %% [markdown]
# The last feature's two values differ by 0.001, less than $\sqrt{\epsilon} \approx 0.003$: the only
# case where the output is not ±1.
#
# ## The experiment
#
# The LeNet of the BatchNorm lesson {cite}`lecun1998gradient`, sized for 28×28 images, with a norm
# after both convolutions and after the first fully connected layer. Every run takes the same 250
# SGD steps: batch 32, learning rate 0.05, momentum 0.9, one epoch over the 8,000 training images,
# with the batches drawn by the run's seed. What varies:
#
# - **BatchNorm** with its statistics over ghost batches of $m$ = 2, 8 and 32 samples (32 is the
#   whole optimizer batch: plain BatchNorm);
# - the **control** for the explanation above: BatchNorm on the convolutions only (nothing after the
#   fully connected layer), at $m$ = 2 and 32;
# - **GroupNorm** (2 groups on the convolutions, 8 groups of 15 features on the fully connected
#   layer), **LayerNorm** and **no norm**, once per seed (InstanceNorm, shown above, is left out
#   to keep the lesson short: it has no place after the fully connected layer). The
#   network without a norm starts from He initialisation {cite}`he2015delving`, not torch's
#   default, whose weights are too small for ReLU layers by $\sqrt{6}$: without a norm to rescale
#   its activations, it deserves the initialisation that suits it.
#
# Three seeds each; the seed fixes the initial weights and the order of the batches. Every network
# with a norm starts from the same weights for a given seed (the norms' own parameters start at
# $\gamma = 1, \beta = 0$), so two of them can be compared seed by seed (a paired comparison,
# which removes the noise the seeds share). Test error is
# measured in eval mode, with BatchNorm's running statistics, as a deployed network would be. Each
# BatchNorm network is evaluated two more ways, to tell the statistics from the weights:
#
# - with **batch statistics**: in training mode, so each group of $m$ test images is normalized
#   with its own statistics, as the network was during training;
# - with **recalibrated** running statistics: recomputed from 2,000 training images as plain
#   averages instead of running ones (`recalibrate_batchnorm`), the weights untouched. If the running statistics were what
#   failed, this would repair them.

# %%
SEEDS = (0, 1, 2)


def train(seed, norm="BN", m=32, fc=True):
    """Train one LeNet for 250 steps of batch 32; return its errors (fractions)."""
    lab.seed_everything(seed)
    conv_norm, fc_norm = NORMS[norm]
    if norm == "BN":  # statistics over ghost batches of m samples; fc=False: none there
        conv_norm, fc_norm = ghost_bn(conv_norm, m), ghost_bn(fc_norm, m) if fc else None
    model = LeNet(conv_norm=conv_norm, fc_norm=fc_norm, image_size=28)
    if norm == "none":
        he_init(model)
    history = fit(model, data, epochs=1, batch_size=32, lr=0.05, seed=seed,
                  progress=False)
    errors = {"test_err": 1 - history["test_acc"][-1],
              "train_err": 1 - history["train_acc"][-1]}  # over the epoch's batches
    if norm == "BN" and fc:
        errors |= other_evaluations(model)
    return errors


def other_evaluations(model):
    """Test error with batch statistics, and with running statistics recomputed."""
    in_train_mode = copy.deepcopy(model).train()  # a copy: running statistics change
    recalibrated = recalibrate_batchnorm(copy.deepcopy(model), x_train[:2000]).eval()
    return {"batch_err": 1 - accuracy(in_train_mode, x_test, y_test, batch_size=1024),
            "recal_err": 1 - accuracy(recalibrated, x_test, y_test)}


def err(runs, metric="test_err", **where):
    """A metric's values over the seeds, as an Estimate (mean, standard error)."""
    return runs.estimate(metric, **where)


# %%
bn_runs = evidence.sweep(train, {"m": [2, 8, 32], "fc": [True]}, seeds=SEEDS,
                         desc="BatchNorm")

# %%
conv_only = evidence.sweep(train, {"m": [2, 32], "fc": [False]}, seeds=SEEDS,
                           desc="BatchNorm, convolutions only")

# %%
references = evidence.sweep(train, {"norm": ["GN", "LN", "none"]}, seeds=SEEDS,
                            desc="GN, LN, none")

# %% [markdown]
# The numbers of this run, test error in percent (mean ± standard error over the three seeds). They
# differ in their digits from machine to machine; the claims further down do not.

# %% tags=["nbval-ignore-output"]
M = bn_runs.values_of("m")
rows = [[label] + [f"{bn_runs.estimate(metric, m=m).scaled(100):.1f}" for m in M]
        for metric, label in (("test_err", "test, running"),
                              ("batch_err", "test, batch"),
                              ("recal_err", "test, recal."),
                              ("train_err", "training"))]
rows.append(["conv-only BN"] + [f"{conv_only.estimate('test_err', m=m).scaled(100):.1f}"
                             if m in conv_only.values_of("m") else "" for m in M])
print(f"BatchNorm's error (%) on {data.name}")
print(evidence.table(["evaluation"] + [f"m={m}" for m in M], rows))
print("\nThe other norms, test error (%)")
print(evidence.table(["norm", "error"],
                     [[n, f"{references.estimate('test_err', norm=n).scaled(100):.1f}"]
                      for n in references.values_of("norm")]))

# %% [markdown]
# ## Results
#
# The GroupNorm paper plots error against images per GPU; here it is against samples per
# statistic, with the other norms as bands (mean ± standard error), since they do not depend on $m$.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test error against the number of samples per BatchNorm statistic, with the optimizer batch and the steps fixed (mean ± s.e. over 3 seeds; bands: norms that do not depend on it).", "name": "fig-06-ghost"}, "image": {"alt": "Line plot of test error against samples per statistic on a log scale from 2 to 32. BatchNorm on all layers has a far higher error at 2 than at 8 or 32, above every horizontal band of the other norms and of no norm. BatchNorm on the convolutions only, run at 2 and 32 and drawn as two unjoined markers, changes far less."}}
def log2_axis(ax):
    ax.set_xscale("log", base=2)
    ax.set_xticks(M, [str(m) for m in M])
    ax.minorticks_off()
    ax.set_xlabel("samples per BatchNorm statistic, m")


COLOURS = {"GN": "C2", "LN": "C3", "none": "0.4"}


def ghost_figure(ax):
    """BN's test error against m, the other norms as bands of mean ± s.e."""
    evidence.Runs(bn_runs.records + conv_only.records).plot(
        "test_err", x="m", series="fc", ax=ax, scale=100,
        labels={True: "BN, all three layers", False: "BN, convolutions only"})
    ax.containers[-1][0].set_linestyle("none")  # conv-only: run at m = 2 and 32 only
    ax.get_legend().remove()
    for norm, colour in COLOURS.items():
        e = err(references, norm=norm).scaled(100)
        ax.axhspan(e.mean - e.sem, e.mean + e.sem, color=colour, alpha=0.15, lw=0)
        ax.axhline(e.mean, color=colour, lw=1.5, ls=":", label=NAMES[norm])
    log2_axis(ax)
    ax.set_ylabel("test error (%)")


fig, (whole, detail) = plt.subplots(2, 1, figsize=(6.4, 7), sharex=True)
ghost_figure(whole)
ghost_figure(detail)
whole.set(title="all runs", xlabel="")
lows = [e.mean - e.sem for e in [err(bn_runs, m=m) for m in M[1:]]
        + [err(conv_only, m=2)] + [err(references, norm=n) for n in COLOURS]]
highs = [e.mean + e.sem for e in [err(bn_runs, m=m) for m in M[1:]]
         + [err(conv_only, m=2)] + [err(references, norm=n) for n in COLOURS]]
detail.set_ylim(100 * min(lows) - 1, 100 * max(highs) + 1)
detail.set_title("the same, zoomed in on the lower errors")
fig.legend(*whole.get_legend_handles_labels(), loc="lower center", ncols=2)
fig.tight_layout(rect=(0, 0.11, 1, 1))

# %% [markdown]
# What this run shows, checked (the margins are in percentage points of test error, and each claim
# raises with the measured numbers if it fails):

# %%
checked = {}  # key: the statement of a claim that held


def check(key, statement, left, op, right, margin, paired=False):
    """A claim (margins in fractions, shown in points); remember its statement for the
    table."""
    evidence.claim(statement, left, op, right, margin=margin, paired=paired, unit=100)
    checked[key] = statement


bn_2, bn_32 = err(bn_runs, m=2), err(bn_runs, m=32)
check("cliff", "BN on all layers: 2 samples per statistic cost more than 15 points",
      bn_2, ">", bn_32, 0.15, paired=True)
check("fc", "at 2 samples, BN on all layers errs over 15 points more than conv-only BN",
      bn_2, ">", err(conv_only, m=2), 0.15)
for norm in ("GN", "LN", "none"):
    check(f"beats-{norm}",
          f"{NAMES[norm]} errs over 10 points less than BN at 2 samples",
          err(references, norm=norm), "<", bn_2, 0.10)

# %% [markdown]
# The smaller differences get no claim: with three seeds they are not decided in advance either way.
# They are shown here, seed by seed (all these networks start from the same weights for a seed),
# with their 90% intervals: an interval inside ±3 points would show the two equal to within 3
# points, one that excludes 0 a difference; a wide one, that three seeds cannot tell.

# %% tags=["nbval-ignore-output"]
SMALL = [("BN all layers, m=8 minus m=32", err(bn_runs, m=8), bn_32, True),
         ("BN conv only, m=2 minus m=32", err(conv_only, m=2), err(conv_only, m=32),
          True),
         *[(f"BN at m={m} minus {NAMES[n]}", err(bn_runs, m=m), err(references, norm=n),
            True)
           for m in (8, 32) for n in ("GN", "LN")]]
rows = []
for name, left, right, paired in SMALL:
    d = evidence.difference(left, right, paired=paired)
    low, high = d.interval(0.90)
    rows.append([name, f"{100 * d.value:+.1f}",
                 f"[{100 * low:+.1f}, {100 * high:+.1f}]"])
print(evidence.table(["test error difference (points)", "mean", "90% interval"], rows))

# %% [markdown]
# The figure has the shape of the GroupNorm paper's where the effect is large: with two samples
# per statistic, BatchNorm falls behind every norm that does not use the batch, and behind no norm
# at all. At 32 images per GPU, the paper finds BatchNorm ahead of GroupNorm by half a point; at this
# scale and after 250 steps, the table above shows how far apart BatchNorm, GroupNorm and
# LayerNorm are, and whether three seeds separate them. The control places
# the cause of the large effect: with BatchNorm only on the convolutions, whose statistics average
# hundreds of values even at $m = 2$, two samples per statistic cost far less than with the fully
# connected layer's BatchNorm too, whose statistics average $m$ values. Whether they cost nothing
# on the convolutions is the second line of the table.
#
# ## Values per statistic
#
# LeNet gives its BatchNorm statistics 2 or 8 values (the fully connected layer at $m$ = 2 and 8)
# or hundreds (the convolutions). The range between is where a ResNet-50's last stage lies: on its
# 7×7 feature maps, 2 images per GPU give 98 values per statistic. A probe fills it: a small CNN
# (`normlib.lab.convnets.ConvNet`, three 3×3 convolutions of 8, 16 and 32 channels, each followed
# by BatchNorm and ReLU) whose last convolution runs on the second one's 7×7 maps average-pooled
# to $s \times s$ positions. Only that last BatchNorm gets ghost batches of $m$, so its statistics
# see $m s^2$ values; the other two take theirs over the whole batch of 32. It trains as the
# LeNet does (250 steps of batch 32, learning rate 0.05), at $m$ = 2 and 32 on 2×2 maps (8 and 128
# values per statistic) and on 4×4 maps (32 and 512 values). Five seeds, not three: one of its
# claims is that a loss is small, and three seeds leave too wide an interval to show that.

# %%
def train_small_maps(seed, s, m):
    """The probe: last BatchNorm on s x s maps, ghost batches of m; its test error."""
    lab.seed_everything(seed)
    norms = [N.BatchNorm2d, N.BatchNorm2d, ghost_bn(N.BatchNorm2d, m)]
    model = ConvNet((8, 16, 32), norms=norms, last_map=s)
    history = fit(model, data, epochs=1, batch_size=32, lr=0.05, seed=seed,
                  progress=False)
    return {"test_err": 1 - history["test_acc"][-1]}


PROBE_SEEDS = (0, 1, 2, 3, 4)
small_maps = evidence.sweep(train_small_maps, {"s": [2, 4], "m": [2, 32]},
                            seeds=PROBE_SEEDS, desc="probe")

# %% [markdown]
# Every BatchNorm setting of the lesson in one figure: its error *above the same network at 32
# samples per statistic*, seed by seed, against the number of values its fewest-valued BatchNorm
# statistic sees. With BatchNorm on all of LeNet's layers that is the fully connected layer's $m$;
# with BatchNorm on LeNet's convolutions only, the second convolution's $196\,m$; in the probe,
# $m s^2$.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The error lost with few samples per BatchNorm statistic (test error minus the same network's at 32 samples, per seed; mean ± s.e. over 3 seeds for LeNet, 5 for the probe), against the values that the network's fewest-valued BatchNorm statistic sees. Points joined by a line were all run; lone markers are single settings. The two settings at 8 values are drawn slightly apart.", "name": "fig-06-values"}, "image": {"alt": "Plot on a logarithmic horizontal axis from 2 to about 400 values per statistic. The point at 2 values, from LeNet's fully connected layer, lies far above zero. The points at 8 values (LeNet's fully connected layer at 8 samples, and the probe on 2x2 maps at 2 samples), at 32 values (the probe on 4x4 maps at 2 samples) and at 392 values (LeNet with BatchNorm on the convolutions only, 2 samples) lie far below it, within a few points of zero; the probe on 2x2 maps has the widest error bar."}}
def extra_error(runs, m, **where):
    """Per-seed test error at m minus at 32, as an Estimate (same seeds, same initial
    weights)."""
    a, b = err(runs, m=m, **where), err(runs, m=32, **where)
    return evidence.estimate([x - y for x, y in zip(a.values, b.values, strict=True)])


# label, colour, style, x drawn times shift, [(values per statistic, extra error)]
SERIES = [
    ("LeNet, BN on all layers (fc: m values)", "C0", "o-", 0.93,
     [(m, extra_error(bn_runs, m)) for m in (2, 8)]),
    ("probe, 2×2 maps (4 m values)", "C2", "D", 1.07,
     [(4 * 2, extra_error(small_maps, 2, s=2))]),
    ("probe, 4×4 maps (16 m values)", "C4", "^", 1.0,
     [(16 * 2, extra_error(small_maps, 2, s=4))]),
    ("LeNet, BN on convolutions only (196 m)", "C1", "s", 1.0,
     [(196 * 2, extra_error(conv_only, 2))]),
]
fig, ax = plt.subplots(figsize=(6.4, 4.2))
for label, colour, style, shift, points in SERIES:
    ax.errorbar([x * shift for x, _ in points], [100 * e.mean for _, e in points],
                yerr=[100 * e.sem for _, e in points], fmt=style, color=colour,
                capsize=3, label=label)
ax.axhline(0, color="0.5", lw=1)
ax.set_xscale("log", base=2)
ax.set_xticks([2, 8, 32, 392], ["2", "8", "32", "392"])
ax.minorticks_off()
ax.set(xlabel="values per statistic (fewest in the network), m = 2 unless on a line",
       ylabel="test error minus at m = 32 (points)")
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()

# %% [markdown]
# At 2 values per statistic the loss is the cliff claimed above. On the probe, with 2 samples but
# 8 or 32 values per statistic, it is far smaller. Checked:

# %%
check("small-8", "2 samples on the probe's 2x2 maps (8 values; that BatchNorm only) "
      "cost over 15 points less, each against its own m=32, than 2 samples on all of "
      "LeNet's BatchNorms (2 values at the fully connected layer)",
      extra_error(small_maps, 2, s=2), "<", extra_error(bn_runs, 2), 0.15)
check("small-32", "2 samples on 4x4 maps (32 values per statistic) cost less than 3 "
      "points",
      extra_error(small_maps, 2, s=4), "<", 0.03, 0)

# %% [markdown]
# The other losses of the figure, with their 90% intervals (shown, not claimed):

# %% tags=["nbval-ignore-output"]
rows = []
for name, extra in (("LeNet fc, m=8 (8 values)", extra_error(bn_runs, 8)),
                    ("probe 2x2, m=2 (8 values)", extra_error(small_maps, 2, s=2)),
                    ("probe 4x4, m=2 (32 values)", extra_error(small_maps, 2, s=4)),
                    ("LeNet conv only, m=2 (392 values)", extra_error(conv_only, 2))):
    d = evidence.difference(extra)
    low, high = d.interval(0.90)
    rows.append([name, f"{100 * d.value:+.1f}",
                 f"[{100 * low:+.1f}, {100 * high:+.1f}]"])
print(evidence.table(["loss against m=32 (points)", "mean", "90% interval"], rows))
print("\nThe probe's test errors (%), seed by seed")
print(evidence.table(["maps, m"] + [f"seed {seed}" for seed in PROBE_SEEDS],
                     [[f"{s}x{s}, m={m}"] + [f"{100 * e:.1f}" for e in
                                            err(small_maps, s=s, m=m).values]
                      for s in (2, 4) for m in (2, 32)]))

# %% [markdown]
# In these runs the large loss appears only where a statistic sees 2 values. Two values per
# statistic cost LeNet over 15 points; on the probe's 2×2 maps, 2 samples (8 values) cost over 15
# points less than that (the first claim), though five seeds leave the size of that smaller loss
# uncertain (its interval above); on 4×4 maps (32 values) the loss is under 3 points (the second
# claim). These compare different networks, each against itself at 32 samples; they show where
# the ±1 collapse bites, not that values per statistic alone set the loss: the same 8 values can
# come from 8 samples on 1×1 maps (exercise 6), and the paper's ResNet-50 loses about eleven
# points with 98. All of this is about the first 250 steps.
#
# ## The statistics or the weights?
#
# A BatchNorm network trained with noisy statistics can fail in two ways. Its running statistics
# may be poor estimates, or disagree with the batch statistics it was trained with, so that it
# sees other activations at inference (the failure that Batch Renormalization {cite}`ioffe2017batch`
# and PreciseBN {cite}`wu2021rethinking` address). Or the training itself may have gone wrong, so
# that no choice of statistics rescues the weights. The three evaluations, and the training error
# over the epoch, tell them apart:

# %% tags=["hide-input"] mystnb={"figure": {"caption": "BatchNorm on all three layers, by how the test error is measured, and the training error over the epoch (mean ± s.e. over 3 seeds).", "name": "fig-06-modes"}, "image": {"alt": "Line plot of error against samples per statistic from 2 to 32 for four ways of measuring BatchNorm's error. At 2 samples every line is far above its value at 32; at 8 and 32 each line lies close to its value at 32, the training error (averaged over the epoch) above the three test errors."}}
modes = {"train_err": "training (over the epoch)",
         "batch_err": "test, batch statistics",
         "test_err": "test, running statistics",
         "recal_err": "test, recalibrated"}
by_mode = evidence.Runs([{"m": r["m"], "seed": r["seed"], "mode": k, "error": r[k]}
                         for r in bn_runs.records for k in modes])
fig, ax = plt.subplots(figsize=(6.4, 4.2))
by_mode.plot("error", x="m", series="mode", ax=ax, scale=100, labels=modes)
ax.containers[-1][0].set_linestyle("--")  # recalibrated, dashed: a line under it shows
log2_axis(ax)
ax.set_ylabel("error (%)")
ax.legend(loc="upper right")
fig.tight_layout()

# %%
check("trained", "at 2 samples, the training error is over 15 points above that at 32",
      err(bn_runs, "train_err", m=2), ">", err(bn_runs, "train_err", m=32), 0.15,
      paired=True)
check("recal-32", "recalibrated, BN at 2 still errs over 15 points more than BN at 32",
      err(bn_runs, "recal_err", m=2), ">", err(bn_runs, "recal_err", m=32), 0.15,
      paired=True)

# %% [markdown]
# How the three evaluations at $m = 2$ differ from each other (seed by seed, the same networks,
# with 90% intervals; shown, not claimed):

# %% tags=["nbval-ignore-output"]
rows = []
for name, metric in (("batch statistics minus running", "batch_err"),
                     ("recalibrated minus running", "recal_err")):
    d = evidence.difference(err(bn_runs, metric, m=2), bn_2, paired=True)
    low, high = d.interval(0.90)
    rows.append([name, f"{100 * d.value:+.1f}",
                 f"[{100 * low:+.1f}, {100 * high:+.1f}]"])
print(evidence.table(["test error at m=2 (points)", "mean", "90% interval"], rows))

# %% [markdown]
# At $m = 2$ the network fails in training: its training error over the epoch is far above that at
# 32. The running statistics are not the main failure: recomputed from 2,000 training images, the
# statistics still leave the error far above BatchNorm's at 32 samples (the second claim; the table
# shows how far recomputing moves it). What the weights learned is the problem: the layers after
# the fully connected BatchNorm were trained on features that are only signs (±1), each image's
# signs set by the image it was paired with. No choice of statistics at test time undoes that. So
# recomputing the statistics after training, as PreciseBN does, cannot rescue this extreme: the
# signal is lost during training. A remedy has to change training itself: a norm that does not use
# the batch, or Batch Renormalization, which corrects the batch statistics while training
# (exercise 3).
#
# ## What the evidence supports
#
# The table is generated from the claims checked above (a row's lines are the statements of those
# claims, and the notebook stops with the numbers if any fails), set beside what the GroupNorm paper
# reports for ResNet-50 on ImageNet at 32 and at 2 images per GPU {cite}`wu2018group`. Every
# measured row is about the first 250 steps of training (one epoch, where this LeNet's test error
# is still around 20%; longer training lowers it, not measured here): it says which norm trains
# faster early on, not which ends better. Rows marked *cited* are not measured in this lesson.

# %%
def evidence_row(*keys):
    """The statements of the claims checked above, one per line."""
    return "<br>".join(html.escape(checked[k]) for k in keys)


ROWS = [
    ("CNN, 8 or more samples per BatchNorm statistic",
     "no claim here (the differences table above); the paper, at 32 images per GPU: "
     "BatchNorm, by half a point",
     "shown, not claimed: BN against GN and LN at m = 8 and 32",
     "32 images per GPU: BN 23.6%, GN 24.1% top-1 error"),
    ("BatchNorm statistics over 2 values: 2 samples per statistic after a fully "
     "connected layer",
     "GroupNorm or LayerNorm (not BatchNorm)",
     evidence_row("cliff", "fc", "beats-GN", "beats-LN", "beats-none", "recal-32"),
     "not tested: ResNet-50 has no BatchNorm after a fully connected layer (its "
     "smallest statistics see 98 values at 2 images per GPU)"),
    ("2 samples per statistic, BatchNorm on convolutions only (8 or more values per "
     "statistic)",
     "GroupNorm: the paper's ResNet-50 loses about eleven points with BatchNorm here; "
     "these 250-step runs on small networks lose far less and cannot overrule that",
     evidence_row("small-8", "small-32"),
     "2 images per GPU (98 or more values per statistic): BN 34.7%, GN 24.1% top-1 "
     "error"),
    ("sequences, Transformers", "LayerNorm or RMSNorm",
     "cited, not measured here: see the LayerNorm and RMSNorm lessons", "not tested"),
    ("style transfer, image generation", "InstanceNorm",
     "cited, not measured here: see the InstanceNorm lesson", "not tested"),
]
HEAD = ("situation", "first choice", "evidence in this lesson (first 250 steps)",
        "GroupNorm paper (ResNet-50, ImageNet)")


def cells(row, tag, attributes=""):
    return "".join(f"<{tag}{attributes}>{c}</{tag}>" for c in row)


HTML("<table><thead><tr>" + cells(HEAD, "th", ' scope="col"') + "</tr></thead><tbody>"
     + "".join("<tr>" + cells(r, "td") + "</tr>" for r in ROWS) + "</tbody></table>")

# %% [markdown]
# Set beside the paper, the comparison holds in shape, not in size. Both find BatchNorm far behind
# GroupNorm with two samples per statistic, while GroupNorm does not depend on the batch; with many
# samples per statistic the paper's half-point lead of BatchNorm is below what three seeds of 250
# steps can claim. The paper's BatchNorm loses about eleven points
# between 32 and 2 images per GPU; ours loses more (the first claim), on a layer whose statistics
# have nothing but the samples to average over. The paper's ResNet-50 has BatchNorm on
# convolutions only, and its last feature maps are 7×7, so at 2 images per GPU its smallest
# statistics average 98 values: between the probe's 32, where these runs find a loss under 3
# points, and LeNet's 392. The paper measures a loss of about eleven points there, on a deeper
# network trained far longer with true small batches, which also change the gradient noise. So the
# table recommends GroupNorm for that row: 250 steps on small networks cannot overrule a full
# training run. What the lesson does show is the mechanism at the extreme, two values per
# statistic; above it, the paper's 98-value case suggests that the number of samples still
# matters (its GroupNorm, trained with the same small batches, stays flat), though these runs do
# not isolate it.
#
# The cited rows rest on other evidence: LayerNorm {cite}`ba2016layer` and RMSNorm
# {cite}`zhang2019root` normalize each token on its own, at any length and batch (see the LayerNorm
# and RMSNorm lessons, and {cite}`xiong2020layer` on where Transformers place them); InstanceNorm
# removes each image's own contrast and colour statistics, which is what style transfer wants
# {cite}`ulyanov2016instance,huang2017arbitrary`. Batch Renormalization and SyncBatchNorm (their
# lessons) are two ways to keep BatchNorm when the batch on each device is small; this lesson does
# not test them.
#
# ## Exercises
#
# 1. Run the GroupNorm paper's own protocol: true batches of 2 and 32, each for one epoch, with the
#    learning rate scaled linearly with the batch, $0.05 \cdot B / 32$ {cite}`goyal2017accurate`.
#    How many optimizer steps does each run take, and how do BatchNorm and GroupNorm compare at
#    each batch size?
# 2. Put BatchNorm after the fully connected layer only (`conv_norm=None`) with ghost batches of 2.
#    Is that one layer enough to produce the cliff?
# 3. Batch Renormalization corrects the batch statistics towards the running ones:
#    $\hat{x}\,r + d$. What does that expression equal when $r$ and $d$ are not clipped, and what
#    does it mean for a group of two? Try `ghost(N.BatchRenorm1d, 2)` on the fully connected layer
#    (with the schedule of the Batch Renorm lesson).
# 4. Compute the values per statistic of a ResNet-50's last BatchNorm (7×7 feature maps) at 2
#    images per GPU. Which layer of this lesson's LeNet is it closest to?
# 5. Re-run the sweeps with `SEEDS = (10, 11, 12)` and `PROBE_SEEDS = (10, 11, 12, 13, 14)`. Do
#    all the claims still hold? Which one has the least room to spare?
# 6. The probe left out $s = 1$: on 1×1 maps its last convolution sees one value per channel and
#    sample, as a fully connected layer does. Run `train_small_maps` at $s = 1$ with $m$ = 2, 8 and
#    32, and at $s = 2$ with $m = 8$, five seeds each. Does it reproduce LeNet's cliff at 2 values, and what does it lose at 8
#    values, next to the 8 values of 2 samples on 2×2 maps? Do values per statistic alone predict
#    the loss? Does 32 values per statistic cost the same from 8 samples on 2×2 maps as from 2
#    samples on 4×4 maps?
#    How reliably does this network train at $m = 32$ with this learning rate, and what does that
#    do to the per-seed differences?
