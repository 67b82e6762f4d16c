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
# # Batch Normalization from the formula
#
# Batch Normalization {cite}`ioffe2015batch` normalizes each channel with the mean and variance of the
# current mini-batch. For a channel with $m$ values $x_1, \dots, x_m$ in the batch (all samples, all
# positions) it takes four steps:
#
# $$
# \begin{aligned}
# &\text{1. mean:} & \mu_B &= \frac{1}{m}\sum_{k=1}^{m} x_k, &\qquad
# &\text{2. variance:} & \sigma_B^2 &= \frac{1}{m}\sum_{k=1}^{m} (x_k - \mu_B)^2, \\
# &\text{3. normalize:} & \hat{x}_k &= \frac{x_k - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}, &\qquad
# &\text{4. scale and shift:} & y_k &= \gamma\,\hat{x}_k + \beta .
# \end{aligned}
# $$
#
# That is all in training. At inference there may be a single sample, so the layer keeps running
# estimates $\hat{\mu}, \hat{\sigma}^2$ of the statistics during training and uses those instead. This
# lesson builds both halves, checks them against `torch.nn.BatchNorm2d` step by step, and trains the
# LeNet {cite}`lecun1998gradient` of one of the source articles with and without BatchNorm.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import normlib
from normlib import functional as NF
from normlib import lab
from normlib import reference as R

lab.seed_everything(0)

# %% [markdown]
# ## The four steps in NumPy
#
# A batch of 8 samples with 3 features, each feature with its own scale and offset:

# %%
rng = np.random.default_rng(0)
x = rng.normal(loc=[5.0, -2.0, 0.0], scale=[1.0, 3.0, 0.1], size=(8, 3))
gamma, beta, eps = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0]), 1e-5

mu_B, var_B = R.moments(x, axes=(0,))           # steps 1 and 2: per feature, over the batch
x_hat = (x - mu_B) / np.sqrt(var_B + eps)        # step 3: normalize
y = gamma * x_hat + beta                         # step 4: scale and shift

print("mu_B      ", np.round(mu_B.ravel(), 3))
print("sigma_B^2 ", np.round(var_B.ravel(), 4))
print("x_hat mean", np.round(x_hat.mean(0), 6) + 0.0, " var", np.round(x_hat.var(0), 4))
print("y mean    ", np.round(y.mean(0), 6) + 0.0, " std", np.round(y.std(0), 4), " (beta and gamma)")
print(lab.cmp("steps vs reference.batch_norm", y, R.batch_norm(x, gamma, beta, eps), atol=1e-12))

# %% [markdown]
# Note that $\sigma_B^2$ is the *biased* variance (divide by $m$), like `np.var` and
# `torch.var(x, correction=0)`. We come back to this below, because the running estimate is not.
#
# ## The same in torch
#
# `normlib.functional.batch_norm` has the signature of `torch.nn.functional.batch_norm` and computes the
# same four steps with torch tensor ops, through the one `moments` helper. Its source is short enough
# to read here:

# %%
import inspect

print(inspect.getsource(NF.moments))

# %%
xt = torch.from_numpy(x)
g, b = torch.from_numpy(gamma), torch.from_numpy(beta)
ours = NF.batch_norm(xt, None, None, g, b, training=True, eps=eps)
theirs = torch.nn.functional.batch_norm(xt, None, None, g, b, training=True, eps=eps)
print(lab.cmp("normlib vs numpy", ours, y, atol=1e-12))
print(lab.cmp("normlib vs torch", ours, theirs, atol=1e-12))

# %% [markdown]
# ## 1d, 2d and 3d input
#
# The same layer serves every input rank: the statistics are always per channel (axis 1), over every
# other axis. `BatchNorm1d` takes `(N, C)` or `(N, C, L)`, `BatchNorm2d` `(N, C, H, W)`,
# `BatchNorm3d` `(N, C, D, H, W)`; they differ only in the rank they accept.

# %%
shapes = {"BatchNorm1d": [(16, 4), (16, 4, 10)], "BatchNorm2d": [(16, 4, 6, 6)], "BatchNorm3d": [(16, 4, 3, 6, 6)]}
for name, cases in shapes.items():
    for shape in cases:
        xs = torch.randn(shape) * 2 + 1
        ours, theirs = getattr(normlib.nn, name)(4), getattr(torch.nn, name)(4)
        axes = R.batch_norm_axes(len(shape))
        m = int(np.prod([shape[a] for a in axes]))
        print(f"{name} {str(shape):<18} axes {str(axes):<14} m = {m:<5}",
              lab.cmp("", ours(xs), theirs(xs), atol=1e-5).strip())

# %% [markdown]
# The wrong rank is an error at the boundary, with the same exception type as torch:

# %%
for layer in (normlib.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)):
    try:
        layer(torch.randn(16, 4, 6))
    except ValueError as e:
        print(f"{type(layer).__module__.split('.')[0]:>7}: ValueError: {e}")

# %% [markdown]
# ## Training versus evaluation: the running statistics
#
# In training mode the layer normalizes with the batch statistics and, as a side effect, updates two
# buffers. With `momentum` $= m$ and $n$ values per channel:
#
# $$
# \hat{\mu} \leftarrow (1 - m)\,\hat{\mu} + m\,\mu_B, \qquad
# \hat{\sigma}^2 \leftarrow (1 - m)\,\hat{\sigma}^2 + m\,\frac{n}{n-1}\,\sigma_B^2 .
# $$
#
# Two details that trip people up:
#
# - `momentum` is the weight of the **new** batch (0.1 by default), the opposite of the optimizer's
#   notion of momentum.
# - The running variance stores the **unbiased** variance $\frac{n}{n-1}\sigma_B^2$, while the
#   normalization in training uses the biased one. The factor $\frac{n}{n-1}$ belongs to the stored
#   estimate only.
#
# `momentum=None` replaces the exponential average by a cumulative one: at step $t$ the factor is
# $1/t$, so after $T$ batches the buffers are the plain average of the $T$ batch statistics. The
# buffer `num_batches_tracked` counts $t$.
#
# We run `normlib.nn.BatchNorm2d` and `torch.nn.BatchNorm2d` side by side for five training steps,
# and recompute the expected buffers by hand from the formula above:

# %%
torch.manual_seed(0)
ours, theirs = normlib.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
m = ours.momentum
expected_mean, expected_var = np.zeros(3), np.ones(3)
for step in range(1, 6):
    xb = torch.randn(4, 3, 5, 5) * 2 + 3
    y_ours, y_theirs = ours(xb), theirs(xb)
    mu, var = R.moments(xb.numpy(), (0, 2, 3))
    n = 4 * 5 * 5
    expected_mean = (1 - m) * expected_mean + m * mu.ravel()
    expected_var = (1 - m) * expected_var + m * var.ravel() * n / (n - 1)
    print(f"step {step}: output {lab.cmp('', y_ours, y_theirs, atol=1e-5).strip():<26}"
          f" running_mean {lab.cmp('', ours.running_mean, theirs.running_mean, atol=1e-6).strip():<26}"
          f" running_var {lab.cmp('', ours.running_var, theirs.running_var, atol=1e-6).strip()}")
print(lab.cmp("running_mean vs formula", ours.running_mean, expected_mean, atol=1e-6))
print(lab.cmp("running_var vs formula", ours.running_var, expected_var, atol=1e-6))
print("num_batches_tracked:", int(ours.num_batches_tracked), int(theirs.num_batches_tracked))

# %% [markdown]
# In evaluation mode the layer uses the buffers and no longer looks at the batch, so a single sample
# gets a well-defined output, and the output of a sample no longer depends on what else is in the
# batch:

# %%
ours.eval()
theirs.eval()
xb = torch.randn(4, 3, 5, 5) * 2 + 3
print(lab.cmp("eval output vs torch", ours(xb), theirs(xb), atol=1e-5))
print(lab.cmp("eval: sample alone vs in batch", ours(xb[:1]), ours(xb)[:1], atol=1e-6))
ours.train()
print(lab.cmp("train: sample 0 with other batch", ours(torch.cat([xb[:2], xb[:2] + 5]))[:1],
                  ours(xb)[:1], atol=1e-6))

# %% [markdown]
# How fast do the running estimates reach the true statistics? Feed batches of 8 values from a
# distribution with mean 3 and variance 4 and watch $\hat{\mu}$ and $\hat{\sigma}^2$. A larger momentum
# moves faster but stays noisier; `None` averages everything seen so far.

# %%
torch.manual_seed(0)
batches = [torch.randn(8, 1) * 2 + 3 for _ in range(60)]
fig, (ax_m, ax_v) = plt.subplots(1, 2, figsize=(10, 3.2))
for momentum in (0.1, 0.5, None):
    bn = normlib.nn.BatchNorm1d(1, momentum=momentum)
    means, variances = [], []
    for xb in batches:
        bn(xb)
        means.append(bn.running_mean.item())
        variances.append(bn.running_var.item())
    ax_m.plot(means, label=f"momentum={momentum}")
    ax_v.plot(variances, label=f"momentum={momentum}")
    print(f"momentum={str(momentum):<4}: after 60 batches running_mean={means[-1]:.2f}, running_var={variances[-1]:.2f}")
ax_m.axhline(3, color="k", lw=0.8, ls="--")
ax_v.axhline(4, color="k", lw=0.8, ls="--")
ax_m.set(title="running_mean (true: 3)", xlabel="batch")
ax_v.set(title="running_var (true: 4)", xlabel="batch")
ax_m.legend()
fig.tight_layout()

# %% [markdown]
# ```{note}
# One of the source articles writes the inference variance as $\frac{m}{m-1}E_B[\sigma_B^2]$. That is
# the stored running estimate (unbiased, then averaged); the *training* normalization divides by $m$.
# Both facts are checked numerically above.
# ```
#
# ## LeNet with and without BatchNorm
#
# The source article's LeNet puts a BatchNorm after each convolution and after the first fully
# connected layer, before the ReLU. We size it for scikit-learn's 8×8 digits (1,797 images, 10 classes;
# 1,437 for training, 360 held out) and train it with SGD (momentum 0.9, batch 32) for 8 epochs, at
# two learning rates. `normlib.lab.models.LeNet` takes the norm layers as arguments; a layer followed by a
# norm has no bias of its own, since the norm's $\beta$ replaces it.

# %%
from normlib.lab.data import digits
from normlib.lab.models import LeNet
from normlib.lab.train import fit

data = digits()
runs = {}
for lr in (0.02, 0.1):
    for label, norms in (("no norm", {}), ("BatchNorm", {"conv_norm": normlib.nn.BatchNorm2d,
                                                         "fc_norm": normlib.nn.BatchNorm1d})):
        lab.seed_everything(0)
        model = LeNet(**norms)
        runs[(label, lr)] = fit(model, data, epochs=8, batch_size=32, lr=lr, desc=f"{label:>9}, lr={lr}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for (label, lr), h in runs.items():
    style = {"color": "C0" if label == "no norm" else "C1", "ls": "-" if lr == 0.1 else "--"}
    epochs = range(1, len(h["loss"]) + 1)
    axes[0].plot(epochs, h["loss"], label=f"{label}, lr={lr}", **style)
    axes[1].plot(epochs, [100 * a for a in h["test_acc"]], label=f"{label}, lr={lr}", **style)
axes[0].set(title="training loss", xlabel="epoch", yscale="log")
axes[1].set(title="test accuracy (%)", xlabel="epoch", ylim=(0, 100))
axes[1].legend(loc="lower right")
fig.tight_layout()

print(f"{'model':<10}{'lr':>6}{'acc after 1 epoch':>19}{'acc after 8':>13}{'final loss':>12}")
for (label, lr), h in runs.items():
    print(f"{label:<10}{lr:>6}{100 * h['test_acc'][0]:>18.1f}%{100 * h['test_acc'][-1]:>12.1f}%{h['loss'][-1]:>12.3f}")

# %% [markdown]
# With BatchNorm the network is already far along after one epoch at either learning rate, and it
# tolerates the higher rate; without it, training starts slowly. This is the effect the BatchNorm
# paper reports at ImageNet scale (higher learning rates, far fewer steps) {cite}`ioffe2015batch`.
# *Why* it helps is debated: the original explanation (reducing "internal covariate shift") has been
# challenged by evidence that BatchNorm mainly makes the loss landscape smoother
# {cite}`santurkar2018how`. The numbers above are one seed on a small data set: the exercises ask you
# to vary them.
#
# ## How fast is it?
#
# A forward and backward pass of `normlib.nn.BatchNorm2d` against `torch.nn.BatchNorm2d` on a
# `(32, 64, 32, 32)` float32 batch, on the GPU when there is one, else on the CPU. normlib's eager
# version is a composition of separate tensor ops, each reading and writing the whole tensor, while
# torch calls one fused kernel; the speed lesson shows how compiling closes that gap. (Timings vary
# from run to run and machine to machine, so this cell's output is not checked.)

# %%
# NBVAL_IGNORE_OUTPUT
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
xb = torch.randn(32, 64, 32, 32, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
for name, layer in (("torch.nn", torch.nn.BatchNorm2d(64)), ("normlib.nn", normlib.nn.BatchNorm2d(64))):
    layer = layer.to(device)

    def step(layer=layer):
        layer(xb).backward(dy)

    print(f"{name:<11} forward+backward: {benchmark(step, device)}")

# %% [markdown]
# ## Exercises
#
# 1. Set `momentum=1.0`. What do the buffers hold after a training step? What happens to evaluation
#    then, if the last batch was unusual?
# 2. Train the LeNet with batch size 4 instead of 32 (adjust `lr`). Compare the test accuracy in eval
#    mode with the accuracy of the same network evaluated in train mode (`model.train()`, batch
#    statistics). Which is closer to the training accuracy, and why?
# 3. Show that a convolution's bias has no effect on the output of the BatchNorm that follows it in
#    training mode. Does it in evaluation mode?
# 4. Write the running-statistics update for `momentum=None` as a recursion and prove it yields the
#    plain average of the batch statistics.
