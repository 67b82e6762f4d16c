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
