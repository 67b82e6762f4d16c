r"""Folding an inference-mode BatchNorm into the convolution or linear layer before it.

In evaluation a BatchNorm is a fixed per-channel affine map,
:math:`y = s z + (\beta - s \hat{\mu})` with :math:`s = \gamma / \sqrt{\hat{\sigma}^2 + \epsilon}`, so with
:math:`z = W x + b` it can be merged into the layer:
:math:`W' = s \odot W` (scaling each output channel) and :math:`b' = s\,(b - \hat{\mu}) + \beta`.
One layer then does the work of two.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_batchnorm", "fold_batchnorms"]

FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_batchnorm(module: nn.Module) -> bool:
    from normlib.nn.batchnorm import _BatchNorm

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm))


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new layer of the same type as ``layer`` equal to ``bn(layer(x))`` with ``bn`` in eval mode.

    ``layer`` is a ``Linear`` or ``Conv1d/2d/3d`` (with or without a bias; the result always has one),
    ``bn`` a ``BatchNorm`` (torch's or normlib's, ``SyncBatchNorm`` included) over its output channels, in eval
    mode and with running statistics. Neither argument is modified. The folded parameters require grad as the
    layer's did (a frozen layer folds into a frozen one).
    """
    if not isinstance(layer, FOLDABLE):
        raise TypeError(f"can fold into Linear or Conv1d/2d/3d, not {type(layer).__name__}")
    if not _is_batchnorm(bn):
        raise TypeError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("the BatchNorm is in training mode: it normalizes with batch statistics, which cannot "
                         "be folded; call .eval() first")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm has no running statistics (track_running_stats=False): it uses batch "
                         "statistics even in eval mode, which cannot be folded")
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise ValueError(f"the layer has {out_channels} output channels but the BatchNorm normalizes "
                         f"{bn.num_features}")
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        acc = torch.float64  # fold in double precision, then store in the layer's dtype
        scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(acc)
        shift = -bn.running_mean.to(acc) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(acc)
        if layer.bias is not None:
            shift = shift + layer.bias.to(acc) * scale
        weight = layer.weight.to(acc) * scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
        # Frozen stays frozen: each new parameter requires grad as the layer's own did (a bias the layer did not
        # have follows its weight).
        trainable = layer.weight.requires_grad
        folded.weight = nn.Parameter(weight.to(layer.weight.dtype), requires_grad=trainable)
        folded.bias = nn.Parameter(shift.to(layer.bias.dtype if layer.bias is not None else layer.weight.dtype),
                                   requires_grad=layer.bias.requires_grad if layer.bias is not None else trainable)
    return folded


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear/Conv directly followed by a BatchNorm folded into one layer.

    Walks every ``nn.Sequential`` in the model (nested ones too); each folded BatchNorm becomes an
    ``nn.Identity`` so the remaining indices do not move. The model must be in eval mode.
    """
    if model.training:
        raise ValueError("fold_batchnorms needs the model in eval mode (call .eval() first)")
    model = copy.deepcopy(model)
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, bn = module._modules[first], module._modules[second]
            if isinstance(layer, FOLDABLE) and _is_batchnorm(bn):
                module._modules[first] = fold_batchnorm(layer, bn)
                module._modules[second] = nn.Identity()
    return model
