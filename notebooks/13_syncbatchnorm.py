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
# N = \sum_r n_r, \qquad \mu = \frac{1}{N}\sum_r n_r \mu_r, \qquad
# \sigma^2 = \frac{1}{N}\sum_r \big(M_r + n_r(\mu_r - \mu)^2\big).
# $$
#
# Weighting by $n_r$ makes uneven batches right (the last batch of an epoch, or a rank with a single
# sample), and combining deviations rather than raw sums of squares avoids the cancellation of
# $E[x^2] - E[x]^2$. In the backward pass the BatchNorm gradient (see the backprop lesson) needs two
# sums over the batch, $\sum \hat{g}$ and $\sum \hat{g}\hat{x}$; they are all-reduced across ranks.
#
# `normlib.nn.SyncBatchNorm` does this on top of `torch.distributed`, so it runs with the gloo backend on
# CPUs (as in this lesson: two processes on this machine) and with NCCL on GPUs. PyTorch's own
# `torch.nn.SyncBatchNorm` supports only GPUs.

# %%
import matplotlib.pyplot as plt

from normlib import lab
from normlib.lab.ddp import check_sync_batchnorm, train_data_parallel

lab.seed_everything(0)

# %% [markdown]
# ## Exactly BatchNorm on the global batch
#
# Three processes holding 2, 1 and 4 samples: their SyncBatchNorm outputs, input gradients and running
# statistics, put together, against one `torch.nn.BatchNorm2d` on all 7 samples (float64):

# %%
for name, diff in check_sync_batchnorm([2, 1, 4]).items():
    print(f"{name:<15} max |difference| < 1e-12: {diff < 1e-12}")

# %% [markdown]
# ## Training data parallel with tiny per-process batches
#
# The LeNet of the earlier lessons, trained on the digits with `DistributedDataParallel` over two gloo
# processes with 2 samples each (a global batch of 4), with three choices of norm after each
# convolution: BatchNorm (each process normalizes over its own 2 samples), SyncBatchNorm (over all 4),
# and GroupNorm (over each sample alone). `normlib.lab.ddp.train_data_parallel` starts the
# processes, and converts the model with `SyncBatchNorm.convert_sync_batchnorm` for the second case.

# %%
runs = {norm: train_data_parallel(norm, world_size=2, per_rank_batch=2, epochs=3, lr=0.01)
        for norm in ("batchnorm", "syncbatchnorm", "groupnorm")}

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for norm, h in runs.items():
    ax.plot(range(1, len(h["test_acc"]) + 1), [100 * a for a in h["test_acc"]], marker="o", label=norm)
ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="2 processes x 2 samples", ylim=(50, 100))
ax.legend()
fig.tight_layout()
for norm, h in runs.items():
    print(f"{norm:<14} test accuracy after each epoch: {[f'{100 * a:.1f}%' for a in h['test_acc']]}")

# %% [markdown]
# At this scale the three end close together, and one run on 360 test images cannot rank them: 2 versus 4
# samples per statistic is a small change for a network this size. The point of the experiment is that
# the same training script runs unchanged with any of the three norms across processes. The effect
# SyncBatchNorm exists for shows at ImageNet scale, where per-GPU batches of 2 cost BatchNorm about ten
# points of accuracy {cite}`wu2018group`.
#
# ## What it costs in communication
#
# Per BatchNorm layer and training step, each rank sends $2C + 1$ numbers (count, means, squared
# deviations) in the forward all-gather and receives them from every other rank, and takes part in an
# all-reduce of $2C$ numbers in the backward. In float32, for one rank:

# %%
def sync_bytes_per_layer(channels: int, ranks: int) -> tuple[int, int]:
    gathered = ranks * (2 * channels + 1) * 4  # all-gather: every rank's statistics end up everywhere
    reduced = int(2 * (ranks - 1) / ranks * 2 * channels * 4)  # ring all-reduce: ~2(R-1)/R of the data
    return gathered, reduced


print(f"{'channels':>8}{'ranks':>7}{'forward all-gather':>20}{'backward all-reduce':>21}")
for channels in (64, 256, 1024):
    for ranks in (2, 8, 64):
        gathered, reduced = sync_bytes_per_layer(channels, ranks)
        print(f"{channels:>8}{ranks:>7}{gathered / 1024:>17.1f} KiB{reduced / 1024:>18.1f} KiB")

# %% [markdown]
# These are kilobytes per layer, tiny next to the gradient all-reduce of the weights (a model with 25
# million parameters all-reduces 100 MB of float32 gradients every step). What costs is latency: two more
# collective operations per BatchNorm layer, each a synchronization point that waits for the slowest
# rank, and the all-gather grows linearly with the number of ranks. That is why large jobs often
# synchronize BatchNorm only within small groups of ranks (the `process_group` argument).
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
# dist.init_process_group("nccl")            # "gloo" on CPUs; rank and world size come from torchrun
# model = SyncBatchNorm.convert_sync_batchnorm(model)
# model = DistributedDataParallel(model.cuda(local_rank), device_ids=[local_rank])
# ```
#
# runs on two machines with eight GPUs each with
#
# ```bash
# torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py
# ```
#
# started once on each machine. `torchrun` sets each process's rank, world size and `LOCAL_RANK`, and the
# rendezvous at `HOST:29500` joins them into one process group of 16 ranks.
#
# ## Exercises
#
# 1. Show with `check_sync_batchnorm` that a rank with a batch of one sample is handled correctly. What
#    does an ordinary BatchNorm do with one sample per channel in training?
# 2. Why are the weight and bias gradients of SyncBatchNorm *not* all-reduced inside the layer?
# 3. Derive the combination formula for $\sigma^2$ from the law of total variance.
