r"""LayerNorm and GroupNorm modules: drop-ins for ``torch.nn.LayerNorm`` and ``torch.nn.GroupNorm``.

Neither keeps running statistics: both compute their moments from each sample alone, so they
behave the same in training and evaluation and do not depend on the batch.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import numbers

import torch
from torch import Tensor, fx, nn
from torch.nn import init

from normlib.backend import ops
from normlib.functional import _autocast_float32
from normlib.nn._affine import init_affine, reset_affine
from normlib.nn._torch import fx_call

__all__ = ["LayerNorm", "GroupNorm", "RMSNorm"]


class LayerNorm(nn.LayerNorm):
    r"""Layer Normalization over the trailing ``normalized_shape`` dims of each sample.

    :math:`y = \gamma \odot (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, with :math:`\mu, \sigma^2`
    the moments of one sample over ``normalized_shape`` (the last dim for text ``(B, T, D)``; e.g.
    ``(C, H, W)`` for images) and elementwise :math:`\gamma` (ones), :math:`\beta` (zeros) of shape
    ``normalized_shape``. A drop-in for ``torch.nn.LayerNorm``.
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        nn.Module.__init__(self)  # torch's constructor is not run: this one makes the same attributes
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        init_affine(self, self.normalized_shape, elementwise_affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        input, weight, bias = _autocast_float32("layer_norm", input, self.weight, self.bias)
        return ops(input, "layer_norm")(input, self.normalized_shape, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class GroupNorm(nn.GroupNorm):
    r"""Group Normalization: the ``num_channels`` channels split into ``num_groups`` groups.

    :math:`y = \gamma_c (x - \mu_{ng}) / \sqrt{\sigma_{ng}^2 + \epsilon} + \beta_c`, moments of one
    sample over the ``C/G`` channels of group ``g`` and the spatial dims; :math:`\gamma, \beta` are
    per channel (C of each). ``G=1`` is LayerNorm over ``(C, *spatial)``, ``G=C`` is InstanceNorm.
    A drop-in for ``torch.nn.GroupNorm``.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # torch's constructor is not run: this one makes the same attributes
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        init_affine(self, num_channels, affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        input, weight, bias = _autocast_float32("group_norm", input, self.weight, self.bias)
        return ops(input, "group_norm")(input, self.num_groups, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(nn.RMSNorm):
    r"""Root Mean Square Normalization over the trailing ``normalized_shape`` dims.

    :math:`y = x / \sqrt{\frac{1}{m}\sum_k x_k^2 + \epsilon} \odot \gamma`: LayerNorm without the mean
    subtraction and without a bias. ``eps=None`` means the machine epsilon of the dtype the statistics
    are computed in, as in torch: ``torch.finfo(torch.float32).eps`` for float16, bfloat16 and float32 input,
    ``torch.finfo(torch.float64).eps`` for float64. A drop-in for ``torch.nn.RMSNorm``.
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None) -> None:
        nn.Module.__init__(self)  # torch's constructor is not run: this one makes the same attributes
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, fx.Proxy):
            return fx_call(self, x)
        x, weight = _autocast_float32("rms_norm", x, self.weight)
        return ops(x, "rms_norm")(x, self.normalized_shape, weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
