r"""BatchNorm modules: drop-ins for ``torch.nn.BatchNorm1d/2d/3d``.

.. math::

    y = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}\,\gamma + \beta

with :math:`\mu_B, \sigma_B^2` the per-channel moments over the batch and spatial dims in
training, and the running estimates :math:`\hat{\mu}, \hat{\sigma}^2` in evaluation.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import torch
from torch import Tensor, fx, nn
from torch.nn.modules import batchnorm as _torch_batchnorm

from normlib.backend import ops
from normlib.nn._affine import init_affine, reset_affine
from normlib.nn._torch import fx_call

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _NormBase(_torch_batchnorm._NormBase):
    """What BatchNorm and InstanceNorm share: affine parameters, running-statistics buffers, repr.

    A subclass of torch's own ``_NormBase`` (so is every BatchNorm, InstanceNorm, BatchRenorm and
    SwitchableNorm here), whose constructor it replaces: normlib's makes the same attributes.

    Parameters ``weight`` (:math:`\\gamma`, ones) and ``bias`` (:math:`\\beta`, zeros) of size C;
    buffers ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked`` (0, long),
    or ``None`` each when ``track_running_stats=False``. Names match torch's, so state_dicts load
    both ways.
    """

    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        nn.Module.__init__(self)  # torch's constructor is not run: this one makes the same attributes
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        init_affine(self, num_features, affine, bias, device, dtype)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _running_update(self) -> tuple[Tensor | None, Tensor | None, float]:
        """Count this step and say how to update the running statistics: ``(mean, var, factor)``.

        In training with tracked statistics ``num_batches_tracked`` goes up by one and ``factor`` is the
        momentum (``None``: the cumulative average's ``1/t``). The buffers are returned when they are to be
        updated (training, tracked) or used (eval), and ``None`` otherwise.
        """
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average: factor 1/t at step t
                factor = 1.0 / float(self.num_batches_tracked)
        if self.training and not self.track_running_stats:
            return None, None, factor
        return self.running_mean, self.running_var, factor

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # A checkpoint from before num_batches_tracked existed (version < 2, or no version metadata) keeps
        # the module's own count (0 for a fresh module), as torch does; a strict load does not miss the key.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            count = self.num_batches_tracked
            state_dict[key] = count if count is not None and count.device.type != "meta" else \
                torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class _BatchNorm(_NormBase, _torch_batchnorm._BatchNorm):
    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        self._check_input_dim(input)
        running_mean, running_var, factor = self._running_update()
        # Batch statistics in training, and in eval when there are no running statistics.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        return ops(input, "batch_norm")(input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
                                     factor, self.eps)


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    r"""Batch Normalization over ``(N, C)`` or ``(N, C, L)`` input; a drop-in for ``torch.nn.BatchNorm1d``.

    :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, moments per channel over
    ``N`` (and ``L``). In training the running estimates follow
    :math:`\hat{s} \leftarrow (1 - m)\hat{s} + m s_t` with the unbiased batch variance
    (``momentum=None``: the cumulative average); evaluation normalizes with them.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    r"""Batch Normalization over ``(N, C, H, W)`` input; a drop-in for ``torch.nn.BatchNorm2d``.

    :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, moments per channel over
    ``N, H, W``; running estimates as in :class:`BatchNorm1d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    r"""Batch Normalization over ``(N, C, D, H, W)`` input; a drop-in for ``torch.nn.BatchNorm3d``.

    :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, moments per channel over
    ``N, D, H, W``; running estimates as in :class:`BatchNorm1d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
