r"""Batch Renormalization as Algorithm 1 of Ioffe (2017) writes it, and helpers for the Batch Renorm lesson.

``normlib.nn.BatchRenorm*`` keeps BatchNorm's buffers, so that BatchNorm checkpoints load into it: its
:math:`\sigma` is :math:`\sqrt{\text{running\_var} + \epsilon}`, with ``running_var`` the moving average of
the *unbiased* batch variance. Algorithm 1 of the paper instead keeps a moving average of
:math:`\sigma_B` itself,

.. math::

    \sigma_B = \sqrt{v_B + \epsilon}, \qquad \sigma \leftarrow \sigma + \alpha\,(\sigma_B - \sigma),

and infers with :math:`y = \gamma (x - \mu) / \sigma + \beta`. The two agree for large groups, but
:math:`E[\sigma_B]` lies below the population's standard deviation: for :math:`g` Gaussian values by the
factor :math:`\sqrt{2/g}\,\Gamma(g/2) / \Gamma((g-1)/2)`, 0.56 at :math:`g = 2`. :class:`PaperBatchRenorm1d`
and :class:`PaperBatchRenorm2d` implement the paper's definition (buffers ``running_mean``, ``running_std``,
``num_batches_tracked``), with the same ``r_max``/``d_max`` attributes as normlib's layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlib import functional as F
from normlib import nn as N
from normlib.lab.models import GhostNorm

__all__ = ["PaperBatchRenorm1d", "PaperBatchRenorm2d", "recalibrate_layerwise", "running_sigma", "set_limits"]


class _PaperBatchRenorm(nn.Module):
    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, r_max: float = 3.0,
                 d_max: float = 5.0) -> None:
        super().__init__()
        if r_max < 1 or d_max < 0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.r_max, self.d_max = r_max, d_max
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_std.fill_(1.0)
        self.num_batches_tracked.zero_()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._dims:
            wanted = " or ".join(f"{d}D" for d in self._dims)
            raise ValueError(f"expected {wanted} input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        shape = (1, input.shape[1]) + (1,) * (input.dim() - 2)
        mu, sigma = self.running_mean.reshape(shape), self.running_std.reshape(shape)
        if not self.training:
            x_hat = (input - mu) / sigma
        else:
            if input.numel() // input.shape[1] <= 1:
                raise ValueError("Expected more than 1 value per channel when training, got input size "
                                 f"{input.size()}")
            mu_b, v_b = F.moments(input, [0, *range(2, input.dim())])
            sigma_b = torch.sqrt(v_b + self.eps)
            r = (sigma_b / sigma).clamp(1.0 / self.r_max, self.r_max).detach()
            d = ((mu_b - mu) / sigma).clamp(-self.d_max, self.d_max).detach()
            x_hat = (input - mu_b) / sigma_b * r + d
            with torch.no_grad():
                self.num_batches_tracked += 1
                a = 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mu_b.reshape(-1), a)
                self.running_std.lerp_(sigma_b.reshape(-1), a)
        return (x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)).to(input.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
                f"d_max={self.d_max}")


class PaperBatchRenorm1d(_PaperBatchRenorm):
    """Batch Renormalization over ``(N, C)`` or ``(N, C, L)`` input, keeping a moving average of sigma_B."""

    _dims = (2, 3)


class PaperBatchRenorm2d(_PaperBatchRenorm):
    """Batch Renormalization over ``(N, C, H, W)`` input, keeping a moving average of sigma_B."""

    _dims = (4,)


_RENORMS = (N.BatchRenorm1d, N.BatchRenorm2d, N.BatchRenorm3d, _PaperBatchRenorm)


def running_sigma(layer: nn.Module) -> Tensor:
    r"""The per-channel :math:`\sigma` a Batch Renorm layer divides by: normlib's or the paper's definition."""
    if isinstance(layer, _PaperBatchRenorm):
        return layer.running_std
    return torch.sqrt(layer.running_var + layer.eps)


def set_limits(model: nn.Module, step: int, **schedule) -> tuple[float, float]:
    """Set ``r_max``, ``d_max`` of every Batch Renorm layer (both definitions) from ``renorm_limits``.

    ``schedule`` is passed to :func:`normlib.nn.renorm_limits`. A final ``r_max`` of infinity means no
    limit once the warm-up is over (the linear ramp of an infinite limit is infinite at its first step):
    ``d_max`` is then unlimited too, and training normalizes with the running statistics alone.
    """
    r_final = schedule.get("r_max", 3.0)
    if r_final == float("inf"):
        warm = step < schedule.get("warmup", 5000)
        r_max, d_max = (1.0, 0.0) if warm else (float("inf"), float("inf"))
    else:
        r_max, d_max = N.renorm_limits(step, **schedule)
    for m in model.modules():
        if isinstance(m, _RENORMS):
            m.r_max, m.d_max = r_max, d_max
    return r_max, d_max


@torch.no_grad()
def recalibrate_layerwise(model: nn.Module, x: Tensor, batch_size: int = 32) -> nn.Module:
    """Recompute each norm's running statistics from the input it sees at inference, in place.

    The norms with running statistics (BatchNorm, both Batch Renorms) are taken in the model's order.
    For each in turn, the rest of the model runs in eval mode (the norms before it already recalibrated)
    while this one runs in training mode over ``x`` in batches of ``batch_size`` (a :class:`GhostNorm`
    around it splits them into its groups, as in training) with a cumulative average
    (``momentum=None``): its statistics become exact averages of the per-group statistics its running
    averages follow, over the inputs the inference network gives it. The weights are untouched; each
    momentum and the model's mode are restored. Returns the model.
    """
    wrappers = {id(m.norm): m for m in model.modules() if isinstance(m, GhostNorm)}
    norms = [m for m in model.modules() if hasattr(m, "running_mean") and m.running_mean is not None]
    was_training = model.training
    model.eval()
    for layer in norms:
        momentum = layer.momentum
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
        if id(layer) in wrappers:
            wrappers[id(layer)].train()
        for i in range(0, len(x) - batch_size + 1, batch_size):
            model(x[i:i + batch_size])
        layer.momentum = momentum
        model.eval()
    model.train(was_training)
    return model
