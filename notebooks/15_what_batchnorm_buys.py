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
# The BatchNorm paper credits it with a lot: it reaches "the same accuracy with 14 times fewer
# training steps", "allows us to use much higher learning rates and be less careful about
# initialization", and "acts as a regularizer, in some cases eliminating the need for Dropout"
# {cite}`ioffe2015batch`. A later paper argues that it works not by reducing "internal covariate
# shift", as the first one proposed, but by making the loss landscape smoother
# {cite}`santurkar2018how`. This lesson tests each claim on a small network, with the control that
# could break it, several seeds and error bars.
#
# It starts with the property most explanations rest on: **scale invariance**. A layer whose output
# feeds a BatchNorm can have its weights multiplied by any $\alpha > 0$ without changing anything
# downstream. From that one fact follow the shape of the gradient, an effective learning rate that
# depends on $\lVert w\rVert$, and a role for weight decay that has nothing to do with regularization
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
from normlib.lab.models import he_init, norm_mlp
from normlib.lab.train import accuracy, fit, recalibrate_batchnorm

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
# $w \leftarrow (1 - \eta\lambda) w - \eta \nabla L$, shrinks the norm instead. On a scale-invariant
# weight it cannot regularize the function (which does not depend on $\lVert w\rVert$); what it does
# is keep the effective learning rate up {cite}`vanlaarhoven2017l2,li2020exponential`.
#
# ## The effective learning rate in training
#
# An MLP on the digits, `64 -> 128 -> 128 -> 128 -> 10`, BatchNorm before each ReLU, plain SGD. We
# follow the first layer's $\lVert w_k\rVert^2$ (mean over its rows) at every step, for three weight
# decays, with everything else fixed. The decay acts only on the three hidden `Linear` weights, the
# scale-invariant ones: BatchNorm's $\gamma$ and $\beta$ and the output layer are not decayed, since
# decay on them does change the function. That is also the common practice: optimizers get two
# parameter groups, and the norms' parameters and the biases go into the one without weight decay.
# Here the decay is one multiplication per step, $w \leftarrow (1 - \eta\lambda) w$, applied to
# those weights before each SGD step (plain SGD's weight decay, up to a term of order
# $\eta^2\lambda$). Each seed fixes the initial weights and the order of the batches, the same for
# every decay, so the decays are compared seed by seed.

# %%
SIZES = [64, 128, 128, 128, 10]


WD_LR = 0.2
WD_SEEDS = tuple(range(10))


def scale_invariant_weights(model):
    """The weights of the Linear layers that feed a BatchNorm (no bias: the norm's beta
    is it)."""
    layers = list(model)
    return [
        m.weight
        for m, nxt in zip(layers, layers[1:], strict=False)
        if isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d)
    ]


def weight_norm_run(seed, weight_decay, lr=WD_LR, epochs=8):
    """Train the BN MLP with plain SGD, decaying only the scale-invariant weights;
    follow the first layer's mean squared row norm.
    """
    lab.seed_everything(seed)
    model = norm_mlp(SIZES, nn.BatchNorm1d)
    decayed = scale_invariant_weights(model)
    W = decayed[0]
    sq_norms = []

    def step(_):
        with torch.no_grad():
            for w in decayed:
                w.mul_(1 - lr * weight_decay)
        sq_norms.append(W.detach().pow(2).sum(1).mean().item())

    fit(
        model,
        data,
        epochs=epochs,
        batch_size=64,
        lr=lr,
        momentum=0.0,
        seed=seed,
        progress=False,
        on_step=step,
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


model = norm_mlp(SIZES, nn.BatchNorm1d)
decayed = {id(w) for w in scale_invariant_weights(model)}
named = list(model.named_parameters())
print("decayed:    ", ", ".join(n for n, w in named if id(w) in decayed))
print("not decayed:", ", ".join(n for n, w in named if id(w) not in decayed))
# One decay step, (1 - lr * weight_decay) on those weights, leaves the function as it was
# (train mode: batch statistics; equal up to BatchNorm's eps):
outputs = model(data[0][:64])
with torch.no_grad():
    for w in scale_invariant_weights(model):
        w.mul_(1 - WD_LR * 3e-2)
print(lab.cmp("outputs after a decay step", model(data[0][:64]), outputs, atol=1e-4))
decay = evidence.sweep(
    weight_norm_run,
    {"weight_decay": [0.0, 5e-3, 3e-2]},
    seeds=WD_SEEDS,
    desc="weight decay",
)

# %% [markdown]
# The runs' numbers (mean ± s.e. over the seeds):

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


# %% tags=["hide-input"] mystnb={"figure": {"caption": "The first layer's mean squared row norm and the effective learning rate it implies, at every SGD step, for three weight decays on the scale-invariant weights only (mean ± s.e. over 10 seeds, shaded).", "name": "fig-15-norm"}, "image": {"alt": "Two line plots against the training step. Left: the squared weight norm rises slowly without weight decay, and falls with weight decay, faster for the larger decay. Right: the effective learning rate, the learning rate divided by the squared norm, falls slowly without weight decay and rises with it."}}
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
    "without weight decay the squared norm grows over training",
    end0,
    ">",
    start0,
    paired=True,
)
for wd, k in ((5e-3, 1.2), (3e-2, 4)):
    evidence.claim(
        f"weight decay {wd:g} leaves the effective learning rate at the end "
        f"at least {k:g}x that of no decay",
        decay.estimate("eff_lr_end", weight_decay=wd).scaled(1 / k),
        ">",
        decay.estimate("eff_lr_end", weight_decay=0.0),
        paired=True,
    )
evidence.claim(
    "at weight decay 0.005 the test accuracy is within 1 point of no decay",
    decay.estimate("test_acc", weight_decay=5e-3),
    "≈",
    decay.estimate("test_acc", weight_decay=0.0),
    margin=0.01,
    paired=True,
    unit=100,
)
evidence.claim(
    "at weight decay 0.03 the test accuracy is lower than with no decay",
    decay.estimate("test_acc", weight_decay=3e-2),
    "<",
    decay.estimate("test_acc", weight_decay=0.0),
    paired=True,
    unit=100,
)

# %% [markdown]
# A decay step does not change the function (the check above): on the weights that feed a
# BatchNorm, weight decay can act only through the steps that follow, by raising the effective
# learning rate. A small decay raised it and left the accuracy within a point of no decay. The
# largest raised it at least fourfold, and the test accuracy fell, as it can when the step is too
# large: these runs keep the learning rate constant to the end.
#
# ## Larger learning rates, and initialization
#
# The BatchNorm paper's headline is speed: "the same accuracy with 14 times fewer training steps"
# {cite}`ioffe2015batch`, on an Inception network. Here: the same MLP with and without BatchNorm (without it, each Linear
# keeps its bias), SGD with momentum 0.9, batch 64, for 6 epochs. Every 5 steps the test accuracy is
# measured; the result of a run is the first step at which it reaches 90%. A run that never gets
# there is counted at the cap (the steps of 6 epochs, plus 5), so a mean that includes the cap is a
# lower bound. The network without BatchNorm starts from He initialization (`lab.models.he_init`):
# torch's default draws weights $\sqrt{6}$ times too small for a ReLU network, which would handicap
# the plain network and not the one with BatchNorm, which rescales whatever it gets. Two sweeps, one
# cause each: the learning rate, and a factor $s$ on the initial weights of the hidden layers
# (learning rate 0.1).

# %%
TARGET, EVERY, EPOCHS, BATCH = 0.90, 5, 6, 64
CAP = EPOCHS * (len(data[0]) // BATCH) + EVERY


def steps_to_target(seed, norm, lr=0.1, init_scale=1.0):
    """Train the MLP; the first step (of every EVERY) at which test accuracy >= TARGET.
    """
    lab.seed_everything(seed)
    model = norm_mlp(SIZES, nn.BatchNorm1d if norm == "BN" else None)
    if norm != "BN":
        he_init(model)
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
# Five seeds for the learning rates: near the plain network's limit some of its runs
# reach the target and others never do. Both arms of a seed share its data order
# (compared seed by seed).
LR_SEEDS = (0, 1, 2, 3, 4)
by_lr = evidence.sweep(
    steps_to_target,
    {"norm": ["none", "BN"], "lr": LRS},
    seeds=LR_SEEDS,
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


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Steps to 90% test accuracy on the digits against the learning rate (left) and against a factor on the initial weights (right), with and without BatchNorm (mean ± s.e. over 5 seeds, left, and 3 seeds, right; dashed: the cap, for runs that never reach 90%).", "name": "fig-15-lr-init"}, "image": {"alt": "Two plots of steps to 90 percent accuracy on log-scaled x axes. Left, against the learning rate: without BatchNorm the curve falls from the smallest rate to its lowest at 0.1, rises steeply at 0.3 and is at the cap at 1; with BatchNorm it is below the plain curve at every rate and rises only a little at the larger rates. Right, against the initial weight scale: without BatchNorm the curve is U-shaped, lowest at scale 1 and at the cap at scale 4; with BatchNorm it is low and nearly flat, below the plain curve at every scale."}}
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
# What the runs show:

# %%
for lr in (0.01, 0.03, 0.3):
    evidence.claim(
        f"at lr={lr:g}, BatchNorm reaches 90% sooner",
        by_lr.estimate("steps", norm="BN", lr=lr),
        "<",
        by_lr.estimate("steps", norm="none", lr=lr),
        paired=True,
    )
evidence.claim(
    "at lr=1, BatchNorm reaches 90% at least 30 steps sooner",
    by_lr.estimate("steps", norm="BN", lr=1.0),
    "<",
    by_lr.estimate("steps", norm="none", lr=1.0),
    margin=30,
    paired=True,
)
evidence.claim(
    "at lr=0.1, BatchNorm reaches 90% in at most 2/3 of the plain network's steps",
    by_lr.estimate("steps", norm="BN", lr=0.1).scaled(1.5),
    "<",
    by_lr.estimate("steps", norm="none", lr=0.1),
    paired=True,
)


def count_reached(runs, **where):
    """(runs that reached 90%, runs) among the selected runs: exact counts."""
    records = runs.select(**where).records
    return float(sum(r["reached"] for r in records)), float(len(records))


for statement, (reached, total) in (
    (
        "with BatchNorm every run of the learning-rate sweep reaches 90%",
        count_reached(by_lr, norm="BN"),
    ),
    (
        "with BatchNorm every run at every initial scale reaches 90%",
        count_reached(by_init, norm="BN"),
    ),
):
    evidence.claim(f"{statement} ({total:.0f} runs)", reached, "≈", total)
for statement, (reached, total) in (
    ("without it, no run at lr=1 does", count_reached(by_lr, norm="none", lr=1.0)),
    (
        "without it, no run at s=4 reaches 90%",
        count_reached(by_init, norm="none", init_scale=4.0),
    ),
):
    evidence.claim(f"{statement} ({total:.0f} runs)", reached, "≈", 0.0)
evidence.claim(
    "at s=0.25, BatchNorm reaches it at least 30 steps sooner",
    by_init.estimate("steps", norm="BN", init_scale=0.25),
    "<",
    by_init.estimate("steps", norm="none", init_scale=0.25),
    margin=30,
    paired=True,
)

# %% [markdown]
# With a fair start, the plain network is a serious competitor, but BatchNorm is faster at every
# learning rate: at the plain network's best rate (0.1) it needs at most two thirds of its steps
# (about half, in the table), and away from it the gap grows: at a learning rate of 1 it is at least
# 30 steps, and there the plain network never gets to 90%; every BatchNorm run, at every rate and
# every initial scale, does. Against the initial scale the plain network's curve is U-shaped, best at
# $s = 1$ (He's); at $s = 0.25$ BatchNorm is at least 30 steps sooner, and at $s = 4$ no plain run
# reaches 90%. With torch's default initialization the plain network would
# start with shrinking activations, a handicap of the baseline that would be no gain of the norm;
# the exercises ask you to measure it. Scale invariance says why the initial scale of a BN layer's
# weights cannot change its output; it does change the effective learning rate (by $1/s^2$), which is
# why the curve is flat but not perfectly so.
#
# ## Smoothness, not covariate shift
#
# The BatchNorm paper's explanation was that it reduces *internal covariate shift*: the change of each
# layer's input distribution as the layers before it learn. Santurkar et al. {cite}`santurkar2018how`
# tested that in two ways.
#
# 1. **The control.** Add covariate shift on purpose: after each BatchNorm, multiply by a random
#    factor and add a random offset, drawn anew at every step ("noisy BN"). They draw the noise per
#    activation; we use a variant of their control, one factor (uniform in $[0.4, 1.6]$, mean 1) and
#    one offset (uniform in $[-1, 1]$) per channel. The inputs of the next layer should then shift
#    far more than in a network without BatchNorm (we measure it). If reducing covariate shift were
#    what helps, noisy BN should train no better than no BN. It is tested without the noise, with
#    its running statistics re-estimated on the training set with the noise off (clean BN gets the
#    same re-estimation), so that the statistics it uses at test time are those of its test-time
#    inputs.
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
# A deeper MLP (five hidden layers of 128), SGD with momentum 0.9; the network without BatchNorm
# starts from He initialization, as above. The landscape is measured every 11 steps, at
# $\eta \in \{\tfrac14, \tfrac12, 1, 2, 4\} \times$ the learning rate, on a batch drawn from a
# generator seeded by the step (the same batches for both networks). The covariate shift is measured
# where the control puts it: at the input of the third `Linear`, each unit's mean over the training
# batch, and how far it moves from one step to the next, in units of that input's spread
# (the mean over units of $|\mu_t - \mu_{t-1}|$ divided by the mean of their standard deviations,
# averaged over training). Part of that movement is sampling: each step sees 64 other images.


# %%
class NoisyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d followed, in training, by a random per-channel scale (mean 1) and
    shift (mean 0), new at every call; `noise = False` switches the noise off.
    """

    noise = True

    def forward(self, x):
        y = super().forward(x)
        if self.training and self.noise:
            c = y.shape[1]
            y = y * torch.empty(c).uniform_(0.4, 1.6) + torch.empty(c).uniform_(
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
    if NORMS[norm] is None:
        he_init(model)
    loss_change, grad_change = [], []
    # (per-unit mean, mean std) of the third Linear's input, per training batch
    moments = []
    third = [m for m in model if isinstance(m, nn.Linear)][2]
    hook = third.register_forward_hook(
        lambda m, inp, out: moments.append(
            (inp[0].detach().mean(0), inp[0].detach().std(0).mean())
        )
        if m.training
        else None
    )

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
    hook.remove()
    shift = [
        ((mu - mu_prev).abs().mean() / sd).item()
        for (mu_prev, _), (mu, sd) in zip(moments, moments[1:], strict=False)
    ]
    if NORMS[norm] is not None:
        # Test without the noise, with running statistics re-estimated without it too
        # (done for clean BN as well, so both are tested the same way).
        for m in model:
            if isinstance(m, NoisyBatchNorm1d):
                m.noise = False
        recalibrate_batchnorm(model, data[0])
    out = {
        "train_acc": hist["train_acc"][-1],
        "test_acc": accuracy(model, data[2], data[3]),
        "shift": float(np.mean(shift)),
    }
    if measure:
        out |= {
            "loss_change": loss_change,
            "grad_change": grad_change,
            "mean_loss_change": float(np.mean(loss_change)),
            "mean_grad_change": float(np.mean(grad_change)),
            "log_loss_change": float(np.log(np.mean(loss_change))),
            "log_grad_change": float(np.log(np.mean(grad_change))),
            "first_loss_change": loss_change[0],
        }
    return out


# Five seeds: the plain network's landscape varies a lot from seed to seed. Every arm
# of a seed shares its data order and probe batches, so the claims compare the arms
# seed by seed.
LANDSCAPE_SEEDS = (0, 1, 2, 3, 4)
LOSS_K, GRAD_K = 4, 2
smooth = evidence.sweep(
    landscape_run,
    {"norm": ["none", "BN"], "lr": [0.1]},
    seeds=LANDSCAPE_SEEDS,
    desc="landscape",
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
print("step-to-step shift of the third layer's input means (in its standard deviations)")
print(
    evidence.table(
        ["norm", "lr=0.1", "lr=0.3"],
        [
            [n]
            + [
                f"{noisy.estimate('shift', norm=n, lr=lr):.3f}"
                if n != "none" or lr == 0.1
                else "(diverges)"
                for lr in (0.1, 0.3)
            ]
            for n in noisy.values_of("norm")
        ],
    )
)


# %% tags=["hide-input"] mystnb={"figure": {"caption": "Along the gradient, over training at learning rate 0.1: the range of the loss (left) and the largest change of the gradient (right) over step sizes from a quarter of the learning rate to four times it, with and without BatchNorm (the plain network from He initialization; mean ± s.e. over 5 seeds, shaded).", "name": "fig-15-landscape"}, "image": {"alt": "Two line plots against the training step, log-scaled y axes, one curve with and one without BatchNorm: the loss range and the gradient change along a step, measured every 11 steps over training."}}
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
# Ratios, seed by seed: the log of the plain network's mean over BatchNorm's.
for key, what, k in (
    ("log_loss_change", "the loss", LOSS_K),
    ("log_grad_change", "the gradient", GRAD_K),
):
    evidence.claim(
        f"averaged over training, {what} changes at least {k:g}x less with BatchNorm "
        "(paired log-ratio)",
        smooth.estimate(key, norm="BN"),
        "<",
        smooth.estimate(key, norm="none"),
        margin=math.log(k),
        paired=True,
    )
for lr, other in ((0.1, "none"), (0.1, "BN"), (0.3, "BN")):
    evidence.claim(
        f"at lr={lr:g}, noisy BN moves the third layer's input means at least 2x "
        f"as far per step as {other}",
        noisy.estimate("shift", norm="noisy BN", lr=lr).scaled(1 / 2),
        ">",
        noisy.estimate("shift", norm=other, lr=lr),
        paired=True,
    )
evidence.claim(
    "at lr=0.1, clean BN moves them less than no BN",
    noisy.estimate("shift", norm="BN", lr=0.1),
    "<",
    noisy.estimate("shift", norm="none", lr=0.1),
    paired=True,
)
evidence.claim(
    "at lr=0.3 the plain network fails to train (training batches below 50%)",
    noisy.estimate("train_acc", norm="none", lr=0.3),
    "<",
    0.5,
    unit=100,
)
evidence.claim(
    "at lr=0.3 noisy BN trains: above 90% on its training batches",
    noisy.estimate("train_acc", norm="noisy BN", lr=0.3),
    ">",
    0.9,
    unit=100,
)
evidence.claim(
    "at lr=0.3 noisy BN, tested without noise, is more accurate than no BN",
    noisy.estimate("test_acc", norm="noisy BN", lr=0.3),
    ">",
    noisy.estimate("test_acc", norm="none", lr=0.3),
    paired=True,
    unit=100,
)
for lr in (0.1, 0.3):
    evidence.claim(
        f"at lr={lr:g} noisy BN trains worse than clean BN",
        noisy.estimate("train_acc", norm="noisy BN", lr=lr),
        "<",
        noisy.estimate("train_acc", norm="BN", lr=lr),
        paired=True,
        unit=100,
    )

# %% [markdown]
# Both of the paper's findings show up at this scale. First, the control does what it is meant to:
# at a learning rate of 0.1, with the noise, the means of the third layer's inputs move at least
# twice as far from one step to the next as without BatchNorm, and as with clean BatchNorm, which
# holds them nearly still (it fixes each batch's mean and variance before the ReLU). In those runs
# noisy BN trains worse than clean BN, and against the plain network, which trains well at this
# rate, the seeds do not settle which trains better (the table). At 0.3 the difference is not a
# matter of points: the plain network
# fails (below 50% on its training batches, about 16% in the table), while noisy BN trains to above
# 90% (about 94%), still worse than clean BN, and tested without the noise it is more accurate than
# the plain network (about 96%, the table), with a shift still at least twice clean BN's. (The
# plain network's shift at 0.3 is not compared: it diverges, and where its units die the measure
# is not even defined.) The noise costs something, but reducing covariate shift is not necessary
# for BatchNorm's benefit here.
#
# Second, averaged over training, the loss and the gradient change less along a step with
# BatchNorm, by the factors checked seed by seed (the table's means differ more, about ten times for
# the loss). That is the paper's explanation of why larger learning rates are safe, with a caveat:
# the range is taken over steps proportional to the gradient, so it also grows with the gradient's
# size and with how much a step can still gain, and the two networks are compared at the same step,
# not at the same training loss. It is consistent with a smoother landscape, not a measure of
# smoothness alone. "Smoother" is a statement about the region training gets into, averaged over
# the run (the figure shows how it varies along it), not about every point. The paper also reports an "effective
# $\beta$-smoothness", the gradient change divided by the step length; `along_gradient` returns it
# as `beta`, and the exercises ask you to look at it.
#
# ## A regularizer? BatchNorm and Dropout
#
# The BatchNorm paper's last claim is that it regularizes, "in some cases eliminating the need for
# Dropout". Test it where regularization matters: a small training set (1,000 Fashion-MNIST images
# {cite}`xiao2017fashion`), an MLP `784 -> 128 -> 128 -> 10` that can overfit it, and four networks
# that differ only in BatchNorm (before each ReLU) and Dropout ($p = 0.5$, after each ReLU), all
# trained the same way for 40 epochs (800 steps of 50 images, SGD with momentum 0.9, learning rate
# 0.02), long enough for the networks without Dropout to fit the training set. The networks without
# BatchNorm start from He initialization. Training accuracy is measured as the test accuracy is, in
# evaluation mode on the whole training set at the end (`fit(..., eval_train=True)`), not on the
# training batches with Dropout active. Each seed fixes the order of the batches for all four
# networks, and the initial weights for each network with and without Dropout, so the effects are
# measured seed by seed, over five seeds. Accuracy and loss are reported apart: they need not
# agree, since the loss also counts how confident the wrong answers are.

# %%
fashion = fashion_mnist(n_train=1000, n_test=2000)
P_DROP = 0.5


def regularized_mlp(bn, p):
    layers = [nn.Flatten()]
    for n_in, n_out in ((784, 128), (128, 128)):
        layers.append(nn.Linear(n_in, n_out, bias=not bn))
        layers += [nn.BatchNorm1d(n_out)] if bn else []
        layers.append(nn.ReLU())
        layers += [nn.Dropout(p)] if p else []
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    return model if bn else he_init(model)


REG_EPOCHS, REG_BATCH = 40, 50


def all_epochs(gen):
    """All epochs' batches (each epoch a fresh shuffle) as one pass, so `fit` measures
    the model once, at the end."""
    batches = []
    for _ in range(REG_EPOCHS):
        perm = torch.randperm(len(fashion[0]), generator=gen)
        batches += [
            perm[i : i + REG_BATCH]
            for i in range(0, len(perm) - REG_BATCH + 1, REG_BATCH)
        ]
    return batches


CONFIGS = {
    "plain": (False, 0.0),
    "Dropout": (False, P_DROP),
    "BN": (True, 0.0),
    "BN + Dropout": (True, P_DROP),
}
REG_SEEDS = (0, 1, 2, 3, 4)


def regularizer_run(seed, config):
    lab.seed_everything(seed)
    model = regularized_mlp(*CONFIGS[config])
    hist = fit(
        model,
        fashion,
        epochs=1,
        batch_size=REG_BATCH,
        lr=0.02,
        momentum=0.9,
        seed=seed,
        progress=False,
        eval_train=True,
        batches=all_epochs,
    )
    out = {
        "train_acc": hist["train_acc_eval"][-1],
        "test_acc": hist["test_acc"][-1],
        "test_loss": hist["test_loss"][-1],
    }
    out["gap"] = out["train_acc"] - out["test_acc"]
    if CONFIGS[config][0]:
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
    regularizer_run, {"config": list(CONFIGS)}, seeds=REG_SEEDS, desc="regularizers"
)

# %% [markdown]
# This run's numbers (training accuracy in evaluation mode on the whole training set; the variance
# ratio is the second BatchNorm's input variance at test time over its running variance):

# %% tags=["nbval-ignore-output"]
print(f"{fashion.name}, {len(fashion[0])} training images")
print(
    evidence.table(
        ["network", "train %", "test %", "gap", "test loss", "var ratio"],
        [
            [
                c,
                f"{regular.estimate('train_acc', config=c).scaled(100):.1f}",
                f"{regular.estimate('test_acc', config=c).scaled(100):.1f}",
                f"{regular.estimate('gap', config=c).scaled(100):.1f}",
                f"{regular.estimate('test_loss', config=c):.2f}",
                f"{regular.estimate('var_ratio', config=c):.2f}" if "BN" in c else "",
            ]
            for c in CONFIGS
        ],
    )
)

# %% [markdown]
# The effects, seed by seed: the mean difference and its 90% interval (accuracy in points):

# %% tags=["nbval-ignore-output"]
EFFECTS = {
    "Dropout on the plain network": ("Dropout", "plain"),
    "Dropout on the BN network": ("BN + Dropout", "BN"),
    "BN instead of Dropout": ("BN", "Dropout"),
    "BN on the plain network": ("BN", "plain"),
}


def effect(metric, with_, without, scale=1.0):
    d = evidence.difference(
        regular.estimate(metric, config=with_).scaled(scale),
        regular.estimate(metric, config=without).scaled(scale),
        paired=True,
    )
    low, high = d.interval(0.90)
    return f"{d.value:+.2f} [{low:+.2f}, {high:+.2f}]"


print(
    evidence.table(
        ["effect", "test accuracy", "test loss"],
        [
            [name, effect("test_acc", *pair, scale=100), effect("test_loss", *pair)]
            for name, pair in EFFECTS.items()
        ],
    )
)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Four networks on 1,000 Fashion-MNIST images after 40 epochs: test accuracy (left) and test loss (right) (mean ± s.e. over 5 seeds).", "name": "fig-15-regular"}, "image": {"alt": "Two bar charts with error bars for plain, Dropout, BN, and BN plus Dropout: test accuracy on the left, test loss on the right."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.7))
for ax, (key, label, scale) in zip(
    axes,
    (("test_acc", "test accuracy (%)", 100), ("test_loss", "test loss", 1)),
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
    lows = [e.mean - e.sem for e in ests]
    if key == "test_acc":
        ax.set_ylim(min(lows) - 3, None)
fig.tight_layout()
plt.show()

# %%
for c in ("plain", "BN"):
    evidence.claim(
        f"{c} fits the training set (above 99% in evaluation mode)",
        regular.estimate("train_acc", config=c),
        ">",
        0.99,
        unit=100,
    )
for c, base in (("Dropout", "plain"), ("BN + Dropout", "BN")):
    evidence.claim(
        f"{c} has a test loss at least 0.2 below {base}",
        regular.estimate("test_loss", config=c),
        "<",
        regular.estimate("test_loss", config=base),
        margin=0.2,
        paired=True,
    )
evidence.claim(
    "BN without Dropout has a test loss at least 0.2 above Dropout without BN",
    regular.estimate("test_loss", config="BN"),
    ">",
    regular.estimate("test_loss", config="Dropout"),
    margin=0.2,
    paired=True,
)
evidence.claim(
    "Dropout lowers the plain network's test accuracy",
    regular.estimate("test_acc", config="Dropout"),
    "<",
    regular.estimate("test_acc", config="plain"),
    paired=True,
    unit=100,
)
evidence.claim(
    "BN alone has a lower test accuracy than the plain network",
    regular.estimate("test_acc", config="BN"),
    "<",
    regular.estimate("test_acc", config="plain"),
    paired=True,
    unit=100,
)
evidence.claim(
    "with Dropout before it, the second BN's variance ratio is at least 0.1 below "
    "that of BN without Dropout",
    regular.estimate("var_ratio", config="BN + Dropout"),
    "<",
    regular.estimate("var_ratio", config="BN"),
    margin=0.1,
    paired=True,
)
evidence.claim(
    "without Dropout, the ratio is within 0.1 of 1",
    regular.estimate("var_ratio", config="BN"),
    "≈",
    1.0,
    margin=0.1,
)

# %% [markdown]
# On this small training set Dropout does not raise the test accuracy, but that is largely a
# matter of budget: with Dropout the plain network is still undertrained after the shared 800 steps
# (about 91% on its training set in evaluation mode, the table, against 100% without), and the
# accuracy it loses goes with that. BN instead of Dropout gave the higher test accuracy in this run
# (the table's row and interval), a difference we do not claim: it did not hold up when the lesson
# was re-run with other floating-point kernels. What Dropout buys is a lower
# test loss, by at least
# 0.2, with BatchNorm as without; since the accuracy does not rise with it, that gain is mostly
# calibration: less confidence in the wrong answers. There BatchNorm does not take Dropout's place:
# BN without Dropout ends with a test loss at least 0.2 above Dropout without BN, and adding
# Dropout to BN still lowers it by at least 0.2. On accuracy BN alone is below the plain network,
# and whether Dropout moves the BN network's accuracy, up or down, the interval in the table cannot
# tell. So "BatchNorm lets you drop Dropout" is not confirmed at this scale: Dropout beats BN on
# loss, and on accuracy, at a budget that leaves Dropout undertrained, the runs cannot rank them.
# (BatchNorm's noise from batch statistics is
# a weak regularizer, weaker the larger the batch; Ioffe and Szegedy removed Dropout from a large
# Inception network, a different regime from this one.)
#
# The combination carries the variance shift the Dropout lesson derived, and the control shows it
# is Dropout's doing: with Dropout before it, the second BatchNorm learns in training a variance
# that its input does not have at test time (the ratio of the two is at least 0.1 below that of
# the same network without Dropout, whose ratio is within 0.1 of 1) {cite}`li2019understanding`.
# What that shift costs in accuracy is not measured here. The usual remedies:
# Dropout only after the last BatchNorm, or re-estimating the statistics with Dropout off.
#
# ## Summary
#
# - A layer that feeds a BatchNorm is scale invariant: its gradient is orthogonal to its weights and
#   shrinks as $1/\lVert w\rVert$, its effective learning rate is $\eta/\lVert w\rVert^2$, and weight
#   decay on it controls that learning rate rather than the function.
# - Against a plain network with He initialization, BatchNorm reached the target accuracy sooner
#   at every learning rate tried (in at most two thirds of the steps at the plain network's best
#   rate, and far sooner at the largest), and reached it at every rate and scale tried.
# - Adding covariate shift on purpose (noisy BN), at least twice the plain network's at a learning
#   rate of 0.1, did not undo the benefit: at 0.3, where the plain network failed, noisy BN trained
#   to above 90% and tested better than it (at 0.1 the seeds do not separate the two). What
#   BatchNorm changed measurably is how much the loss and the gradient vary along a step, on
#   average over training.
# - It did not replace Dropout here, nor lose to it outright: on a small training set, with a
#   budget that leaves the Dropout network undertrained, Dropout gave the lower test loss (mostly
#   calibration), on top of BatchNorm too; on accuracy no ranking of the two holds up.
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
# 4. The lesson measures the covariate shift at the third layer's input. Measure it at every
#    layer's input, for BN and noisy BN, and also the shift of each unit's standard deviation. Is
#    the premise of the control true at every depth?
# 5. Put Dropout only after the last BatchNorm in `regularized_mlp` (drop it from the first layer).
#    Does the variance ratio move towards 1, and the test loss?
# 6. Run `steps_to_target` with the plain network at torch's default initialization (leave out
#    `he_init`). How much later does it reach 90%, and at which learning rates?
