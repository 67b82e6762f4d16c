r"""The learned affine pair :math:`\gamma` (``weight``, ones) and :math:`\beta` (``bias``, zeros) every norm shares."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init


def init_affine(module: nn.Module, shape, affine: bool, bias: bool, device=None, dtype=None) -> None:
    """Register ``weight`` and ``bias`` of ``shape`` on ``module`` (or ``None`` each, as torch does)."""
    if affine:
        module.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if bias:
            module.bias = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def reset_affine(module: nn.Module) -> None:
    """:math:`\\gamma = 1`, :math:`\\beta = 0`: the norm starts as a pure normalization."""
    if module.weight is not None:
        init.ones_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)
