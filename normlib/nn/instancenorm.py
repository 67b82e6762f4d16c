r"""InstanceNorm modules: drop-ins for ``torch.nn.InstanceNorm1d/2d/3d``.

.. math::

    y_{nc} = \frac{x_{nc} - \mu_{nc}}{\sqrt{\sigma_{nc}^2 + \epsilon}}\,\gamma_c + \beta_c

with :math:`\mu_{nc}, \sigma_{nc}^2` the moments of one sample's one channel over its spatial dims.
Unlike BatchNorm the defaults are ``affine=False`` and ``track_running_stats=False``, and
unbatched input ``(C, *spatial)`` is accepted.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
import warnings

from torch import Tensor, fx, nn
from torch.nn.modules import instancenorm as _torch_instancenorm

from normlib.backend import ops
from normlib.nn._torch import fx_call
from normlib.nn.batchnorm import _NormBase

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase, _torch_instancenorm._InstanceNorm):
    _spatial_dims: int  # 1, 2 or 3

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        d = self._spatial_dims
        if input.dim() not in (d + 1, d + 2):
            raise ValueError(f"expected {d + 1}D or {d + 2}D input (got {input.dim()}D input)")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Checkpoints from before torch 0.4 stored running stats even when not tracked: drop them.
        if local_metadata.get("version", None) is None and not self.track_running_stats:
            stale = [prefix + k for k in ("running_mean", "running_var") if prefix + k in state_dict]
            if stale:
                klass = type(self).__name__
                names = " and ".join(f'"{key}"' for key in stale)
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {names} "
                    f"for {klass} with track_running_stats=False. If state_dict is a checkpoint saved before "
                    f"0.4.0, this may be expected because {klass} does not track running stats by default since "
                    "0.4.0. Please remove these keys from state_dict. If the running stats are actually needed, "
                    f"instead set track_running_stats=True in {klass} to enable them. See the documentation of "
                    f"{klass} for details."
                )
                for key in stale:
                    state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        self._check_input_dim(input)
        unbatched = input.dim() == self._spatial_dims + 1
        feature_dim = 0 if unbatched else 1
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. You can silence this "
                "warning by not passing in num_features, which is not used because affine=False",
                stacklevel=2,
            )
        x = input.unsqueeze(0) if unbatched else input
        y = ops(x, "instance_norm")(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    r"""Instance Normalization over ``(N, C, L)`` or unbatched ``(C, L)`` input.

    :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`, moments over ``L``.
    A drop-in for ``torch.nn.InstanceNorm1d``.
    """

    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    r"""Instance Normalization over ``(N, C, H, W)`` or unbatched ``(C, H, W)`` input.

    :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`, moments over ``H, W``.
    A drop-in for ``torch.nn.InstanceNorm2d``.
    """

    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    r"""Instance Normalization over ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input.

    :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`, moments over
    ``D, H, W``. A drop-in for ``torch.nn.InstanceNorm3d``.
    """

    _spatial_dims = 3
