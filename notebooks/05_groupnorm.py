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
# # Group Normalization
#
# Group Normalization {cite}`wu2018group` splits the $C$ channels of each sample into $G$ groups of
# $C/G$ consecutive channels and normalizes each group over its channels and positions. For an input
# of shape $(N, C, H, W)$, with $g(c) = \lfloor c / (C/G) \rfloor$ the group of channel $c$:
#
# $$
# \begin{aligned}
# S_{ng} &= \{(c, h, w) : g(c) = g\}, \qquad m = \tfrac{C}{G} H W, \\
# \mu_{ng} &= \frac{1}{m}\sum_{(c, h, w) \in S_{ng}} x_{nchw}, \\
# \sigma^2_{ng} &= \frac{1}{m}\sum_{(c, h, w) \in S_{ng}} (x_{nchw} - \mu_{ng})^2, \\
# y_{nchw} &= \gamma_c\, \frac{x_{nchw} - \mu_{n g(c)}}{\sqrt{\sigma^2_{n g(c)} + \epsilon}} + \beta_c .
# \end{aligned}
# $$
#
# The statistics are per group, the learned $\gamma, \beta$ per **channel**. Like LayerNorm and
# InstanceNorm it never looks at other samples, so it works the same at any batch size, which is
# what it was designed for: detection and segmentation models that fit only one or two images per
# GPU. This lesson builds it, checks it against `torch.nn.GroupNorm`, shows that its two extremes are
# LayerNorm and InstanceNorm, measures what the number of groups changes in a small CNN, and times
# it.

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
import numpy as np
import torch
import torch.nn.functional as F

from normlib import functional as NF
from normlib import lab
from normlib import nn as N
from normlib import reference as R

lab.setup()

# %% [markdown]
# ## The groups, drawn
#
# One sample of a feature map with $C = 16$ channels (rows) and its positions laid out in a line
# (columns). Each colour is one group: the set of values that share one mean and one variance.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The groups of GroupNorm for one sample with 16 channels, for four numbers of groups G. Each colour is one set of values that share a mean and a variance. G = 1 takes LayerNorm's statistics over (C, H, W), and G = C InstanceNorm's; the learned γ, β stay per channel.", "name": "fig-05-groups"}, "image": {"alt": "Four panels of 16 rows (channels) by 12 columns (positions). With G = 1 the whole panel is one colour; with G = 2 the top and bottom halves differ; with G = 4 there are four horizontal bands of four channels; with G = 16 every row has its own colour."}}
C_DEMO, POSITIONS = 16, 12
fig, axes = plt.subplots(1, 4, figsize=(7, 3.5), sharey=True)
for ax, groups in zip(axes, (1, 2, 4, 16), strict=True):
    group_of = np.repeat(np.arange(C_DEMO)[:, None] // (C_DEMO // groups), POSITIONS, 1)
    ax.imshow(group_of % 20, cmap="tab20", vmin=0, vmax=19, aspect="auto",
              interpolation="nearest")
    label = {1: " (LayerNorm)", 16: " (InstanceNorm)"}.get(groups, "")
    ax.set_title(f"G = {groups}{label}", fontsize=10)
    ax.set_xlabel("position (H·W)")
    ax.set_xticks([])
axes[0].set_ylabel("channel")
axes[0].set_yticks([0, 15], ["0", "15"])
fig.tight_layout()

# %% [markdown]
# ## The grouping, in NumPy
#
# A reshape does it: `(N, C, H, W)` becomes `(N, G, C/G, H, W)`, and the moments are taken over the
# last three axes. `normlib.reference.group_norm` is exactly that:

# %%
x = np.random.default_rng(0).normal(1, 2, size=(2, 6, 4, 4))
G = 3
grouped = x.reshape(2, G, 6 // G, 4, 4)
mu, var = R.moments(grouped, (2, 3, 4))
print("statistics shape:", mu.shape, "-> one per (sample, group):", mu.size)
y = ((grouped - mu) / np.sqrt(var + 1e-5)).reshape(x.shape)
print(lab.cmp("by hand vs reference", y, R.group_norm(x, G), atol=1e-12))

# %% [markdown]
# ## In torch, and against `torch.nn.GroupNorm`
#
# `normlib.functional.group_norm` has the signature of `torch.nn.functional.group_norm` and does the
# same reshape before calling the one `moments` function. The module `normlib.nn.GroupNorm` is a
# drop-in for torch's: with learned $\gamma, \beta$ copied from torch's layer, the outputs and every
# gradient agree.

# %%
xt = torch.from_numpy(x)
print(lab.cmp("functional vs numpy", NF.group_norm(xt, G), y, atol=1e-12))
print(lab.cmp("functional vs torch", NF.group_norm(xt, G),
              torch.nn.functional.group_norm(xt, G), atol=1e-12))

theirs = torch.nn.GroupNorm(4, 16)
torch.nn.init.normal_(theirs.weight, 1.0, 0.2)
torch.nn.init.normal_(theirs.bias, 0.0, 0.2)
mine = N.GroupNorm(4, 16)
mine.load_state_dict(theirs.state_dict())
x1 = (torch.randn(8, 16, 6, 6) * 3 + 1).requires_grad_()
x2 = x1.detach().clone().requires_grad_()
dy = torch.randn(8, 16, 6, 6)
mine(x1).backward(dy)
theirs(x2).backward(dy)
print(lab.cmp("module vs torch: output", mine(x1), theirs(x2), atol=1e-5))
print(lab.cmp("grad of x", x1.grad, x2.grad, atol=1e-5))
print(lab.cmp("grad of gamma", mine.weight.grad, theirs.weight.grad, atol=1e-4))
print(lab.cmp("grad of beta", mine.bias.grad, theirs.bias.grad, atol=1e-4))

# %% [markdown]
# ## The two extremes: LayerNorm and InstanceNorm
#
# With $G = 1$ the group is the whole sample (LayerNorm over $(C, H, W)$); with $G = C$ each group is
# one channel (InstanceNorm). One of the source articles {cite}`source-bn-ln-gn-principles` says
# that with $G = C$ GroupNorm "becomes GN"; it becomes **IN**. Checked, including what happens to the learned parameters:

# %%
xt = torch.randn(4, 6, 5, 5) * 2 + 1
gn1, ln = N.GroupNorm(1, 6), N.LayerNorm([6, 5, 5])
gn6, inorm = N.GroupNorm(6, 6), N.InstanceNorm2d(6, affine=True)
print(lab.cmp("GroupNorm(1, C) vs LayerNorm", gn1(xt), ln(xt), atol=1e-5))
print(lab.cmp("GroupNorm(C, C) vs InstanceNorm", gn6(xt), inorm(xt), atol=1e-5))
for name, layer in (("GroupNorm(1, 6)", gn1), ("LayerNorm([6, 5, 5])", ln),
                    ("GroupNorm(6, 6)", gn6), ("InstanceNorm2d(6, affine)", inorm)):
    shapes = [tuple(p.shape) for p in layer.parameters()]
    print(f"{name:<26} learns gamma, beta of shapes {shapes}")

# %% [markdown]
# The normalization agrees, to float32 rounding (within 1e-5), at initialization, with
# $\gamma = 1$, $\beta = 0$. The
# parameters do not: LayerNorm learns one $\gamma$ per **element** of `(C, H, W)`, GroupNorm one per
# channel. So `GroupNorm(1, C)` is "LayerNorm with per-channel affine", which does not tie the layer
# to one image size.
#
# It is not, though, what ConvNeXt and similar recent CNNs call LayerNorm. ConvNeXt {cite}`liu2022convnet`
# and timm's `LayerNorm2d` normalise over the $C$ channels **at each position**: one statistic per
# sample and pixel, over $C$ values, with per-channel $\gamma, \beta$. That is `LayerNorm(C)` on the
# input permuted to `(N, H, W, C)`; `normlib.lab.convnets.LayerNorm2d` does exactly that, and its
# output is not `GroupNorm(1, C)`'s:

# %%
from normlib.lab.convnets import LayerNorm2d

ln2d = LayerNorm2d(6)
y2d = ln2d(xt)
by_position = torch.nn.functional.layer_norm(xt.permute(0, 2, 3, 1), (6,), eps=1e-6)
print(lab.cmp("LayerNorm2d vs torch LayerNorm(C) on (N, H, W, C)", y2d,
              by_position.permute(0, 3, 1, 2), atol=1e-5))
print(lab.cmp("mean over C at each position", y2d.mean(1), torch.zeros(4, 5, 5),
              atol=1e-5))
print("statistics per sample: LayerNorm2d", y2d[0, 0].numel(), "(one per position),",
      "GroupNorm(1, 6): 1")
print("LayerNorm2d = GroupNorm(1, C)?", torch.allclose(y2d, gn1(xt), atol=1e-3))

# %% [markdown]
# ## What each norm learns
#
# The number of learned parameters for a layer with $C = 64$ channels on $32 \times 32$ feature
# maps, read off the modules, next to the number of statistics each computes for a batch of $N = 8$:

# %%
C, H, W, N_BATCH = 64, 32, 32, 8
x64 = torch.randn(N_BATCH, C, H, W)
layers = {
    "BatchNorm2d(64)": (N.BatchNorm2d(C), (0, 2, 3)),
    "LayerNorm([64, 32, 32])": (N.LayerNorm([C, H, W]), (1, 2, 3)),
    "InstanceNorm2d(64, affine)": (N.InstanceNorm2d(C, affine=True), (2, 3)),
    "GroupNorm(32, 64)": (N.GroupNorm(32, C), None),
}
print(f"{'layer':<28}{'parameters':>12}{'statistics':>12}")
for name, (layer, dims) in layers.items():
    if dims is None:  # GroupNorm: one statistic per (sample, group)
        stats = N_BATCH * layer.num_groups
    else:
        stats = x64.mean(dims).numel()
    print(f"{name:<28}{sum(p.numel() for p in layer.parameters()):>12,}{stats:>12,}")

# %% [markdown]
# One source article says LayerNorm "learns Batch groups of parameters", InstanceNorm "B×C" and
# GroupNorm "B×k". The table shows where that came from and why it is wrong: it is the *statistics*
# that are per sample (they are computed, not learned); the learned parameters are fixed by the
# layer's shape and the same for any batch size.
#
# The groups also need $G \mid C$; normlib raises the same `ValueError` as torch when they do not:

# %%
for lib in (N, torch.nn):
    try:
        lib.GroupNorm(5, 64)
    except ValueError as e:
        print(f"{lib.__name__}: ValueError: {e}")

# %% [markdown]
# ## Choosing G
#
# On ImageNet, the GroupNorm paper found 32 groups a good default and both extremes worse: with a
# ResNet-50 at 32 images per GPU it reports a top-1 error of 24.1% for $G = 32$, 25.3% for $G = 1$
# (LayerNorm) and 28.4% for $G = C$ (InstanceNorm), against 23.6% for BatchNorm {cite}`wu2018group`.
# Those settings differ in more than how channels are grouped: they differ in how many values each
# statistic sees. In ResNet-50's last stage (2,048 channels on 7×7 maps), $G = C$ takes each
# statistic over one channel's 49 values, $G = 32$ over 64 channels × 49 = 3,136, $G = 1$ over
# 100,352; BatchNorm at 32 images over $32 \times 49 = 1{,}568$. The paper's ranking does not say
# which of the two, the grouping or the count, costs InstanceNorm its points.
#
# One of the source articles {cite}`source-different-norms` draws a broader rule from such
# results: LayerNorm suits only
# recurrent networks and trails BatchNorm and GroupNorm in CNNs. Does the number of groups matter
# in a small CNN? LeNet's 6 and 16 channels leave little room for groups, so we train a network of
# the same kind but wider, `normlib.lab.convnets.ConvNet` with 16 and 32 channels, on the images
# averaged down to 14×14 (means of 2×2 pixels, to keep the wider network fast): a 3×3 convolution,
# its norm, ReLU and 2×2 max-pooling to 7×7, then a second convolution, its norm and ReLU, and one
# linear layer to the ten classes. The norm after both convolutions is one of:
#
# | setting | first layer (16 channels) | second layer (32 channels) | values per statistic |
# |---|---|---|---|
# | 1 channel per group ($G = C$, InstanceNorm) | 16 groups | 32 groups | 196 and 49 |
# | 4 channels per group | 4 groups | 8 groups | 784 and 196 |
# | 8 channels per group | 2 groups | 4 groups | 1,568 and 392 |
# | all channels ($G = 1$) | 1 group | 1 group | 3,136 and 1,568 |
# | `LayerNorm2d` (over $C$ at each position) | | | 16 and 32 |
# | `BatchNorm2d` at batch 32 | | | 6,272 and 1,568 |
#
# The data are Fashion-MNIST {cite}`xiao2017fashion` (2,000 training images, 1,000 test images).
# Everything else is held fixed: the same SGD (momentum 0.9, batch 32, learning rate 0.02), the
# same three epochs of 62 full batches (the incomplete last batch is dropped), 186 steps in all,
# and, for a given seed, the same initial weights (the norms' own parameters start at
# $\gamma = 1, \beta = 0$; the cell below checks this for every seed) and the same order of
# batches. So each setting's difference from BatchNorm can be taken seed by seed (a paired
# comparison), which removes the noise that the seeds share. One learning rate serves every setting. It was not
# tuned per setting, so what follows holds at this rate; a norm that would do better at another
# (BatchNorm is known to allow higher ones {cite}`ioffe2015batch`) is not given it.

# %%
from normlib.lab import evidence
from normlib.lab.convnets import ConvNet
from normlib.lab.data import Dataset, fashion_mnist
from normlib.lab.train import fit

full = fashion_mnist(n_train=2000, n_test=1000)
x_train, y_train, x_test, y_test = full
data = Dataset(F.avg_pool2d(x_train, 2), y_train, F.avg_pool2d(x_test, 2), y_test,
               full.name + " at 14x14")
print(f"data: {data.name}, {len(x_train):,} training and {len(x_test):,} test images")
WIDTHS = (16, 32)
NORMS = {"1 per group": lambda c: N.GroupNorm(c, c),
         "4 per group": lambda c: N.GroupNorm(c // 4, c),
         "8 per group": lambda c: N.GroupNorm(c // 8, c),
         "all (G = 1)": lambda c: N.GroupNorm(1, c),
         "LayerNorm2d": LayerNorm2d,
         "BatchNorm": N.BatchNorm2d}
EPOCHS, SEEDS = 3, (0, 1, 2, 3, 4)
print(f"{EPOCHS} epochs of {len(x_train) // 32} full batches of 32: "
      f"{EPOCHS * (len(x_train) // 32)} SGD steps; seeds {SEEDS}")


def make_net(seed, norm):
    lab.seed_everything(seed)
    return ConvNet(WIDTHS, conv_norm=NORMS[norm], image_size=14)


def layer_weights(model):
    """Every convolution's and linear layer's weights, in one vector."""
    return torch.cat([m.weight.flatten() for m in model.modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])


for norm in NORMS:  # every seed
    print(lab.cmp(f"initial weights, {norm} vs BatchNorm",
                  torch.cat([layer_weights(make_net(s, norm)) for s in SEEDS]),
                  torch.cat([layer_weights(make_net(s, "BatchNorm")) for s in SEEDS])))


def train_net(seed, norm):
    model = make_net(seed, norm)
    history = fit(model, data, epochs=EPOCHS, batch_size=32, lr=0.02, seed=seed,
                  progress=False)
    return {"acc": history["test_acc"][-1]}


runs = evidence.sweep(train_net, {"norm": list(NORMS)}, seeds=SEEDS, desc="ConvNets")

# %% [markdown]
# The measured test accuracies in percent (mean ± standard error over the seeds), and each
# setting's difference from BatchNorm, seed by seed, with its 90% interval. The digits change from
# machine to machine; the statements checked below do not.

# %% tags=["nbval-ignore-output"]
acc = {n: runs.estimate("acc", norm=n) for n in NORMS}
rows = []
for n in NORMS:
    d = evidence.difference(acc[n], acc["BatchNorm"], paired=True)
    low, high = d.interval(0.90)
    rows.append([n, f"{acc[n].scaled(100):.1f}",
                 "" if n == "BatchNorm"
                 else f"{100 * d.value:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"])
print(evidence.table(["norm", "test accuracy (%)", "minus BatchNorm (90% interval)"],
                     rows))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test accuracy of the 16-32 channel CNN on Fashion-MNIST with GroupNorm from one channel per group (InstanceNorm) to all channels in one group, LayerNorm2d over the channels at each position, and BatchNorm at batch 32 as a band (mean ± s.e. over the seeds). The bars are each setting's own standard error, not the paired differences the checks use, so whether a bar overlaps the band says nothing either way: read the table's intervals. The settings are categories, not points on a scale, so no line joins them.", "name": "fig-05-groups-accuracy"}, "image": {"alt": "Plot of test accuracy for six settings: GroupNorm with 1, 4, 8 and all channels per group, LayerNorm2d, each a point with an error bar, and a shaded horizontal band for BatchNorm."}}
bn = acc["BatchNorm"].scaled(100)
others = [n for n in NORMS if n != "BatchNorm"]
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for i, n in enumerate(others):
    e = acc[n].scaled(100)
    ax.errorbar([i], [e.mean], yerr=[e.sem], marker="o", capsize=3,
                color="C0" if n != "LayerNorm2d" else "C2")
ax.axhspan(bn.mean - bn.sem, bn.mean + bn.sem, color="C1", alpha=0.3,
           label="BatchNorm, batch 32")
ax.axhline(bn.mean, color="C1", lw=1)
ax.set_xticks(range(len(others)), [n.replace(" (", "\n(") for n in others])
low = min(acc[n].scaled(100).mean - acc[n].scaled(100).sem for n in NORMS)
ax.set(xlim=(-0.5, len(others) - 0.5), ylabel="test accuracy (%)",
       ylim=(min(low, bn.mean - 8) - 1, bn.mean + 5))  # every point, at least 8 below BN
ax.legend(title=f"{len(SEEDS)} seeds each", loc="lower right")
fig.tight_layout()

# %% [markdown]
# What can these runs tell? For each setting the table gives its difference from BatchNorm with a
# 90% interval, taken seed by seed. An interval that lies inside ±3 points shows that setting
# equal to BatchNorm to within 3 points (an equivalence test). An interval that excludes 0 is not,
# on its own, evidence of a difference here: with five intervals read at 90% each, one of them
# excluding 0 by chance alone is not unlikely, and the digits change from machine to machine. What
# the runs show, for every setting, is the first: each grouping and `LayerNorm2d` tests within 3
# points of BatchNorm (the checks below: the whole 90% interval inside ±3 points). The lesson does
# not rank the settings against each other, or against BatchNorm inside that margin. It is built to
# find a gap of 3 points or more, about the size of InstanceNorm's gap on ImageNet (28.4% error
# against BatchNorm's 23.6%), not gaps as small as LayerNorm's (25.3%) or GroupNorm's (24.1%). And
# after 186 steps this is early training.

# %%
for n in NORMS:
    if n != "BatchNorm":
        evidence.claim(f"{n}: test accuracy within 3 points of BatchNorm", acc[n], "≈",
                       acc["BatchNorm"], margin=0.03, paired=True, unit=100)

# %% [markdown]
# What the experiment can say is narrower than the ImageNet question. Its settings do differ in
# what the paragraph above singled out: one channel per group takes its statistics over 49 values
# in the second layer, as InstanceNorm does in ResNet-50's last stage, and `LayerNorm2d` over 16
# and 32; all channels in one group take theirs over thousands. If few values per statistic cost a
# network as much as InstanceNorm loses on ImageNet, the 1-per-group and `LayerNorm2d` rows are
# where it would show here. They do not: none falls 3 points behind BatchNorm. That is evidence
# about this small network, these data, one learning rate and 186 steps. It does not settle what
# costs InstanceNorm its points on ImageNet, where the paper's own explanation is that
# InstanceNorm, relying on the spatial dimensions alone, misses the dependence between channels
# {cite}`wu2018group`. Nor can it confirm or refute the source article's rule that LayerNorm
# trails BatchNorm and GroupNorm in CNNs: on ImageNet that gap (25.3% against 23.6% and 24.1%) is
# smaller than the 3-point margin this experiment can resolve. The property that does carry over
# to any scale is the one GroupNorm was made for, independence from the batch; the "choosing a
# norm" lesson varies the batch and measures it.
#
# ## How fast is it?
#
# Forward and backward of `normlib.nn.GroupNorm` against `torch.nn.GroupNorm` with 32 groups on a
# `(32, 64, 32, 32)` float32 batch, on the GPU when there is one, else on the CPU. (Timings vary from
# run to run and machine to machine, so this cell's output is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import compare, default_device, device_name

device = default_device()
xb = torch.randn(32, 64, 32, 32, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
steps = {}
for name, layer in (("torch.nn", torch.nn.GroupNorm(32, 64)),
                    ("normlib.nn", N.GroupNorm(32, 64))):
    layer = layer.to(device)
    steps[name] = lambda layer=layer: torch.autograd.grad(
        layer(xb), (xb, *layer.parameters()), dy)
for name, timing in compare(steps, device).items():  # interleaved rounds
    print(f"{name:<11} forward+backward: {timing}")

# %% [markdown]
# `normlib.nn.GroupNorm` composes tensor operations (a reshape, then the shared `moments`), each a
# separate pass over memory; torch's GroupNorm is one native kernel. Expect normlib to be slower;
# the "speed" lesson measures what a fused kernel recovers.
#
# ## Exercises
#
# 1. Show numerically that GroupNorm's output for a sample does not depend on the batch.
# 2. For $C = 64$, list every valid $G$. Which of them are valid for both layers if you
#    widen them to 32 and 64 channels? Repeat the experiment there.
# 3. GroupNorm assumes that neighbouring channels belong together. Shuffle the channel order of a
#    trained network's feature maps (and its weights accordingly): does the GroupNorm output change?
# 4. GroupNorm's statistics do not depend on the batch, but its training does: a true batch of 2
#    instead of 32 gives 16 times as many optimizer steps, each with a noisier gradient, and needs
#    another learning rate, for every setting above, BatchNorm or not. Train every setting with
#    batch 2 (learning rate $0.02 \cdot 2/32$ {cite}`goyal2017accurate`, three epochs as in the
#    table) and compare with the table. Then hold the
#    batch at 32 and give BatchNorm ghost batches of 2 (`normlib.lab.models.ghost`, as in the
#    "choosing a norm" lesson): which of the two experiments tells you what the *statistics* of a
#    small batch do?
