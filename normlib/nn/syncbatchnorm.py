r"""SyncBatchNorm: BatchNorm whose statistics come from the whole data-parallel batch.

Each of the :math:`R` ranks holds :math:`n_r` values per channel. It computes its local count, mean
:math:`\mu_r` and sum of squared deviations :math:`M_r = \sum (x - \mu_r)^2`; these are all-gathered and
combined (Chan et al.'s parallel update, no :math:`E[x^2] - E[x]^2`):

.. math::

    N = \sum_r n_r, \qquad \mu = \frac{1}{N}\sum_r n_r \mu_r, \qquad
    \sigma^2 = \frac{1}{N}\sum_r \left(M_r + n_r (\mu_r - \mu)^2\right),

so uneven per-rank batches are weighted correctly. The backward all-reduces the two per-channel sums the
BatchNorm gradient needs, :math:`\sum \hat{g}` and :math:`\sum \hat{g}\hat{x}`, over the global batch.
Works with any ``torch.distributed`` backend: gloo on CPUs, NCCL on GPUs. Outside an initialized process
group of more than one rank, or in eval mode, it is BatchNorm.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import torch
import torch.distributed as dist
from torch import Tensor, fx, nn
from torch.autograd.function import once_differentiable

from normlib import functional as F
from normlib.backend import ops
from normlib.functional import _acc_dtype, _channel_shape, _update_running
from normlib.nn._torch import fx_call
from normlib.nn.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm"]


def _world_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, eps: float, momentum: float, group) -> Tensor:
        channels = x.shape[1]
        dims = (0, *range(2, x.dim()))
        xf = x.to(_acc_dtype(x.dtype))
        n_local = x.numel() // channels
        if n_local > 0:
            mu_local, var_local = F.moments(xf, dims)
            mu_local, m2_local = mu_local.reshape(-1), var_local.reshape(-1) * n_local
        else:
            mu_local = m2_local = xf.new_zeros(channels)
        local = torch.cat([xf.new_full((1,), float(n_local)), mu_local, m2_local])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # (R, 1 + 2C)
        counts, mus, m2s = stats[:, :1], stats[:, 1:1 + channels], stats[:, 1 + channels:]
        total = counts.sum()
        if total.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(total.item())} "
                             "values per channel across all ranks")
        # Shifted by the first rank with data, so that equal per-rank means (a constant channel) stay exact.
        ref = mus[int(torch.nonzero(counts.reshape(-1))[0])]
        mu = ref + (counts * (mus - ref)).sum(0) / total
        var = (m2s + counts * (mus - mu).square()).sum(0) / total
        _update_running(running_mean, running_var, mu, var, int(total.item()), momentum)
        shape = _channel_shape(x)
        rstd = torch.rsqrt(var + eps).reshape(shape)
        x_hat = (xf - mu.reshape(shape)) * rstd
        y = x_hat
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.total, ctx.group, ctx.dtype = total, group, x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable  # the all-reduced sums are numbers, not a graph: a second derivative raises, never lies
    def backward(ctx, dy: Tensor):
        x_hat, rstd, weight = ctx.saved_tensors
        shape, dims = rstd.shape, (0, *range(2, x_hat.dim()))
        dy = dy.to(x_hat.dtype)
        g = dy * weight.reshape(shape) if weight is not None else dy
        sums = torch.cat([g.sum(dims), (g * x_hat).sum(dims)])
        dist.all_reduce(sums, group=ctx.group)  # sum over the global batch
        sum_g, sum_gx = sums.chunk(2)
        n = ctx.total
        dx = rstd / n * (n * g - sum_g.reshape(shape) - x_hat * sum_gx.reshape(shape))
        dw = (dy * x_hat).sum(dims).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = dy.sum(dims).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dx.to(ctx.dtype), dw, db, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm over the global batch of a data-parallel job; a drop-in for ``torch.nn.SyncBatchNorm``.

    :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` with :math:`\mu, \sigma^2` the moments of
    every rank's batch together (weighted by each rank's count). Accepts ``(N, C, *)`` input of any rank
    >= 2. Works on CPUs with gloo as well as on GPUs with NCCL. Weight and bias gradients stay local: the
    data-parallel wrapper averages them like every other parameter's. As in torch, it synchronises only in
    training with batch statistics; in evaluation (running statistics, or batch statistics of the local
    batch when ``track_running_stats=False``) each rank works alone. It is a torch BatchNorm (``isinstance`` of
    ``torch.nn.modules.batchnorm._BatchNorm``), so :func:`normlib.fold_batchnorm` and code that selects
    BatchNorms by type find it. It is deliberately not a ``torch.nn.SyncBatchNorm``: ``DistributedDataParallel``
    refuses any ``torch.nn.SyncBatchNorm`` in a CPU module ("SyncBatchNorm layers only work with GPU modules"),
    which would take away the CPU support.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        running_mean, running_var, factor = self._running_update()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        group = self.process_group if self.process_group else dist.group.WORLD if dist.is_available() else None
        if not (use_batch_stats and self.training and _world_size(group) > 1):
            return ops(input, "batch_norm")(input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
                                            factor, self.eps)
        F._check_eps(self.eps, True)
        F._check_channel_vectors(input, 2, running_mean=running_mean, running_var=running_var, weight=self.weight,
                                 bias=self.bias)
        F._check_floating(input, "batch_norm")
        F._check_mixed(input, self.weight, self.bias, running_mean, running_var)
        return _SyncBatchNormFn.apply(input, self.weight, self.bias, running_mean, running_var, self.eps, factor,
                                      group)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every BatchNorm (torch's or normlib's) in ``module`` by normlib's SyncBatchNorm, recursively.

        Parameters and buffers are shared with the originals (not copied), as in torch; the training
        mode is kept. torch's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` finds normlib's BatchNorms
        too (they are ``torch.nn`` BatchNorms) and replaces them by torch's SyncBatchNorm.
        """
        output = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            output = cls(module.num_features, module.eps, module.momentum, module.affine,
                         module.track_running_stats, process_group, bias=module.bias is not None)
            if module.affine:
                with torch.no_grad():
                    output.weight = module.weight
                    output.bias = module.bias
            output.running_mean = module.running_mean
            output.running_var = module.running_var
            output.num_batches_tracked = module.num_batches_tracked
            output.training = module.training
            if hasattr(module, "qconfig"):
                output.qconfig = module.qconfig
        for name, child in module.named_children():
            output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return output
