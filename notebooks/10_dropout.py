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
# # Dropout, from its formula
#
# Dropout {cite}`hinton2012improving,srivastava2014dropout` is not a normalization layer, but it is
# often used beside them, and it interacts with them. Not everywhere: the BatchNorm paper removed it
# from its Inception network, and ResNets use none {cite}`ioffe2015batch,he2016deep`. In training it
# multiplies each unit by an independent random mask:
#
# $$
# \begin{aligned}
# r_k &\sim \mathrm{Bernoulli}(1 - p), \\
# y_k &= \frac{r_k\, x_k}{1 - p},
# \end{aligned}
# $$
#
# where $p$ is the probability of **dropping** a unit ($r_k = 0$) and $1 - p$ the probability of
# keeping it. In evaluation, $y = x$.
#
# ```{note}
# One of the source articles writes the mask as $r \sim \mathrm{Bernoulli}(p)$ with $P(r = 1) = p$
# while calling $p$ the drop probability. Those cannot both hold: with $P(r=1) = p$, $p$ is the *keep*
# probability (the convention of the original dropout paper {cite}`srivastava2014dropout`).
# PyTorch, and normlib, use $p$ = drop probability: keep with probability $1-p$, scale the survivors
# by $1/(1-p)$ in training.
# ```
#
# This lesson builds the whole Dropout family of `torch.nn` in `normlib` (on the CPU, bit for bit the
# same masks as torch under the same seed; on a GPU torch draws its masks in a fused kernel of its
# own), then shows with experiments what dropout does and where it goes wrong.

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

import normlib
from normlib import functional as NF
from normlib import lab

lab.setup()

# %% [markdown]
# ## The mask and its expectation
#
# With $p = 0.2$ a unit is dropped with probability 0.2 and kept with probability 0.8, and the
# survivors are multiplied by $1/0.8 = 1.25$. The scaling makes dropout unbiased:
# $E[y_k] = \frac{(1-p)\,x_k}{1-p} = x_k$. Averaging many dropout draws of the same vector
# recovers it:

# %%
x = torch.arange(1.0, 9.0)
p = 0.2
draws = torch.stack([NF.dropout(x, p) for _ in range(20_000)])
print("x:                   ", x.tolist())
print("one draw:            ", [round(v, 2) for v in NF.dropout(x, p).tolist()])
print("fraction dropped:    ", round((draws == 0).float().mean().item(), 2), " (p)")
print("fraction kept:       ", round((draws != 0).float().mean().item(), 2), " (1 - p)")
print("mean of 20,000 draws:", [round(v, 1) for v in draws.mean(0).tolist()])

# %% [markdown]
# Why scale in training rather than at inference? Because then inference is the identity and the
# network needs no special case. Without the scaling, the next layer sees inputs that are on average
# $(1-p)$ times smaller in training than at inference, where nothing is dropped:

# %%
h = torch.rand(10_000, 256)  # some positive activations
no_scaling = h * torch.empty_like(h).bernoulli_(1 - p)
print(f"mean activation in training, inverted dropout: {NF.dropout(h, p).mean():.3f}")
print(f"mean activation in training, no 1/(1-p):        {no_scaling.mean():.3f}")
print(f"mean activation at inference (no dropout):      {h.mean():.3f}")

# %% [markdown]
# The original paper fixed this the other way round, by multiplying the weights by the keep
# probability at test time {cite}`srivastava2014dropout`; inverted dropout moves that factor into
# training, which is what `torch.nn.Dropout` does.
#
# normlib's implementation draws the mask with `bernoulli_` from torch's global RNG, exactly as
# torch's CPU kernel does, so under the same seed the two agree bit for bit:

# %%
xs = torch.randn(4, 3, 5, 5)
for name in ("Dropout", "Dropout2d", "AlphaDropout"):
    torch.manual_seed(1)
    ours = getattr(normlib.nn, name)(0.3)(xs)
    torch.manual_seed(1)
    theirs = getattr(torch.nn, name)(0.3)(xs)
    print(lab.cmp(name, ours, theirs, atol=0))

# %% [markdown]
# ## The gradient through a dropped unit
#
# $\partial y_k / \partial x_k = r_k / (1 - p)$: zero for a dropped unit, $1/(1-p)$ for a kept one. A
# dropped unit therefore receives no gradient in that step; its incoming weights are not updated
# through it. Autograd agrees:

# %%
x = torch.randn(10, requires_grad=True)
y = NF.dropout(x, 0.4)
y.sum().backward()
print("dropped:        ", (y == 0).int().tolist())
print("dL/dx:          ", [round(g, 3) for g in x.grad.tolist()])
print("1/(1-p) =", round(1 / 0.6, 3))

# %% [markdown]
# ## Spatial dropout for convolutional features
#
# Neighbouring pixels of a feature map are strongly correlated. Dropping single pixels then removes
# little: the next convolution averages over a neighbourhood and fills the holes back in. Dropping
# whole channels (`Dropout2d`, "spatial dropout" {cite}`tompson2015efficient`) removes a feature
# everywhere at once. We make smooth random feature maps, apply each kind of dropout, and ask how much
# of each map a 3×3 average (a stand-in for the next convolution) still sees:

# %%
def smooth_maps(n, c, size, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n * c, 1, size + width - 1, size + width - 1, generator=g)
    smooth = torch.nn.functional.avg_pool2d(noise, width, stride=1)
    return smooth.reshape(n, c, size, size) * width


def seen_by_next_layer(maps):
    return torch.nn.functional.avg_pool2d(maps, 3, stride=1, padding=1)


def correlation_per_channel(a, b):
    a, b = a.flatten(2), b.flatten(2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-12)


maps = smooth_maps(16, 32, 16)
torch.manual_seed(0)
element = NF.dropout(maps, 0.5)
channel = NF.dropout2d(maps, 0.5)
reference = seen_by_next_layer(maps)
print("channels the next layer still sees (correlation > 0.8 with the intact map)")
kinds = {"element-wise Dropout": element, "channel Dropout2d": channel}
for name, dropped in kinds.items():
    corr = correlation_per_channel(seen_by_next_layer(dropped), reference)
    seen = (corr > 0.8).float().mean()
    print(f"{name:<21}: {seen:4.0%}, mean correlation {corr.mean():.2f}")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "One smooth feature map, the same map after element-wise dropout (p = 0.5), after element-wise dropout and a 3×3 average, and under channel dropout.", "name": "fig-10-spatial"}, "image": {"alt": "Four heat maps. The element-wise dropped map is speckled with zeros, but after a 3 by 3 average it looks like the original again. Channel dropout either keeps the whole map or blanks it."}}
fig, axes = plt.subplots(2, 2, figsize=(6, 6.2))
channel_state = "dropped" if channel[0, 1].abs().max() == 0 else "kept"
panels = [(maps, "feature map"), (element, "element-wise dropout"),
          (seen_by_next_layer(element), "... after a 3x3 average"),
          (channel, f"Dropout2d ({channel_state})")]
for ax, (m, title) in zip(axes.flat, panels, strict=True):
    ax.imshow(m[0, 1], cmap="RdBu", vmin=-2.5, vmax=2.5)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# Element-wise dropout leaves almost every channel recognisable to the next layer: it acts like noise.
# Channel dropout removes about half the channels outright, which is the regularization it is meant to
# give: the network cannot rely on any one feature map.
#
# ## AlphaDropout and SELU
#
# Self-normalizing networks {cite}`klambauer2017self` use the SELU activation, whose fixed point keeps
# activations at mean 0 and variance 1 through many layers without any normalization layer. Ordinary
# dropout breaks that: zeros are not the "resting value" of SELU, and the $1/(1-p)$ scaling changes the
# variance. AlphaDropout sets dropped units to SELU's saturation value
# $\alpha' = -\lambda\alpha \approx -1.758$ and then applies $y = a x + b$ with
#
# $$
# \begin{aligned}
# a &= \left((1-p)(1 + p\,\alpha'^2)\right)^{-1/2}, \\
# b &= -a\,\alpha'\,p,
# \end{aligned}
# $$
#
# chosen so that mean 0 and variance 1 are kept. A 32-layer SELU network with LeCun-normal weights,
# in training mode, with each kind of dropout after every activation:

# %%
def selu_stack(depth, width, dropout_layer, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        linear = torch.nn.Linear(width, width, bias=False)
        torch.nn.init.normal_(linear.weight, std=width**-0.5)  # LeCun normal
        layers += [linear, torch.nn.SELU(), dropout_layer]
    return layers


depth, width = 32, 256
dropouts = {"no dropout": torch.nn.Identity(), "Dropout(0.1)": normlib.nn.Dropout(0.1),
            "AlphaDropout(0.1)": normlib.nn.AlphaDropout(0.1)}
stats = {}
print(f"after layer {depth}      mean   std")
for name, layer in dropouts.items():
    torch.manual_seed(0)
    h = torch.randn(2048, width)
    means, stds = [], []
    with torch.no_grad():
        for module in selu_stack(depth, width, layer):
            h = module(h)
            if module is layer:
                means.append(h.mean().item())
                stds.append(h.std().item())
    stats[name] = (means, stds)
    print(f"{name:<18}{round(means[-1], 2) + 0.0:>+6.2f}{stds[-1]:>6.2f}")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Mean and standard deviation of the activations after each layer of a 32-layer SELU network in training mode, with no dropout, Dropout and AlphaDropout after every activation.", "name": "fig-10-selu"}, "image": {"alt": "Two line plots against depth. Without dropout and with AlphaDropout the mean stays near 0 and the standard deviation near 1; with ordinary Dropout the standard deviation rises over the first layers to a new level above 1 and stays there, and the mean settles a little above 0."}}
fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(7, 3.5))
for name, (means, stds) in stats.items():
    ax_m.plot(range(1, depth + 1), means, label=name)
    ax_s.plot(range(1, depth + 1), stds, label=name)
ax_m.set(title="activation mean", xlabel="layer")
ax_s.set(title="activation std", xlabel="layer")
ax_s.legend()
fig.tight_layout()

# %% [markdown]
# Ordinary dropout does not make this network blow up: it moves it to another steady state, with a
# standard deviation above 1 and a mean a little above 0 (the table above), reached within the first
# layers. The layers after it no longer receive the mean 0 and variance 1 that SELU and the LeCun
# initialisation assume. AlphaDropout keeps both, layer after layer, like the network without
# dropout.
#
# ## Monte Carlo dropout: an uncertainty estimate
#
# Keep dropout *on* at inference and run the same input many times: each run samples a different
# thinned network, and the spread of the predictions is an estimate of the model's uncertainty
# {cite}`gal2016dropout`. It should be widest where the model has seen no data. A small regression
# network (dropout 0.1 after each hidden layer) trained on $y = \sin(3x) + \varepsilon$, with noise
# of standard deviation 0.1, for $x \in [-1, 1]$ (150 epochs of SGD with momentum 0.9, learning rate
# 0.02, batch 32), then 200 passes with dropout on over
# $x \in [-2, 2]$; three seeds (initial weights, batches and masks; the data stay fixed):

# %%
from normlib.lab import evidence
from normlib.lab.models import mlp
from normlib.lab.train import fit

g = torch.Generator().manual_seed(0)
x_train = torch.rand(256, 1, generator=g) * 2 - 1
y_train = torch.sin(3 * x_train) + 0.1 * torch.randn(256, 1, generator=g)
x_val = torch.rand(64, 1, generator=g) * 2 - 1
y_val = torch.sin(3 * x_val) + 0.1 * torch.randn(64, 1, generator=g)
x_grid = torch.linspace(-2, 2, 201).unsqueeze(1)
inside = x_grid.squeeze().abs() <= 1  # where the training data are
bands = {}  # seed -> (mean, std) of the predictions on x_grid


def mc_dropout(seed):
    lab.seed_everything(seed)
    model = mlp([1, 128, 128, 1], dropout=0.1)
    history = fit(model, (x_train, y_train, x_val, y_val), epochs=150, batch_size=32,
                  lr=0.02, loss_fn=torch.nn.MSELoss(), seed=seed, progress=False)
    model.train()  # dropout stays on: every pass samples a different thinned network
    with torch.no_grad():
        samples = torch.stack([model(x_grid) for _ in range(200)]).squeeze(-1)
    mean, std = samples.mean(0), samples.std(0)
    bands[seed] = mean, std
    covered = (torch.sin(3 * x_grid.squeeze()) - mean).abs() <= 2 * std
    return {"val_mse": history["test_loss"][-1],
            "std_in": std[inside].mean().item(), "std_out": std[~inside].mean().item(),
            "cover_in": covered[inside].float().mean().item(),
            "cover_out": covered[~inside].float().mean().item()}


mc = evidence.sweep(mc_dropout, seeds=(0, 1, 2), desc="MC dropout")

# %% tags=["nbval-ignore-output"]
for metric, meaning in (("val_mse", "validation MSE (noise variance 0.01)"),
                        ("std_in", "predictive std, inside [-1, 1]"),
                        ("std_out", "predictive std, outside"),
                        ("cover_in", "sin(3x) within ±2 std, inside"),
                        ("cover_out", "sin(3x) within ±2 std, outside")):
    print(f"{meaning:<37} {mc.estimate(metric):.2g}")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Monte Carlo dropout on a regression network (seed 0): mean and ±2 standard deviations of 200 passes with dropout on. Grey: no training data.", "name": "fig-10-mc"}, "image": {"alt": "The predicted mean follows sin(3x) between -1 and 1 inside a narrow band; outside that range, on grey background, the band widens but the true curve leaves it."}}
mean, std = bands[0]
xs = x_grid.squeeze()
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.fill_between(xs, mean - 2 * std, mean + 2 * std, alpha=0.3, label="mean ± 2 std")
ax.plot(xs, mean, label="MC dropout mean")
ax.plot(xs, torch.sin(3 * xs), "k--", lw=0.8, label="sin(3x)")
ax.scatter(x_train.squeeze(), y_train.squeeze(), s=4, c="k", alpha=0.4,
           label="training data")
ax.axvspan(-2, -1, color="0.92", zorder=0)  # no training data here
ax.axvspan(1, 2, color="0.92", zorder=0)
ax.set(xlabel="x", ylim=(-3, 3))
ax.legend(loc="lower right", ncol=2)
fig.tight_layout()

# %% [markdown]
# Checked over the three seeds:

# %%
evidence.claim("the fit is good: validation MSE below 0.02 (noise variance 0.01)",
               mc.estimate("val_mse"), "<", 0.02)
widening = evidence.estimate(r["std_out"] / r["std_in"] for r in mc.records)
evidence.claim("the band is over 1.5 times as wide outside the data as inside",
               widening, ">", 1.5)
evidence.claim("inside the data's range the band covers sin(3x) at over 90% of points",
               mc.estimate("cover_in"), ">", 0.90)
evidence.claim("outside it, sin(3x) leaves the band at over a quarter of points",
               mc.estimate("cover_out"), "<", 0.75)

# %% [markdown]
# The band is narrow where there was data and, on average, over 1.5 times as wide outside it, as an
# uncertainty estimate should be. But out there it misses the true function at over a quarter of the
# points. The spread of MC dropout measures only the model's uncertainty, not the noise in $y$, and in
# this network it is overconfident far from the data. How wide the band is depends on the dropout
# rate and the training setup; one network and three seeds cannot say how large the miss is in
# general.
#
# ## Dropout against overfitting
#
# Dropout's original purpose is regularization {cite}`srivastava2014dropout`. To see it we need a model
# that can overfit: an MLP with two hidden layers of 128 units, trained on only 1,000 Fashion-MNIST
# images {cite}`xiao2017fashion` (2,000 held out for testing) for 30 epochs (SGD with momentum
# 0.9, learning rate 0.01, batch 32, no weight decay), with $p \in \{0, 0.2, 0.5\}$ after each hidden layer, five seeds each. Only $p$ changes;
# the seeds fix the initial weights, the batches and the masks. The training loss is measured at the
# end of each epoch in evaluation mode (dropout off) on all 1,000 images: the mean of the epoch's batch
# losses, with dropout on and the weights still moving, would put the dropout networks' training loss
# higher than the network they actually are.

# %%
from normlib.lab.data import fashion_mnist

fashion = fashion_mnist(n_train=1000, n_test=2000)
n_train, n_test = len(fashion[0]), len(fashion[2])
print(f"data: {fashion.name}, {n_train:,} training, {n_test:,} test images")
P_VALUES, EPOCHS, SEEDS = (0.0, 0.2, 0.5), 30, (0, 1, 2, 3, 4)
curves = {}  # (p, seed) -> history


def train_mlp(seed, p):
    lab.seed_everything(seed)
    model = mlp([28 * 28, 128, 128, 10], dropout=p)
    history = fit(model, fashion, epochs=EPOCHS, batch_size=32, lr=0.01, seed=seed,
                  progress=False, eval_train=True)
    curves[(p, seed)] = history
    return {"train_loss": history["train_loss_eval"][-1],
            "train_loss_dropout_on": history["loss"][-1],
            "test_loss": history["test_loss"][-1],
            "best_test_loss": min(history["test_loss"]),
            "best_epoch": history["test_loss"].index(min(history["test_loss"])) + 1,
            "test_acc": history["test_acc"][-1]}


runs = evidence.sweep(train_mlp, {"p": P_VALUES}, seeds=SEEDS, desc="MLP")

# %% tags=["nbval-ignore-output"]
columns = {"train loss": ("train_loss", 1, ".3f"), "test loss": ("test_loss", 1, ".2f"),
           "best test loss": ("best_test_loss", 1, ".2f"),
           "at epoch": ("best_epoch", 1, ".0f"),
           "test acc (%)": ("test_acc", 100, ".1f")}
rows = [[p] + [f"{runs.estimate(key, p=p).scaled(scale):{fmt}}"
               for key, scale, fmt in columns.values()] for p in P_VALUES]
print(f"after {EPOCHS} epochs, mean ± s.e. over {len(SEEDS)} seeds "
      "(train loss: eval mode)")
print(evidence.table(["p", *columns], rows))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "An MLP on 1,000 Fashion-MNIST images with dropout p after each hidden layer. Left: training loss (dashed, measured in evaluation mode at the end of each epoch) and test loss (solid) per epoch, mean and ± s.e. band over 5 seeds. Right: final test accuracy (mean ± s.e.), on an axis 10 points tall so that the seeds' noise does not look like a trend.", "name": "fig-10-overfit"}, "image": {"alt": "Left: loss curves on a log scale; without dropout the training loss falls towards zero and the test loss rises after an early minimum; with dropout the training loss stays higher and the test loss ends lower, while the minima of the test loss are at about the same height. Right: final test accuracy against p, within 2 points of no dropout at both rates."}}
fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(7, 4), width_ratios=(2, 1))
epochs = range(1, EPOCHS + 1)
for i, p in enumerate(P_VALUES):
    for key, style in (("train_loss_eval", "--"), ("test_loss", "-")):
        per_epoch = [evidence.estimate(curves[(p, s)][key][e] for s in SEEDS)
                     for e in range(EPOCHS)]
        ax_l.plot(epochs, [e.mean for e in per_epoch], color=f"C{i}", ls=style,
                  label=f"p={p}" if key == "test_loss" else None)
        low, high = ([e.mean + sign * e.sem for e in per_epoch] for sign in (-1, 1))
        ax_l.fill_between(epochs, low, high, color=f"C{i}", alpha=0.25)
ax_l.set(title="loss (train: dashed, test: solid)", xlabel="epoch", yscale="log")
ax_l.legend()
runs.plot("test_acc", x="p", ax=ax_a, scale=100, color="k")
middle = 100 * runs.estimate("test_acc").mean
ax_a.set(title="final test accuracy", ylabel="test accuracy (%)", xticks=P_VALUES,
         ylim=(middle - 5, middle + 5))
fig.tight_layout()

# %% [markdown]
# What the runs show, checked:

# %%
def at(metric, p):
    return runs.estimate(metric, p=p)


evidence.claim("without dropout the training loss ends below 0.1",
               at("train_loss", 0.0), "<", 0.1)
evidence.claim("without dropout the final test loss is > 0.2 above its minimum",
               at("test_loss", 0.0), ">", at("best_test_loss", 0.0), margin=0.2)
evidence.claim("at p=0.5 the training loss ends > 0.1 higher than without dropout",
               at("train_loss", 0.5), ">", at("train_loss", 0.0), margin=0.1)
evidence.claim("the final test loss is lower at p=0.2 than without dropout",
               at("test_loss", 0.2), "<", at("test_loss", 0.0))
evidence.claim("and lower still at p=0.5, by more than 0.1 below no dropout",
               at("test_loss", 0.5), "<", at("test_loss", 0.0), margin=0.1)
evidence.claim("p=0.5 ends lower than p=0.2",
               at("test_loss", 0.5), "<", at("test_loss", 0.2))
for p in (0.2, 0.5):
    evidence.claim(f"test accuracy at p={p} is within 2 points of no dropout",
                   at("test_acc", p), "≈", at("test_acc", 0.0), margin=0.02, unit=100)
for p in (0.2, 0.5):
    evidence.claim(f"the best test loss (early stopping) at p={p} is within 0.05 of no "
                   "dropout's", at("best_test_loss", p), "≈", at("best_test_loss", 0.0),
                   margin=0.05)
evidence.claim("without dropout the test loss is lowest earlier than at p=0.5",
               at("best_epoch", 0.0), "<", at("best_epoch", 0.5))

# %% [markdown]
# Without dropout the training loss ends below 0.1 while the test loss turns back up after its
# minimum, by more than 0.2 by epoch 30: the network memorizes its 1,000 images. At $p = 0.5$ the
# training loss (measured with dropout off) ends more than 0.1 higher: each step trains a different
# thinned network, and the full network fits its training images less closely. The final test loss
# is lower with dropout, the more so the larger $p$. But that is the loss after 30 epochs. The
# *lowest* test loss over the 30 epochs is within 0.05 of no dropout's at both $p = 0.2$ and
# $p = 0.5$, and at $p = 0.5$ it comes later in training. That lowest value is picked on the test set
# itself, so it is an optimistic figure for every arm; early stopping in practice picks the epoch on
# a separate validation set. Within that margin, dropout gains nothing here over stopping the plain
# network at its best epoch: what it buys is a final model that overfitting has not yet spoiled. The
# final test *accuracy* is within 2 points of no dropout's at both rates, so the lower test loss
# reflects how confident the predictions are rather than how many are right, as far as 2 points can
# tell. Five seeds on one small data set; the exercises vary the setting.
#
# ## Dropout before BatchNorm: the variance shift
#
# Put dropout directly before a BatchNorm and the two disagree {cite}`li2019understanding`. In training,
# BatchNorm's running variance learns the variance of the *dropped-out* signal, which for zero-mean
# input with variance $\sigma^2$ is $\sigma^2/(1-p)$ (the $1/(1-p)$ scaling inflates it). At inference
# dropout is the identity and the variance falls back to $\sigma^2$, but BatchNorm still divides by the
# training value, so its output variance is $(1-p)$ instead of 1. Measured:

# %%
torch.manual_seed(0)
print("output variance of Dropout(p) -> BatchNorm1d")
print(f"{'p':>4}{'train':>8}{'eval':>8}{'predicted 1-p':>15}")
for p in (0.1, 0.3, 0.5):
    bn = normlib.nn.BatchNorm1d(64, momentum=None, affine=False)  # cumulative average
    block = torch.nn.Sequential(normlib.nn.Dropout(p), bn)
    for _ in range(200):  # let the running statistics settle
        block(torch.randn(256, 64))
    x = torch.randn(4096, 64)
    train_var = block(x).var(0).mean().item()
    block.eval()
    eval_var = block(x).var(0).mean().item()
    print(f"{p:>4}{train_var:>8.3f}{eval_var:>8.3f}{1 - p:>15.2f}")

# %% [markdown]
# In training the BatchNorm divides by the batch's own variance, so its output variance is 1 whatever
# $p$ (the train column). At inference it divides by the running value, $\sigma^2/(1-p)$, and the
# output variance falls to $1-p$, as predicted. The layers after the BatchNorm were trained on
# unit-variance inputs and at inference receive inputs with variance $1-p$: a systematic shift that
# can cost accuracy {cite}`li2019understanding`. The usual remedies are to put dropout after the last
# BatchNorm only, or to recompute BatchNorm's statistics with dropout off.
#
# ## How fast is it?
#
# Forward and backward through dropout on 4M float32 values, normlib against torch, on the GPU when
# there is one. On the CPU both draw the mask with the same `bernoulli_` and multiply, so they should
# be close; on a GPU torch uses one fused kernel. (Timings vary, so this cell's output is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
xb = torch.randn(4096, 1024, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
for name, fn in (("torch", torch.nn.functional.dropout), ("normlib", NF.dropout)):
    timing = benchmark(lambda fn=fn: fn(xb, 0.5).backward(dy), device)
    print(f"{name:<8} forward+backward: {timing}")

# %% [markdown]
# ## Exercises
#
# 1. Show that `Dropout2d` on a `(N, C, H, W)` input draws one mask value per (sample, channel),
#    shared by all $H \times W$ pixels, and that after the $1/(1-p)$ scaling each mask value has
#    variance $p/(1-p)$. For a constant input, compare the variance of a channel's spatial mean under
#    `Dropout2d` and under element-wise `Dropout`. How does each depend on $H \times W$?
# 2. Repeat the variance-shift measurement with a non-zero input mean. Derive the training-time
#    variance $\frac{\sigma^2 + \mu^2}{1-p} - \mu^2$ and check it.
# 3. In the overfitting experiment, train on 8,000 images instead of 1,000 (`fashion_mnist()`'s
#    default). Does dropout still lower the test loss? Does it now change the test accuracy?
# 4. Replace `Dropout` by `AlphaDropout` in the SELU stack but use ReLU activations. What happens to the
#    activation statistics, and why?
