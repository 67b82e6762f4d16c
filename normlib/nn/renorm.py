r"""Batch Renormalization (Ioffe, 2017): BatchNorm that stays consistent with its running statistics.

.. math::

    r = \mathrm{sg}\left(\mathrm{clip}_{[1/r_{max},\, r_{max}]}\frac{\sigma_B}{\sigma}\right), \quad
    d = \mathrm{sg}\left(\mathrm{clip}_{[-d_{max},\, d_{max}]}\frac{\mu_B - \mu}{\sigma}\right), \quad
    y = \gamma\left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) + \beta

with :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`. The buffers are BatchNorm's, so BatchNorm
checkpoints load into these modules and back.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
from torch import Tensor, fx, nn

from normlib import functional as F
from normlib.nn._torch import fx_call
from normlib.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _NormBase

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "renorm_limits", "set_renorm_limits"]


class _BatchRenorm(_NormBase):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 r_max: float = 3.0, d_max: float = 5.0, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.r_max = r_max
        self.d_max = d_max

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        self._check_input_dim(input)
        running_mean, running_var, factor = self._running_update()
        return F.batch_renorm(input, running_mean, running_var, self.weight, self.bias, self.training, factor,
                              self.eps, self.r_max, self.d_max)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"r_max={self.r_max}, d_max={self.d_max}")


class BatchRenorm1d(_BatchRenorm):
    r"""Batch Renormalization over ``(N, C)`` or ``(N, C, L)`` input; buffers as ``BatchNorm1d``."""

    _check_input_dim = BatchNorm1d._check_input_dim


class BatchRenorm2d(_BatchRenorm):
    r"""Batch Renormalization over ``(N, C, H, W)`` input; buffers as ``BatchNorm2d``."""

    _check_input_dim = BatchNorm2d._check_input_dim


class BatchRenorm3d(_BatchRenorm):
    r"""Batch Renormalization over ``(N, C, D, H, W)`` input; buffers as ``BatchNorm3d``."""

    _check_input_dim = BatchNorm3d._check_input_dim


def renorm_limits(step: int, warmup: int = 5000, r_max: float = 3.0, d_max: float = 5.0,
                  r_ramp_end: int = 40000, d_ramp_end: int = 25000) -> tuple[float, float]:
    """The paper's schedule: ``(1, 0)`` (plain BatchNorm) for ``warmup`` steps, then linear ramps.

    ``r_max`` rises from 1 to its final value at ``r_ramp_end``, ``d_max`` from 0 at ``d_ramp_end``.
    Defaults are the paper's: 5k steps of BatchNorm, r_max 3 by 40k steps, d_max 5 by 25k.
    """
    def ramp(end: int) -> float:
        return min(max((step - warmup) / max(end - warmup, 1), 0.0), 1.0)

    return 1.0 + (r_max - 1.0) * ramp(r_ramp_end), d_max * ramp(d_ramp_end)


def set_renorm_limits(model: nn.Module, step: int, **schedule) -> tuple[float, float]:
    """Set ``r_max`` and ``d_max`` of every BatchRenorm layer in ``model`` from :func:`renorm_limits`."""
    r_max, d_max = renorm_limits(step, **schedule)
    for m in model.modules():
        if isinstance(m, _BatchRenorm):
            m.r_max, m.d_max = r_max, d_max
    return r_max, d_max
