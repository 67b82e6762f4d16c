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
# The source articles end with comparison tables and rules of thumb: BatchNorm for CNNs with large
# batches, GroupNorm when batches are small, LayerNorm for sequences, InstanceNorm for style. This
# lesson turns the first of those claims into a measurement on one small CNN and data set, laid out like
# the figure in the GroupNorm paper {cite}`wu2018group`: accuracy against the batch size, for each norm.

# %%
import copy

import matplotlib.pyplot as plt

from normlib import lab
from normlib import nn as N
from normlib.lab.data import digits
from normlib.lab.models import LeNet
from normlib.lab.train import accuracy, fit

lab.seed_everything(0)
data = digits()

# %% [markdown]
# ## The experiment
#
# The LeNet of the BatchNorm lesson on the digits, with one of four norms after each convolution:
#
# - **BN**: `BatchNorm2d(C)`;
# - **GN**: `GroupNorm(2, C)` (the layers have 6 and 16 channels, so 3 and 8 channels per group);
# - **LN**: `GroupNorm(1, C)`, LayerNorm over `(C, H, W)` with per-channel affine (see the GroupNorm lesson);
# - **IN**: `InstanceNorm2d(C, affine=True)`.
#
# Each is trained for 3 epochs at batch sizes 2, 4, 8, 16 and 32, with the learning rate scaled by
# $\sqrt{B/32}$ (0.02 at $B = 32$), for two seeds. Test accuracy is measured in eval mode. For BN we also
# measure it in *train* mode, normalizing each test batch of size $B$ with its own statistics, to see the
# gap between the two.

# %%
NORMS = {"BN": N.BatchNorm2d, "GN": lambda c: N.GroupNorm(2, c), "LN": lambda c: N.GroupNorm(1, c),
         "IN": lambda c: N.InstanceNorm2d(c, affine=True)}
BATCH_SIZES = (2, 4, 8, 16, 32)
SEEDS = (0, 1)
acc, bn_train_mode = {}, {}
for norm, factory in NORMS.items():
    for batch_size in BATCH_SIZES:
        for seed in SEEDS:
            lab.seed_everything(seed)
            model = LeNet(conv_norm=factory)
            history = fit(model, data, epochs=3, batch_size=batch_size, lr=0.02 * (batch_size / 32) ** 0.5,
                          seed=seed, progress=False)
            acc[(norm, batch_size, seed)] = history["test_acc"][-1]
            if norm == "BN":  # evaluate a copy in train mode, so the running statistics are untouched
                bn_train_mode[(batch_size, seed)] = accuracy(copy.deepcopy(model).train(), *data[2:],
                                                             batch_size=batch_size)
    print(f"{norm}: trained at batch sizes {BATCH_SIZES}, seeds {SEEDS}")


def mean_acc(norm, batch_size):
    return 100 * sum(acc[(norm, batch_size, s)] for s in SEEDS) / len(SEEDS)

# %% [markdown]
# ## Results
#
# The GroupNorm paper plots *error* against images per GPU; we do the same with our test error.

# %%
fig, (ax_err, ax_gap) = plt.subplots(1, 2, figsize=(11, 3.6))
for norm in NORMS:
    ax_err.plot(BATCH_SIZES, [100 - mean_acc(norm, b) for b in BATCH_SIZES], marker="o", label=norm)
ax_err.set(xlabel="batch size", ylabel="test error (%)", title="test error vs batch size (mean of 2 seeds)")
ax_err.legend()
eval_mode = [mean_acc("BN", b) for b in BATCH_SIZES]
train_mode = [100 * sum(bn_train_mode[(b, s)] for s in SEEDS) / len(SEEDS) for b in BATCH_SIZES]
ax_gap.plot(BATCH_SIZES, eval_mode, marker="o", label="BN, eval mode (running statistics)")
ax_gap.plot(BATCH_SIZES, train_mode, marker="s", label="BN, train mode (batch statistics)")
ax_gap.set(xlabel="batch size", ylabel="test accuracy (%)", title="BatchNorm: eval vs train mode")
for ax in (ax_err, ax_gap):
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
    ax.minorticks_off()
ax_gap.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The summary table below is generated from these runs:

# %%
print(f"{'norm':<5}" + "".join(f"{f'B={b}':>8}" for b in BATCH_SIZES) + f"{'B=2 minus B=32':>17}{'spread':>8}")
for norm in NORMS:
    row = [mean_acc(norm, b) for b in BATCH_SIZES]
    print(f"{norm:<5}" + "".join(f"{a:>7.1f}%" for a in row) + f"{row[0] - row[-1]:>+16.1f}%"
          f"{max(row) - min(row):>7.1f}%")
print("\nBN eval mode minus train mode, per batch size:",
      [f"{e - t:+.1f}" for e, t in zip(eval_mode, train_mode, strict=True)])
print("optimizer steps per run (3 epochs):", {b: 3 * (len(data[0]) // b) for b in BATCH_SIZES})

# %% [markdown]
# ## Set beside the paper
#
# On ImageNet with ResNet-50, the GroupNorm paper reports a top-1 error of 23.6% (BN) and 24.1% (GN) at 32
# images per GPU, and 34.7% (BN) versus 24.1% (GN) at 2 images per GPU {cite}`wu2018group`: BatchNorm
# loses about eleven points as the batch shrinks, GroupNorm nothing.
#
# Our small problem is a much weaker test. The digits are easy, the network is tiny, and two seeds on 360
# test images resolve differences of a few points at best. Like the paper we train every batch size for
# the same number of epochs, which on this budget means very different numbers of optimizer steps (the
# last line above): the small batches get many more updates, and the large ones are still improving when
# training stops. That favours small batches for every norm alike, so compare the norms *within* a column
# rather than reading a column's trend. If BatchNorm does not fall behind at the small batch sizes the way
# it does in the paper, that is a finding about this scale, not a contradiction: how noisy BatchNorm's
# statistics are depends on how many values each one averages ($B \times H \times W$, and our first
# feature maps have 64 positions each, so even $B = 2$ averages 128 values). The eval-minus-train row shows the other face of the
# problem: with batch statistics and running statistics disagreeing, the network's accuracy depends on
# which it is evaluated with.
#
# ## What the evidence supports
#
# | situation | first choice | why (shown in this book) |
# |---|---|---|
# | CNN, batches of 16 or more | BatchNorm | best or equal here; folds into the convolution at inference (training-versus-inference lesson) |
# | CNN, tiny or uneven batches | GroupNorm | independent of the batch (this lesson, GroupNorm lesson); or Batch Renorm / SyncBatchNorm to keep BN |
# | sequences, Transformers | LayerNorm / RMSNorm | per token, no batch statistics, any length (LayerNorm and RMSNorm lessons) |
# | style transfer, image generation | InstanceNorm | removes per-image contrast and colour (InstanceNorm lesson) |
#
# ## Exercises
#
# 1. Train for 10 epochs instead of 3. Which rows of the table change, and which conclusions?
# 2. Add Batch Renormalization (`normlib.nn.BatchRenorm2d`) to the sweep.
# 3. Use 5 seeds and report the standard error of each mean. Which differences between norms are larger
#    than two standard errors?
