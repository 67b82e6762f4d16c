r"""Dropout modules: drop-ins for ``torch.nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and
``FeatureAlphaDropout``.

In training, each unit (or each whole channel) is dropped with probability ``p`` and the survivors are
scaled by :math:`1/(1-p)`, so :math:`E[y] = x`; in evaluation the module is the identity. Masks are
drawn from torch's global RNG (``torch.manual_seed`` makes them reproducible) unless a
``torch.Generator`` is given.
"""

# No `from __future__ import annotations`: torch.fx copies a forward's annotations into the graphs it traces,
# where a string would not pickle.
from torch import Generator, Tensor, fx, nn

from normlib import functional as F
from normlib.backend import ops
from normlib.nn._torch import fx_call

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]


class _DropoutNd(nn.modules.dropout._DropoutNd):
    _fn = staticmethod(F.dropout)

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator: Generator | None = None) -> None:
        nn.Module.__init__(self)  # torch's constructor is not run: this one makes the same attributes
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace
        self.generator = generator

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        return self._fn(input, self.p, self.training, self.inplace, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd, nn.Dropout):
    r"""Elementwise dropout: :math:`y = x \odot r / (1-p)`, :math:`r_k \sim \mathrm{Bernoulli}(1-p)` in training.

    ``p`` is the drop probability. Identity in evaluation. With the ``"triton"`` backend
    (:func:`normlib.set_backend`) GPU tensors use a kernel that regenerates the mask from a seed.
    """

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        return ops(input, "dropout")(input, self.p, self.training, self.inplace, generator=self.generator)


class Dropout1d(_DropoutNd, nn.Dropout1d):
    r"""Channel dropout for ``(N, C, L)`` or ``(C, L)``: :math:`y_{nc\cdot} = x_{nc\cdot} r_{nc} / (1-p)`."""

    _fn = staticmethod(F.dropout1d)


class Dropout2d(_DropoutNd, nn.Dropout2d):
    r"""Channel dropout for ``(N, C, H, W)``: whole feature maps zeroed.

    :math:`y_{nc\cdot} = x_{nc\cdot} r_{nc} / (1-p)`, one draw per sample and channel.
    """

    _fn = staticmethod(F.dropout2d)


class Dropout3d(_DropoutNd, nn.Dropout3d):
    r"""Channel dropout for ``(N, C, D, H, W)`` or ``(C, D, H, W)``: whole volumes zeroed."""

    _fn = staticmethod(F.dropout3d)


class _AlphaDropoutNd(_DropoutNd):
    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return fx_call(self, input)
        # As torch's modules do, never in place: ``inplace`` is accepted (and shown in the repr) but not used,
        # so the caller's input is left alone, leaves that require grad included.
        return self._fn(input, self.p, self.training, generator=self.generator)


class AlphaDropout(_AlphaDropoutNd, nn.AlphaDropout):
    r"""Alpha dropout for SELU networks: dropped units set to :math:`\alpha'`, then :math:`y = a x' + b`.

    Keeps zero mean and unit variance of standard normal input; see
    :func:`normlib.functional.alpha_dropout`. Like ``torch.nn.AlphaDropout`` it never works in place
    (``inplace`` is ignored); the functional form honours it.
    """

    _fn = staticmethod(F.alpha_dropout)


class FeatureAlphaDropout(_AlphaDropoutNd, nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels; see :class:`AlphaDropout` (``inplace`` is ignored, as in torch)."""

    _fn = staticmethod(F.feature_alpha_dropout)
