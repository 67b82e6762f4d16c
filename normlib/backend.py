"""Which implementation normlib.nn's layers run: ``"torch"`` (normlib.functional, the default) or ``"triton"``.

``"triton"`` routes LayerNorm, RMSNorm, GroupNorm, BatchNorm (training) and Dropout through the Triton
kernels of :mod:`normlib.kernels` for tensors on a GPU (or on the CPU under ``TRITON_INTERPRET=1``, which
is for testing). Other tensors, and the other layers, keep using :mod:`normlib.functional`: both compute
the same function.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import ModuleType

from torch import Tensor

BACKENDS = ("torch", "triton")
_backend = "torch"
_interpret = False  # TRITON_INTERPRET=1 when the triton backend was selected: CPU tensors use the kernels too


def set_backend(name: str) -> None:
    """Select the implementation for normlib.nn's layers: ``"torch"`` or ``"triton"``."""
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


def ops(x: Tensor) -> ModuleType:
    """The module whose functions a layer should call for input ``x``."""
    if _backend == "triton" and (x.is_cuda or _interpret):
        from normlib import kernels

        return kernels
    from normlib import functional

    return functional
