r"""Norms whose backward pass is derived by hand: one ``torch.autograd.Function`` serves them all.

Every norm computes :math:`\hat{x} = (x - \mu)\,\rho` with :math:`\rho = 1/\sqrt{\sigma^2 + \epsilon}` over a
set :math:`S` of :math:`m` elements (RMSNorm: :math:`\hat{x} = x\rho`, :math:`\rho = 1/\sqrt{\overline{x^2} +
\epsilon}`), then :math:`y = \gamma \hat{x} + \beta`. With :math:`\hat{g} = \gamma \odot \partial L/\partial y`,
the chain rule through :math:`\mu` and :math:`\sigma^2` collapses to the compact form

.. math::

    \frac{\partial L}{\partial x} = \frac{\rho}{m}\left(m\,\hat{g} - \sum_S \hat{g}
        - \hat{x} \sum_S \hat{g}\,\hat{x}\right)

(RMSNorm drops the middle term; with fixed running statistics only :math:`\rho\,\hat{g}` is left), and
:math:`\partial L/\partial\gamma = \sum \partial L/\partial y \odot \hat{x}`,
:math:`\partial L/\partial\beta = \sum \partial L/\partial y` over everything the parameter is shared by.
The forward saves :math:`\hat{x}`, :math:`\rho` and :math:`\gamma`, nothing else. The functions have the
signatures of their :mod:`normlib.functional` counterparts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normlib import functional as F
from normlib.functional import _acc_dtype, _channel_shape, _check_channel_vectors, _update_running

__all__ = ["batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm"]


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` over the dims along which a tensor of ``shape`` was broadcast to it."""
    lead = t.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and t.shape[i + lead] != 1)
    return t.sum(dims, keepdim=True).reshape(shape) if dims else t.reshape(shape)


class _NormAffine(torch.autograd.Function):
    """``y = gamma * x_hat + beta`` with ``x_hat`` normalized over ``dims``; the backward by hand.

    ``weight`` and ``bias`` come already shaped to broadcast against ``x``. ``mode`` is ``"center"``
    (mean and variance from x), ``"rms"`` (mean square from x, no centering) or ``"fixed"`` (the given
    ``mu`` and ``var``, e.g. running statistics, which receive no gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, dims: tuple[int, ...], eps: float,
                mode: str, mu: Tensor | None = None, var: Tensor | None = None) -> Tensor:
        xf = x.to(_acc_dtype(x.dtype))
        if mode == "center":
            mu, var = F.moments(xf, dims)
        elif mode == "rms":
            mu, var = None, xf.square().mean(dims, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        x_hat = (xf - mu) * rstd if mu is not None else xf * rstd
        y = x_hat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.dims, ctx.mode, ctx.has_bias, ctx.dtypes = dims, mode, bias is not None, (x.dtype,)
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x_hat, rstd, weight = ctx.saved_tensors
        dims = ctx.dims
        dy = dy.to(x_hat.dtype)
        g = dy * weight if weight is not None else dy  # g_hat = gamma * dL/dy
        if ctx.mode == "fixed":
            dx = g * rstd
        else:
            m = math.prod(x_hat.shape[d] for d in dims)
            proj = (g * x_hat).sum(dims, keepdim=True)
            if ctx.mode == "center":
                dx = rstd / m * (m * g - g.sum(dims, keepdim=True) - x_hat * proj)
            else:
                dx = rstd / m * (m * g - x_hat * proj)
        dw = _sum_to(dy * x_hat, weight.shape).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] \
            else None
        db = _sum_to(dy, ctx.bias_shape).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx.to(ctx.dtypes[0]), dw, db, None, None, None, None, None


def _affine_views(weight, bias, shape):
    return (weight.reshape(shape) if weight is not None else None,
            bias.reshape(shape) if bias is not None else None)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.batch_norm` with the hand-derived backward (running stats updated alike)."""
    channels = _check_channel_vectors(input, 2, running_mean=running_mean, running_var=running_var, weight=weight,
                                      bias=bias)
    shape = _channel_shape(input)
    w, b = _affine_views(weight, bias, shape)
    dims = (0, *range(2, input.dim()))
    if training:
        F._verify_batch_size(input.shape)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                mu, var = F.moments(input, dims)
            _update_running(running_mean, running_var, mu, var, input.numel() // channels, momentum)
        return _NormAffine.apply(input, w, b, dims, eps, "center")
    if running_mean is None or running_var is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    mu, var = F._running_stats(running_mean, running_var, input)
    return _NormAffine.apply(input, w, b, dims, eps, "fixed", mu.detach(), var.detach())


def instance_norm(input: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Tensor | None = None, bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.instance_norm` with the hand-derived backward."""
    _check_channel_vectors(input, 3, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    shape = _channel_shape(input)
    w, b = _affine_views(weight, bias, shape)
    dims = tuple(range(2, input.dim()))
    if use_input_stats:
        F._verify_spatial_size(input.shape)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                mu, var = F.moments(input, dims)
            _update_running(running_mean, running_var, mu.mean(0), var.mean(0), math.prod(input.shape[2:]), momentum)
        return _NormAffine.apply(input, w, b, dims, eps, "center")
    if running_mean is None or running_var is None:
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    mu, var = F._running_stats(running_mean, running_var, input)
    return _NormAffine.apply(input, w, b, dims, eps, "fixed", mu.detach(), var.detach())


def layer_norm(input: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.layer_norm` with the hand-derived backward."""
    normalized_shape = F._check_normalized_shape(input, normalized_shape, weight, bias)
    dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    return _NormAffine.apply(input, weight, bias, dims, eps, "center")


def rms_norm(input: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """:func:`normlib.functional.rms_norm` with the hand-derived backward."""
    normalized_shape = F._check_normalized_shape(input, normalized_shape, weight, None)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    return _NormAffine.apply(input, weight, None, dims, eps, "rms")


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.group_norm` with the hand-derived backward.

    The input is viewed as ``(N, G, C/G, *spatial)``; the per-channel parameters as ``(1, G, C/G, 1, ...)``.
    """
    F._check_group_norm(input, num_groups, weight, bias)
    n, c = input.shape[:2]
    grouped = input.reshape((n, num_groups, c // num_groups, *input.shape[2:]))
    shape = (1, num_groups, c // num_groups) + (1,) * (input.dim() - 2)
    w, b = _affine_views(weight, bias, shape)
    y = _NormAffine.apply(grouped, w, b, tuple(range(2, grouped.dim())), eps, "center")
    return y.reshape(input.shape)
