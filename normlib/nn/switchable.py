r"""Switchable Normalization (Luo et al., 2018): a learned mix of IN, LN and BN statistics.

.. math::

    \mu = \sum_{k \in \{IN, LN, BN\}} w_k \mu_k, \qquad \sigma^2 = \sum_k w'_k \sigma_k^2, \qquad
    y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

with :math:`w = \mathrm{softmax}(\text{mean\_weight})`, :math:`w' = \mathrm{softmax}(\text{var\_weight})`,
both learned, of size 3 in the order (IN, LN, BN). Written from the paper's formulas.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import torch
from torch import Tensor, fx, nn
from torch.nn import init

from normlib import functional as F
from normlib.nn._torch import fx_call
from normlib.nn.batchnorm import _NormBase

__all__ = ["SwitchableNorm1d", "SwitchableNorm2d", "SwitchableNorm3d"]


class _SwitchableNorm(_NormBase):
    _spatial_dims: int

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.mean_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "mean_weight"):
            init.ones_(self.mean_weight)
            init.ones_(self.var_weight)

    def importance(self) -> tuple[Tensor, Tensor]:
        """The softmax importance weights ``(w_mean, w_var)``, each in the order (IN, LN, BN)."""
        return torch.softmax(self.mean_weight.detach(), 0), torch.softmax(self.var_weight.detach(), 0)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        if input.dim() != self._spatial_dims + 2:
            raise ValueError(f"expected {self._spatial_dims + 2}D input (got {input.dim()}D input)")
        running_mean, running_var, factor = self._running_update()
        return F.switchable_norm(input, running_mean, running_var, self.mean_weight, self.var_weight, self.weight,
                                 self.bias, self.training, factor, self.eps)


class SwitchableNorm1d(_SwitchableNorm):
    r"""Switchable Normalization over ``(N, C, L)`` input (IN needs a spatial dim)."""

    _spatial_dims = 1


class SwitchableNorm2d(_SwitchableNorm):
    r"""Switchable Normalization over ``(N, C, H, W)`` input."""

    _spatial_dims = 2


class SwitchableNorm3d(_SwitchableNorm):
    r"""Switchable Normalization over ``(N, C, D, H, W)`` input."""

    _spatial_dims = 3
