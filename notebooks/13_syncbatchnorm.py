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
# # When one machine is not enough: SyncBatchNorm
#
# Data-parallel training splits each batch across processes (GPUs, usually): with 8 GPUs and a global
# batch of 32, each holds 4 samples. Gradients are averaged across processes, so the *optimization*
# sees the batch of 32, but an ordinary BatchNorm computes its statistics from the 4 samples on its own
# device. That is BatchNorm's small-batch problem {cite}`wu2018group`, hidden inside a large batch.
#
# SyncBatchNorm computes the statistics over the **global** batch. Each of the $R$ ranks computes, per
# channel, its count $n_r$, mean $\mu_r$ and sum of squared deviations $M_r$; the ranks exchange these and
# combine them:
#
# $$
# \begin{aligned}
# N &= \sum_r n_r, \\
# \mu &= \frac{1}{N}\sum_r n_r \mu_r, \\
# \sigma^2 &= \frac{1}{N}\sum_r \big(M_r + n_r(\mu_r - \mu)^2\big).
# \end{aligned}
# $$
#
# Weighting by $n_r$ makes uneven batches right (the last batch of an epoch, or a rank with a single
# sample), and combining deviations rather than raw sums of squares avoids the cancellation of
# $E[x^2] - E[x]^2$: it is the pairwise update of Chan, Golub and LeVeque {cite}`chan1983algorithms`,
# applied to $R$ parts at once. In the backward pass the BatchNorm gradient (see the backprop lesson) needs two
# sums over the batch, $\sum \hat{g}$ and $\sum \hat{g}\hat{x}$; they are all-reduced across ranks.
#
# `normlib.nn.SyncBatchNorm` does this on top of `torch.distributed`, so it runs with the gloo backend on
# CPUs (as in this lesson: a few processes on this machine) and with NCCL on GPUs. PyTorch's own
# `torch.nn.SyncBatchNorm` supports only GPUs.

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
import statistics

import matplotlib.pyplot as plt
import torch

from normlib import lab
from normlib.lab import evidence
from normlib.lab.ddp import check_sync_batchnorm, step_by_step

lab.setup()

# %% [markdown]
# ## One layer: exactly BatchNorm on the global batch
#
# Three processes holding 2, 1 and 4 samples: their SyncBatchNorm outputs, input gradients and running
# variances, put together, against one `torch.nn.BatchNorm2d` on all 7 samples (float64):

# %%
for name, diff in check_sync_batchnorm([2, 1, 4]).items():
    print(f"{name:<15} equal within 1e-12: {diff < 1e-12}")

# %% [markdown]
# ## Training: the same run as one process with the whole batch
#
# That is one layer and one step. What SyncBatchNorm is for shows over a training run: data-parallel
# training with SyncBatchNorm should compute *exactly* what one process computes with the whole batch,
# step after step. We check it on the LeNet of the earlier lessons and the digits, in float64, from the
# same initial weights and on the same batches, three ways:
#
# - **one process**: `torch.nn.BatchNorm2d`/`BatchNorm1d` on batches of 4;
# - **SyncBatchNorm**: `DistributedDataParallel` over two gloo processes with 2 of those 4 samples
#   each, every BatchNorm converted with `SyncBatchNorm.convert_sync_batchnorm`;
# - **per-process BatchNorm**: the same two processes with plain BatchNorm, each normalizing over its
#   own 2 samples.
#
# `DistributedDataParallel` averages the gradients over the processes, so all three optimize the mean
# loss of the same 4 samples; only the BatchNorm statistics differ. (It also copies rank 0's buffers, the
# running statistics, to the other ranks before each forward pass.)
# `normlib.lab.ddp.step_by_step` starts the processes, trains 15 SGD steps each way and returns every
# parameter and running statistic after each step (rank 0's for the two data-parallel runs):

# %%
STEPS = 15
runs = step_by_step(world_size=2, per_rank_batch=2, steps=STEPS, lr=0.05, seed=0)
QUANTITIES = ("parameters", "running means", "running variances")


def every_step(variant, quantity):
    """The quantity after each step, stacked: (steps, size)."""
    return torch.stack([state[quantity] for state in runs[variant]])


print(f"SyncBatchNorm against one process, at each of the {STEPS} steps:")
for quantity in QUANTITIES:
    print(lab.cmp(quantity, every_step("SyncBatchNorm", quantity),
                  every_step("one process", quantity), atol=1e-10))
print(f"per-process BatchNorm against one process, at each of the {STEPS} steps:")
for quantity in QUANTITIES:
    gaps = (every_step("per-process BatchNorm", quantity)
            - every_step("one process", quantity)).abs().amax(dim=1)
    evidence.claim(f"{quantity} off by more than 0.01", gaps.min().item(), ">", 0.01)

# %% [markdown]
# Step by step, the largest difference from the single process:

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Largest absolute difference from one process training on the whole batch, after each SGD step, for the parameters and the running variances (float64, log scale). The dotted line is the tolerance of the check above.", "name": "fig-13-step-by-step"}, "image": {"alt": "Two line plots on a logarithmic axis against the training step. In both, the per-process BatchNorm line starts far above the tolerance line and stays there, while the SyncBatchNorm line stays far below it, at the level of float64 rounding."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5), sharey=True)
steps = range(1, STEPS + 1)
for ax, quantity in zip(axes, ("parameters", "running variances"), strict=True):
    for variant in ("SyncBatchNorm", "per-process BatchNorm"):
        gaps = [(s[quantity] - r[quantity]).abs().max().item()
                for s, r in zip(runs[variant], runs["one process"], strict=True)]
        ax.plot(steps, gaps, marker="o", markersize=3, label=variant)
    ax.axhline(1e-10, color="0.4", linestyle=":", label="tolerance 1e-10")
    ax.set(title=quantity, xlabel="SGD step", yscale="log")
axes[0].set_ylabel("max |difference|")
fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3,
           bbox_to_anchor=(0.5, 0.02))
fig.tight_layout()

# %% [markdown]
# SyncBatchNorm over two processes with 2 samples each *is* BatchNorm over 4 samples: the parameters
# and running statistics match the single process to float64 rounding (the sums are taken in another
# order) at every step. Per-process BatchNorm normalizes with 2-sample statistics, which changes every
# forward pass, so its gradients, its parameters and its running statistics leave the single-process
# run from the first step on.
#
# That equivalence is the evidence that matters for SyncBatchNorm: data-parallel training with it is
# BatchNorm on the global batch, step for step, so everything known about BatchNorm at that batch size
# carries over. Whether statistics over 4 samples train a better network than statistics over 2 is a
# different question, BatchNorm's small-batch problem, and it needs no processes: the lesson on
# choosing a norm measures it in one process, over several seeds, by changing only the number of
# samples each statistic is taken over. A training comparison here would add nothing to that but
# process start-up and communication time. At ImageNet scale, per-GPU batches of 2 cost BatchNorm about
# ten points of accuracy {cite}`wu2018group`, which is what SyncBatchNorm recovers.
#
# ## What it costs in communication
#
# Per BatchNorm layer and training step, each rank sends $2C + 1$ numbers (count, means, squared
# deviations) in the forward all-gather and receives them from every other rank, and takes part in an
# all-reduce of $2C$ numbers in the backward. In float32, for one rank:

# %%
def sync_bytes_per_layer(channels: int, ranks: int) -> tuple[int, int]:
    # all-gather: every rank's statistics end up everywhere
    gathered = ranks * (2 * channels + 1) * 4
    # ring all-reduce: each rank sends and receives about 2(R-1)/R of the data
    reduced = int(2 * (ranks - 1) / ranks * 2 * channels * 4)
    return gathered, reduced


rows = []
for channels in (64, 256, 1024):
    for ranks in (2, 8, 64):
        gathered, reduced = sync_bytes_per_layer(channels, ranks)
        rows.append([channels, ranks, f"{gathered / 1024:.1f} KiB",
                     f"{reduced / 1024:.1f} KiB"])
print(evidence.table(["channels", "ranks", "all-gather", "all-reduce"], rows))

# %% [markdown]
# These are kilobytes per layer, tiny next to the gradient all-reduce of the weights (a model with 25
# million parameters all-reduces 100 MB of float32 gradients every step). What costs, then, should be
# latency: two more collective operations per BatchNorm layer, each a synchronization point that waits
# for the slowest rank, and the all-gather grows linearly with the number of ranks.
#
# We can time it here, on two gloo processes on this machine: `normlib.lab.ddp.step_times` trains two
# copies of the digits LeNet (float32, 16 samples per process) under `DistributedDataParallel`, one
# with SyncBatchNorm and one with per-process BatchNorm, on the same batches, alternating the two step
# by step so that a slow moment of the machine lands on both, and times each training step (forward,
# backward with the gradient all-reduce, update) after a barrier. It also times one all-gather of a
# 16-channel layer's statistics (33 numbers) on its own. Timings vary from run to run and machine to
# machine, so this cell's output is not compared:

# %% tags=["nbval-ignore-output"]
from normlib.lab.ddp import step_times

timed = step_times(world_size=2, per_rank_batch=16, steps=200)
sync_s, local_s = (timed["step_s"][v]
                   for v in ("SyncBatchNorm", "per-process BatchNorm"))
# the two variants alternate, so step i of one and step i of the other ran back to back
paired = [a - b for a, b in zip(sync_s, local_s, strict=True)]
gather = statistics.median(timed["all_gather_s"])
collectives = 2 * timed["sync_layers"]
for variant, seconds in timed["step_s"].items():
    print(f"{variant:<22} median step {1e3 * statistics.median(seconds):6.2f} ms")
print("sync minus per-process, pair by pair: median "
      f"{1e3 * statistics.median(paired):+.2f} ms; sync slower in "
      f"{sum(d > 0 for d in paired) / len(paired):.0%} of pairs")
print(f"one all-gather of 33 numbers alone: {1e6 * gather:.0f} µs median; times"
      f" {collectives} collectives: {1e3 * collectives * gather:.2f} ms")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Time of each of 200 data-parallel training steps of the digits LeNet on two gloo processes of this machine, with SyncBatchNorm and with per-process BatchNorm, the two alternated step by step (sorted, so that the curves show the whole distribution; log scale).", "name": "fig-13-step-times"}, "image": {"alt": "Two rising curves of step time against the rank of the step when sorted, on a logarithmic axis, one for SyncBatchNorm and one for per-process BatchNorm."}}
fig, ax = plt.subplots(figsize=(6, 3.4))
for variant, seconds in timed["step_s"].items():
    ax.plot(sorted(1e3 * t for t in seconds), label=variant)
ax.set(xlabel="steps, sorted by time", ylabel="step time (ms)", yscale="log")
ax.legend(loc="upper left")
fig.tight_layout()

# %% [markdown]
# SyncBatchNorm's extra work in a step is those collectives: their data are about a kilobyte at most
# (241 numbers for the 120-channel layer), so what they cost is their latency, about the all-gather's time above for each of them (the
# all-reduce of the backward is of the same size), and each also waits for the slower process. On
# a model this small, whose steps do little else, that can be a visible share of a step; on a large
# convolutional network, whose steps take hundreds of milliseconds, the same few collectives per
# layer are a small one. Across machines every collective crosses the network, whose latency is
# higher than that of two processes on one host talking through its memory. How large the
# difference comes out here depends on the machine and on what else runs on it: on a busy machine
# the two processes wait for the scheduler more than for each other, and the spread of the steps
# (the figure) can hide the collectives altogether. So the numbers are shown, and the lesson checks
# no claim about them. Where the latency does matter, large jobs synchronize BatchNorm only within
# small groups of ranks (the `process_group` argument).
#
# ## The same code on many machines
#
# Nothing above is specific to one machine. A training script that calls
#
# ```python
# import torch.distributed as dist
# from torch.nn.parallel import DistributedDataParallel
# from normlib.nn import SyncBatchNorm
#
# dist.init_process_group("nccl")  # "gloo" on CPUs; torchrun sets rank and world size
# model = SyncBatchNorm.convert_sync_batchnorm(model)
# model = DistributedDataParallel(model.cuda(local_rank), device_ids=[local_rank])
# ```
#
# runs on two machines with eight GPUs each with
#
# ```bash
# torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d \
#     --rdzv-endpoint=HOST:29500 train.py
# ```
#
# started once on each machine. `torchrun` sets each process's rank, world size and `LOCAL_RANK`, and the
# rendezvous at `HOST:29500` joins them into one process group of 16 ranks.
#
# ## Exercises
#
# 1. `check_sync_batchnorm` uses 4×4 feature maps, so even a rank with one sample has 16 values per
#    channel. Write the same check for `(n, C)` inputs (a `BatchNorm1d` after a linear layer) with two
#    ranks of one sample each, whose own variances are 0: does the combined variance come out right?
#    What do an ordinary `BatchNorm1d` and SyncBatchNorm do when the whole batch holds one sample?
# 2. Why are the weight and bias gradients of SyncBatchNorm *not* all-reduced inside the layer?
# 3. Derive the combination formula for $\sigma^2$ from the law of total variance.
# 4. Run `step_by_step` with `world_size=4, per_rank_batch=1`. Which variant fails, and why? Then try
#    more steps, in float64: how does the SyncBatchNorm run's tiny difference grow, and what does that say
#    about comparing trained numbers digit by digit?
