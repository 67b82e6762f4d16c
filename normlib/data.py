"""Small data sets that ship inside pip packages, so every lesson runs offline."""

from __future__ import annotations

import numpy as np
import torch


def digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as float32 tensors ``(N, 1, 8, 8)`` in [0, 1], split train/test.

    Returns ``(x_train, y_train, x_test, y_test)``; the split is stratified and fixed by ``seed``.
    1797 images, 10 classes.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, data.target, test_size=test_fraction, random_state=seed, stratify=data.target
    )
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
            torch.from_numpy(x_te), torch.from_numpy(y_te).long())


def class_pair_batches(y: torch.Tensor, per_class: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch of non-iid batches: each batch holds ``per_class`` samples of each of two classes.

    The classes are paired at random each epoch; samples left over once a class runs short are
    dropped for that epoch. This is the setting of the Batch Renormalization paper's non-iid test.
    """
    classes = torch.unique(y)
    pools = {int(c): (y == c).nonzero().squeeze(1)[torch.randperm(int((y == c).sum()), generator=gen)]
             for c in classes}
    taken = dict.fromkeys(pools, 0)
    batches = []
    while True:
        ready = [c for c in pools if len(pools[c]) - taken[c] >= per_class]
        if len(ready) < 2:
            break
        order = torch.randperm(len(ready), generator=gen)
        for a, b in zip(order[0::2].tolist(), order[1::2].tolist(), strict=False):
            ca, cb = ready[a], ready[b]
            idx = torch.cat([pools[ca][taken[ca]:taken[ca] + per_class], pools[cb][taken[cb]:taken[cb] + per_class]])
            taken[ca] += per_class
            taken[cb] += per_class
            batches.append(idx)
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def variable_length_sums(n: int, min_len: int = 4, max_len: int = 32, seed: int = 0):
    """Sequences of N(0, 1) values of random length; the label says whether their sum is positive.

    Returns ``(x, y)`` with ``x`` of shape ``(n, max_len, 2)``: feature 0 is the value (0 after the
    end), feature 1 is 1 on the sequence's steps and 0 on the padding. Solving the task means
    carrying a running sum through every step, so a recurrent model must work at every length.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    valid = (torch.arange(max_len)[None, :] < lengths[:, None]).float()
    values = torch.randn(n, max_len, generator=g) * valid
    y = (values.sum(1) > 0).long()
    return torch.stack([values, valid], dim=-1), y


def sample_photos(stride: int = 4) -> torch.Tensor:
    """scikit-learn's two sample photos (a temple in China, a flower) as float32 ``(2, 3, H, W)`` in [0, 1].

    ``stride`` subsamples the 427x640 originals (4 gives 107x160), which keeps lessons light.
    """
    from sklearn.datasets import load_sample_images

    images = np.stack(load_sample_images().images)[:, ::stride, ::stride]  # (2, H, W, 3) uint8
    return torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
