"""Small data sets for the lessons: shipped inside pip or Debian packages, generated, or downloaded once.

Fashion-MNIST (:func:`fashion_mnist`) is read from Debian's package ``dataset-fashion-mnist`` where it is
installed; elsewhere it is downloaded once from the dataset's published location into a cache folder
(``$NORMLIB_DATA``, by default ``~/.cache/normlib``). ``python -m normlib.lab.data`` fetches it ahead of time.

Checks. The published ``.gz`` files are checked against their published MD5s (the dataset's README,
torchvision). Debian's package recompresses them (other ``.gz`` checksums), so every file, from any
source, is also checked by its decompressed IDX content: size and SHA-256, pinned here from Debian's
files; for both label files the published ``.gz`` decompresses to the same pinned content.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# The published files (the dataset's README), then the same files in its GitHub repository.
FASHION_MNIST_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
FALLBACK_ENV = "NORMLIB_DATA_FALLBACK"  # =digits: the stand-in when Fashion-MNIST cannot be had
MIRROR_ENV = "NORMLIB_FASHION_MNIST_URL"  # another copy of the four files, tried first
_PUBLISHED_URL = FASHION_MNIST_URLS[0]
RETRY_WAIT = 1.0  # seconds, times the attempt number, between tries of a download


class _IDXFile(NamedTuple):
    name: str  # the published file name
    md5: str  # of the published .gz
    size: int  # of the decompressed IDX content, in bytes
    sha256: str  # of the decompressed IDX content


# Order: train images, train labels, test images, test labels.
FASHION_MNIST_FILES = (
    _IDXFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 47040016,
             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    _IDXFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 60008,
             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    _IDXFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 7840016,
             "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    _IDXFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 10008,
             "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)


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


def same_class_batches(y: torch.Tensor, group_size: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch of non-iid batches: each batch is made of groups of ``group_size`` samples of one class.

    Each class's indices are shuffled and cut into groups (a class's leftover samples sit out this epoch),
    the groups of all classes are shuffled together, and each run of ``batch_size // group_size``
    consecutive groups is one batch (leftover groups sit out too). ``group_size=2, batch_size=32``: 16
    same-class pairs per batch (the Batch Renormalization lesson); ``group_size=batch_size``: every
    batch holds one class. For :func:`normlib.lab.train.fit`'s ``batches``:
    ``lambda gen: same_class_batches(y, 2, 32, gen)``.
    """
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of group_size ({group_size})")
    groups = []
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        groups.append(idx[: len(idx) // group_size * group_size].view(-1, group_size))
    groups = torch.cat(groups)
    groups = groups[torch.randperm(len(groups), generator=gen)]
    per_batch = batch_size // group_size
    usable = len(groups) // per_batch * per_batch
    return list(groups[:usable].reshape(-1, batch_size))


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


def _read_idx(path: Path, spec: _IDXFile | None = None) -> np.ndarray:
    """An IDX file (the MNIST format, gzipped): big-endian dims after a magic number, then uint8 data.

    With ``spec``, the decompressed content must be the pinned one (its size and SHA-256), else
    :class:`ChecksumError`; a file that is not gzip is reported the same way.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ChecksumError(f"{path} is not a readable gzip file ({e})") from e
    if spec is not None and (len(raw) != spec.size or hashlib.sha256(raw).hexdigest() != spec.sha256):
        raise ChecksumError(f"{path} does not hold the published {spec.name[:-3]}: its content's "
                            f"SHA-256 is {hashlib.sha256(raw).hexdigest()}, expected {spec.sha256}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def fashion_mnist(n_train: int = 8000, n_test: int = 2000, seed: int = 0, root: Path | str | None = None,
                  fallback: bool | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of clothing, 10 classes, as float32 ``(N, 1, 28, 28)``.

    Takes a class-balanced random subset of ``n_train`` training and ``n_test`` test images (fixed by
    ``seed``), scaled to [0, 1] and standardised with the training set's mean and std. The four files
    come from the first place that has them (:func:`fashion_mnist_dir`): ``root``; else the cache folder
    (``$NORMLIB_DATA``, by default ``~/.cache/normlib``), then Debian's package ``dataset-fashion-mnist``;
    else they are downloaded into ``root`` or the cache, once. Every file's content is checked against
    its pinned SHA-256, whatever its source.

    When the data cannot be had, this raises :class:`FashionMNISTUnavailable` (which says how to get
    it), unless the stand-in is asked for: ``fallback=True``, or ``NORMLIB_DATA_FALLBACK=digits`` in the
    environment when ``fallback`` is None. Then it prints that it uses the 8x8 digits resized to 28x28
    (:func:`digits_28`) and returns them; the returned ``.name`` always says which data a run used.
    """
    if fallback is None:
        fallback = os.environ.get(FALLBACK_ENV, "").strip().lower() in ("digits", "1", "true", "yes")
    try:
        folder = fashion_mnist_dir(root, download=download)
        x_tr, y_tr, x_te, y_te = (_read_idx(folder / f.name, f) for f in FASHION_MNIST_FILES)
    except FashionMNISTUnavailable as e:
        if not fallback:
            raise
        print(f"Fashion-MNIST is not available ({e.reason}).\nUsing the stand-in, as asked "
              f"(fallback=True or {FALLBACK_ENV}): the 8x8 digits resized to 28x28; what a lesson "
              "says about Fashion-MNIST may not hold on them.")
        return digits_28(seed=seed)
    g = np.random.default_rng(seed)
    keep_tr, keep_te = _balanced(y_tr, n_train, g), _balanced(y_te, n_test, g)
    x_tr, x_te = x_tr[keep_tr].astype(np.float32) / 255.0, x_te[keep_te].astype(np.float32) / 255.0
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Dataset(torch.from_numpy(x_tr[:, None].copy()), torch.from_numpy(y_tr[keep_tr].astype(np.int64)),
                   torch.from_numpy(x_te[:, None].copy()), torch.from_numpy(y_te[keep_te].astype(np.int64)),
                   "Fashion-MNIST")


# --- where Fashion-MNIST comes from: a folder, the cache, Debian's package, or a download ------------------

def data_home() -> Path:
    """The cache folder for downloaded data: ``$NORMLIB_DATA``, else ``$XDG_CACHE_HOME/normlib``, else
    ``~/.cache/normlib``."""
    if os.environ.get("NORMLIB_DATA"):
        return Path(os.environ["NORMLIB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "normlib"


def _complete(folder: Path) -> bool:
    return all((folder / f.name).is_file() for f in FASHION_MNIST_FILES)


def fashion_mnist_dir(root: Path | str | None = None, download: bool = True) -> Path:
    """The folder that holds Fashion-MNIST's four ``.gz`` files, downloading them if need be.

    Looks in ``root`` if given (and downloads what is missing there); else in ``data_home()/fashion-mnist``,
    then in Debian's package (``/usr/share/datasets/fashion-mnist``), and otherwise downloads into the
    former. Raises :class:`FashionMNISTUnavailable` when the files are neither there nor downloadable.
    """
    if root is not None:
        candidates, target = [Path(root).expanduser()], Path(root).expanduser()
    else:
        target = data_home() / "fashion-mnist"
        candidates = [target, FASHION_MNIST_DIR]
    for folder in candidates:
        if _complete(folder):
            return folder
    if not download:
        raise FashionMNISTUnavailable("not found, and download=False", target)
    missing = [f for f in FASHION_MNIST_FILES if not (target / f.name).is_file()]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FashionMNISTUnavailable(f"cannot create {target}: {e}", target) from e
    print(f"Fashion-MNIST: downloading {len(missing)} file(s) into {target}", file=sys.stderr)
    for spec in missing:
        download_file(spec, target / spec.name)
    return target


def _mirrors() -> list[tuple[str, bool]]:
    """(base URL, whether it serves the published files) in the order they are tried.

    ``$NORMLIB_FASHION_MNIST_URL`` names another copy (a local mirror, say) to try first; its files may be
    recompressed, like Debian's, so only their content is checked against the pins.
    """
    mirrors = [(url, True) for url in FASHION_MNIST_URLS]
    if os.environ.get(MIRROR_ENV):
        mirrors.insert(0, (os.environ[MIRROR_ENV].rstrip("/") + "/", False))
    return mirrors


def download_file(spec: _IDXFile, dest: Path, attempts: int = 3, timeout: float = 60.0) -> Path:
    """Download one file of the set into ``dest``, checked, atomically: a temporary file beside ``dest`` is
    renamed to it only once its checksums hold, and removed on any failure (Ctrl-C included).

    Each mirror gets up to ``attempts`` tries against network errors (waiting ``RETRY_WAIT`` seconds
    times the attempt number between them); a checksum mismatch moves on to the next mirror at once.
    """
    problems = []
    for base, published in _mirrors():
        url = base + spec.name
        for attempt in range(attempts):
            if attempt:
                time.sleep(RETRY_WAIT * attempt)
            try:
                _fetch(url, dest, spec, published, timeout)
                return dest
            except ChecksumError as e:
                problems.append(f"{url}: {e}")
                break
            except urllib.error.HTTPError as e:
                problems.append(f"{url}: HTTP {e.code} {e.reason}")
                if e.code < 500:
                    break
            except (OSError, http.client.HTTPException) as e:
                problems.append(f"{url}: {type(e).__name__}: {e}")
    raise FashionMNISTUnavailable(f"{spec.name} could not be downloaded:\n  " + "\n  ".join(problems),
                                  dest.parent)


def _fetch(url: str, dest: Path, spec: _IDXFile, published: bool, timeout: float) -> None:
    from tqdm import tqdm

    tmp = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = getattr(response, "length", None)
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(name)
            md5, received = hashlib.md5(), 0
            with os.fdopen(fd, "wb") as out, tqdm(total=total, desc=spec.name, unit="B", unit_scale=True,
                                                  leave=False, file=sys.stderr) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
        if published and md5.hexdigest() != spec.md5:
            raise ChecksumError(f"MD5 {md5.hexdigest()}, the published file's is {spec.md5}")
        _read_idx(tmp, spec)  # the content, whatever the compression
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


class ChecksumError(ValueError):
    """A Fashion-MNIST file whose checksum is not the published (or pinned) one."""


class FashionMNISTUnavailable(FileNotFoundError):
    """Fashion-MNIST is not on this machine and could not be downloaded; the message says how to get it."""

    def __init__(self, reason: str, target: Path):
        self.reason = reason
        super().__init__(
            f"Fashion-MNIST: {reason}\n"
            "Get it one of these ways:\n"
            "  - on Debian or Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
            f"  - download the four .gz files from {_PUBLISHED_URL}\n"
            f"    ({', '.join(f.name for f in FASHION_MNIST_FILES)}) into {target}\n"
            "    (the cache folder: $NORMLIB_DATA, by default ~/.cache/normlib/fashion-mnist),\n"
            "    or let normlib download them there when this machine is online;\n"
            "  - pass root= a folder that holds them: fashion_mnist(root=...).\n"
            f"Or ask for the stand-in (the 8x8 digits; claims about Fashion-MNIST may not hold): "
            f"fallback=True, or {FALLBACK_ENV}=digits.")


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


def main(argv: list[str] | None = None) -> int:
    """``python -m normlib.lab.data [--root DIR]``: find or download Fashion-MNIST, check it, say where it is."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("--root", type=Path, help="the folder to use instead of the cache folder")
    args = parser.parse_args(argv)
    try:
        folder = fashion_mnist_dir(args.root)
        for spec in FASHION_MNIST_FILES:
            _read_idx(folder / spec.name, spec)
    except (FashionMNISTUnavailable, ChecksumError) as e:
        print(e, file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {folder} (checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
