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
The forward saves the input :math:`x`, the statistics (one or two numbers per set) and :math:`\gamma`, nothing
else, and the backward forms :math:`\hat{x}` again from them, as torch's fused kernels do. The backward is
itself differentiable (double backward, gradient penalties), and the Function works under
:mod:`torch.func` (``vmap``, ``grad``, ``jacrev``, ``jacfwd``, ``hessian``) and ``torch.compile``. The
functions have the signatures of their :mod:`normlib.functional` counterparts, checks and errors included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normlib import functional as F
from normlib.functional import _acc_dtype, _channel_shape, _update_running

__all__ = ["batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm"]


def _sum_over(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t`` summed over ``dims`` (dims kept); ``t`` itself when there are none."""
    return t.sum(dims, keepdim=True) if dims else t


_ROW_BLOCK = 32  # rows per block in the blocked column sums of _sum_to


def _broadcast_dims(shape: torch.Size | None, ndim: int) -> set[int]:
    """The dims of an ``ndim``-d tensor along which a tensor of ``shape`` is broadcast (all, for None)."""
    if shape is None:
        return set(range(ndim))
    lead = ndim - len(shape)
    return set(range(lead)) | {i + lead for i, s in enumerate(shape) if s == 1}


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` over the dims along which a tensor of ``shape`` was broadcast to it.

    A long first dim is summed in blocks of rows first: the same sum, read from memory in an order that
    compiles to a cache-friendly loop (a column sum over a long row-major matrix otherwise strides).
    """
    dims = tuple(d for d in sorted(_broadcast_dims(shape, t.dim())) if t.shape[d] != 1)
    rows = t.shape[0]
    if 0 in dims and rows >= 4 * _ROW_BLOCK and rows % _ROW_BLOCK == 0:
        t = t.reshape(rows // _ROW_BLOCK, _ROW_BLOCK, *t.shape[1:]).sum(1)
    return _sum_over(t, dims).reshape(shape)


class _NormAffine(torch.autograd.Function):
    r"""``y = gamma * x_hat + beta`` with ``x_hat`` normalized over ``dims``; the backward by hand.

    ``weight`` and ``bias`` come already shaped to broadcast against ``x``. ``mode`` is ``"center"``
    (mean and variance from x), ``"rms"`` (mean square from x, no centering) or ``"fixed"`` (the given
    ``mu`` and ``var``, e.g. running statistics, which receive no gradient). Besides ``y`` it returns the
    statistics it used, ``mu`` and ``var`` (non-differentiable; ``mu`` is empty for ``"rms"``), so that
    BatchNorm can update its running estimates without computing them twice, and so that ``setup_context``
    can save them (an input saved instead, for ``"fixed"``, trips ``torch.compile``).

    The backward saves ``x`` (and the statistics, one number per set) and forms :math:`\hat{x}` again from
    them. When a graph of the gradient is being built (``create_graph=True``, a gradient penalty,
    :mod:`torch.func`'s transforms) it also recomputes the statistics from ``x`` with differentiable ops:
    the hand-derived formula, written in torch ops, is then itself differentiated correctly, which gives
    double backward. ``generate_vmap_rule`` lets ``torch.func.vmap`` batch it, and :class:`_NormAffineFwAD`
    adds the forward-mode derivative (``torch.func.jvp``, ``jacfwd``, ``hessian``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, dims: tuple[int, ...], eps: float,
                mode: str, mu: Tensor | None, var: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        xf = x.to(_acc_dtype(x.dtype))
        if mode != "fixed":
            mu, var = _statistics(xf, dims, mode)
        y = _x_hat(xf, mu, torch.rsqrt(var + eps))
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        if mode == "fixed":  # the given statistics, as new tensors (an input returned as an output is a view)
            return y.to(x.dtype), mu.clone(), var.clone()
        return y.to(x.dtype), (mu if mu is not None else xf.new_empty(0)), var

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, dims, eps, mode, mu, var = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*_to_save(inputs, output))
        ctx.dims, ctx.eps, ctx.mode = dims, eps, mode
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        # The dims that the statistics and the parameters are both shared over: the "cells" of the backward.
        shared = _broadcast_dims(weight.shape if weight is not None else ctx.bias_shape, x.dim())
        ctx.cell = tuple(d for d in dims if d in shared)

    @staticmethod
    def backward(ctx, dy: Tensor, _dmu, _dvar):
        x, weight, mu, var = ctx.saved_tensors
        dims, cell = ctx.dims, ctx.cell
        xf = x.to(_acc_dtype(x.dtype))
        if torch.is_grad_enabled() and ctx.mode != "fixed":
            # differentiable functions of x, for the gradient's graph
            mu, var = _statistics(xf, dims, ctx.mode)
        rstd = torch.rsqrt(var + ctx.eps)
        x_hat = _x_hat(xf, mu, rstd)
        dy = dy.to(x_hat.dtype)
        gamma = weight if weight is not None else 1.0
        g = dy * gamma  # g_hat = gamma * dL/dy
        # Sums of dL/dy and dL/dy * x_hat over each cell (BatchNorm: all of S, per
        # channel; GroupNorm and InstanceNorm: the spatial dims, per sample and
        # channel; LayerNorm: none). The sums over S and the parameter gradients are
        # both sums of these, so dy and x_hat are reduced once.
        sum_dy = _sum_over(dy, cell)
        sum_dy_xhat = _sum_over(dy * x_hat, cell)
        if ctx.mode == "fixed":
            dx = g * rstd
        else:
            rest = tuple(d for d in dims if d not in cell)
            m = math.prod([x_hat.shape[d] for d in dims])
            proj = _sum_over(gamma * sum_dy_xhat, rest)  # sum_S g_hat * x_hat
            if ctx.mode == "center":
                dx = rstd / m * (m * g - _sum_over(gamma * sum_dy, rest) - x_hat * proj)
            else:
                dx = rstd / m * (m * g - x_hat * proj)
        dw = db = None
        if weight is not None and ctx.needs_input_grad[1]:
            dw = _sum_to(sum_dy_xhat, weight.shape).to(weight.dtype)
        if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
            db = _sum_to(sum_dy, ctx.bias_shape).to(ctx.bias_dtype)
        dx = dx.to(x.dtype) if ctx.needs_input_grad[0] else None
        return dx, dw, db, None, None, None, None, None



class _NormAffineFwAD(_NormAffine):
    """:class:`_NormAffine` with a forward-mode derivative, used where one may be asked for.

    Apart because ``torch.compile`` cannot trace a Function that defines ``jvp``, and because the references
    ``save_for_forward`` keeps would outlive saved-tensor hooks (activation checkpointing, offloading).
    """

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _NormAffine.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*_to_save(inputs, output))

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dw: Tensor | None, db: Tensor | None, *_):
        r"""Forward mode: :math:`\dot{\hat{x}} = \rho(\dot{x} - \overline{\dot{x}}
        - \hat{x}\,\overline{\hat{x}\dot{x}})` (RMSNorm without the mean term, fixed statistics
        :math:`\rho\dot{x}`), then
        :math:`\dot{y} = \gamma\dot{\hat{x}} + \dot{\gamma}\hat{x} + \dot{\beta}`."""
        x, weight, mu, var = ctx.saved_tensors
        dims = ctx.dims
        xf = x.to(_acc_dtype(x.dtype))
        rstd = torch.rsqrt(var + ctx.eps)
        x_hat = _x_hat(xf, mu, rstd)
        dy = torch.zeros_like(x_hat)
        if dx is not None:
            dxf = dx.to(x_hat.dtype)
            if ctx.mode != "fixed":
                if ctx.mode == "center":
                    dxf = dxf - dxf.mean(dims, keepdim=True)
                dxf = dxf - x_hat * (x_hat * dxf).mean(dims, keepdim=True)
            dy = dy + rstd * dxf * (weight if weight is not None else 1.0)
        if dw is not None:
            dy = dy + dw * x_hat
        if db is not None:
            dy = dy + db
        return dy.to(x.dtype), None, None


_SUM_CHUNK = 4096  # inductor's float32 sums over more elements switch to a cascade helper held in memory


def _mean(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t.mean(dims, keepdim=True)``; over several trailing dims whose last has at most 4096 elements but
    whose product has more (GroupNorm's channels x pixels of a group), summed over the last dim first.

    The same mean. Compiled, a float32 sum over more than 4096 elements runs through inductor's cascade
    summation helper, whose running sums live in memory rather than in a register; two shorter sums do
    not, and the group's data is still read in one loop.
    """
    n = math.prod([t.shape[d] for d in dims])
    trailing = dims == tuple(range(t.dim() - len(dims), t.dim()))
    if len(dims) > 1 and trailing and n > _SUM_CHUNK and t.shape[-1] <= _SUM_CHUNK:
        return t.sum(-1, keepdim=True).sum(dims[:-1], keepdim=True) / n
    return t.mean(dims, keepdim=True)


def _statistics(xf: Tensor, dims: tuple[int, ...], mode: str) -> tuple[Tensor | None, Tensor]:
    """``(mu, var)`` of ``xf`` over ``dims``; for ``"rms"`` ``(None, mean square)``.

    The moments of :func:`normlib.functional.moments` (two passes over the data shifted by its first
    element), with the means of :func:`_mean`.
    """
    if mode == "rms":
        return None, xf.square().mean(dims, keepdim=True)
    if not dims or any(xf.shape[d] == 0 for d in dims):
        return F.moments(xf, dims)  # nothing to shift by
    first = tuple(slice(0, 1) if d in dims else slice(None) for d in range(xf.dim()))
    shift = xf[first]
    d = xf - shift
    m = _mean(d, dims)
    return shift + m, _mean((d - m).square(), dims)


def _x_hat(xf: Tensor, mu: Tensor | None, rstd: Tensor) -> Tensor:
    return (xf - mu) * rstd if mu is not None else xf * rstd


def _to_save(inputs: tuple, output: tuple) -> tuple:
    """What the derivatives need: ``x``, ``weight`` and the statistics ``mu`` (None for RMS) and ``var``."""
    x, weight, mode = inputs[0], inputs[1], inputs[5]
    return x, weight, (output[1] if mode != "rms" else None), output[2]


def _norm_function() -> type[_NormAffine]:
    """The Function to apply: with ``jvp`` where a forward-mode derivative may be asked for (a dual level, a
    :mod:`torch.func` transform), never while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return _NormAffine
    if torch.autograd.forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return _NormAffineFwAD
    return _NormAffine


def _size_one(t: Tensor | None, d: int) -> bool:
    """Whether ``t`` has size 1 along ``d``, as a Python bool.

    Under ``torch.compile`` with dynamic shapes the comparison is symbolic (``C/G == 1``); the ``if`` makes it
    a guard and a constant. Comparing tuples of such symbolic booleans instead fails in torch's symbolic
    shapes ("BooleanAtom not allowed in this context") when a second shape recompiles the function.
    """
    if t is not None and t.shape[d] == 1:
        return True
    return False


def _apply(x: Tensor, weight: Tensor | None, bias: Tensor | None, dims: tuple[int, ...], eps: float, mode: str,
           mu: Tensor | None = None, var: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:class:`_NormAffine` on ``x`` with neighbouring dims of the statistics' set ``S`` merged into one.

    Returns ``(y, mu, var)``: the statistics in the merged shape (see :class:`_NormAffine`).

    Two neighbours in ``S`` merge when the other tensors (parameters, given statistics) are broadcast along
    both or along neither. Merging, say, ``(N, C, H, W)`` into ``(N, C, H*W)`` gives the same result with
    fewer, longer loops, which is what a compiler turns into fast code. (Dims outside ``S`` are left alone:
    merging them too once led inductor, in torch 2.13, to miscompile a chain of norms.)
    """
    others = [t.reshape((1,) * (x.dim() - t.dim()) + tuple(t.shape)) if t is not None else None
              for t in (weight, bias, mu, var)]
    roles = [(d in dims, *(_size_one(t, d) for t in others)) for d in range(x.dim())]
    groups: list[list[int]] = []
    for d in range(x.dim()):
        if groups and d in dims and roles[groups[-1][-1]] == roles[d]:
            groups[-1].append(d)
        else:
            groups.append([d])

    def merged(t: Tensor | None) -> Tensor | None:
        return t.reshape([math.prod([t.shape[d] for d in group]) for group in groups]) if t is not None else None

    new_dims = tuple(i for i, group in enumerate(groups) if group[0] in dims)
    y, mu, var = _norm_function().apply(merged(x), *(merged(t) for t in others[:2]), new_dims, eps, mode,
                                        *(merged(t) for t in others[2:]))
    return y.reshape(x.shape), mu, var


def _affine_views(weight, bias, shape):
    return (weight.reshape(shape) if weight is not None else None,
            bias.reshape(shape) if bias is not None else None)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.batch_norm` with the hand-derived backward (running stats updated alike)."""
    F._check_batch_norm(input, running_mean, running_var, weight, bias, training, eps)
    shape = _channel_shape(input)
    w, b = _affine_views(weight, bias, shape)
    dims = (0, *range(2, input.dim()))
    if training:
        y, mu, var = _apply(input, w, b, dims, eps, "center")
        _update_running(running_mean, running_var, mu, var, F._per_channel_count(input), momentum)
        return y
    if running_mean is None or running_var is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    mu, var = F._running_stats(running_mean, running_var, input)
    return _apply(input, w, b, dims, eps, "fixed", mu.detach(), var.detach())[0]


def instance_norm(input: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Tensor | None = None, bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.instance_norm` with the hand-derived backward."""
    F._check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats)
    input = input.contiguous()  # as torch's: a channels_last input gives a contiguous output
    shape = _channel_shape(input)
    w, b = _affine_views(weight, bias, shape)
    dims = tuple(range(2, input.dim()))
    if use_input_stats:
        y, mu, var = _apply(input, w, b, dims, eps, "center")
        # The running statistics follow the batch average of the per-instance statistics.
        n = math.prod(input.shape[2:]) if input.numel() else 0
        _update_running(running_mean, running_var, mu.mean(0), var.mean(0), n, momentum)
        return y
    if running_mean is None or running_var is None:
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    mu, var = F._running_stats(running_mean, running_var, input)
    return _apply(input, w, b, dims, eps, "fixed", mu.detach(), var.detach())[0]


def layer_norm(input: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.layer_norm` with the hand-derived backward."""
    normalized_shape = F._check_layer_norm(input, normalized_shape, weight, bias)
    input = input.contiguous()  # as torch's: a channels_last input gives a contiguous output
    dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    return _apply(input, weight, bias, dims, eps, "center")[0]


def rms_norm(input: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """:func:`normlib.functional.rms_norm` with the hand-derived backward."""
    normalized_shape = F._check_rms_norm(input, normalized_shape, weight)
    eps = F._default_rms_eps(input.dtype) if eps is None else eps
    dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    return _apply(input, weight, None, dims, eps, "rms")[0]


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.group_norm` with the hand-derived backward.

    A contiguous input is viewed as ``(N*G, C/G, *spatial)``, one row per (sample, group) pair, and the
    per-channel parameters are repeated to ``(N*G, C/G, 1, ...)``; any other input (channels_last) as
    ``(N, G, C/G, *spatial)`` with the parameters as ``(1, G, C/G, 1, ...)``.
    """
    F._check_group_norm(input, num_groups, weight, bias)
    n, c = input.shape[:2]
    g, spatial = num_groups, tuple(input.shape[2:])
    ones = (1,) * len(spatial)
    if input.is_contiguous():
        # (sample, group) pairs merged into the first dim, the parameters repeated for each sample
        # (autograd sums their gradients back over N): every tensor then has the same first dim, and
        # the compiled code runs one loop over it, computing each group's statistics, output and
        # gradients while the group's data is in cache.
        grouped = input.reshape((n * g, c // g, *spatial))
        w, b = ((t.reshape(1, g, c // g).expand(n, g, c // g).reshape((n * g, c // g, *ones))
                 if t is not None else None) for t in (weight, bias))
    else:  # e.g. channels_last: a view, so that the output keeps the input's layout, as torch's does
        grouped = input.reshape((n, g, c // g, *spatial))
        w, b = _affine_views(weight, bias, (1, g, c // g, *ones))
    dims = tuple(range(grouped.dim() - 1 - len(spatial), grouped.dim()))
    y = _apply(grouped, w, b, dims, eps, "center")[0]
    return y.reshape(input.shape)
