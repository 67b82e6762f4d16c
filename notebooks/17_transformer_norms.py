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
# # The norm in a Transformer
#
# Today's large language models are Transformers, and their norms are LayerNorm
# {cite}`ba2016layer`, as in the original Transformer {cite}`vaswani2017attention`, or RMSNorm
# {cite}`zhang2019root`, as in LLaMA {cite}`touvron2023llama`. A Transformer
# layer has two sub-blocks, self-attention $A$ and an MLP $M$, each wrapped in a residual
# connection and each with a norm $N$ (statistics of each token's $d$ features, the LayerNorm
# lesson's "text" case). The norm can sit in one of two places. **Post-LN**, the original
# design, normalizes the residual stream itself after each sub-block:
#
# $$
# \begin{aligned}
# x &\leftarrow N_1\big(x + A(x)\big), \\
# x &\leftarrow N_2\big(x + M(x)\big).
# \end{aligned}
# $$
#
# **Pre-LN** normalizes only what enters each sub-block and leaves the residual path alone, so a
# last norm is needed before the output layer $W$:
#
# $$
# \begin{aligned}
# x &\leftarrow x + A\big(N_1(x)\big), \\
# x &\leftarrow x + M\big(N_2(x)\big), \\
# \text{logits} &= W\, N_{\text{final}}(x_L).
# \end{aligned}
# $$
#
# Xiong et al. {cite}`xiong2020layer` showed why the place matters. At initialisation, the
# gradient of the parameters near the output of a post-LN Transformer is large, and its
# expected size does not shrink with the depth $L$; in pre-LN it shrinks like $1/\sqrt{L}$.
# Large steps on those parameters at the full learning rate derail training, which is why
# post-LN Transformers are trained with a learning-rate **warm-up**, and why pre-LN ones can do
# without it. This lesson measures both statements on a small model, looks at what the final
# norm of a pre-LN stack is for, and compares LayerNorm with RMSNorm.
#
# One source article holds that LayerNorm "seems only suitable for RNNs". Every model cited above
# is a counterexample at scale; the end of the lesson puts the question to our small Transformer,
# with a control that has no norm at all.

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
import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch

from normlib import lab
from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.transformer import (
    Block,
    TinyTransformer,
    grad_norms,
    residual_rms,
    sorting_batch,
    train,
)

lab.setup()

# %% [markdown]
# ## The block, in code
#
# `normlib.lab.transformer.Block` is one encoder layer; its `forward` is the two formulas above,
# and `placement` chooses between them:

# %%
print(inspect.getsource(Block.forward))

# %% [markdown]
# `TinyTransformer` stacks such blocks between token and position embeddings and a linear head,
# and adds the final norm for pre-LN. `norm="layer"` builds `normlib.nn.LayerNorm`, `norm="rms"`
# `normlib.nn.RMSNorm`. Weight matrices start Xavier-uniform, as in `torch.nn.Transformer` and
# the original Transformer.
#
# ## Checked against torch.nn
#
# The block's parameters have the names of `torch.nn.TransformerEncoderLayer`'s, so one loads into
# the other; `norm_first=True` is torch's pre-LN. Same weights, same input, in float64:

# %%
x = torch.randn(2, 16, 32, dtype=torch.float64)
for placement in ("post", "pre"):
    ours = Block(32, heads=4, placement=placement).double()
    theirs = torch.nn.TransformerEncoderLayer(
        32, 4, dim_feedforward=128, dropout=0.0, batch_first=True,
        norm_first=placement == "pre", dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    print(lab.cmp(f"{placement}-LN block vs torch", ours(x), theirs(x), atol=1e-12))

tokens, _ = sorting_batch(2, generator=torch.Generator().manual_seed(0))
ours = TinyTransformer(16, 16, norm="rms").double()
theirs = TinyTransformer(16, 16, norm=lambda d: torch.nn.RMSNorm(d)).double()
theirs.load_state_dict(ours.state_dict())
print(lab.cmp("RMSNorm model vs torch", ours(tokens), theirs(tokens), atol=1e-12))

# %% [markdown]
# ## The task: sorting
#
# Each input is 16 tokens drawn from 16 values; the target at position $i$ is the $i$-th smallest
# token. To get a position right the model has to compare every token with every other, which is
# what attention does. Every training batch is fresh (from a seeded generator), so there is no
# training set to overfit; the test set is 512 fixed sequences, and accuracy is the fraction of
# output tokens that are right.

# %%
x, y = sorting_batch(1, generator=torch.Generator().manual_seed(1))
print("input: ", x[0].tolist())
print("target:", y[0].tolist())

# %% [markdown]
# ## Gradients at initialisation
#
# Xiong et al.'s first measurement: the gradient norm of each layer's weight matrices (attention
# and MLP together) for one batch, at initialisation. We take an 8-layer model, so that a trend
# across the layers has room to show, and five seeds; each seed's norms are divided by its first
# layer's, since the loss at initialisation, and with it the scale of every gradient, varies
# from seed to seed.

# %%
INIT_SEEDS = (0, 1, 2, 3, 4)
records = []
for placement in ("post", "pre"):
    for seed in INIT_SEEDS:
        lab.seed_everything(seed)
        model = TinyTransformer(16, 16, d_model=32, layers=8, placement=placement)
        xs, ys = sorting_batch(256, generator=torch.Generator().manual_seed(seed))
        g = grad_norms(model, xs, ys)
        norms = [(a**2 + m**2) ** 0.5 for a, m in zip(g["attn"], g["mlp"], strict=True)]
        records += [{"placement": f"{placement}-LN", "layer": i + 1, "seed": seed,
                     "relative": v / norms[0], "ratio": norms[-1] / norms[0]}
                    for i, v in enumerate(norms)]
init = evidence.Runs(records)
print(f"2 placements x {len(INIT_SEEDS)} seeds, gradients of 8 layers each")

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Gradient norm of each layer's weight matrices at initialisation, relative to the first layer, for an 8-layer post-LN and pre-LN Transformer (mean ± s.e. over 5 seeds).", "name": "fig-17-init-grads"}, "image": {"alt": "Line plot of relative gradient norm against layer index from 1 to 8. The post-LN line rises from 1 towards the output layers; the pre-LN line stays at or below 1 and drifts down."}}
fig, ax = plt.subplots(figsize=(6, 3.4))
init.plot("relative", x="layer", series="placement", ax=ax)
ax.axhline(1.0, color="grey", lw=0.8, ls=":")
ax.set(xlabel="layer (1 = next to the input)",
       ylabel=f"gradient norm / layer 1's\n(mean ± s.e., {len(INIT_SEEDS)} seeds)")
fig.tight_layout()

# %%
ratio = {p: init.estimate("ratio", placement=p, layer=1) for p in ("post-LN", "pre-LN")}
evidence.claim("post-LN: the last layer's gradient is larger than the first's",
               ratio["post-LN"], ">", 1.0, margin=0.2)
evidence.claim("pre-LN: the last layer's gradient is no larger than 1.2 x the first's",
               ratio["pre-LN"], "<", 1.2)
evidence.claim("post-LN's last-to-first ratio exceeds pre-LN's by > 0.5",
                   ratio["post-LN"], ">", ratio["pre-LN"], margin=0.5)

# %% [markdown]
# In post-LN the gradient grows towards the output, as Xiong et al. found: each norm on the
# residual path divides the gradient flowing back through it by the scale of $x + F(x)$, so the
# layers far from the loss receive less and those near it more. In pre-LN the residual path has no
# norm on it, and the gradient does not grow towards the output; here it even shrinks a little.
#
# ## Warm-up and the learning rate
#
# Now training. A 4-layer model ($d = 32$, 4 heads) is trained for 200 Adam steps
# ($\beta = (0.9, 0.98)$ as in {cite}`vaswani2017attention`) on batches of 16 sequences, with a
# learning rate that decays linearly to zero; with warm-up, it first rises linearly over 50 steps.
# Post-LN and pre-LN, with and without warm-up, at a peak learning rate of 0.01 and ten times
# that, three seeds each. The decay, the batches and the initial weights are the same in every
# arm: only the place of the norm and the warm-up change. A run whose loss becomes infinite or NaN
# is stopped and scores 0.

# %%
SEEDS = (0, 1, 2)
LRS = (0.01, 0.1)
probe, _ = sorting_batch(256, generator=torch.Generator().manual_seed(99))


def run(seed, placement="pre", lr=0.01, warmup=50, norm="layer"):
    lab.seed_everything(seed)  # initial weights; `seed` also orders the batches
    model = TinyTransformer(16, 16, d_model=32, heads=4, layers=4,
                            placement=placement, norm=norm)
    out = train(model, steps=200, lr=lr, warmup=warmup, batch_size=16, seed=seed)
    stream = [np.nan] * 5 if out["diverged"] else residual_rms(model, probe)
    return {"test_acc": out["test_acc"], "diverged": float(out["diverged"]),
            "curve": out["loss"], "stream": stream}


ARMS = {("post", 0): "post-LN", ("post", 50): "post-LN + warm-up",
        ("pre", 0): "pre-LN", ("pre", 50): "pre-LN + warm-up"}
grid = {"placement": ["post", "pre"], "lr": list(LRS), "warmup": [0, 50]}
runs = evidence.sweep(run, grid, seeds=SEEDS, desc="placement x lr x warm-up")
runs = evidence.Runs([r | {"arm": ARMS[r["placement"], r["warmup"]]}
                      for r in runs.records])

# %% [markdown]
# The measured test accuracies (%, mean ± s.e. over the seeds; these digits change from machine to
# machine, the statements checked below do not):

# %% tags=["nbval-ignore-output"]
print(runs.table("test_acc", rows="arm", cols="lr", scale=100))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Left: training loss at peak learning rate 0.01 for each placement, with and without warm-up (mean ± s.e. over 3 seeds). Right: test accuracy after 200 steps at the two peak learning rates.", "name": "fig-17-warmup"}, "image": {"alt": "Two panels. Left: four training-loss curves over 200 steps; three fall steadily while post-LN without warm-up stays high. Right: test accuracy at learning rates 0.01 and 0.1 for the four arms; every post-LN arm is near zero at 0.1 and post-LN without warm-up is low at 0.01 too, while pre-LN learns at 0.01 with or without warm-up and keeps learning at 0.1 with warm-up."}}
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(7, 4))
for arm in ARMS.values():
    curves = np.array([r["curve"] for r in runs.select(arm=arm, lr=0.01).records])
    mean = curves.mean(0)
    sem = curves.std(0, ddof=1) / np.sqrt(len(curves))
    steps = 10 * np.arange(len(mean))
    ax_loss.plot(steps, mean, label=arm)
    ax_loss.fill_between(steps, mean - sem, mean + sem, alpha=0.25)
ax_loss.set(xlabel="step", ylabel="training loss", title="peak learning rate 0.01")
ax_loss.legend()
runs.plot("test_acc", x="lr", series="arm", ax=ax_acc, scale=100)
ax_acc.set(xscale="log", xticks=LRS, xticklabels=[str(v) for v in LRS], ylim=(-3, 103),
           xlabel="peak learning rate", title="after 200 steps",
           ylabel=f"test accuracy (%)\nmean ± s.e., {len(SEEDS)} seeds")
ax_acc.minorticks_off()
ax_acc.get_legend().remove()
fig.tight_layout()


# %%
def acc(arm, lr):
    return runs.estimate("test_acc", arm=arm, lr=lr)


def warmup_gain(placement, lr):  # per seed: with warm-up minus without
    chosen = runs.select(placement=placement, lr=lr)
    without = {r["seed"]: r["test_acc"] for r in chosen.select(warmup=0).records}
    return evidence.estimate(r["test_acc"] - without[r["seed"]]
                             for r in chosen.select(warmup=50).records)


evidence.claim("lr 0.01, no warm-up: pre-LN beats post-LN by > 25 points",
               acc("pre-LN", 0.01), ">", acc("post-LN", 0.01), margin=0.25, unit=100)
evidence.claim("lr 0.01: warm-up raises post-LN by > 25 points",
               warmup_gain("post", 0.01), ">", 0.25, unit=100)
evidence.claim("lr 0.01: warm-up changes pre-LN by less than 20 points",
               warmup_gain("pre", 0.01), "≈", 0.0, margin=0.2, unit=100)
evidence.claim("lr 0.01: warm-up does > 20 points more for post-LN than for pre-LN",
               warmup_gain("post", 0.01), ">", warmup_gain("pre", 0.01), margin=0.2,
               unit=100)
post_high = evidence.estimate(r["test_acc"]
                              for r in runs.select(placement="post", lr=0.1).records)
evidence.claim("lr 0.1: post-LN stays below 10%, with and without warm-up",
               post_high, "<", 0.1, unit=100)
evidence.claim("lr 0.1, with warm-up: pre-LN beats post-LN by > 20 points",
               acc("pre-LN + warm-up", 0.1), ">", acc("post-LN + warm-up", 0.1),
               margin=0.2, unit=100)
evidence.claim("lr 0.1: warm-up raises pre-LN by > 10 points",
                   warmup_gain("pre", 0.1), ">", 0.1, unit=100)

# %% [markdown]
# Xiong et al.'s account holds at this scale. At the smaller rate, post-LN without warm-up learns
# little, while pre-LN learns the task without warm-up, and warm-up alone is enough to make
# post-LN learn it too: the place of the norm decides whether warm-up is needed. At ten times the
# rate post-LN fails with or without warm-up, while pre-LN with warm-up still learns part of the
# task in 200 steps: pre-LN tolerates the larger learning rate.
#
# Pre-LN is not free of the learning rate, though. Warm-up changes it little at the smaller rate
# and helps it a lot at the larger one. So the measurement supports "pre-LN needs warm-up far less than
# post-LN", not "pre-LN never needs it". These are 200 steps of a 4-layer model with 3 seeds; the
# exercises push on them.
#
# ## The final norm of a pre-LN stack
#
# In post-LN every block ends with a norm, so the residual stream leaves each block at the scale
# of the norm's gain. In pre-LN nothing rescales the stream: each block adds its output to it.
# The root mean square of the stream after each block, in the trained models (lr 0.01, with
# warm-up), on 256 test sequences:

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Root mean square of the residual stream after the embedding (0) and after each block, in the trained 4-layer models at peak learning rate 0.01 with warm-up (mean ± s.e. over 3 seeds).", "name": "fig-17-stream"}, "image": {"alt": "Line plot of the residual stream's root mean square against the block index from 0 to 4. The pre-LN line climbs with each block; the post-LN line stays nearly flat after the first block."}}
trained = runs.select(lr=0.01, warmup=50).records
stream = evidence.Runs([
    {"placement": r["placement"] + "-LN", "block": i, "seed": r["seed"], "rms": v}
    for r in trained for i, v in enumerate(r["stream"])])
fig, ax = plt.subplots(figsize=(6, 3.4))
stream.plot("rms", x="block", series="placement", ax=ax)
ax.set(xlabel="after block (0 = embedding)", xticks=range(5), ylim=(0, None),
       ylabel=f"stream RMS\n(mean ± s.e., {len(SEEDS)} seeds)")
fig.tight_layout()


# %%
def growth(placement):  # per seed: RMS after the last block / after the embedding
    return evidence.estimate(r["stream"][-1] / r["stream"][0]
                             for r in trained if r["placement"] == placement)


evidence.claim("trained pre-LN: the stream leaves the stack > 2x larger than it enters",
               growth("pre"), ">", 2.0)
evidence.claim("that growth factor exceeds post-LN's by more than 1",
                   growth("pre"), ">", growth("post"), margin=1.0)

# %% [markdown]
# The stream that reaches the top of a pre-LN stack has a scale that training chooses freely and
# keeps changing. The final norm hands the output layer what every post-LN block hands the next
# one: features at a fixed scale. Without it the logits' scale would follow the stream's (an
# exercise removes it). Pre-LN models, LLaMA's among them {cite}`touvron2023llama`, keep this one
# norm at the end.
#
# ## LayerNorm or RMSNorm
#
# RMSNorm drops LayerNorm's mean subtraction and bias (RMSNorm lesson). The same pre-LN model with
# RMSNorm in all nine places, at lr 0.01 with warm-up, against the LayerNorm runs above:

# %%
rms_runs = evidence.sweep(lambda seed: run(seed, "pre", 0.01, 50, norm="rms"),
                          seeds=SEEDS, desc="pre-RMSNorm")
rms_acc, ln_acc = rms_runs.estimate("test_acc"), acc("pre-LN + warm-up", 0.01)
evidence.claim("RMSNorm and LayerNorm end within 3 points of each other",
                   rms_acc, "≈", ln_acc, margin=0.03, unit=100)

# %% tags=["nbval-ignore-output"]
print(f"test accuracy (%): LayerNorm {ln_acc.scaled(100):.1f}, "
      f"RMSNorm {rms_acc.scaled(100):.1f}")

# %% [markdown]
# On quality the two are interchangeable here, as Zhang & Sennrich report for translation
# {cite}`zhang2019root`. Their argument for RMSNorm is speed: one reduction instead of two, no
# subtraction, no bias. The timing section at the end measures it.
#
# ## Is LayerNorm only for RNNs?
#
# The source article's claim, tested the way the BatchNorm lesson tested BatchNorm: the same pre-LN
# Transformer with **no norm** anywhere (the nine norms replaced by the identity), with warm-up, at
# both learning rates.

# %%
none_runs = evidence.sweep(lambda seed, lr: run(seed, "pre", lr, 50, norm="none"),
                           {"lr": list(LRS)}, seeds=SEEDS, desc="no norm")
none_acc = {lr: none_runs.estimate("test_acc", lr=lr) for lr in LRS}
evidence.claim("lr 0.1 with warm-up: every run without a norm diverges",
               none_runs.estimate("diverged", lr=0.1), "≈", 1.0)
evidence.claim("lr 0.1 with warm-up: pre-LN beats no norm by > 20 points",
               acc("pre-LN + warm-up", 0.1), ">", none_acc[0.1], margin=0.2, unit=100)
evidence.claim("lr 0.01 with warm-up: no norm is within 5 points of pre-LN",
                   none_acc[0.01], "≈", acc("pre-LN + warm-up", 0.01), margin=0.05,
                   unit=100)

# %% tags=["nbval-ignore-output"]
for lr in LRS:
    print(f"lr {lr}: no norm {none_acc[lr].scaled(100):.1f}%, "
          f"pre-LN {acc('pre-LN + warm-up', lr).scaled(100):.1f}%")

# %% [markdown]
# In this 4-layer model, at the smaller learning rate, the norm is not needed: without it the model
# learns the task as well. At the larger rate the model without a norm diverges, while pre-LN keeps
# learning. That is what normalization buys here, as the BatchNorm lesson found for CNNs: a wider
# range of learning rates that train. And the previous sections showed that *where* the LayerNorm
# sits decides whether the model trains at all without warm-up. So LayerNorm is far from "only for
# RNNs"; its home today is the Transformer, because its statistics, like an RNN's, come from one
# token's features and never from the batch or the sequence length.
#
# ## How fast is it?
#
# One training step (forward, backward, Adam) of the 4-layer model with each norm, and each norm
# alone on a `(1024, 1024)` float32 activation, on the GPU when there is one. (Timings vary from
# run to run and machine to machine, so this cell's output is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import benchmark, default_device, device_name

device = default_device()
print("device:", device_name(device))
xs, ys = sorting_batch(16, generator=torch.Generator().manual_seed(0))
xs, ys = xs.to(device), ys.to(device)
for norm in ("layer", "rms"):
    model = TinyTransformer(16, 16, layers=4, norm=norm).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(model=model, opt=opt):
        loss = torch.nn.functional.cross_entropy(model(xs).flatten(0, 1), ys.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    timing = benchmark(step, device, min_run_time=0.2)
    print(f"{norm + ' norm model':<17} training step: {timing}")
xb = torch.randn(1024, 1024, device=device, requires_grad=True)
dy = torch.randn_like(xb)
for name, layer in {"LayerNorm": N.LayerNorm(1024), "RMSNorm": N.RMSNorm(1024)}.items():
    layer = layer.to(device)
    timing = benchmark(lambda f=layer: f(xb).backward(dy), device, min_run_time=0.2)
    print(f"{name:<17} forward+backward: {timing}")

# %% [markdown]
# RMSNorm saves a reduction and a subtraction in each of the nine norms; how much of a training
# step that is depends on everything else the step does, which is why the norms are also timed
# alone. On a GPU both norms read and write the same bytes, and those bytes bound their speed
# (speed lesson).
#
# ## Exercises
#
# 1. Remove the final norm of the pre-LN model (`final_norm=False`) and train it at lr 0.01 and
#    0.1 with warm-up. What happens to the scale of the logits during training, and to the
#    accuracy?
# 2. Repeat the gradient measurement at initialisation for 2, 4, 8 and 16 layers and plot the
#    last layer's gradient norm against the depth for both placements. Xiong et al. predict that
#    post-LN's does not shrink with depth and pre-LN's shrinks like $1/\sqrt{L}$. Do you see it?
# 3. Find, for post-LN at lr 0.01 and at 0.03, the shortest warm-up that makes all three seeds
#    learn the task. Does it grow with the learning rate?
# 4. Replace the norms with `normlib.nn.BatchNorm1d` over the features of every token of the
#    batch (reshape `(B, T, d)` to `(B*T, d)`). What changes between training and evaluation, and
#    what happens with a batch of one sequence?
