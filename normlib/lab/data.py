"""Small data sets that ship offline (inside pip or Debian packages, or generated), so every lesson runs anywhere."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


class Dataset(tuple):
    """``(x_train, y_train, x_test, y_test)`` that also says what it is: ``.name``."""

    name: str

    def __new__(cls, x_train, y_train, x_test, y_test, name: str):
        self = super().__new__(cls, (x_train, y_train, x_test, y_test))
        self.name = name
        return self


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
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
    return Dataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
                   torch.from_numpy(x_te), torch.from_numpy(y_te).long(), "digits")


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


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format, gzipped): big-endian dims after a magic number, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def fashion_mnist(n_train: int = 8000, n_test: int = 2000, seed: int = 0, root: Path | str | None = None,
                  fallback: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of clothing, 10 classes, as float32 ``(N, 1, 28, 28)``.

    Reads Debian's package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``; MIT licence)
    and takes a class-balanced random subset of ``n_train`` training and ``n_test`` test images (fixed by
    ``seed``), scaled to [0, 1] and standardised with the training set's mean and std. Where the package is
    missing and ``fallback`` is true, returns the 8x8 digits resized to 28x28 instead (:func:`digits_28`):
    the returned ``.name`` always says which data a run used.
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    files = [root / f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    if not all(f.is_file() for f in files):
        if not fallback:
            raise FileNotFoundError(f"Fashion-MNIST not found in {root}: apt-get install dataset-fashion-mnist")
        return digits_28(seed=seed)
    x_tr, y_tr, x_te, y_te = (_read_idx(f) for f in files)
    g = np.random.default_rng(seed)
    keep_tr, keep_te = _balanced(y_tr, n_train, g), _balanced(y_te, n_test, g)
    x_tr, x_te = x_tr[keep_tr].astype(np.float32) / 255.0, x_te[keep_te].astype(np.float32) / 255.0
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Dataset(torch.from_numpy(x_tr[:, None].copy()), torch.from_numpy(y_tr[keep_tr].astype(np.int64)),
                   torch.from_numpy(x_te[:, None].copy()), torch.from_numpy(y_te[keep_te].astype(np.int64)),
                   "Fashion-MNIST")


def _balanced(y: np.ndarray, n: int, g: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``y``, the same number from each class (as near as ``n`` allows), in random order."""
    classes = np.unique(y)
    per = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    idx = np.concatenate([g.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, per, strict=True)])
    return g.permutation(idx)


def digits_28(seed: int = 0) -> Dataset:
    """scikit-learn's digits resized (bilinear) to 28x28 and standardised: the offline stand-in for Fashion-MNIST."""
    x_tr, y_tr, x_te, y_te = digits(seed=seed)
    up = [torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False) for x in (x_tr, x_te)]
    mean, std = up[0].mean(), up[0].std()
    return Dataset((up[0] - mean) / std, y_tr, (up[1] - mean) / std, y_te, "digits (8x8, resized to 28x28)")
