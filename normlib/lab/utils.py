"""Small helpers every lesson uses: one set-up call, and one line comparing two results."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int = 0, threads: int = 1) -> None:
    """Seed Python's, NumPy's and torch's RNGs and fix torch's CPU thread count.

    A fixed thread count keeps CPU reductions in the same order from run to run on one machine. Across
    machines, trained results still differ in their last bits (and so in their printed digits): lessons
    state what a run shows as a checked claim (:func:`normlib.lab.evidence.claim`), not as digits.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def setup(seed: int = 0, threads: int = 1) -> None:
    """The first call of every lesson: seeds and threads (:func:`seed_everything`), deterministic algorithms
    where torch has a choice, and figures that are sharp (PNG at twice the pixels;
    nbval compares no PNG, while it would compare SVG text) with legible fonts."""
    seed_everything(seed, threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        import matplotlib as mpl
        import matplotlib_inline.backend_inline as inline

        inline.set_matplotlib_formats("retina")
        mpl.rcParams.update({"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 10,
                             "xtick.labelsize": 10, "ytick.labelsize": 10,
                             "figure.max_open_warning": 0})
    except ImportError:  # no matplotlib / not in IPython: nothing to style
        pass


def cmp(name: str, got, want, atol: float = 1e-6) -> str:
    """One line saying whether ``got`` equals ``want``: within ``atol``, or exactly when ``atol=0``.

    With ``atol > 0`` the line says ``agree (max |diff| <= atol)`` whether the two are bit-identical or only
    close: where two computations take different rounding paths, one CPU (or ATen kernel set) may give
    identical bits and another a last-bit difference, and a lesson's printed line must not depend on which.
    ``atol=0`` claims bit-identity (the same random mask, the same integer result) and says ``exact``.
    Either way a failure prints ``DIFFERENT`` with the largest difference.
    """
    got, want = _as_tensor(got), _as_tensor(want)
    if got.shape != want.shape:
        return f"{name:<28} SHAPE {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    if diff > atol or diff != diff:
        return f"{name:<28} DIFFERENT ({diff:.3g})"
    return f"{name:<28} " + ("exact" if atol == 0 else f"agree (max |diff| <= {atol:g})")


def _as_tensor(a) -> torch.Tensor:
    return a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def within(name: str, got, want, atol: float) -> str:
    """One line saying that ``got`` and ``want`` agree to ``atol`` (or by how much they differ).

    Unlike :func:`cmp`, it says the same whether the two are bit-identical or only close: where two
    computations take different rounding paths, one CPU (or ATen kernel set) may give identical bits
    and another a last-bit difference, and a lesson's printed line must not depend on which.
    """
    got, want = _as_tensor(got), _as_tensor(want)
    if got.shape != want.shape:
        return f"{name:<28} SHAPE {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    return f"{name:<28} " + (f"agree (max |diff| <= {atol:g})" if diff <= atol else f"DIFFERENT ({diff:.3g})")
