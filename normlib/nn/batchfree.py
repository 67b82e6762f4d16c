r"""Layers that need no batch statistics: Weight Standardization, Dynamic Tanh and a frozen BatchNorm.

- :class:`StdConv2d` (Qiao et al. 2019, "Weight Standardization"): a convolution whose filters are
  standardised over their fan-in before use, :math:`\hat W_o = (W_o - \mu_o) / \sqrt{\sigma_o^2 + \epsilon}`
  with :math:`\mu_o, \sigma_o^2` the moments of output channel :math:`o`'s ``in_channels/groups x kh x kw``
  weights. It is LayerNorm applied to the weight tensor (no affine), and that is how it is computed here.
  Same arguments and behaviour as timm's ``StdConv2d`` (``padding=None`` pads symmetrically as timm does,
  ``bias=False``, ``eps=1e-6``).
- :class:`DynamicTanh` (Zhu et al. 2025, "Transformers without Normalization"):
  :math:`y = \gamma \odot \tanh(\alpha x) + \beta`, one learned scalar :math:`\alpha` (``alpha_init_value``)
  and per-channel :math:`\gamma, \beta`; no statistics at all. Same arguments and state_dict keys as the
  paper's ``DynamicTanh`` (``alpha``, ``weight``, ``bias``).
- :class:`FrozenBatchNorm2d`: BatchNorm2d with fixed statistics and affine parameters, all buffers
  (:math:`y = x \cdot s + t`, :math:`s = \gamma / \sqrt{\mathrm{running\_var} + \epsilon}`,
  :math:`t = \beta - \mathrm{running\_mean}\, s`), as detection codebases use it for fine-tuning. Same
  arguments, buffers and state_dict keys as torchvision's ``FrozenBatchNorm2d``; loads a BatchNorm2d's
  state_dict (``num_batches_tracked`` is dropped).
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import numbers

import torch
from torch import Tensor, fx, nn

from normlib.backend import ops
from normlib.nn._torch import fx_call

__all__ = ["DynamicTanh", "FrozenBatchNorm2d", "StdConv2d"]


def _symmetric_padding(kernel_size, stride, dilation):
    """timm's default padding: ``((stride - 1) + dilation * (kernel_size - 1)) // 2`` per dimension."""
    def one(k, s, d):
        return ((s - 1) + d * (k - 1)) // 2

    if all(isinstance(v, numbers.Integral) for v in (kernel_size, stride, dilation)):
        return one(kernel_size, stride, dilation)
    pair = [v if isinstance(v, tuple | list) else (v, v) for v in (kernel_size, stride, dilation)]
    return tuple(one(k, s, d) for k, s, d in zip(*pair, strict=True))


class StdConv2d(nn.Conv2d):
    r"""Conv2d with Weight Standardization: each filter standardised over its fan-in before the convolution.

    :math:`\hat W = \mathrm{LayerNorm}_{\text{fan-in}}(W)`: the same formula as every norm in this book,
    applied to the weights instead of the activations. The output of the layer therefore does not depend on
    the scale or the mean of each filter, and, unlike BatchNorm, not on the batch. Pair it with GroupNorm
    (Qiao et al. 2019). A drop-in for timm's ``StdConv2d``.
    """

    def __init__(self, in_channel: int, out_channels: int, kernel_size, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, eps: float = 1e-6, device=None, dtype=None) -> None:
        if padding is None:
            padding = _symmetric_padding(kernel_size, stride, dilation)
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        """The filters as the convolution uses them: zero mean and unit variance over each fan-in."""
        return ops(self.weight, "layer_norm")(self.weight, self.weight.shape[1:], None, None, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        return self._conv_forward(input, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"


class DynamicTanh(nn.Module):
    r"""Dynamic Tanh: :math:`y = \gamma \odot \tanh(\alpha x) + \beta`, a norm-free stand-in for LayerNorm.

    ``normalized_shape`` is the number of channels; with ``channels_last`` (``(..., C)`` input, as a
    Transformer's tokens) :math:`\gamma, \beta` act on the last dimension, otherwise on dimension 1
    (``(N, C, ...)``, as images). :math:`\alpha` is one learned scalar that sets where the tanh starts to
    squash: it plays the part of LayerNorm's :math:`1/\sigma`, but is the same for every token.
    """

    def __init__(self, normalized_shape: int, channels_last: bool = True, alpha_init_value: float = 0.5,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = normalized_shape
        self.alpha_init_value = alpha_init_value
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        self.weight = nn.Parameter(torch.empty(normalized_shape, **factory))
        self.bias = nn.Parameter(torch.empty(normalized_shape, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init_value)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, fx.Proxy):
            return fx_call(self, x)
        channel = -1 if self.channels_last else 1
        if x.dim() < (1 if self.channels_last else 2) or x.shape[channel] != self.normalized_shape:
            raise RuntimeError(f"DynamicTanh({self.normalized_shape}, channels_last={self.channels_last}) "
                               f"expected {self.normalized_shape} channels in dimension {channel}, got input of "
                               f"size {list(x.shape)}")
        shape = (-1,) if self.channels_last else (-1,) + (1,) * (x.dim() - 2)
        return torch.tanh(self.alpha * x) * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return (f"normalized_shape={self.normalized_shape}, alpha_init_value={self.alpha_init_value}, "
                f"channels_last={self.channels_last}")


class FrozenBatchNorm2d(nn.Module):
    r"""BatchNorm2d whose statistics and affine parameters are fixed buffers: :math:`y = x \cdot s + t`.

    It behaves the same in training and evaluation (it is BatchNorm2d in evaluation, frozen), and no
    optimizer changes it. A drop-in for torchvision's ``FrozenBatchNorm2d``; unlike it, input that is not
    4-D is refused (BatchNorm2d's error), where the broadcast would silently mix dimensions.
    :meth:`convert_frozen_batchnorm` swaps every BatchNorm2d of a model for one.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm2d's counter: nothing to freeze
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, fx.Proxy):
            return fx_call(self, x)
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"

    @classmethod
    @torch.no_grad()
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """``module`` with every BatchNorm2d (torch's or normlib's) replaced by a frozen copy of it.

        Returns the new module when ``module`` itself is a BatchNorm2d, else ``module``, changed in place.
        """
        from normlib.nn.batchnorm import BatchNorm2d

        if isinstance(module, nn.BatchNorm2d | BatchNorm2d):
            if module.running_mean is None:
                raise ValueError(f"cannot freeze {module}: it keeps no running statistics "
                                 "(track_running_stats=False)")
            frozen = cls(module.num_features, module.eps).to(module.running_mean)  # its device and dtype
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            if module.weight is not None:
                frozen.weight.copy_(module.weight)
            if module.bias is not None:
                frozen.bias.copy_(module.bias)
            return frozen
        for name, child in module.named_children():
            new = cls.convert_frozen_batchnorm(child)
            if new is not child:
                setattr(module, name, new)
        return module
