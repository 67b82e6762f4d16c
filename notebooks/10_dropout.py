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
# Dropout {cite}`hinton2012improving,srivastava2014dropout` is not a normalization layer, but it sits
# beside them in every network and it interacts with them. In training it multiplies each unit by an
# independent random mask:
#
# $$
# r_k \sim \mathrm{Bernoulli}(1 - p), \qquad y_k = \frac{r_k\, x_k}{1 - p},
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
# This lesson builds the whole Dropout family of `torch.nn` in `normlib` (bit for bit the same masks
# as torch under the same seed), then shows with experiments what dropout does and where it goes wrong.

# %%
import matplotlib.pyplot as plt
import torch

import normlib
from normlib import functional as NF
from normlib import lab

lab.seed_everything(0)

# %% [markdown]
# ## The mask and its expectation
#
# The scaling makes dropout unbiased: $E[y_k] = \frac{(1-p)\,x_k}{1-p} = x_k$. Averaging many dropout
# draws of the same vector recovers it:

# %%
x = torch.arange(1.0, 9.0)
p = 0.5
draws = torch.stack([NF.dropout(x, p) for _ in range(20_000)])
print("one draw:             ", NF.dropout(x, p).tolist())
print("fraction dropped:     ", round((draws == 0).float().mean().item(), 2))
print("mean of 20,000 draws: ", [round(v, 2) for v in draws.mean(0).tolist()])

# %% [markdown]
# Why scale in training rather than at inference? Because then inference is the identity and the
# network needs no special case. Without the scaling, the next layer sees inputs that are on average
# $(1-p)$ times smaller in training than at inference, where nothing is dropped:

# %%
h = torch.rand(10_000, 256)  # some positive activations
no_scaling = h * torch.empty_like(h).bernoulli_(1 - p)
print(f"mean activation, training with inverted dropout:  {NF.dropout(h, p).mean():.3f}")
print(f"mean activation, training without the 1/(1-p):     {no_scaling.mean():.3f}")
print(f"mean activation at inference (dropout is off):     {h.mean():.3f}")

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
    return torch.nn.functional.avg_pool2d(noise, width, stride=1).reshape(n, c, size, size) * width


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
for name, dropped in (("element-wise Dropout", element), ("channel Dropout2d", channel)):
    corr = correlation_per_channel(seen_by_next_layer(dropped), reference)
    print(f"{name:<21}: channels the next layer still sees (correlation > 0.8): {(corr > 0.8).float().mean():.0%}"
          f", mean correlation {corr.mean():.2f}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
channel_state = "dropped" if channel[0, 1].abs().max() == 0 else "kept"
panels = [(maps, "feature map"), (element, "element-wise dropout"), (seen_by_next_layer(element),
          "... after a 3x3 average"), (channel, f"Dropout2d (this channel {channel_state})")]
for ax, (m, title) in zip(axes, panels, strict=True):
    ax.imshow(m[0, 1], cmap="RdBu", vmin=-2.5, vmax=2.5)
    ax.set_title(title, fontsize=9)
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
# a = \left((1-p)(1 + p\,\alpha'^2)\right)^{-1/2}, \qquad b = -a\,\alpha'\,p,
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
stats = {}
for name, layer in (("no dropout", torch.nn.Identity()), ("Dropout(0.1)", normlib.nn.Dropout(0.1)),
                    ("AlphaDropout(0.1)", normlib.nn.AlphaDropout(0.1))):
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
    print(f"{name:<18} after layer {depth}: mean {means[-1]:+.2f}, std {stds[-1]:.2f}")

fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(10, 3.2))
for name, (means, stds) in stats.items():
    ax_m.plot(range(1, depth + 1), means, label=name)
    ax_s.plot(range(1, depth + 1), stds, label=name)
ax_m.set(title="activation mean", xlabel="layer")
ax_s.set(title="activation std", xlabel="layer")
ax_s.legend()
fig.tight_layout()

# %% [markdown]
# ## Monte Carlo dropout: an uncertainty estimate
#
# Keep dropout *on* at inference and run the same input many times: each run samples a different
# thinned network, and the spread of the predictions is an estimate of the model's uncertainty
# {cite}`gal2016dropout`. It is widest where the model has seen no data. A small regression network
# trained on $y = \sin(3x) + \varepsilon$ for $x \in [-1, 1]$:

# %%
from normlib.lab.models import mlp
from normlib.lab.train import fit

g = torch.Generator().manual_seed(0)
x_train = torch.rand(256, 1, generator=g) * 2 - 1
y_train = torch.sin(3 * x_train) + 0.1 * torch.randn(256, 1, generator=g)
x_val = torch.rand(64, 1, generator=g) * 2 - 1
y_val = torch.sin(3 * x_val) + 0.1 * torch.randn(64, 1, generator=g)

lab.seed_everything(0)
regressor = mlp([1, 128, 128, 1], dropout=0.1)
history = fit(regressor, (x_train, y_train, x_val, y_val), epochs=150, batch_size=32, lr=0.02,
              loss_fn=torch.nn.MSELoss(), desc="regression")
print(f"validation MSE: {history['test_loss'][-1]:.3f} (noise variance 0.010)")

# %%
x_grid = torch.linspace(-2, 2, 201).unsqueeze(1)
regressor.train()  # dropout stays on: every pass samples a different thinned network
torch.manual_seed(0)
with torch.no_grad():
    samples = torch.stack([regressor(x_grid) for _ in range(200)]).squeeze(-1)
mean, std = samples.mean(0), samples.std(0)
inside = (x_grid.squeeze() >= -1) & (x_grid.squeeze() <= 1)
print(f"predictive std inside the training range:  {std[inside].mean():.2f}")
print(f"predictive std outside the training range: {std[~inside].mean():.2f}")

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.fill_between(x_grid.squeeze(), mean - 2 * std, mean + 2 * std, alpha=0.3, label="mean ± 2 std (200 passes)")
ax.plot(x_grid.squeeze(), mean, label="MC dropout mean")
ax.plot(x_grid.squeeze(), torch.sin(3 * x_grid.squeeze()), "k--", lw=0.8, label="sin(3x)")
ax.scatter(x_train.squeeze(), y_train.squeeze(), s=4, c="k", alpha=0.4, label="training data")
ax.axvspan(-2, -1, color="0.92", zorder=0)  # no training data here
ax.axvspan(1, 2, color="0.92", zorder=0)
ax.set(xlabel="x", ylim=(-3, 3))
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()

# %% [markdown]
# The band is narrow where there was data and widens away from it, as an uncertainty estimate should.
# But it does not cover the true function out there: MC dropout's spread is an approximation to the
# model's uncertainty, and it is often overconfident far from the data.
#
# ## Dropout against overfitting
#
# Dropout's original purpose is regularization {cite}`srivastava2014dropout`. To see it we need a model
# that can overfit: an MLP with two hidden layers of 256 units, trained on only 150 digits (the full
# 360-image test set held out), for 60 epochs, with $p \in \{0, 0.2, 0.5\}$ after each hidden layer.

# %%
from normlib.lab.data import digits

x_tr, y_tr, x_te, y_te = digits()
small = (x_tr[:150], y_tr[:150], x_te, y_te)
curves = {}
for p in (0.0, 0.2, 0.5):
    lab.seed_everything(0)
    curves[p] = fit(mlp([64, 256, 256, 10], dropout=p), small, epochs=60, batch_size=16, lr=0.05, desc=f"p={p}")

# %%
fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.4))
for i, (p, h) in enumerate(curves.items()):
    epochs = range(1, len(h["loss"]) + 1)
    ax_l.plot(epochs, h["loss"], color=f"C{i}", ls="--", label=f"p={p} train")
    ax_l.plot(epochs, h["test_loss"], color=f"C{i}", label=f"p={p} test")
    ax_a.plot(epochs, [100 * a for a in h["test_acc"]], color=f"C{i}", label=f"p={p}")
ax_l.set(title="loss (train: dashed, test: solid)", xlabel="epoch", yscale="log")
ax_a.set(title="test accuracy (%)", xlabel="epoch", ylim=(50, 100))
ax_l.legend(fontsize=7, ncol=3)
ax_a.legend()
fig.tight_layout()

print(f"{'p':>4}{'final train loss':>18}{'best test loss':>16}{'final test loss':>17}{'final test acc':>16}")
for p, h in curves.items():
    print(f"{p:>4}{h['loss'][-1]:>18.4f}{min(h['test_loss']):>16.3f}{h['test_loss'][-1]:>17.3f}"
          f"{100 * h['test_acc'][-1]:>15.1f}%")

# %% [markdown]
# Without dropout the training loss goes to almost zero while the test loss turns back up after its
# minimum: the network memorizes its 150 images. With dropout the training loss stays higher (each
# step trains a different thinned network) and the test loss stays lower. On this small problem the
# test *accuracy* differs less than the test loss: dropout mostly keeps the model from becoming
# confidently wrong. One seed on one small data set; the exercises vary it.
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
print(f"{'p':>4}{'output var, train':>19}{'output var, eval':>18}{'predicted 1-p':>15}")
for p in (0.1, 0.3, 0.5):
    block = torch.nn.Sequential(normlib.nn.Dropout(p), normlib.nn.BatchNorm1d(64, momentum=None, affine=False))
    for _ in range(200):  # let the running statistics settle (cumulative average)
        block(torch.randn(256, 64))
    x = torch.randn(4096, 64)
    train_var = block(x).var(0).mean().item()
    block.eval()
    eval_var = block(x).var(0).mean().item()
    print(f"{p:>4}{train_var:>19.3f}{eval_var:>18.3f}{1 - p:>15.2f}")

# %% [markdown]
# The layers after the BatchNorm were trained on unit-variance inputs and at inference receive
# inputs with variance $1-p$: a systematic shift that can cost accuracy. The usual remedies are to put
# dropout after the last BatchNorm only, or to recompute BatchNorm's statistics with dropout off.
#
# ## How fast is it?
#
# Forward and backward through dropout on 4M float32 values, normlib against torch, on the GPU when
# there is one. On the CPU both draw the mask with the same `bernoulli_` and multiply, so they should
# be close; on a GPU torch uses one fused kernel. (Timings vary, so this cell's output is not checked.)

# %%
# NBVAL_IGNORE_OUTPUT
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
xb = torch.randn(4096, 1024, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
for name, fn in (("torch", torch.nn.functional.dropout), ("normlib", NF.dropout)):
    print(f"{name:<8} forward+backward: {benchmark(lambda fn=fn: fn(xb, 0.5).backward(dy), device)}")

# %% [markdown]
# ## Exercises
#
# 1. Show that `Dropout2d` on a `(N, C, H, W)` input gives each channel's mask a variance of
#    $p(1-p)$ *per channel*, not per pixel. What does that do to the variance of a channel's mean?
# 2. Repeat the variance-shift measurement with a non-zero input mean. Derive the training-time
#    variance $\frac{\sigma^2 + \mu^2}{1-p} - \mu^2$ and check it.
# 3. In the overfitting experiment, use 1,437 training images instead of 150. Does dropout still help?
# 4. Replace `Dropout` by `AlphaDropout` in the SELU stack but use ReLU activations. What happens to the
#    activation statistics, and why?
