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
