"""Small helpers the lessons share."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int = 0, threads: int = 2) -> None:
    """Seed Python's, NumPy's and torch's RNGs and fix torch's CPU thread count.

    A fixed thread count keeps CPU reductions in the same order from run to run, so a lesson's
    printed numbers come out the same on every machine that runs it.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def cmp(name: str, got, want, atol: float = 1e-6) -> str:
    """One line comparing ``got`` with ``want``: exact, close (within ``atol``), or the max difference.

    Printing "close" rather than the difference itself keeps a lesson's output the same on every
    machine, where the last bits of a float32 sum may differ.
    """
    got, want = _as_tensor(got), _as_tensor(want)
    if got.shape != want.shape:
        return f"{name:<28} SHAPE {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    verdict = "exact" if diff == 0 else f"close (max |diff| <= {atol:g})" if diff <= atol else f"DIFFERENT ({diff:.3g})"
    return f"{name:<28} {verdict}"


def _as_tensor(a) -> torch.Tensor:
    return a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
