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
# # Instance Normalization
#
# Instance Normalization {cite}`ulyanov2016instance` takes the statistics of **one channel of one sample**
# over its spatial positions:
#
# $$
# \mu_{nc} = \frac{1}{HW}\sum_{h,w} x_{nchw}, \qquad
# \sigma^2_{nc} = \frac{1}{HW}\sum_{h,w} (x_{nchw} - \mu_{nc})^2, \qquad
# y_{nchw} = \gamma_c \frac{x_{nchw} - \mu_{nc}}{\sqrt{\sigma^2_{nc} + \epsilon}} + \beta_c .
# $$
#
# It was introduced for style transfer, and the reason is visible on a photograph: the per-channel mean
# and standard deviation of an image are much of its "style" (brightness, contrast, colour cast), and
# InstanceNorm removes exactly those.

# %%
import matplotlib.pyplot as plt
import torch

from normlib import lab
from normlib import nn as N
from normlib.lab.data import sample_photos

lab.seed_everything(0)

# %% [markdown]
# ## On real photos
#
# scikit-learn ships two photographs (a temple and a flower). Each is a `(3, H, W)` image: three colour
# channels. Their per-channel statistics:

# %%
photos = sample_photos(stride=4)  # (2, 3, 107, 160), values in [0, 1]
mean, std = photos.mean((2, 3)), photos.std((2, 3))
for name, m, s in zip(("temple", "flower"), mean, std, strict=True):
    print(f"{name}: channel means (R, G, B) = {[round(v, 3) for v in m.tolist()]}, "
          f"stds = {[round(v, 3) for v in s.tolist()]}")

# %% [markdown]
# InstanceNorm sets every channel of every image to mean 0 and standard deviation 1. To look at the result
# we map it back to pixel values with one *fixed* mean and spread (0.5 and 0.2) for all channels:

# %%
inorm = N.InstanceNorm2d(3)
normalized = inorm(photos)
shown = (0.5 + 0.2 * normalized).clamp(0, 1)
fig, axes = plt.subplots(2, 2, figsize=(9, 5.6))
for i, name in enumerate(("temple", "flower")):
    axes[i, 0].imshow(photos[i].permute(1, 2, 0))
    axes[i, 0].set_title(f"{name}: original")
    axes[i, 1].imshow(shown[i].permute(1, 2, 0))
    axes[i, 1].set_title(f"{name}: InstanceNorm, shown at mean 0.5, std 0.2")
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
print("after InstanceNorm, per-channel mean:", normalized.mean((2, 3)).abs().max().item() < 1e-5,
      "| std:", [round(v, 3) for v in normalized.std((2, 3), unbiased=False).flatten().tolist()])

# %% [markdown]
# What is removed: each image's overall brightness and contrast, and the colour cast (the flower photo's
# strong red and its dark background, the temple's bright sky). What remains: the edges, textures and
# shapes, the *content*.
#
# ## Style is the per-channel statistics
#
# If the statistics are the style, then giving one image the other's statistics should transfer its
# style. This is the idea behind adaptive instance normalization (AdaIN) in style transfer: normalize the
# content image, then scale and shift each channel with the style image's standard deviation and mean.

# %%
content, style = photos[0:1], photos[1:2]
restyled = N.InstanceNorm2d(3)(content) * style.std((2, 3), keepdim=True) + style.mean((2, 3), keepdim=True)
fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
for ax, img, title in zip(axes, (content, style, restyled.clamp(0, 1)),
                          ("content (temple)", "style (flower)", "temple with the flower's channel statistics"),
                          strict=True):
    ax.imshow(img[0].permute(1, 2, 0))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
print(lab.cmp("restyled channel means = style's", restyled.mean((2, 3)), style.mean((2, 3)), atol=1e-4))

# %% [markdown]
# Only six numbers changed hands (three means, three standard deviations), yet the temple now has the
# flower's dark, red-tinted look. For a *classifier* this is the weakness of InstanceNorm: it throws away
# global contrast and colour, which can be exactly the evidence needed {cite}`wu2018group`.
#
# ## The layer's defaults, and unbatched input
#
# Unlike BatchNorm, `InstanceNorm2d` has `affine=False` and `track_running_stats=False` by default: no
# learned $\gamma, \beta$, and the same computation in training and evaluation. It accepts an unbatched
# `(C, H, W)` image too. normlib's layer matches torch's in all of this:

# %%
ours, theirs = N.InstanceNorm2d(3), torch.nn.InstanceNorm2d(3)
print(ours)
print("learned parameters:", sum(p.numel() for p in ours.parameters()), "| buffers:", list(ours.state_dict()))
print(lab.cmp("unbatched (C, H, W) vs torch", ours(photos[0]), theirs(photos[0]), atol=1e-5))
print(lab.cmp("batched vs unbatched", ours(photos)[0], ours(photos[0]), atol=1e-6))
tracked = N.InstanceNorm2d(3, affine=True, track_running_stats=True)
tracked(photos)
print("with track_running_stats, running_mean after one batch:", [round(v, 4) for v in tracked.running_mean.tolist()])

# %% [markdown]
# With `track_running_stats=True` the layer keeps running averages of the per-instance statistics and uses
# them in evaluation, which turns it into something close to a BatchNorm at inference; that is rarely
# what style-transfer models want, hence the default.
#
# ## Exercises
#
# 1. Swap the roles: give the flower the temple's statistics. Then try only the means, or only the
#    standard deviations. Which carries more of the "style"?
# 2. Apply InstanceNorm to a grey-scale version of a photo (one channel). What is left of the image?
# 3. Why does InstanceNorm need more than one spatial position per channel? What does torch do with a
#    `(N, C, 1, 1)` input in training?
