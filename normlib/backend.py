"""Which implementation normlib.nn's layers run: ``"torch"`` (the default), ``"manual"`` or ``"triton"``.

``"torch"`` is :mod:`normlib.functional` (tensor ops, backward by autograd). ``"manual"`` routes the norms
through :mod:`normlib.manual`: the same forward with the hand-derived backward, which saves less for the
backward and, under ``torch.compile``, is normlib's fast CPU path.

``"triton"`` routes LayerNorm, RMSNorm, GroupNorm, BatchNorm (training) and Dropout through the Triton
kernels of :mod:`normlib.kernels` for tensors on a GPU (or on the CPU under ``TRITON_INTERPRET=1``, which
is for testing). Other tensors, and the other layers, keep using :mod:`normlib.functional`: both compute
the same function. So do the norms inside ``torch.compile``, under :mod:`torch.func` transforms, on empty
input and for rows too long for the row kernels (see :mod:`normlib.kernels`).

Every backend gives the same outputs, gradients (double backward included), buffers and errors as
``torch.nn``; the few deliberate differences are listed in :mod:`normlib.nn`'s docstring.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager

from torch import Tensor

BACKENDS = ("torch", "manual", "triton")
_backend = "torch"
_interpret = False  # TRITON_INTERPRET=1 when the triton backend was selected: CPU tensors use the kernels too


def set_backend(name: str) -> None:
    """Select the implementation for normlib.nn's layers: ``"torch"``, ``"manual"`` or ``"triton"``."""
    global _backend, _interpret
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton":
        import normlib.kernels  # noqa: F401  (fail here, not in the middle of a forward pass, if Triton is missing)
    _interpret = os.environ.get("TRITON_INTERPRET") == "1"
    _backend = name


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str):
    """``with use_backend("triton"): ...`` runs the block with that backend, then restores the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def ops(x: Tensor, name: str) -> Callable:
    """The function ``name`` (e.g. ``"layer_norm"``) that a layer should call for input ``x``.

    The selected backend's, where it has one for ``x``; :mod:`normlib.functional`'s otherwise.
    """
    from normlib import functional

    module = None
    if _backend == "triton" and (x.is_cuda or _interpret):
        from normlib import kernels as module
    elif _backend == "manual":
        from normlib import manual as module
    return getattr(module, name, None) or getattr(functional, name)
