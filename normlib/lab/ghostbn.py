"""Ghost batches for BatchNorm in one call: :class:`GhostBatchNorm`, the same computation as
:class:`normlib.lab.models.GhostNorm` around a BatchNorm, without its loop over the pieces.

``GhostNorm`` runs the norm once per group of ``m`` samples; with 16 groups per batch that is 16 small
calls forward and backward, which dominates a small network's training time on a CPU. The groups' statistics
can be taken in one call instead: an ``(k m, C, *)`` batch of ``k`` groups is laid out as ``(m, k C, *)``,
one "channel" per group and channel, and BatchNorm's per-channel statistics over that are exactly the
groups' statistics. The running statistics follow ``GhostNorm``'s rule: each group's update uses the
momentum :math:`b = 1 - (1 - a)^{1/k}`, in the order of the groups, so that one optimizer step moves them by
:math:`a`; the ``k`` updates are applied at once, :math:`r \\leftarrow (1-b)^k r + \\sum_i b (1-b)^{k-1-i} s_i`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlib.lab.models import GhostNorm, NormFactory

__all__ = ["GhostBatchNorm", "ghost_bn"]


class GhostBatchNorm(GhostNorm):
    """``GhostNorm(norm, group_size)`` for a BatchNorm ``norm`` (normlib's or torch's), in one call.

    Same ``.norm`` and state_dict keys as :class:`GhostNorm`, the same outputs, gradients and running
    statistics (to float rounding). A batch that ``group_size`` does not divide, a cumulative average
    (``momentum=None``) or a norm without running statistics falls back to ``GhostNorm``'s loop.
    """

    def forward(self, x: Tensor) -> Tensor:
        from normlib.functional import batch_norm

        bn, m, n = self.norm, self.group_size, x.shape[0]
        if (not self.training or n <= m or n % m or bn.momentum is None or not bn.track_running_stats):
            return super().forward(x)
        k, c, rest = n // m, x.shape[1], x.shape[2:]
        folded = x.reshape(k, m, c, *rest).transpose(0, 1).reshape(m, k * c, *rest)
        weight = bn.weight.repeat(k) if bn.weight is not None else None
        bias = bn.bias.repeat(k) if bn.bias is not None else None
        y = batch_norm(folded, None, None, weight, bias, training=True, eps=bn.eps)
        with torch.no_grad():
            dims = [0, *range(2, folded.dim())]
            mean = folded.mean(dims).view(k, c)
            var = folded.var(dims).view(k, c)  # unbiased, as BatchNorm stores it
            b = 1 - (1 - bn.momentum) ** (1 / k)
            w = b * (1 - b) ** torch.arange(k - 1, -1, -1, dtype=mean.dtype, device=mean.device)
            keep = (1 - b) ** k
            bn.running_mean.mul_(keep).add_((w[:, None] * mean).sum(0).to(bn.running_mean.dtype))
            bn.running_var.mul_(keep).add_((w[:, None] * var).sum(0).to(bn.running_var.dtype))
            bn.num_batches_tracked.add_(k)
        return y.reshape(m, k, c, *rest).transpose(0, 1).reshape(x.shape)


def ghost_bn(factory: NormFactory, group_size: int) -> NormFactory:
    """``factory`` (a BatchNorm) with each layer it builds wrapped in :class:`GhostBatchNorm`."""
    return lambda width: GhostBatchNorm(factory(width), group_size)

