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
# BatchNorm computes different functions in training and at inference: batch statistics in one, running
# averages in the other. One of the source articles lists this as BatchNorm's fourth problem: the
# statistics used at inference are not the ones the network was trained with. This lesson measures that
# gap on a trained model, closes it by recalibrating the statistics, turns the inference-time BatchNorm
# into a free operation by folding it into the convolution before it, and tests the common advice about
# where BatchNorm belongs relative to the activation.

# %%
import matplotlib.pyplot as plt
import torch

import normlib
from normlib import lab
from normlib import nn as N
from normlib.lab.data import digits
from normlib.lab.models import LeNet
from normlib.lab.train import accuracy, fit, recalibrate_batchnorm

lab.seed_everything(0)
data = digits()
x_tr, y_tr, x_te, y_te = data

# %% [markdown]
# ## The gap between batch and running statistics
#
# We train the BatchNorm LeNet with small batches (8) and a large momentum (0.5), so the running averages
# follow the last few batches closely, which is the setting where the gap is largest. Then we compare, for
# the first BatchNorm layer, its running statistics with the *population* statistics of its input over the
# whole training set, and the test accuracy with each.

# %%
lab.seed_everything(0)
model = LeNet(conv_norm=lambda c: N.BatchNorm2d(c, momentum=0.5), fc_norm=lambda c: N.BatchNorm1d(c, momentum=0.5))
history = fit(model, data, epochs=6, batch_size=8, lr=0.02, desc="LeNet+BN, batch 8")
model.eval()

with torch.no_grad():
    z = model.features[0](x_tr)  # the input of the first BatchNorm, for the whole training set
population_mean, population_var = z.mean((0, 2, 3)), z.var((0, 2, 3))
bn1 = model.features[1]
print("first BatchNorm, per channel")
print("  running mean    ", [round(v, 3) for v in bn1.running_mean.tolist()])
print("  population mean ", [round(v, 3) for v in population_mean.tolist()])
print("  running var     ", [round(v, 3) for v in bn1.running_var.tolist()])
print("  population var  ", [round(v, 3) for v in population_var.tolist()])
print(f"test accuracy with the running statistics: {100 * accuracy(model, x_te, y_te):.1f}%")

# %% [markdown]
# ## Recalibrating the statistics
#
# The weights are fine; only the statistics are noisy. `normlib.lab.train.recalibrate_batchnorm` resets every
# BatchNorm's running statistics and recomputes them as exact averages over a pass through the training
# data (no gradients, no weight change). Using batches of the training batch size keeps them the averages
# of the *batch* statistics the network was trained with:

# %%
recalibrated = recalibrate_batchnorm(model, x_tr, batch_size=8)
print("  recalibrated mean", [round(v, 3) for v in bn1.running_mean.tolist()])
print(f"test accuracy after recalibration:         {100 * accuracy(recalibrated, x_te, y_te):.1f}%")

# %% [markdown]
# Recalibration costs one forward pass over (part of) the training set and is a standard step before
# deploying a BatchNorm network whose running statistics are in doubt: after fine-tuning with small
# batches, after weight averaging, or after pruning.
#
# ## Folding BatchNorm into the convolution
#
# At inference a BatchNorm is a fixed per-channel affine map. One of the source articles writes it as
#
# $$
# y = \frac{\gamma}{\sqrt{\mathrm{Var}[x] + \epsilon}}\, x + \left(\beta - \frac{\gamma\, \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x]
# + \epsilon}}\right),
# $$
#
# and when $x = W u + b$ is the output of a convolution or linear layer, the two merge into one layer
# with $W' = s \odot W$ and $b' = s (b - \mathrm{E}[x]) + \beta$, $s = \gamma/\sqrt{\mathrm{Var}[x] + \epsilon}$.
# `normlib.fold_batchnorms` does this for every Conv/Linear followed by a BatchNorm:

# %%
folded = normlib.fold_batchnorms(model)
print(folded.features)
with torch.no_grad():
    print(lab.cmp("folded vs original logits", folded(x_te), model(x_te), atol=1e-4))
print(f"test accuracy, folded model: {100 * accuracy(folded, x_te, y_te):.1f}%")

# %% [markdown]
# What it buys: the BatchNorm layers' work disappears. Timed on a batch of 256 digits (the GPU when there
# is one; timings vary, so this cell's output is not checked):

# %%
# NBVAL_IGNORE_OUTPUT
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
print(f"speed-up: {timings['with BatchNorm'].median_s / timings['folded'].median_s:.2f}x")

# %% [markdown]
# On a model this small the saving is a modest fraction of the total; on real convolutional networks,
# where every convolution is followed by a BatchNorm, folding is standard in inference compilers.
#
# ## Before or after the activation?
#
# One of the source articles argues that BatchNorm belongs after the convolution and *before* the
# non-linearity: the convolution's output is roughly symmetric and Gaussian-like, which a mean and a
# variance describe well, while the output of a ReLU is half zeros and skewed. First the distributions
# the first BatchNorm would see in each position:

# %%
with torch.no_grad():
    pre = model.features[0](x_tr[:256])
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
axes[0].hist(pre.flatten().numpy(), bins=60)
axes[0].set(title="conv output (BN before ReLU sees this)")
axes[1].hist(torch.relu(pre).flatten().numpy(), bins=60)
axes[1].set(title="ReLU(conv output) (BN after ReLU sees this)")
fig.tight_layout()
print(f"fraction of exact zeros after the ReLU: {(torch.relu(pre) == 0).float().mean():.2f}")

# %% [markdown]
# Whether that matters is an empirical question, so we test it: the same LeNet with the norm before and
# after each ReLU, three seeds each, batch size 32.

# %%
placement = {}
for after in (False, True):
    accs = []
    for seed in range(3):
        lab.seed_everything(seed)
        net = LeNet(conv_norm=N.BatchNorm2d, fc_norm=N.BatchNorm1d, norm_after_activation=after)
        h = fit(net, data, epochs=6, batch_size=32, lr=0.05, seed=seed,
                desc=f"BN {'after' if after else 'before'} ReLU, seed {seed}")
        accs.append(h["test_acc"][-1])
    placement["after ReLU" if after else "before ReLU"] = accs

# %%
for label, accs in placement.items():
    mean = sum(accs) / len(accs)
    print(f"BN {label:<12} test accuracy per seed: {[f'{100 * a:.1f}%' for a in accs]}, mean {100 * mean:.1f}%")

# %% [markdown]
# On this problem the difference between the placements is small next to the spread between seeds: the
# seed article's argument is a heuristic, not a law. The BatchNorm paper {cite}`ioffe2015batch` places it
# before the non-linearity; many later architectures do well either way, and placing it before has one
# practical advantage shown above: a BatchNorm directly after a convolution can be folded into it, one
# after a ReLU cannot.
#
# ## Exercises
#
# 1. Recalibrate with `batch_size=len(x_tr)` (one batch of everything). Does accuracy change? Why might
#    the average of batch statistics be a better choice than the full-data statistics?
# 2. Fold a `Conv2d` followed by a `BatchNorm2d` in *training* mode by hand and compare outputs. Why
#    does `fold_batchnorm` refuse?
# 3. Repeat the placement experiment at batch size 4 and with five seeds.
