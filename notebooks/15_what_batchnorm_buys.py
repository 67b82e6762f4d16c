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
# # What BatchNorm buys
#
# The source articles credit BatchNorm with a lot: it "speeds training up a great deal", allows larger
# learning rates, makes the initialisation matter less, regularises well enough to drop Dropout
# {cite}`ioffe2015batch`, and it works not by reducing "internal covariate shift" but by making the
# loss landscape smoother {cite}`santurkar2018how`. This lesson tests each claim on a small network,
# with the control that could break it, several seeds and error bars.
#
# It starts with the property most explanations rest on: **scale invariance**. A layer whose output
# feeds a BatchNorm can have its weights multiplied by any $\alpha > 0$ without changing anything
# downstream. From that one fact follow the shape of the gradient, an effective learning rate that
# depends on $\lVert w\rVert$, and a role for weight decay that has nothing to do with regularisation
# {cite}`vanlaarhoven2017l2,li2020exponential`.

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
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from normlib import lab
from normlib.lab import evidence
from normlib.lab.data import digits, fashion_mnist
from normlib.lab.landscape import along_gradient
from normlib.lab.models import norm_mlp
from normlib.lab.train import accuracy, fit

lab.setup()
data = digits()
SEEDS = (0, 1, 2)
print(f"{data.name}: {len(data[0])} training and {len(data[2])} test images")

# %% [markdown]
# ## Scale invariance
#
# Take a linear layer $z = W x$ followed by BatchNorm. Row $k$ of $W$, $w_k$, makes channel $k$, and
# BatchNorm divides that channel by its batch standard deviation. Scale $w_k$ by $\alpha > 0$ and the
# channel's mean and standard deviation scale by $\alpha$ too:
#
# $$
# \mathrm{BN}(\alpha w_k^\top x) = \frac{\alpha w_k^\top x - \alpha \mu_k}{\alpha \sigma_k}
# $$
#
# $$
# = \mathrm{BN}(w_k^\top x) .
# $$
#
# (Exactly so with $\epsilon = 0$; with $\epsilon > 0$, as long as $\alpha^2\sigma_k^2 \gg \epsilon$.) So
# the loss satisfies $L(\alpha w) = L(w)$. Differentiate both sides, in $\alpha$ at $\alpha = 1$ and in
# $w$, and two facts come out:
#
# $$
# w_k^\top \nabla_{w_k} L = 0 ,
# $$
#
# $$
# \nabla L(\alpha w) = \tfrac{1}{\alpha}\,\nabla L(w) .
# $$
#
# The gradient is orthogonal to the weights: that is the projection of the backprop lesson, where the
# gradient through a norm loses its component along $\hat x$, seen from the weights' side. And larger
# weights get smaller gradients. An SGD step $w \leftarrow w - \eta \nabla L(w)$ therefore moves the
# *direction* $w/\lVert w\rVert$, the only thing the output depends on, by about
# $\eta / \lVert w\rVert^2$: the **effective learning rate**. Check each statement on a layer in float64,
# with $\epsilon = 0$ for the exact form:


# %%
def bn_layer_loss(W, x, y, head):
    """Linear (weights W, no bias) -> BatchNorm (batch statistics, eps=0) -> ReLU -> head
    -> loss.
    """
    z = x @ W.T
    z_hat = (z - z.mean(0)) / z.var(0, unbiased=False).sqrt()
    return nn.functional.cross_entropy(head(torch.relu(z_hat)), y)


torch.manual_seed(0)
x, y = torch.randn(32, 20, dtype=torch.float64), torch.randint(0, 3, (32,))
head = nn.Linear(8, 3).double()
W = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)
alpha = 3.0
W_big = (alpha * W.detach()).requires_grad_()
loss, loss_big = bn_layer_loss(W, x, y, head), bn_layer_loss(W_big, x, y, head)
(g,) = torch.autograd.grad(loss, W)
(g_big,) = torch.autograd.grad(loss_big, W_big)
print(lab.cmp("L(3w) = L(w)", loss_big, loss, atol=1e-12))
print(
    lab.cmp(
        "w_k . grad_k = 0",
        (W * g).sum(1),
        torch.zeros(8, dtype=torch.float64),
        atol=1e-12,
    )
)
print(lab.cmp("grad L(3w) = grad L(w) / 3", g_big, g / alpha, atol=1e-12))

# %% [markdown]
# The effective learning rate, checked the same way: one step from $\alpha w$ with learning rate
# $\alpha^2\eta$ lands on $\alpha$ times the point one step from $w$ with $\eta$ reaches, so the two
# networks compute the same function afterwards.

# %%
eta = 0.1
W_step = W.detach() - eta * g
W_big_step = W_big.detach() - alpha**2 * eta * g_big
print(
    lab.cmp("step from 3w = 3 * step from w", W_big_step, alpha * W_step, atol=1e-12)
)
print(
    lab.cmp(
        "same loss after the step",
        bn_layer_loss(W_big_step, x, y, head),
        bn_layer_loss(W_step, x, y, head),
        atol=1e-12,
    )
)

# %% [markdown]
# Two consequences for training with plain SGD (no momentum). Since the gradient is orthogonal to
# $w$, Pythagoras gives
#
# $$
# \lVert w_{t+1}\rVert^2 = \lVert w_t\rVert^2 + \eta^2 \lVert \nabla L(w_t)\rVert^2 ,
# $$
#
# so without weight decay the norm can only grow, and the effective learning rate
# $\eta/\lVert w\rVert^2$ can only fall: a built-in learning-rate decay. Weight decay,
# $w \leftarrow (1 - \eta\lambda) w - \eta \nabla L$, shrinks the norm instead. It cannot regularise
# the function (which does not depend on $\lVert w\rVert$); what it does is keep the effective learning
# rate up {cite}`vanlaarhoven2017l2,li2020exponential`.
#
# ## The effective learning rate in training
#
# An MLP on the digits, `64 -> 128 -> 128 -> 128 -> 10`, BatchNorm before each ReLU, plain SGD. We
# follow the first layer's $\lVert w_k\rVert^2$ (mean over its rows) at every step, for three weight
# decays, with everything else fixed.

# %%
SIZES = [64, 128, 128, 128, 10]


WD_LR = 0.2


def weight_norm_run(seed, weight_decay, lr=WD_LR, epochs=8):
    """Train the BN MLP with plain SGD; follow the first layer's mean squared row norm.
    """
    lab.seed_everything(seed)
    model = norm_mlp(SIZES, nn.BatchNorm1d)
    W = model[1].weight
    sq_norms = []
    fit(
        model,
        data,
        epochs=epochs,
        batch_size=64,
        lr=lr,
        momentum=0.0,
        weight_decay=weight_decay,
        seed=seed,
        progress=False,
        on_step=lambda step: sq_norms.append(W.detach().pow(2).sum(1).mean().item()),
    )
    sq_norms.append(W.detach().pow(2).sum(1).mean().item())
    return {
        "sq_norm": sq_norms,
        "start": sq_norms[0],
        "end": sq_norms[-1],
        "eff_lr_end": lr / sq_norms[-1],
        "eff_lr_start": lr / sq_norms[0],
        "test_acc": accuracy(model, data[2], data[3]),
    }


decay = evidence.sweep(
    weight_norm_run,
    {"weight_decay": [0.0, 5e-3, 3e-2]},
    seeds=SEEDS,
    desc="weight decay",
)

# %% [markdown]
# This run's numbers (they differ in their digits from machine to machine; the claims below do not):

# %% tags=["nbval-ignore-output"]
print(
    evidence.table(
        ["weight decay", "|w|^2 start", "|w|^2 end", "eff. lr end", "test acc (%)"],
        [
            [
                wd,
                f"{decay.estimate('start', weight_decay=wd):.3f}",
                f"{decay.estimate('end', weight_decay=wd):.3f}",
                f"{decay.estimate('eff_lr_end', weight_decay=wd):.2f}",
                f"{decay.estimate('test_acc', weight_decay=wd).scaled(100):.1f}",
            ]
            for wd in decay.values_of("weight_decay")
        ],
    )
)


# %% tags=["hide-input"] mystnb={"figure": {"caption": "The first layer's mean squared row norm and the effective learning rate it implies, at every SGD step, for three weight decays (mean ± s.e. over 3 seeds, shaded).", "name": "fig-15-norm"}, "image": {"alt": "Two line plots against the training step. Left: the squared weight norm rises slowly without weight decay, and falls with weight decay, faster for the larger decay. Right: the effective learning rate, the learning rate divided by the squared norm, falls slowly without weight decay and rises with it."}}
def band(ax, curves, label, scale=1.0):
    """Mean ± s.e. over seeds of equal-length curves, as a line and a shaded band."""
    a = np.asarray(curves) * scale
    mean, sem = a.mean(0), a.std(0, ddof=1) / math.sqrt(len(a))
    (line,) = ax.plot(mean, label=label)
    ax.fill_between(
        np.arange(len(mean)),
        mean - sem,
        mean + sem,
        alpha=0.25,
        color=line.get_color(),
        lw=0,
    )


fig, (left, right) = plt.subplots(1, 2, figsize=(7, 4))
for wd in decay.values_of("weight_decay"):
    curves = [r["sq_norm"] for r in decay.select(weight_decay=wd).records]
    band(left, curves, f"weight decay {wd:g}")
    band(right, [[WD_LR / v for v in c] for c in curves], f"weight decay {wd:g}")
left.set(xlabel="SGD step", ylabel=r"mean $\|w_k\|^2$, first layer", yscale="log")
right.set(xlabel="SGD step", ylabel=r"effective lr $\eta / \|w_k\|^2$", yscale="log")
left.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs show, as checks:

# %%
start0, end0 = (
    decay.estimate("start", weight_decay=0.0),
    decay.estimate("end", weight_decay=0.0),
)
evidence.claim(
    "without weight decay the squared norm grows over training", end0, ">", start0
)
evidence.claim(
    "the largest weight decay leaves the effective learning rate at the end "
    "at least 4x that of no decay",
    decay.estimate("eff_lr_end", weight_decay=3e-2).scaled(1 / 4),
    ">",
    decay.estimate("eff_lr_end", weight_decay=0.0),
)
evidence.claim(
    "and the test accuracy stays within 3 points of no decay",
    decay.estimate("test_acc", weight_decay=3e-2),
    "≈",
    decay.estimate("test_acc", weight_decay=0.0),
    margin=0.03,
)

# %% [markdown]
# Weight decay changed the weights' scale many times over while the accuracy barely moved: on the
# layers that feed a BatchNorm it acts on the step size, not on the function.
#
# ## Larger learning rates, and initialisation
#
# The BatchNorm paper's headline is speed: "the same accuracy with 14 times fewer training steps"
# {cite}`ioffe2015batch`. Here: the same MLP with and without BatchNorm (without it, each Linear
# keeps its bias), SGD with momentum 0.9, batch 64, for 6 epochs. Every 5 steps the test accuracy is
# measured; the result of a run is the first step at which it reaches 90%. A run that never gets
# there is counted at the cap (the steps of 6 epochs, plus 5), so a mean that includes the cap is a
# lower bound. Two sweeps, one cause each: the learning rate (default initialisation), and a factor
# $s$ on the initial weights of the hidden layers (learning rate 0.1).

# %%
TARGET, EVERY, EPOCHS, BATCH = 0.90, 5, 6, 64
CAP = EPOCHS * (len(data[0]) // BATCH) + EVERY


def steps_to_target(seed, norm, lr=0.1, init_scale=1.0):
    """Train the MLP; the first step (of every EVERY) at which test accuracy >= TARGET.
    """
    lab.seed_everything(seed)
    model = norm_mlp(SIZES, nn.BatchNorm1d if norm == "BN" else None)
    with torch.no_grad():
        for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
            layer.weight.mul_(init_scale)
    reached = []

    def check(step):
        if not reached and step % EVERY == 0:
            model.eval()
            if accuracy(model, data[2], data[3]) >= TARGET:
                reached.append(step)
            model.train()

    fit(
        model,
        data,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=lr,
        momentum=0.9,
        seed=seed,
        progress=False,
        on_step=check,
    )
    if not reached and accuracy(model, data[2], data[3]) >= TARGET:
        reached.append(CAP - EVERY)
    return {"steps": reached[0] if reached else CAP, "reached": float(bool(reached))}


LRS = [0.01, 0.03, 0.1, 0.3, 1.0]
SCALES = [0.25, 0.5, 1.0, 2.0, 4.0]
by_lr = evidence.sweep(
    steps_to_target,
    {"norm": ["none", "BN"], "lr": LRS},
    seeds=SEEDS,
    desc="learning rates",
)
by_init = evidence.sweep(
    steps_to_target,
    {"norm": ["none", "BN"], "init_scale": SCALES},
    seeds=SEEDS,
    desc="initial scales",
)

# %% [markdown]
# Steps to 90% test accuracy in this run (mean ± s.e.; the cap is the number in the top right):

# %% tags=["nbval-ignore-output"]
print(f"cap: {CAP} steps")
print(by_lr.table("steps", "norm", "lr", fmt=".0f"))
print(by_init.table("steps", "norm", "init_scale", fmt=".0f"))


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Steps to 90% test accuracy on the digits against the learning rate (left) and against a factor on the initial weights (right), with and without BatchNorm (mean ± s.e. over 3 seeds; dashed: the cap, for runs that never reach 90%).", "name": "fig-15-lr-init"}, "image": {"alt": "Two plots of steps to 90 percent accuracy on log-scaled x axes. Left, against the learning rate: without BatchNorm the curve is at the cap except near the middle of the range; with BatchNorm it is low everywhere. Right, against the initial weight scale: without BatchNorm small initial weights stay at the cap and larger ones come down; with BatchNorm the curve is low and flat."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 4), sharey=True)
by_lr.plot("steps", x="lr", series="norm", ax=axes[0])
by_init.plot("steps", x="init_scale", series="norm", ax=axes[1])
for ax, label, ticks in zip(
    axes, ("learning rate", "initial weight scale s"), (LRS, SCALES), strict=True
):
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.axhline(CAP, color="0.5", ls="--", lw=1)
    ax.set_xlabel(label)
axes[1].set_ylabel("")
axes[0].set_ylabel("steps to 90% test accuracy")
fig.tight_layout()
plt.show()

# %% [markdown]
# The claims, checked on this run:

# %%
for lr in LRS:
    evidence.claim(
        f"at lr={lr:g}, BatchNorm reaches 90% at least 30 steps sooner",
        by_lr.estimate("steps", norm="BN", lr=lr),
        "<",
        by_lr.estimate("steps", norm="none", lr=lr),
        margin=30,
    )
evidence.claim(
    "with BatchNorm every run of the learning-rate sweep reaches 90%",
    by_lr.estimate("reached", norm="BN"),
    "≈",
    1.0,
)
for lr in (0.01, 1.0):
    evidence.claim(
        f"without it, most runs at lr={lr:g} never do",
        by_lr.estimate("reached", norm="none", lr=lr),
        "<",
        0.5,
    )
evidence.claim(
    "with BatchNorm every initial scale reaches 90% within 40 steps",
    max(by_init.estimate("steps", norm="BN", init_scale=s).mean for s in SCALES),
    "<",
    40,
)
evidence.claim(
    "without it, at s=0.25 most runs never do",
    by_init.estimate("reached", norm="none", init_scale=0.25),
    "<",
    0.5,
)

# %% [markdown]
# All three claims of the paper hold at this scale: BatchNorm trains faster at every learning rate
# tried, works over a range of learning rates where the plain network reaches the target only near
# one value, and makes the initial scale matter far less. Scale invariance says why the initial scale
# of a BN layer's weights cannot change its output; it does change the effective learning rate (by
# $1/s^2$), which is why the curve is flat but not perfectly so.
#
# ## Smoothness, not covariate shift
#
# The BatchNorm paper's explanation was that it reduces *internal covariate shift*: the change of each
# layer's input distribution as the layers before it learn. Santurkar et al. {cite}`santurkar2018how`
# tested that in two ways.
#
# 1. **The control.** Add covariate shift on purpose: after each BatchNorm, multiply each channel by a
#    random factor and add a random offset, drawn anew at every step ("noisy BN"). The inputs of the
#    next layer then shift far more than in a network without BatchNorm. If reducing covariate shift
#    were what helps, noisy BN should train no better than no BN.
# 2. **The measurement.** Along the gradient direction, at step sizes $\eta$, how much do the loss
#    $L(w - \eta g)$ and the gradient $\nabla L(w - \eta g)$ change? A smooth landscape changes
#    little, so the gradient stays a good guide for a longer step. `normlib.lab.landscape` measures
#    both on one batch, leaving the model untouched:
#
# $$
# \Delta L = \max_\eta L(w - \eta g) - \min_\eta L(w - \eta g) ,
# $$
#
# $$
# \Delta g = \max_\eta \lVert \nabla L(w - \eta g) - g \rVert .
# $$
#
# A deeper MLP (five hidden layers of 128), SGD with momentum 0.9. The landscape is measured every
# 11 steps, at $\eta \in \{\tfrac14, \tfrac12, 1, 2, 4\} \times$ the learning rate, on a batch drawn
# from a generator seeded by the step (the same batches for both networks).


# %%
class NoisyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d followed, in training, by a random per-channel scale and shift, new at
    every call.
    """

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            c = y.shape[1]
            y = y * torch.empty(c).uniform_(0.5, 2.0) + torch.empty(c).uniform_(
                -1.0, 1.0
            )
        return y


NORMS = {"none": None, "BN": nn.BatchNorm1d, "noisy BN": NoisyBatchNorm1d}
DEEP = [64, 128, 128, 128, 128, 128, 10]
ETAS = (0.25, 0.5, 1.0, 2.0, 4.0)


def landscape_run(seed, norm, lr, epochs=6, every=11, measure=True):
    """Train the deep MLP; every `every` steps measure loss and gradient change along g.
    """
    lab.seed_everything(seed)
    model = norm_mlp(DEEP, NORMS[norm])
    loss_change, grad_change = [], []

    def probe(step):
        if measure and step % every == 0:
            idx = torch.randint(
                0, len(data[0]), (64,), generator=torch.Generator().manual_seed(step)
            )
            out = along_gradient(
                model,
                nn.CrossEntropyLoss(),
                data[0][idx],
                data[1][idx],
                etas=[lr * k for k in ETAS],
            )
            loss_change.append(max(out["losses"]) - min(out["losses"]))
            grad_change.append(max(out["grad_changes"]))

    hist = fit(
        model,
        data,
        epochs=epochs,
        batch_size=64,
        lr=lr,
        momentum=0.9,
        seed=seed,
        progress=False,
        on_step=probe,
    )
    out = {"train_acc": hist["train_acc"][-1], "test_acc": hist["test_acc"][-1]}
    if measure:
        out |= {
            "loss_change": loss_change,
            "grad_change": grad_change,
            "mean_loss_change": float(np.mean(loss_change)),
            "mean_grad_change": float(np.mean(grad_change)),
            "first_loss_change": loss_change[0],
        }
    return out


# Five seeds: the plain network's landscape varies a lot from seed to seed. Every arm of a seed shares
# its data order and probe batches, so the claims below compare the arms seed by seed (paired).
LANDSCAPE_SEEDS = (0, 1, 2, 3, 4)
smooth = evidence.sweep(
    landscape_run, {"norm": ["none", "BN"], "lr": [0.1]}, seeds=LANDSCAPE_SEEDS, desc="landscape"
)
noisy = evidence.sweep(
    lambda seed, norm, lr: landscape_run(seed, norm, lr, measure=False),
    {"norm": ["none", "BN", "noisy BN"], "lr": [0.1, 0.3]},
    seeds=LANDSCAPE_SEEDS,
    desc="noisy BN",
)

# %% [markdown]
# This run's numbers, the landscape (means over the training run) and the last epoch's accuracy on its
# training batches (train mode, as the paper reports) and on the test set:

# %% tags=["nbval-ignore-output"]
print(
    evidence.table(
        ["norm", "loss change", "grad change"],
        [
            [
                n,
                f"{smooth.estimate('mean_loss_change', norm=n):.3f}",
                f"{smooth.estimate('mean_grad_change', norm=n):.2f}",
            ]
            for n in smooth.values_of("norm")
        ],
    )
)
print()
print("training accuracy (%)")
print(noisy.table("train_acc", "norm", "lr", scale=100))
print("test accuracy (%)")
print(noisy.table("test_acc", "norm", "lr", scale=100))


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Along the gradient, over training at learning rate 0.1: the range of the loss (left) and the largest change of the gradient (right) over step sizes from a quarter of the learning rate to four times it, with and without BatchNorm (mean ± s.e. over 5 seeds, shaded).", "name": "fig-15-landscape"}, "image": {"alt": "Two line plots against the training step, log-scaled y axes. At the first measurements the network without BatchNorm changes less along a step than the one with it: it sits on a plateau where its gradient is tiny. Later its curves rise above those of the BatchNorm network, by orders of magnitude at times, and stay above to the end."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 4))
for norm in smooth.values_of("norm"):
    runs = smooth.select(norm=norm).records
    for ax, key in zip(axes, ("loss_change", "grad_change"), strict=True):
        band(ax, [r[key] for r in runs], norm)
axes[0].set(ylabel=r"loss range $\Delta L$", yscale="log")
axes[1].set(ylabel=r"gradient change $\Delta g$", yscale="log")
for ax in axes:
    ax.set_xlabel("measurement (every 11 SGD steps)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The verdict, as checks:

# %%
for key, what, k in (
    ("mean_loss_change", "the loss", 2),
    ("mean_grad_change", "the gradient", 1.5),
):
    evidence.claim(
        f"averaged over training, {what} changes at least {k:g}x less with BatchNorm",
        smooth.estimate(key, norm="BN").scaled(k),
        "<",
        smooth.estimate(key, norm="none"),
        paired=True,
    )
evidence.claim(
    "but at initialisation the plain network's loss changes less (a plateau)",
    smooth.estimate("first_loss_change", norm="none"),
    "<",
    smooth.estimate("first_loss_change", norm="BN"),
    paired=True,
)
for lr in (0.1, 0.3):
    evidence.claim(
        f"noisy BN trains better than no BN at lr={lr:g} (training batches)",
        noisy.estimate("train_acc", norm="noisy BN", lr=lr),
        ">",
        noisy.estimate("train_acc", norm="none", lr=lr),
        margin=0.02,
        paired=True,
    )
evidence.claim(
    "noisy BN trains worse than clean BN at lr=0.3",
    noisy.estimate("train_acc", norm="noisy BN", lr=0.3),
    "<",
    noisy.estimate("train_acc", norm="BN", lr=0.3),
    margin=0.01,
    paired=True,
)

# %% [markdown]
# Both of the paper's findings show up at this scale. With shift added on purpose, the network still
# trains far better than one without BatchNorm, so reducing covariate shift cannot be what BatchNorm
# is for; the noise does cost something, and the test accuracy of noisy BN, which trains with noise
# and is tested without it, is not part of the claim (see the table). And averaged over training,
# the loss and the gradient change less along a step with BatchNorm: the step the optimiser takes is
# one the gradient predicts better, which is what makes larger learning rates safe. The figure adds
# what an average hides. At the start the plain network is the *flatter* one: it sits on a plateau
# where its gradient is tiny (the vanishing gradient of a deep network, measured in the next
# lesson), and it pays for leaving it with a landscape far rougher than the BatchNorm network's.
# "Smoother" is a statement about the region training gets into, not about every point. The paper also reports an
# "effective $\beta$-smoothness", the gradient change divided by the step length; `along_gradient`
# returns it as `beta`, and the exercises ask you to look at it.
#
# ## A regulariser? BatchNorm and Dropout
#
# The last claim of the source article is that BatchNorm regularises enough to drop Dropout. Test it
# where regularisation matters: a small training set (1,000 Fashion-MNIST images
# {cite}`xiao2017fashion`), an MLP `784 -> 128 -> 128 -> 10` that can overfit it, and four networks
# that differ only in BatchNorm (before each ReLU) and Dropout ($p = 0.3$, after each ReLU), all
# trained the same way for 10 epochs.

# %%
fashion = fashion_mnist(n_train=1000, n_test=1000)


def regularised_mlp(bn, p):
    layers = [nn.Flatten()]
    for n_in, n_out in ((784, 128), (128, 128)):
        layers.append(nn.Linear(n_in, n_out, bias=not bn))
        layers += [nn.BatchNorm1d(n_out)] if bn else []
        layers.append(nn.ReLU())
        layers += [nn.Dropout(p)] if p else []
    return nn.Sequential(*layers, nn.Linear(128, 10))


CONFIGS = {
    "plain": (False, 0.0),
    "Dropout": (False, 0.3),
    "BN": (True, 0.0),
    "BN + Dropout": (True, 0.3),
}


def regulariser_run(seed, config):
    lab.seed_everything(seed)
    model = regularised_mlp(*CONFIGS[config])
    hist = fit(
        model,
        fashion,
        epochs=10,
        batch_size=50,
        lr=0.02,
        momentum=0.9,
        seed=seed,
        progress=False,
    )
    out = {
        "train_acc": hist["train_acc"][-1],
        "test_acc": hist["test_acc"][-1],
        "test_loss": hist["test_loss"][-1],
    }
    out["gap"] = out["train_acc"] - out["test_acc"]
    if config == "BN + Dropout":
        out |= variance_shift(model, fashion[2])
    return out


@torch.no_grad()
def variance_shift(model, x):
    """Second BatchNorm: its input's variance in eval mode over its running variance."""
    bn = [m for m in model if isinstance(m, nn.BatchNorm1d)][1]
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].var(0)))
    model.eval()
    model(x)
    hook.remove()
    return {"var_ratio": (seen[0] / bn.running_var).mean().item()}


regular = evidence.sweep(
    regulariser_run, {"config": list(CONFIGS)}, seeds=SEEDS, desc="regularisers"
)

# %% [markdown]
# This run's numbers (accuracy on the training batches, in train mode, and on the test set):

# %% tags=["nbval-ignore-output"]
print(f"{fashion.name}, {len(fashion[0])} training images")
print(
    evidence.table(
        ["network", "train %", "test %", "gap", "test loss"],
        [
            [
                c,
                f"{regular.estimate('train_acc', config=c).scaled(100):.1f}",
                f"{regular.estimate('test_acc', config=c).scaled(100):.1f}",
                f"{regular.estimate('gap', config=c).scaled(100):.1f}",
                f"{regular.estimate('test_loss', config=c):.2f}",
            ]
            for c in CONFIGS
        ],
    )
)
print(
    f"\nBN + Dropout, eval variance / running variance at the second BN: "
    f"{regular.estimate('var_ratio', config='BN + Dropout'):.2f}"
)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Four networks on 1,000 Fashion-MNIST images: the gap between training-batch and test accuracy (left) and the test loss (right) (mean ± s.e. over 3 seeds).", "name": "fig-15-regular"}, "image": {"alt": "Two bar charts with error bars for plain, Dropout, BN, and BN plus Dropout. The BN network has the largest gap between training and test accuracy and the highest test loss; adding Dropout to it lowers both."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.7))
for ax, (key, label, scale) in zip(
    axes,
    (("gap", "train - test accuracy (points)", 100), ("test_loss", "test loss", 1)),
    strict=True,
):
    ests = [regular.estimate(key, config=c).scaled(scale) for c in CONFIGS]
    ax.bar(
        range(len(CONFIGS)),
        [e.mean for e in ests],
        yerr=[e.sem for e in ests],
        capsize=4,
        color=["0.5", "C2", "C0", "C4"],
    )
    ax.set_xticks(range(len(CONFIGS)), [c.replace(" + ", "\n+ ") for c in CONFIGS])
    ax.set_ylabel(label)
fig.tight_layout()
plt.show()

# %%
evidence.claim(
    "BN alone has a larger train-test gap than the plain network",
    regular.estimate("gap", config="BN"),
    ">",
    regular.estimate("gap", config="plain"),
    unit=100,
)
evidence.claim(
    "adding Dropout to BN lowers the test loss by at least 0.05",
    regular.estimate("test_loss", config="BN + Dropout"),
    "<",
    regular.estimate("test_loss", config="BN"),
    margin=0.05,
)
evidence.claim(
    "the four networks' test accuracies are within 3 points of each other",
    max(regular.estimate("test_acc", config=c).mean for c in CONFIGS),
    "≈",
    min(regular.estimate("test_acc", config=c).mean for c in CONFIGS),
    margin=0.03,
    unit=100,
)
evidence.claim(
    "with Dropout before it, the second BN sees less variance at test time "
    "than its running variance holds",
    regular.estimate("var_ratio", config="BN + Dropout"),
    "<",
    0.9,
)

# %% [markdown]
# At this scale the claim that BatchNorm lets you drop Dropout fails. BatchNorm fits the training set
# fastest and has a larger train-test gap than the plain network; Dropout on top of it still lowers
# the test loss, and the test
# accuracies barely differ. (BatchNorm's noise from batch statistics is a weak regulariser, weaker the
# larger the batch; Ioffe and Szegedy removed Dropout from a large Inception network, a different
# regime from this one.) And the combination pays the price the Dropout lesson derived: Dropout before
# a BatchNorm inflates the variance the BatchNorm learns in training, so at test time its input has
# less variance than it divides by {cite}`li2019understanding`. The usual remedies: Dropout only after
# the last BatchNorm, or re-estimating the statistics with Dropout off.
#
# ## Summary
#
# - A layer that feeds a BatchNorm is scale invariant: its gradient is orthogonal to its weights and
#   shrinks as $1/\lVert w\rVert$, its effective learning rate is $\eta/\lVert w\rVert^2$, and weight
#   decay on it controls that learning rate rather than the function.
# - BatchNorm reached the target accuracy sooner at every learning rate and every initial scale tried,
#   over a far wider range of both.
# - Adding covariate shift on purpose (noisy BN) did not undo the benefit; what BatchNorm changed
#   measurably is how much the loss and the gradient vary along a step, on average over training
#   (not at initialisation, where the plain network sits on a plateau).
# - It did not replace Dropout here: BN alone overfits a small training set the most.
#
# ## Exercises
#
# 1. Repeat the scale-invariance checks with $\epsilon = 10^{-5}$ (BatchNorm's default). For which
#    $\alpha$ does `L(alpha w) = L(w)` stop being close? Relate the answer to $\alpha^2\sigma_k^2$ and
#    $\epsilon$.
# 2. In `weight_norm_run`, use momentum 0.9. Does the squared norm still only grow without weight
#    decay? Why does Pythagoras no longer apply to the step?
# 3. Print `beta` from `along_gradient` in `landscape_run` and compare it with and without BatchNorm.
#    Dividing by $\lVert \eta g\rVert$ makes it a curvature; is the gradient norm itself different in the
#    two networks?
# 4. Measure the covariate shift directly: record the mean of one unit's input to the third layer at
#    every step, for BN and noisy BN. How much larger is its step-to-step change with noise?
# 5. Put Dropout only after the last BatchNorm in `regularised_mlp` (drop it from the first layer).
#    Does the variance ratio move towards 1, and the test loss?
