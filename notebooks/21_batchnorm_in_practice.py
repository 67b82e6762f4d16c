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
# # BatchNorm in practice
#
# The earlier lessons built BatchNorm and measured what it does in training. This one collects what
# practitioners do with it once a network exists: how to fine-tune a BatchNorm network on new data
# with small batches, how to adapt it at test time through its statistics alone, two habits of
# residual networks (a zero $\gamma$ at the end of each block, and no weight decay on the norm's
# parameters), and the property behind several surprises: in training mode, BatchNorm makes the
# examples of a batch depend on each other. Every trained result is a claim checked over seeds; the
# networks are small and the runs short (seconds each), so each result is about this scale.

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
import math

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.convnets import ConvNet
from normlib.lab.data import digits, fashion_mnist, same_class_batches
from normlib.lab.models import LeNet
from normlib.lab.train import accuracy, fit, recalibrate_batchnorm
from normlib.nn.batchfree import FrozenBatchNorm2d

lab.setup()
SEEDS = (0, 1, 2)
SEEDS5 = (0, 1, 2, 3, 4)  # paired comparisons whose per-seed differences vary a lot

# %% [markdown]
# ## Fine-tuning on shifted data
#
# The setting: a network trained on one distribution (the *source*) is fine-tuned on a few labelled
# images of another (the *target*), with small batches, as detection and segmentation models are
# fine-tuned from ImageNet with one or two images per GPU. Source: Fashion-MNIST
# {cite}`xiao2017fashion`, 1,700 training images, shrunk to 14×14 to keep the runs short. Target:
# the same classes as photographic negatives (each image inverted and standardised again, which for
# standardised images is $x \mapsto -x$): 300 labelled images to fine-tune on, tested on 1,000 others.
# The network is the small CNN of the GroupNorm lesson (three conv-norm-ReLU blocks of 8, 16 and 32
# channels), pretrained on the source with BatchNorm or with GroupNorm (4 groups).

# %%
full = fashion_mnist(n_train=2000, n_test=1000)
x_all, y_all, x_te, y_te = (
    nn.functional.avg_pool2d(t, 2) if t.dim() == 4 else t for t in full
)
N_TARGET = 300
source = (x_all[:-N_TARGET], y_all[:-N_TARGET], x_te, y_te)


def invert(x):
    """Photographic negative of standardised images (invert, then standardise again)."""
    return -x


target = (invert(x_all[-N_TARGET:]), y_all[-N_TARGET:], invert(x_te), y_te)
NORMS = {"BN": N.BatchNorm2d, "GN": lambda c: N.GroupNorm(4, c)}
print(f"{full.name} at 14x14: {len(source[0])} source and {N_TARGET} target training"
      f" images, {len(x_te)} test images")

# %%
pretrained = {}


def pretrain(seed, norm):
    lab.seed_everything(seed)
    model = ConvNet((8, 16, 32), conv_norm=NORMS[norm], image_size=14)
    fit(model, source, epochs=4, batch_size=32, lr=0.05, seed=seed, progress=False)
    model.eval()
    pretrained[seed, norm] = model
    return {"source": accuracy(model, x_te, y_te),
            "target": accuracy(model, target[2], y_te)}


pre = evidence.sweep(pretrain, {"norm": ["BN", "GN"]}, seeds=SEEDS5, desc="pretraining")
print(f"{len(pre)} networks pretrained")

# %% [markdown]
# Test accuracy before any fine-tuning, on the source's test images and on their negatives
# (numbers from this run; they vary by machine):

# %% tags=["nbval-ignore-output"]
print(pre.table("source", "norm", "seed", scale=100))
print(pre.table("target", "norm", "seed", scale=100))

# %%
for norm in ("BN", "GN"):
    evidence.claim(f"{norm}: the pretrained network reaches 70% on the source",
                   pre.estimate("source", norm=norm), ">", 0.70)
    evidence.claim(f"{norm}: on the negatives it falls below 10%, worse than guessing",
                   pre.estimate("target", norm=norm), "<", 0.10)

# %% [markdown]
# Five ways to fine-tune, with batches of **2** images, SGD (learning rate 0.01, momentum 0.9) for
# two passes over the 300 target images (300 steps). Every arm of a seed starts from that seed's
# pretrained network and sees the same batches in the same order:
#
# - **BN, train mode**: plain fine-tuning. BatchNorm normalises with each batch's statistics and
#   moves its running averages towards the target's.
# - **BN, eval mode**: BatchNorm kept in eval mode while training, so it normalises with the source's
#   running statistics, which stay frozen; $\gamma$ and $\beta$ still learn. (`fit` switches the model
#   to training mode each epoch, so a hook before every step puts the BatchNorms back.)
# - **AdaBN, eval mode**: as the previous arm, after re-estimating every BatchNorm's running
#   statistics on the 300 target images (AdaBN, the next section). It normalises with the
#   target's statistics (over all 300), like train mode (over each batch), but has no gradient
#   through the batch statistics, like eval mode.
# - **FrozenBatchNorm2d**: statistics *and* affine frozen, $y = x\,s + t$ with fixed $s, t$, as
#   detection codebases do it {cite}`wu2021rethinking`. `normlib.nn.batchfree.FrozenBatchNorm2d`
#   loads a BatchNorm2d's state and `convert_frozen_batchnorm` (Detectron2's name for it) swaps
#   every one of a model.
# - **GN**: the GroupNorm network, fine-tuned the same way; it has no batch statistics at all.

# %%
def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


ARMS = ("BN, train mode", "BN, eval mode", "AdaBN, eval mode", "FrozenBatchNorm2d",
        "GN")


def finetune(seed, arm):
    model = copy.deepcopy(pretrained[seed, "GN" if arm == "GN" else "BN"])
    keep_eval = None
    if arm == "AdaBN, eval mode":  # the target's statistics, from its 300 images
        model = recalibrate_batchnorm(model, target[0])
    if arm in ("BN, eval mode", "AdaBN, eval mode"):
        norms = batchnorms(model)

        def keep_eval(step):
            for m in norms:
                m.eval()
    elif arm == "FrozenBatchNorm2d":
        model = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    hist = fit(model, target, epochs=2, batch_size=2, lr=0.01, seed=seed, progress=False,
               on_step=keep_eval)
    return {"acc": hist["test_acc"][-1]}


tuned = evidence.sweep(finetune, {"arm": list(ARMS)}, seeds=SEEDS5, desc="fine-tuning")
print(f"{len(tuned)} fine-tuning runs")

# %% [markdown]
# A check that the frozen copy is the eval-mode BatchNorm it replaces, on one pretrained network:

# %%
bn_model = pretrained[0, "BN"]
frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(copy.deepcopy(bn_model))
print(lab.cmp("frozen = BatchNorm in eval mode", frozen(x_te[:64]), bn_model(x_te[:64]),
              atol=1e-5))

# %% tags=["nbval-ignore-output"]
print("test accuracy on the negatives after fine-tuning (%)")
print(tuned.table("acc", "arm", "seed", scale=100))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy on the negatives after fine-tuning on 300 of them with batches of 2, for five ways of treating the norm (mean ± s.e. over 5 seeds; grey: before fine-tuning, the BatchNorm network).", "name": "fig-21-finetune"}, "image": {"alt": "A bar chart with error bars for five arms: BN in train mode, BN in eval mode, AdaBN then eval mode, FrozenBatchNorm2d and GroupNorm. All five reach about 60 to 65 percent, with overlapping error bars. A grey line near the bottom, below 10 percent, marks the accuracy before fine-tuning."}}
fig, ax = plt.subplots(figsize=(7.5, 3.6))
ests = [tuned.estimate("acc", arm=a).scaled(100) for a in ARMS]
ax.bar(range(len(ARMS)), [e.mean for e in ests], yerr=[e.sem for e in ests], capsize=4,
       color=["C0", "C1", "C4", "C2", "C3"])
before = pre.estimate("target", norm="BN").scaled(100).mean
ax.axhline(before, color="0.5", ls="--", lw=1)
ax.set_xticks(range(len(ARMS)), [a.replace(", ", "\n") for a in ARMS])
ax.set_ylabel("test accuracy on the target (%)")
fig.tight_layout()
plt.show()

# %% [markdown]
# What every arm achieves, from below 10% before fine-tuning:

# %%
acc = {a: tuned.estimate("acc", arm=a) for a in ARMS}
for arm in ARMS:
    evidence.claim(f"{arm}: above 50% on the negatives", acc[arm], ">", 0.50, unit=100)

# %% [markdown]
# The comparisons between the arms, as 90% intervals of the difference, paired by seed except
# for GN, whose network is another (numbers from this run; they vary by machine):

# %% tags=["nbval-ignore-output"]
for a, b in (("BN, train mode", "BN, eval mode"),
             ("BN, train mode", "AdaBN, eval mode"),
             ("BN, train mode", "FrozenBatchNorm2d"),
             ("AdaBN, eval mode", "BN, eval mode"),
             ("FrozenBatchNorm2d", "BN, eval mode"),
             ("GN", "BN, train mode")):
    low, high = evidence.difference(acc[a], acc[b], paired=a != "GN").interval(0.90)
    print(f"{a} minus {b}: 90% interval [{100 * low:+.1f}, {100 * high:+.1f}] points")

# %% [markdown]
# Every arm learns the negatives, from below 10% to above 50%. Between the arms, five seeds
# settle nothing: train-mode BatchNorm is ahead on average, but its per-seed lead over the
# eval-mode arms goes from negative to about ten points (the table), the intervals above are as
# wide as the differences, and no ranking is claimed. The train- and eval-mode arms differ in two
# ways, the statistics they normalise with and the gradient that flows through the batch
# statistics in train mode; the AdaBN arm gives eval mode the target's statistics and leaves the
# gradient out, and these runs do not separate it from either.
# Nor is the shift a matter of statistics alone: the next section shows that new statistics by
# themselves recover almost none of the accuracy on the negatives, so what fine-tuning gains, it
# gains in the weights. All of this is at one learning rate (0.01) and two passes; another rate
# could rank the arms differently.
#
# Detection codebases freeze BatchNorm for their own reasons: their target images (COCO) have much
# the same statistics as the source (ImageNet), and they fit one or two high-resolution images per
# GPU, so each BatchNorm's statistics come from one or two images. A deep feature map has
# thousands of positions, but the positions of one image are strongly correlated, and they stand
# for far fewer independent values than their count; the statistics are noisy. Whether freezing
# is the better choice when the source's statistics fit the target is what exercise 1 asks; when
# they do not fit, they can be re-estimated without labels, which is what the next section does.
#
# ## Test-time adaptation through the statistics
#
# No labels at all on the target, only its test images. **AdaBN** {cite}`li2016revisiting` keeps
# every weight and replaces each BatchNorm's running statistics by those of the target data:
# `recalibrate_batchnorm` from the inference lesson, run on the shifted test images. **TENT**
# {cite}`wang2021tent` goes one step further: it normalises each test batch with its own statistics
# and updates only $\gamma$ and $\beta$ to lower the entropy of the predictions,
# $H(p) = -\sum_k p_k \log p_k$, one Adam step per batch, predicting each batch before its step.
# Its control is the same pass with the step left out (**batch stats**: train-mode BatchNorm on the
# test batches of 50).
#
# Three shifts of the test images, applied to the BatchNorm networks pretrained above: **contrast**
# ($0.4\,x + 0.5$, an affine change of every pixel), **noise** (Gaussian, standard deviation 0.7) and
# the **negatives**. The damage is the accuracy lost to the shift; the fraction recovered is
# (adapted − shifted) / (clean − shifted).

# %%
def noisy(x):
    return x + 0.7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))


SHIFTS = {"contrast": lambda x: 0.4 * x + 0.5, "noise": noisy, "negative": invert}


def entropy(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


def tent(model, x, y, lr, batch_size=50):
    """Online TENT: accuracy of each batch's predictions, made before its update of
    gamma and beta.

    ``lr=0`` is the control: batch statistics, no update."""
    # batch statistics only, no running statistics
    model = replace_all_batch_norm_modules_(copy.deepcopy(model)).train()
    affine = [p for m in batchnorms(model) for p in (m.weight, m.bias)]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in affine))
    opt = torch.optim.Adam(affine, lr=lr)
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
        opt.zero_grad()
        entropy(logits).backward()
        opt.step()
    return correct / len(x)


def adapt(seed, shift):
    model = pretrained[seed, "BN"]
    x = SHIFTS[shift](x_te)
    ada = recalibrate_batchnorm(copy.deepcopy(model), x).eval()
    out = {"clean": accuracy(model, x_te, y_te), "shifted": accuracy(model, x, y_te),
           "AdaBN": accuracy(ada, x, y_te), "batch stats": tent(model, x, y_te, lr=0.0),
           "TENT": tent(model, x, y_te, lr=5e-3)}
    out["recovered"] = (out["AdaBN"] - out["shifted"]) / (out["clean"] - out["shifted"])
    return out


tta = evidence.sweep(adapt, {"shift": list(SHIFTS)}, seeds=SEEDS, desc="adaptation")
print(f"{len(tta)} networks adapted, each by three methods")

# %% tags=["nbval-ignore-output"]
METHODS = ("shifted", "AdaBN", "batch stats", "TENT")
print("test accuracy (%), clean: "
      f"{tta.estimate('clean', shift='noise').scaled(100):.1f}")
rows = [[s, *(f"{tta.estimate(k, shift=s).scaled(100):.1f}" for k in METHODS),
         f"{tta.estimate('recovered', shift=s).scaled(100):.0f}%"] for s in SHIFTS]
print(evidence.table(["shift", *METHODS, "recovered by AdaBN"], rows))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy under three shifts of the test images, without adaptation and with three ways of adapting through BatchNorm, none of which uses a label (mean ± s.e. over 3 seeds; dashed: the accuracy on clean images).", "name": "fig-21-tta"}, "image": {"alt": "Grouped bars for contrast, noise and negative shifts. For contrast, the unadapted accuracy is low and all three adaptations bring it back to the clean level. For noise, adaptation recovers part of the loss. For negatives, accuracy stays below guessing (10%) with or without adaptation."}}
fig, ax = plt.subplots(figsize=(7, 3.6))
width = 0.2
for j, method in enumerate(METHODS):
    ests = [tta.estimate(method, shift=s).scaled(100) for s in SHIFTS]
    ax.bar([i + (j - 1.5) * width for i in range(len(SHIFTS))], [e.mean for e in ests],
           width, yerr=[e.sem for e in ests], capsize=3, label=method)
ax.axhline(tta.estimate("clean").scaled(100).mean, color="0.4", ls="--", lw=1)
ax.set_xticks(range(len(SHIFTS)), list(SHIFTS))
ax.set_ylabel("test accuracy (%)")
ax.set_ylim(0, 100)
ax.legend(ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs say, each adaptation compared seed by seed with the same network unadapted:

# %%
rec = {s: tta.estimate("recovered", shift=s) for s in SHIFTS}
evidence.claim("contrast: AdaBN recovers more than 90% of the damage",
               rec["contrast"], ">", 0.9)
evidence.claim("noise: with AdaBN the accuracy stays more than 5 points below clean",
               tta.estimate("AdaBN", shift="noise"), "<",
               tta.estimate("clean", shift="noise"), margin=0.05, paired=True, unit=100)
evidence.claim("negatives: AdaBN recovers less than 20% of the damage",
               rec["negative"], "<", 0.2)
for s in ("contrast", "noise"):
    evidence.claim(f"{s}: TENT's entropy steps move the accuracy by less than 2 points",
                   tta.estimate("TENT", shift=s), "≈",
                   tta.estimate("batch stats", shift=s), margin=0.02, paired=True,
                   unit=100)

# %% [markdown]
# On the negatives the same interval is wider (numbers from this run; they vary by machine):

# %% tags=["nbval-ignore-output"]
low, high = evidence.difference(tta.estimate("TENT", shift="negative"),
                                tta.estimate("batch stats", shift="negative"),
                                paired=True).interval(0.90)
print(f"negative: TENT minus batch stats, 90% interval [{100 * low:+.1f},"
      f" {100 * high:+.1f}] points")

# %% [markdown]
# Why the three shifts differ so much follows from the formula. A contrast change is affine in the
# pixels, $x \mapsto a x + b$; a convolution turns it into $a\,(w * x) + b \sum w$ per channel,
# again affine, and normalising with the new statistics undoes it exactly (up to the zero padding at
# the borders). Noise changes the first layer's variance, which AdaBN corrects, but also the features
# themselves, which no statistic can undo. A negative flips the sign of every first-layer response,
# and after normalisation the ReLU passes the other half of each channel: different features, not
# rescaled ones. AdaBN helps exactly as far as a shift is a change of per-channel mean and scale.
#
# TENT's gradient steps changed the accuracy by less than 2 points on contrast and noise, here on
# 1,000 test images (20 steps); what it gained over the unadapted network came from the batch
# statistics it normalises with, the AdaBN part. On the negatives three seeds cannot tell (the
# interval printed above). Its paper adapts on 10,000 test images or more.
#
# ## Residual networks: zero $\gamma$ and no decay on the norms
#
# A residual block computes $x + F(x)$, with $F$ = conv-BN-ReLU-conv-BN. Goyal et al.
# {cite}`goyal2017accurate` initialise the $\gamma$ of each block's last BatchNorm to **zero**: then
# $F(x) = 0$ and every block starts as the identity, so the network starts as a shallow one and
# grows its depth as the $\gamma$s leave zero. A small ResNet on the 8×8 digits: a conv stem, four
# blocks of 8 channels, a linear classifier.

# %%
digit_data = digits()


class Block(nn.Module):
    """ReLU(x + BN(conv(ReLU(BN(conv(x)))))), the last BN's gamma zero if asked."""

    def __init__(self, c, zero_gamma=False):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), N.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), N.BatchNorm2d(c))
        if zero_gamma:
            nn.init.zeros_(self.branch[-1].weight)

    def forward(self, x):
        return torch.relu(x + self.branch(x))


def resnet(zero_gamma=False, blocks=4, c=8):
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, bias=False), N.BatchNorm2d(c), nn.ReLU(),
        *[Block(c, zero_gamma) for _ in range(blocks)],
        nn.Flatten(), nn.Linear(c * 64, 10))


# %% [markdown]
# At initialisation each block with $\gamma = 0$ is exactly the identity (its input, after the
# stem's ReLU, is non-negative), and the scale of the logits stays that of the shallow network:

# %%
x_batch = digit_data[0][:256]


def logit_ratio(seed):
    """Spread of the initial logits, standard over zero gamma (same other weights)."""
    lab.seed_everything(seed)
    plain_net = resnet()
    lab.seed_everything(seed)
    zero_net = resnet(zero_gamma=True)  # the same weights, except the last gammas
    if seed == 0:
        h = zero_net[:3](x_batch)
        print(lab.cmp("block(x) = x with zero gamma", zero_net[3](h), h, atol=0))
    with torch.no_grad():
        return (plain_net(x_batch).std() / zero_net(x_batch).std()).item()


ratio = evidence.Estimate(tuple(logit_ratio(s) for s in SEEDS5), "logit ratio", SEEDS5)
evidence.claim("the logits start more than 1.5x larger without zero gamma",
               ratio, ">", 1.5)

# %% [markdown]
# Early training, then: one epoch (44 steps of 32 images), SGD with momentum 0.9, at three learning
# rates; both arms of a seed share every weight but the zeroed $\gamma$s, and the data order. A
# control separates the identity start from the size of the logits: the standard start with its
# classifier (weights and bias) divided by that seed's ratio, so that its initial logits have the
# zero-$\gamma$ network's spread.

# %%
def early(seed, zero_gamma, lr, scale_logits=False):
    lab.seed_everything(seed)
    model = resnet(zero_gamma)
    if scale_logits:  # the control: logits scaled down to zero gamma's initial spread
        with torch.no_grad():
            model[-1].weight /= ratio.values[seed]
            model[-1].bias /= ratio.values[seed]
    hist = fit(model, digit_data, epochs=1, batch_size=32, lr=lr, seed=seed,
               progress=False)
    return {"loss": hist["loss"][-1], "acc": hist["test_acc"][-1]}


start = evidence.sweep(early, {"zero_gamma": [False, True], "lr": [0.01, 0.05, 0.2]},
                       seeds=SEEDS, desc="zero gamma")
small = evidence.sweep(lambda seed, lr: early(seed, False, lr, scale_logits=True),
                       {"lr": [0.05, 0.2]}, seeds=SEEDS, desc="control")
print(f"{len(start) + len(small)} runs of one epoch")

# %% tags=["nbval-ignore-output"]
print("mean training loss over the first epoch")
print(start.table("loss", "zero_gamma", "lr", fmt=".2f"))
print("test accuracy after it (%)")
print(start.table("acc", "zero_gamma", "lr", scale=100))
print("the control: standard start, logits scaled down to zero gamma's spread")
rows = [[f"{lr:g}", f"{small.estimate('loss', lr=lr):.2f}",
         f"{small.estimate('acc', lr=lr).scaled(100):.1f}"] for lr in (0.05, 0.2)]
print(evidence.table(["lr", "loss", "test accuracy (%)"], rows))

# %%
for lr in (0.05, 0.2):
    evidence.claim(f"lr={lr:g}: zero gamma lowers the first epoch's training loss",
                   start.estimate("loss", zero_gamma=True, lr=lr), "<",
                   start.estimate("loss", zero_gamma=False, lr=lr), paired=True)
evidence.claim("lr=0.2: the standard start's first-epoch loss stays above ln 10"
               " (guessing)",
               start.estimate("loss", zero_gamma=False, lr=0.2), ">", math.log(10))
evidence.claim("lr=0.2: the control with scaled-down logits stays above ln 10 too",
               small.estimate("loss", lr=0.2), ">", math.log(10))
evidence.claim("lr=0.2: zero gamma also beats the control with scaled-down logits",
               start.estimate("loss", zero_gamma=True, lr=0.2), "<",
               small.estimate("loss", lr=0.2), paired=True)
evidence.claim("lr=0.01: the standard start trains, loss below half of ln 10",
               start.estimate("loss", zero_gamma=False, lr=0.01), "<", math.log(10) / 2)

# %% [markdown]
# At 0.01, the first epoch's loss, zero gamma minus standard, as a 90% interval of the paired
# difference (numbers from this run; they vary by machine):

# %% tags=["nbval-ignore-output"]
low, high = evidence.difference(start.estimate("loss", zero_gamma=True, lr=0.01),
                                start.estimate("loss", zero_gamma=False, lr=0.01),
                                paired=True).interval(0.90)
print(f"lr=0.01, loss with zero gamma minus standard: 90% interval [{low:+.2f},"
      f" {high:+.2f}]")

# %% [markdown]
# The standard initialisation starts with logits more than 1.5 times as large. At 0.2 its first
# epoch does not train: its mean loss stays above the loss of guessing, while the zero-$\gamma$
# network trains; at 0.05 the standard start does little better (the tables), and zero $\gamma$
# again has the lower loss. At 0.01 the standard start trains too, and the runs show no advantage
# for zero $\gamma$ (the interval above). So what these runs show is stability: zero $\gamma$ lets
# the network train at rates where the standard start does not. The smaller logits are not the
# whole reason: the control, which starts with zero $\gamma$'s logit spread but not as the
# identity, still has the higher loss at 0.2 (the last claims). These runs are about the first
# epoch: the two initialisations describe the same family of networks, and over a long run the
# difference can vanish (the exercises ask you to check).
#
# **Weight decay on the norms.** The lesson on what BatchNorm buys showed that a weight feeding a
# BatchNorm is scale invariant: weight decay on it does not change the function, it raises the
# effective learning rate $\eta/\lVert w\rVert^2$. BatchNorm's own $\gamma$ and $\beta$ are not
# scale invariant: the function depends on them directly, and in a residual block the last $\gamma$
# sets how much the branch adds to the skip. Decay on that $\gamma$ pulls its block towards the
# identity, a real constraint on the function, which is one reason common recipes leave norm
# parameters and biases out of the decay {cite}`he2019bag`:
#
# ```python
# decay = [p for p in model.parameters() if p.dim() > 1]       # conv and linear weights
# no_decay = [p for p in model.parameters() if p.dim() <= 1]   # gamma, beta, biases
# opt = torch.optim.SGD([{"params": decay, "weight_decay": wd},
#                        {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=0.9)
# ```
#
# `fit` uses one parameter group, so here the decay is added to the chosen parameters' gradients by
# a hook, $g \leftarrow g + \lambda p$, exactly what SGD's `weight_decay` does. The zero-$\gamma$
# ResNet, three epochs, $\lambda = 5 \cdot 10^{-3}$ on every parameter, or on the weights only
# (the "exclude" arm exempts every one-dimensional parameter: the norms' $\gamma$ and $\beta$,
# and the Linear classifier's bias):

# %%
def decay_run(seed, exclude, wd=5e-3):
    lab.seed_everything(seed)
    model = resnet(zero_gamma=True)
    for p in model.parameters():
        if not (exclude and p.dim() <= 1):
            p.register_hook(lambda g, p=p: g + wd * p.detach())
    hist = fit(model, digit_data, epochs=3, batch_size=32, lr=0.05, seed=seed,
               progress=False)
    last = {f"block {i}": model[2 + i].branch[-1].weight.abs().mean().item()
            for i in range(1, 5)}  # the last gamma of each block, mean |gamma|
    gammas = torch.cat([m.weight.detach() for m in batchnorms(model)])
    return {"acc": hist["test_acc"][-1], "gamma": gammas.abs().mean().item(), **last}


decayed = evidence.sweep(decay_run, {"exclude": [False, True]}, seeds=SEEDS,
                         desc="decay")
print(f"{len(decayed)} runs of three epochs")

# %% tags=["nbval-ignore-output"]
print("mean |gamma| of each block's last BatchNorm, over 3 seeds")
rows = [[str(e), *(f"{decayed.estimate(f'block {i}', exclude=e):.3f}"
                   for i in range(1, 5))] for e in (False, True)]
print(evidence.table(["exclude", *(f"block {i}" for i in range(1, 5))], rows))
print("test accuracy (%)")
print(decayed.table("acc", "exclude", "seed", scale=100))

# %%
evidence.claim("decay on the norms leaves their gammas smaller (mean over every"
               " BatchNorm)",
               decayed.estimate("gamma", exclude=False), "<",
               decayed.estimate("gamma", exclude=True), paired=True)

# %% [markdown]
# And the test accuracy, as the 90% interval of the paired difference (numbers from this run;
# they vary by machine):

# %% tags=["nbval-ignore-output"]
low, high = evidence.difference(decayed.estimate("acc", exclude=True),
                                decayed.estimate("acc", exclude=False),
                                paired=True).interval(0.90)
print(f"test accuracy, excluded minus decayed: 90% interval [{100 * low:+.1f}, "
      f"{100 * high:+.1f}] points")

# %% [markdown]
# The decay shrinks the $\gamma$s averaged over every BatchNorm of the network, most
# of which start at 1. The last $\gamma$ of each block, the one that weighs the branch against the
# skip, starts at zero and ends between about 0.1 and 0.15 with or without the decay (the table):
# in three epochs the decay did not measurably pull the blocks towards the identity. Whether that
# costs or buys accuracy is what the interval above bounds, for this network and run length; no
# claim is made on it. The recipes that exclude the norms were tuned on ImageNet-scale training,
# where long runs give the decay many steps to act.
#
# ## The batch couples the examples
#
# In training mode, BatchNorm's output for one example depends on every other example of its batch,
# through $\mu_B$ and $\sigma_B^2$. Change the other samples and the first one's output changes; in
# eval mode it does not:

# %%
model = copy.deepcopy(pretrained[0, "BN"])
batch, other = x_te[:8], torch.cat([x_te[:1], x_te[100:107]])  # the same first image
model.train()
with torch.no_grad():
    moved = (model(batch)[0] - model(other)[0]).abs().max().item()
model.eval()
with torch.no_grad():
    print(lab.cmp("eval mode: first output unchanged", model(other)[0], model(batch)[0],
                  atol=1e-5))
evidence.claim("train mode: the first image's logits move by more than 0.01",
               moved, ">", 0.01)

# %% [markdown]
# So a batch's loss is not a sum of per-example losses, and its gradient is not a sum of
# per-example gradients. `torch.func` computes per-example gradients by running the loss of *one*
# example under `vmap` (one way differential-privacy libraries compute them). For GroupNorm, which
# never looks across the batch, their mean is the batch gradient; for BatchNorm, each example alone
# is normalised by its own statistics, and the mean of those gradients is another vector.
# (`replace_all_batch_norm_modules_` stops BatchNorm from updating running statistics, which `vmap`
# cannot do in place.)

# %%
def per_example_grads(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(params, xi, yi):
        logits = functional_call(model, params, (xi[None],))
        return nn.functional.cross_entropy(logits, yi[None])

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def batch_grad(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def flat(grads):
    return torch.cat([g.flatten() for g in grads.values()])


xb, yb = x_te[:32], y_te[:32]
relative = {}
for norm in ("GN", "BN"):
    net = replace_all_batch_norm_modules_(copy.deepcopy(pretrained[0, norm])).train()
    each = per_example_grads(net, xb, yb)
    mean_of_each = flat({k: g.mean(0) for k, g in each.items()})
    whole = flat(batch_grad(net, xb, yb))
    relative[norm] = ((mean_of_each - whole).norm() / whole.norm()).item()
    if norm == "GN":
        print(lab.cmp("GN: mean of per-example = batch", mean_of_each, whole, atol=1e-5))
evidence.claim("BN: the mean of per-example gradients misses the batch gradient by"
               " over 10%", relative["BN"], ">", 0.10)

# %% [markdown]
# The extreme case is a batch of one. A BatchNorm2d in training mode then normalises one image's
# channels over their own pixels, which is InstanceNorm; a BatchNorm1d has one value per statistic
# and refuses it:

# %%
bn2d = N.BatchNorm2d(8).train()
one = torch.randn(1, 8, 5, 5)
print(lab.cmp("BN2d(batch of one) = InstanceNorm", bn2d(one),
              nn.functional.instance_norm(one), atol=1e-5))
try:
    N.BatchNorm1d(8).train()(torch.randn(1, 8))
except ValueError as e:
    print("BatchNorm1d, batch of one: ValueError:\n ",
          str(e).replace(", got", ",\n  got"))

# %% [markdown]
# A network can also *use* the coupling. Lesson 7 trained BatchNorm on same-class pairs and saw the
# test accuracy collapse. Here is the cause in its plainest form: the LeNet of the inference lesson
# on the digits, trained for four epochs with batches of 16 that each hold **one class** (or, the
# control, random batches of 16). Train-mode BatchNorm subtracts each batch's mean, so during
# training every class is centred on its own mean, and the network learns features that are
# centred that way. Tested in eval mode (running statistics, averaged over all classes), and in
# train mode on one-class test batches, centred as in training:

# %%
def one_class_batches(gen):
    """One epoch of batches of 16 samples of a single class each."""
    return same_class_batches(digit_data[1], 16, 16, gen)


@torch.no_grad()
def one_class_test_accuracy(model, x, y, size=16):
    model.train()
    hits, seen = 0, 0
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        for b in idx[: len(idx) // size * size].view(-1, size):
            hits += (model(x[b]).argmax(1) == y[b]).sum().item()
            seen += size
    model.eval()
    return hits / seen


def leak(seed, batches):
    lab.seed_everything(seed)
    model = LeNet(conv_norm=N.BatchNorm2d, fc_norm=N.BatchNorm1d)
    fit(model, digit_data, epochs=4, batch_size=16, lr=0.02, seed=seed, progress=False,
        batches=one_class_batches if batches == "one class" else None)
    return {"eval": accuracy(model.eval(), digit_data[2], digit_data[3]),
            "one-class batches": one_class_test_accuracy(model, *digit_data[2:])}


leaks = evidence.sweep(leak, {"batches": ["random", "one class"]}, seeds=SEEDS,
                       desc="leak")
print(f"{len(leaks)} networks trained")

# %% tags=["nbval-ignore-output"]
print("test accuracy (%): eval mode, and train mode on one-class batches")
for key in ("eval", "one-class batches"):
    print(leaks.table(key, "batches", "seed", scale=100))

# %%
evidence.claim("trained on one-class batches, it tests 30 points below random batches"
               " (eval)",
               leaks.estimate("eval", batches="one class"), "<",
               leaks.estimate("eval", batches="random"), margin=0.30, unit=100)
evidence.claim("but on one-class batches in train mode it does better than in eval mode",
               leaks.estimate("one-class batches", batches="one class"), ">",
               leaks.estimate("eval", batches="one class"), margin=0.05, paired=True,
               unit=100)
evidence.claim("the control, on one-class batches in train mode, falls below 30%",
               leaks.estimate("one-class batches", batches="random"), "<", 0.30,
               unit=100)

# %% [markdown]
# Trained on one-class batches, the network has learned on class-centred features: it
# is right more often when its test batches are centred the same way (one class each), and it is
# poor with the running statistics, which centre every class on the mean of all of them. The
# network trained on random batches shows the converse: handed one-class batches in train mode, its
# normalisation removes what the images of one class share, and it falls towards guessing.
#
# Where this matters:
#
# - **Contrastive learning.** MoCo {cite}`he2020momentum` found that its encoder "cheats" the
#   pretext task through BatchNorm: each output is a function of the whole batch, the samples of a
#   batch communicate through its statistics, and that leaks information which makes the task easy
#   (not the mechanism above, but the same coupling). Its remedy, *shuffling BN*, shuffles the keys'
#   batch across GPUs before the key encoder's per-GPU BatchNorm, so that a query and its positive
#   key are normalised with statistics of different subsets.
# - **Differentially private training.** DP-SGD {cite}`abadi2016deep` clips each example's gradient
#   and adds noise; that needs a per-example gradient, which BatchNorm does not have (above), and a
#   bound on each example's influence, which BatchNorm spreads over the batch. Private-training
#   libraries such as Opacus replace BatchNorm with GroupNorm.
# - **Evaluating with batches of one, or in train mode.** A model left in train mode gives each
#   test image an answer that depends on its batchmates, and a batch of one turns BatchNorm2d into
#   InstanceNorm (and makes BatchNorm1d raise). Evaluate in eval mode, or with recalibrated running
#   statistics, never with the statistics of the test batch unless that is the point (as in AdaBN).
#   Wu and Johnson {cite}`wu2021rethinking` survey these cases.
#
# ## Summary
#
# - Fine-tuned on 300 negatives with batches of 2, every arm (BatchNorm in train or eval mode,
#   with or without AdaBN first, FrozenBatchNorm2d, GroupNorm) went from below 10% to above 50%;
#   five seeds at one learning rate did not rank them.
# - AdaBN, new statistics and no labels, undid a contrast change almost entirely, left a noise
#   shift far from clean accuracy, and recovered almost nothing of the negatives; TENT's entropy
#   steps moved the accuracy by less than 2 points where the data could tell.
# - A zero $\gamma$ at the end of each residual block makes every block start as the identity; it
#   trained in the first epoch at a learning rate where the standard start did not, and had the
#   lower loss at 0.05 too (not only through its smaller initial logits: a control with their
#   spread did not train at 0.2 either); at a rate where both train, it gave no lower loss. Weight decay on the
#   norms shrank their $\gamma$s on average, not measurably the last $\gamma$ of each block; what it
#   does to accuracy, this scale did not settle.
# - In train mode a batch is one computation: outputs and gradients of an example depend on the
#   others, and a network trained on one-class batches does better on test batches centred the
#   same way than with the running statistics.
#
# ## Exercises
#
# 1. Fine-tune on a shift that keeps the statistics: 300 images of the source itself, or a class
#    subset. Does either of train-mode BatchNorm and FrozenBatchNorm2d win, with 10 seeds? Then
#    use batches of 1 for the GN arm and explain why BN cannot follow.
# 2. Add Gaussian blur as a fourth shift. Predict from the argument above how much AdaBN recovers,
#    then measure it.
# 3. Run TENT for several passes over the shifted test images (or on 5,000 of them). When does the
#    entropy step start to matter, and does it ever hurt?
# 4. Train the two ResNets of the zero-$\gamma$ experiment for 10 epochs. Does the gap in training
#    loss survive? Try 8 blocks instead of 4.
# 5. Compute per-example gradients for the BatchNorm network in eval mode (running statistics).
#    Does their mean now match the batch gradient in eval mode? Why is that not what training uses?
