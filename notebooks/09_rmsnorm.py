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
# # RMSNorm
#
# LayerNorm does two things: it re-centres each sample (subtracts the mean) and re-scales it (divides by
# the standard deviation). RMSNorm {cite}`zhang2019root` keeps only the re-scaling:
#
# $$
# \begin{aligned}
# \mathrm{RMS}(x) &= \sqrt{\frac{1}{m}\sum_{k=1}^m x_k^2 + \epsilon}, \\
# y &= \frac{x}{\mathrm{RMS}(x)} \odot \gamma ,
# \end{aligned}
# $$
#
# with no $\beta$. The argument of the paper is that re-scaling invariance is what matters for training
# and re-centring can be dropped, which saves a reduction and a subtraction. It is the norm of many
# current large language models, LLaMA among them {cite}`touvron2023llama`. In PyTorch it is
# `torch.nn.RMSNorm`, whose default `eps=None` needs care: it is the machine epsilon of the dtype the
# statistics are *computed* in, which is float32 for float16, bfloat16 and float32 input (and float64
# for float64 input), not the epsilon of the input's own dtype. A section below shows why.

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

import normlib
from normlib import functional as NF
from normlib import lab
from normlib import reference as R
from normlib.lab import evidence

lab.setup()

# %% [markdown]
# ## In NumPy
#
# A batch of 2 sequences of 3 tokens, each a vector of $m = 8$ features. RMSNorm normalizes every
# token over its 8 features, with one statistic per token, the mean square, and no mean:

# %%
rng = np.random.default_rng(0)
x_np = rng.normal(loc=2.0, scale=3.0, size=(2, 3, 8))
gamma, eps = rng.normal(1, 0.1, size=8), 1e-6

ms = (x_np**2).mean(axis=2, keepdims=True)   # one mean square per token
y_np = x_np / np.sqrt(ms + eps) * gamma

print("statistics shape:", ms.shape, "-> one mean square per token:", ms.size)
x_hat = x_np / np.sqrt(ms + eps)
print("x_hat mean square per token ~ 1:", bool(np.allclose((x_hat**2).mean(2), 1)),
      "| its mean is not 0:", bool(not np.allclose(x_hat.mean(2), 0)))
print(lab.cmp("by hand vs reference", y_np, R.rms_norm(x_np, 8, gamma, eps), atol=1e-12))

# %% [markdown]
# ## In torch, at several shapes
#
# `normlib.functional.rms_norm` takes `torch.nn.functional.rms_norm`'s arguments: the input, the
# trailing `normalized_shape` to take the statistic over, an optional weight and `eps`. Against the
# NumPy reference and against torch, for text-like and image-like inputs, over one or several
# trailing dimensions, with and without a weight, in float64 and float32:

# %%
import inspect

for name, f in (("normlib", NF.rms_norm), ("torch", torch.nn.functional.rms_norm)):
    print(f"{name:<8}", list(inspect.signature(f).parameters))

cases = [((2, 3, 8), (8,)), ((4, 10, 32), (32,)), ((8, 16, 5, 5), (16, 5, 5)),
         ((8, 16, 5, 5), (5, 5)), ((7, 64), (64,))]
gen = torch.Generator().manual_seed(0)
for shape, normalized_shape in cases:
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xt = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)
        wt = torch.randn(normalized_shape, generator=gen, dtype=torch.float64).to(dtype)
        for weight in (None, wt):
            ours = NF.rms_norm(xt, normalized_shape, weight)
            theirs = torch.nn.functional.rms_norm(xt, normalized_shape, weight)
            numpy = R.rms_norm(xt.double().numpy(), normalized_shape,
                               None if weight is None else weight.double().numpy(),
                               eps=torch.finfo(dtype).eps)
            label = f"{shape} over {normalized_shape}, {str(dtype)[6:]}"
            label += ", weight" if weight is not None else ""
            print(label)
            print("  ", lab.cmp("normlib vs torch", ours, theirs, atol=atol))
            print("  ", lab.cmp("normlib vs numpy", ours, numpy, atol=atol))

# %% [markdown]
# The module, `normlib.nn.RMSNorm`, against `torch.nn.RMSNorm`: the same `state_dict`, and the same
# output and gradients (of the input and of $\gamma$):

# %%
theirs = torch.nn.RMSNorm(32)
torch.nn.init.normal_(theirs.weight, 1.0, 0.2)
mine = normlib.nn.RMSNorm(32)
mine.load_state_dict(theirs.state_dict())
x1 = (torch.randn(4, 10, 32) * 3 + 1).requires_grad_()
x2 = x1.detach().clone().requires_grad_()
dy = torch.randn(4, 10, 32)
y1, y2 = mine(x1), theirs(x2)
y1.backward(dy)
y2.backward(dy)
print(lab.cmp("output", y1, y2, atol=1e-5))
print(lab.cmp("grad of x", x1.grad, x2.grad, atol=1e-5))
print(lab.cmp("grad of gamma", mine.weight.grad, theirs.weight.grad, atol=1e-4))

# %% [markdown]
# ## Equal to LayerNorm on zero-mean input
#
# If every sample already has mean zero, then $\frac{1}{m}\sum_k x_k^2$ *is* the variance, and RMSNorm and
# LayerNorm (without affine parameters) agree:

# %%
x = torch.randn(8, 64, dtype=torch.float64) * 3 + 2
centred = x - x.mean(-1, keepdim=True)
print(lab.cmp("RMSNorm vs LN, centred x", NF.rms_norm(centred, [64], eps=1e-5),
              NF.layer_norm(centred, [64], eps=1e-5), atol=1e-12))
print(lab.cmp("RMSNorm vs LN, raw x", NF.rms_norm(x, [64], eps=1e-5),
              NF.layer_norm(x, [64], eps=1e-5), atol=1e-12))

# %% [markdown]
# ## What it is invariant to
#
# Both norms are invariant to re-scaling a sample, $x \to a x$ ($a > 0$), up to the small effect of
# $\epsilon$. Only LayerNorm is invariant to shifting it, $x \to x + b$:

# %%
norms = {"LayerNorm": lambda t: NF.layer_norm(t, [64]),
         "RMSNorm": lambda t: NF.rms_norm(t, [64])}
print(f"{'':<11}{'x -> 5x':<12}{'x -> x + 3':<12}  (same output within 1e-4?)")
for name, f in norms.items():
    same = [torch.allclose(f(t), f(x), rtol=0, atol=1e-4) for t in (5 * x, x + 3)]
    words = ["invariant" if s else "changes" for s in same]
    print(f"{name:<11}{words[0]:<12}{words[1]:<12}")

# %% [markdown]
# What does losing the shift invariance cost? The re-centring removes each token's own mean over its
# features, a different number for every token. Nothing downstream can do that job: a bias after
# the norm adds the same vector to every token, so it cannot cancel a mean that varies from token to
# token. The paper's
# argument is different: that the re-centring is not what makes LayerNorm help, so that a network
# trains as well without it, and each call saves a reduction and a subtraction
# {cite}`zhang2019root`. That is an empirical claim, which we test next.
#
# ## What dropping the re-centring costs: an experiment
#
# The small pre-LN Transformer of the Transformer lesson (lesson 17: 4 blocks, width 32, 4 heads,
# `normlib.lab.transformer`) learns to sort 16 tokens, with LayerNorm or with RMSNorm in all nine
# places, and nothing else changed: the same initial weights and batches for each seed (the norms
# draw no random numbers, so a seed gives both arms the same start), Adam at a peak learning rate of
# 0.01 with 50 warm-up steps, 400 steps, 5 seeds. Besides the loss, every norm records the quantity
# re-centring removes, at every training step: for each token, the share of its mean square that is
# its mean, $\bar{x}^2 / \overline{x^2}$ (0 for a centred token, 1 for a constant one, about
# $1/32$ for a random direction in 32 dimensions), averaged over the batch's tokens and the nine
# norms. LayerNorm removes that share before it scales; RMSNorm keeps it in its output.

# %%
from normlib.lab.transformer import TinyTransformer, train

T_SEEDS, T_STEPS, EVERY = (0, 1, 2, 3, 4), 400, 20


def mean_share_recorder(record):
    """A forward pre-hook: the mean over tokens of (feature mean)^2 / (mean square)."""
    def hook(module, args):
        if module.training:
            x = args[0].detach()
            record.append((x.mean(-1).square() / x.square().mean(-1)).mean().item())
    return hook


def run_transformer(seed, norm):
    lab.seed_everything(seed)  # initial weights; `seed` also orders the batches
    model = TinyTransformer(16, 16, d_model=32, heads=4, layers=4, placement="pre",
                            norm=norm)
    kinds = (normlib.nn.LayerNorm, normlib.nn.RMSNorm)
    norms = [m for m in model.modules() if isinstance(m, kinds)]
    records = [[] for _ in norms]
    for m, record in zip(norms, records, strict=True):
        m.register_forward_pre_hook(mean_share_recorder(record))
    out = train(model, steps=T_STEPS, lr=0.01, warmup=50, batch_size=16, seed=seed,
                record_every=EVERY)
    per_step = [sum(v) / len(v) for v in zip(*records, strict=True)]
    share = [sum(per_step[i:i + EVERY]) / EVERY for i in range(0, T_STEPS, EVERY)]
    return {"test_loss": out["test_loss"], "test_acc": out["test_acc"],
            "curve": out["loss"], "share": share, "final_share": share[-1],
            "max_share": max(share)}


t_runs = evidence.sweep(run_transformer, {"norm": ["layer", "rms"]}, seeds=T_SEEDS,
                        desc="LayerNorm, RMSNorm")

# %% tags=["nbval-ignore-output"]
NAMES = {"layer": "LayerNorm", "rms": "RMSNorm"}
rows = []
for norm, name in NAMES.items():
    rows.append([name] + [f"{t_runs.estimate(k, norm=norm).scaled(f):.{d}f}"
                          for k, f, d in (("test_loss", 1, 3), ("test_acc", 100, 1),
                                          ("final_share", 1, 4), ("max_share", 1, 4))])
print(f"mean ± s.e. over {len(T_SEEDS)} seeds")
print(evidence.table(["norm", "test loss", "test acc. (%)", "mean share, end",
                      "mean share, max"], rows))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The small pre-LN Transformer with LayerNorm or RMSNorm in all nine places, 5 seeds. Left: training loss. Right: the share of each token's mean square that is its feature mean, at the norms' inputs, averaged over tokens and the nine norms (mean and standard error over the seeds; the dotted line is 1/32, a random direction).", "name": "fig-09-recentring"}, "image": {"alt": "Two line charts over 400 training steps, one line per norm with error bars. Left: the training losses of LayerNorm and RMSNorm fall together from about 3.4 to near 0.1. Right: the mean share at the norms' inputs starts near 0.03 for both networks; RMSNorm's stays near the dotted reference line at 1/32 (about 0.03), while LayerNorm's drops within the first 100 steps to about half that and stays there."}}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.3))
for i, (norm, name) in enumerate(NAMES.items()):
    sub = t_runs.select(norm=norm)
    for ax, key in zip(axes, ("curve", "share"), strict=True):
        curves = np.array([r[key] for r in sub.records])
        steps = np.arange(curves.shape[1]) * EVERY + (EVERY / 2 if key == "share" else 0)
        sem = curves.std(0, ddof=1) / np.sqrt(len(curves))
        ax.errorbar(steps, curves.mean(0), yerr=sem, color=f"C{i}", capsize=2,
                    label=name)
axes[1].axhline(1 / 32, color="0.5", lw=0.8, ls=":")
axes[0].set(xlabel="training step",
            ylabel=f"training loss (mean ± s.e., {len(T_SEEDS)} seeds)")
axes[1].set(xlabel="training step", ylabel="mean² / mean square at the norms",
            ylim=(0, None))
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs show (paired by seed: both arms share each seed's start and batches):

# %%
ln, rms_est = (t_runs.estimate("test_loss", norm=n) for n in ("layer", "rms"))
evidence.claim("test loss: RMSNorm's is not higher than LayerNorm's by 0.01 or more",
               rms_est, "<", ln, margin=-0.01, paired=True)
evidence.claim("RMSNorm's inputs: the squared feature mean, averaged over tokens and "
               "norms, stays under 10% of the mean square",
               t_runs.estimate("max_share", norm="rms"), "<", 0.1)
evidence.claim("at the end, RMSNorm's inputs carry a larger mean share than LayerNorm's",
               t_runs.estimate("final_share", norm="rms"), ">",
               t_runs.estimate("final_share", norm="layer"), paired=True)

# %% [markdown]
# Dropping the re-centring cost little here: with 95% confidence, RMSNorm's test loss after 400
# steps is less than 0.01 above LayerNorm's, at the one learning rate both arms were trained with (a
# margin that is not small next to losses this low). Lesson 17 compares the two in accuracy, at the
# same rate with warm-up. The right panel suggests why the cost can be small: the quantity
# re-centring would remove stays small without it. Averaged over tokens and the nine norms, the
# squared feature mean at the inputs of RMSNorm's network stays under a tenth of the mean square
# throughout training, near the $1/32$ that a random direction holds. So this task gives the tokens
# no common offset for re-centring to remove, and the experiment cannot show what re-centring
# protects against. At the end of training, LayerNorm's network carries less of it at its norms'
# inputs (its residual stream is not centred either; each LayerNorm centres only its own output).
# Where a large common offset does appear, RMSNorm would pass it on; exercise 3 creates one. The
# paper's case for RMSNorm is not quality but speed: it reports comparable results with running
# times 7% to 64% lower than LayerNorm's on its models {cite}`zhang2019root`. Whether an
# implementation delivers that depends on the implementation, as the next sections show for torch's
# CPU implementation.
#
# ## The default epsilon
#
# $\epsilon$ is there to avoid a division by zero, and it should be negligible next to the mean
# square of any real activation. The machine epsilon of bfloat16 is not: it is $2^{-7} \approx
# 0.0078$, while activations with an RMS of 0.01 have a mean square of $10^{-4}$. torch's
# `eps=None` avoids this: it takes the epsilon of float32, the dtype in which it computes the
# statistics of half- and bfloat16 input. normlib follows the same rule. Both, in bfloat16, on activations with an RMS of
# about 0.01, next to what bfloat16's own epsilon would do:

# %%
x16 = (torch.randn(8, 1024) * 0.01).bfloat16()
print(f"float32 eps:  {torch.finfo(torch.float32).eps:.3g}")
print(f"bfloat16 eps: {torch.finfo(torch.bfloat16).eps:.3g}")
ours, theirs = normlib.nn.RMSNorm(1024).bfloat16(), torch.nn.RMSNorm(1024).bfloat16()
print(lab.cmp("bf16 eps=None normlib/torch", ours(x16), theirs(x16)))


def rms(t):
    return t.float().square().mean(-1).sqrt().mean().item()


bf16_eps = torch.finfo(torch.bfloat16).eps
with_bf16_eps = torch.nn.functional.rms_norm(x16, [1024], eps=bf16_eps)
print(f"RMS of the input:                     {rms(x16):.3f}")
print(f"RMS of the output, eps=None:          {rms(theirs(x16)):.2f}")
print(f"RMS of the output, bfloat16's eps:    {rms(with_bf16_eps):.2f}")

# %% [markdown]
# With float32's epsilon the output has RMS 1, as a norm's output should. With bfloat16's epsilon the
# "normalized" output would keep only about a tenth of that: $\epsilon$ would dominate the
# statistics of every small activation.
#
# ## How fast is it?
#
# Forward and backward of LayerNorm and RMSNorm on a `(4096, 1024)` float32 activation, torch's native
# modules and normlib's, on the GPU when there is one. The timing turns off the deterministic
# algorithms the lessons use (they fill every new tensor with NaN first, extra work torch does not do
# by default) and takes the gradients with `torch.autograd.grad`, so that no call adds into a `.grad`
# of the previous one. (Timings vary, so this cell's output is not checked.)

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import compare, default_device, device_name

device = default_device()
xb = torch.randn(4096, 1024, device=device, requires_grad=True)
dy = torch.randn_like(xb)
print("device:", device_name(device))
layers = {  # timed in interleaved rounds, so that drifts of the machine hit all four
    "torch LayerNorm": torch.nn.LayerNorm(1024),
    "torch RMSNorm": torch.nn.RMSNorm(1024),
    "normlib LayerNorm": normlib.nn.LayerNorm(1024),
    "normlib RMSNorm": normlib.nn.RMSNorm(1024),
}
torch.use_deterministic_algorithms(False)
steps = {}
for name, layer in layers.items():
    layer = layer.to(device)

    def step(layer=layer):
        return torch.autograd.grad(layer(xb), (xb, *layer.parameters()), dy)

    steps[name] = step
for name, timing in compare(steps, device).items():
    print(f"{name:<18} forward+backward: {timing}")
torch.use_deterministic_algorithms(True, warn_only=True)  # as lab.setup() left it

# %% [markdown]
# The least memory the two norms must move is the same; the speed lesson measures how close each
# implementation gets to that bound.
#
# ## Why torch's RMSNorm is the slower one on the CPU
#
# On the CPU the timing above usually shows torch's RMSNorm well behind its LayerNorm, although RMSNorm
# does less arithmetic (several times its time, forward+backward, in the speed lesson's recorded
# results, which print the ratio at every width). The profiler says why: it lists the
# operators each call runs and the time spent in each (`normlib.lab.timing.profile_ops`, built on
# `torch.profiler`). Forward and backward of torch's two functions on the same `(4096, 1024)` float32
# tensor, on the CPU, with the operators that take 1% of the time or more:

# %% tags=["nbval-ignore-output"]
from normlib.lab.timing import profile_torch_layer_and_rms_norm

profiles = profile_torch_layer_and_rms_norm(4096, 1024)
for name in profiles:
    total = sum(op.self_ms for op in profiles[name])
    print(f"torch {name}: {total:.2f} ms"
          f" in {sum(op.calls for op in profiles[name]):.0f} operator calls")
    for op in profiles[name]:
        if op.self_ms >= 0.01 * total:
            print(f"  {op.name:<34} {op.calls:3.0f} calls {op.self_ms:7.3f} ms"
                  f" {op.self_ms / total:4.0%}")

# %% [markdown]
# LayerNorm is one fused kernel each way, `native_layer_norm` and `native_layer_norm_backward`: each
# reads its inputs once, row by row, and keeps a row in cache between the statistics and the output.
# RMSNorm, in the torch this book is tested with (2.13), is a *composite*: it goes through an operator
# named `_fused_rms_norm`, which on the CPU calls one tensor operator per step of the formula (`pow`,
# `mean`, `add_`, `rsqrt`, `mul`, `mul`), and its backward is autograd through those steps:
# multiplications (ten `mul` calls in all), sums, a division, powers and copies. Most of those read
# or write a full-size tensor, and each such pass costs a large fraction of what a whole fused
# LayerNorm kernel costs; the multiplications alone take more time than LayerNorm's two kernels
# together. This describes torch 2.13's CPU implementation (operator names and counts are torch's
# internals, and other versions may fuse more), so the checks below run on torch 2.13 only:

# %%
def total_ms(ops, names=None):
    return sum(op.self_ms for op in ops if names is None or op.name in names)


def share(ops, names):
    return total_ms(ops, names) / total_ms(ops)


fused = {"aten::native_layer_norm", "aten::native_layer_norm_backward"}
rms = profiles["RMSNorm"]
if torch.__version__.startswith("2.13"):
    evidence.claim("LayerNorm: its two fused kernels take over 90% of its operator time",
                   share(profiles["LayerNorm"], fused), ">", 0.9)
    calls = {op.name: op.calls for op in rms}
    evidence.claim("RMSNorm: it runs _fused_rms_norm once and mul ten times",
                   abs(calls.get("aten::_fused_rms_norm", 0) - 1)
                   + abs(calls.get("aten::mul", 0) - 10), "<", 0.5)
    evidence.claim("RMSNorm: over 15 calls to operators that take 1% of its time or "
                   "more",
                   sum(op.calls for op in rms if op.self_ms >= 0.01 * total_ms(rms)),
                   ">", 15)
    evidence.claim("RMSNorm: its multiplications alone take longer than LayerNorm's two "
                   "kernels", total_ms(rms, {"aten::mul"}), ">",
                   total_ms(profiles["LayerNorm"], fused))
else:
    print(f"These statements describe torch 2.13's CPU operators; this is torch "
          f"{torch.__version__}, whose operators may differ (see the profile above).")

# %% [markdown]
# normlib's RMSNorm is, in eager mode, also a composition of tensor ops, each a full pass over
# memory; under
# `torch.compile` it becomes a few fused loops (one for the forward; two for the backward, whose
# $\partial L/\partial\gamma$ is a column sum); the speed lesson compares the two in its recorded
# results.
#
# ## Exercises
#
# 1. Derive $\partial y / \partial x$ for RMSNorm and compare it with LayerNorm's. Which terms disappear?
# 2. Below which RMS does `eps=None` (float32's epsilon) shrink the output of RMSNorm by more
#    than 1%? Answer from the formula, then check with float32 input. Do the same for `eps=1e-5`
#    and `eps=1e-6`, common explicit choices in language models.
# 3. Give every token a large common offset (add 3 to each feature of the embeddings, through a
#    forward hook on `model.embed`) and rerun both arms of the experiment. Which network's mean
#    share grows, and does its loss follow?
