r"""Triton kernels for the norms and dropout, forward and backward, with :mod:`normlib.functional`'s signatures.

Two kernel families cover the norms:

- **row kernels** (LayerNorm, RMSNorm): one program normalizes one row of an ``(M, N)`` view, the row held
  in registers; elementwise :math:`\gamma, \beta`. The backward kernel runs a fixed number of programs,
  each looping over rows and keeping partial :math:`\partial\gamma, \partial\beta` sums, which torch adds up.
- **set kernels** (BatchNorm, GroupNorm): one program normalizes one *set* :math:`S_i`, visited as ``A``
  slabs of ``L`` contiguous values (BatchNorm: a channel = ``N`` slabs of ``H*W``; GroupNorm: a group of one
  sample = ``C/G`` slabs of ``H*W``), in chunks, so sets of any size work; per-channel :math:`\gamma, \beta`.

Dropout regenerates its mask in the backward from the seed and the element index (Philox via ``tl.rand``),
so no mask is stored. Statistics are accumulated in float32 (float64 for float64 input), over the data
shifted by each set's first element, so that a constant row or channel normalizes to exactly zero.

The kernels' backward passes are not themselves differentiable. When a graph of the gradient is asked for
(``create_graph=True``: double backward, gradient penalties) the backward differentiates
:mod:`normlib.functional`'s forward instead, with autograd, so higher derivatives are right. Where the
kernels cannot run (inside ``torch.compile``, under :mod:`torch.func` transforms, on empty input, and for
LayerNorm/RMSNorm rows longer than :data:`MAX_ROW`) the functions hand the work to :mod:`normlib.functional`,
which computes the same function.

On a GPU these run compiled. Without one, set ``TRITON_INTERPRET=1`` *before* importing this module and they
run in Triton's interpreter on CPU tensors: slow, but it checks the kernels' arithmetic (the tests do that).
Use them through :func:`normlib.set_backend` (``"triton"``) or call them directly.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlib import functional as F
from normlib.functional import _update_running

__all__ = ["layer_norm", "rms_norm", "group_norm", "batch_norm", "dropout"]

MAX_ROW = 65536  # elements of one row held in registers by the row kernels; longer rows use normlib.functional


def _acc(x: Tensor):
    """The accumulation dtype, as a Triton constexpr: float64 for float64 input, float32 otherwise."""
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _kernels_can_run(x: Tensor) -> bool:
    """False where the kernels cannot be used and :mod:`normlib.functional` computes the same function.

    Inside ``torch.compile`` (the compiler writes its own kernels for the tensor ops; Triton's interpreter
    cannot be traced), under :mod:`torch.func` transforms (the kernels take plain tensors), and on empty input.
    """
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or x.numel() == 0)


def _grad_through(ctx, forward, inputs: tuple, grads: tuple) -> list:
    """Gradients of ``forward(*inputs)`` (autograd through tensor ops), as a graph that can be differentiated.

    What the kernels' backward passes return when ``create_graph=True``: the kernels compute numbers, not a
    graph, so a second derivative through them would treat their results as constants.
    """
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        outputs = forward(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        found = torch.autograd.grad(outputs[:len(grads)], [inputs[i] for i in wanted], grads, create_graph=True,
                                    allow_unused=True)
    result = [None] * len(inputs)
    for i, g in zip(wanted, found, strict=True):
        result[i] = g
    return result


# ------------------------------------------------------------------------------------------- row kernels


@triton.jit
def _row_fwd(X, Y, W, B, Mean, Rstd, n_cols, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
             CENTER: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(ACC)
    if CENTER:
        # Moments of x - K, K the row's first element: exact (zero) for a constant row.
        k = tl.load(X + row * n_cols).to(ACC)
        d = tl.where(mask, x - k, 0.0)
        m = tl.sum(d, axis=0) / n_cols
        mean = k + m
        xc = tl.where(mask, d - m, 0.0)
    else:
        mean = tl.zeros([1], dtype=ACC).sum(axis=0)
        xc = x
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(ACC)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _row_bwd(X, DY, DX, W, Mean, Rstd, DWp, DBp, n_rows, n_cols, HAS_W: tl.constexpr, CENTER: tl.constexpr,
             ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    else:
        w = tl.where(mask, 1.0, 0.0).to(ACC)
    dw = tl.zeros([BLOCK], dtype=ACC)
    db = tl.zeros([BLOCK], dtype=ACC)
    for row in range(pid, n_rows, programs):
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(ACC)
        rstd = tl.load(Rstd + row)
        if CENTER:
            xhat = tl.where(mask, (x - tl.load(Mean + row)) * rstd, 0.0)
        else:
            xhat = x * rstd
        g = dy * w
        c1 = tl.sum(g * xhat, axis=0) / n_cols
        if CENTER:
            c2 = tl.sum(g, axis=0) / n_cols
            dx = (g - c2 - xhat * c1) * rstd
        else:
            dx = (g - xhat * c1) * rstd
        tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DWp + pid * n_cols + cols, dw, mask=mask)
    tl.store(DBp + pid * n_cols + cols, db, mask=mask)


def _backward_programs(x: Tensor, n_rows: int) -> int:
    if x.is_cuda:
        return min(n_rows, 4 * torch.cuda.get_device_properties(x.device).multi_processor_count)
    return min(n_rows, 4)


def _row_reference(x: Tensor, weight: Tensor | None, bias: Tensor | None, n_cols: int, eps: float,
                   center: bool) -> Tensor:
    """What :class:`_RowNorm` computes, in tensor ops (for its differentiable backward)."""
    rows = x.reshape(-1, n_cols)
    y = F.layer_norm(rows, [n_cols], weight, bias, eps) if center else F.rms_norm(rows, [n_cols], weight, eps)
    return y.reshape(x.shape)


class _RowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, n_cols: int, eps: float, center: bool):
        x2 = x.reshape(-1, n_cols).contiguous()
        rows = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(rows, device=x.device, dtype=F._acc_dtype(x.dtype))
        rstd = torch.empty_like(mean)
        block = triton.next_power_of_2(n_cols)
        dummy = x2  # stands in for absent weight/bias pointers; never read
        _row_fwd[(rows,)](x2, y, weight if weight is not None else dummy, bias if bias is not None else dummy,
                          mean, rstd, n_cols, eps, HAS_W=weight is not None, HAS_B=bias is not None, CENTER=center,
                          ACC=_acc(x), BLOCK=block, num_warps=min(max(block // 256, 1), 16))
        ctx.save_for_backward(x, weight, bias, mean, rstd)  # x itself, so that create_graph can reach it
        ctx.center, ctx.n_cols, ctx.eps = center, n_cols, eps
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: differentiate the tensor-op forward
            return tuple(_grad_through(ctx, _row_reference, (x, weight, bias, ctx.n_cols, ctx.eps, ctx.center),
                                       (dy,)))
        n_cols = ctx.n_cols
        x2 = x.reshape(-1, n_cols).contiguous()
        rows = x2.shape[0]
        dy2 = dy.reshape(rows, n_cols).contiguous()
        dx = torch.empty_like(x2)
        programs = _backward_programs(x2, rows)
        dwp = torch.empty(programs, n_cols, device=x2.device, dtype=mean.dtype)
        dbp = torch.empty_like(dwp)
        block = triton.next_power_of_2(n_cols)
        _row_bwd[(programs,)](x2, dy2, dx, weight if weight is not None else x2, mean, rstd, dwp, dbp, rows, n_cols,
                              HAS_W=weight is not None, CENTER=ctx.center, ACC=_acc(x2), BLOCK=block,
                              num_warps=min(max(block // 256, 1), 16))
        dw = dwp.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = dbp.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.reshape(x.shape), dw, db, None, None, None


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.layer_norm` with Triton row kernels (forward and backward)."""
    normalized_shape = F._check_layer_norm(input, normalized_shape, weight, bias)
    n = math.prod(normalized_shape)
    if n > MAX_ROW or not _kernels_can_run(input):
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    w = weight.reshape(n) if weight is not None else None
    b = bias.reshape(n) if bias is not None else None
    return _RowNorm.apply(input, _contiguous(w), _contiguous(b), n, eps, True)


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """:func:`normlib.functional.rms_norm` with Triton row kernels (forward and backward)."""
    normalized_shape = F._check_rms_norm(input, normalized_shape, weight)
    eps = F._default_rms_eps(input.dtype) if eps is None else eps
    n = math.prod(normalized_shape)
    if n > MAX_ROW or not _kernels_can_run(input):
        return F.rms_norm(input, normalized_shape, weight, eps)
    w = weight.reshape(n) if weight is not None else None
    return _in_layout_of(_RowNorm.apply(input, _contiguous(w), None, n, eps, False), input)


def _contiguous(t: Tensor | None) -> Tensor | None:
    return t.contiguous() if t is not None else None


def _in_layout_of(y: Tensor, x: Tensor) -> Tensor:
    """``y`` (computed contiguous) in the channels-last layout of ``x`` when ``x`` has one, as torch's outputs."""
    if x.is_contiguous():
        return y
    for dim, layout in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dim and x.is_contiguous(memory_format=layout):
            return y.contiguous(memory_format=layout)
    return y


# ------------------------------------------------------------------------------------------- set kernels


@triton.jit
def _set_fwd(X, Y, W, B, Mean, Var, Rstd, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, count, eps,
             HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    base = s * base_mul
    offs = tl.arange(0, BLOCK)
    # Moments of x - K, K the set's first element: exact (zero) for a constant set.
    k = tl.load(X + base).to(ACC)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for a in range(0, A):
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            acc += tl.where(m, tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(ACC) - k, 0.0)
    mean = k + tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK], dtype=ACC)
    for a in range(0, A):
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            d = tl.where(m, tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(ACC) - mean, 0.0)
            acc += d * d
    var = tl.sum(acc, axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    for a in range(0, A):
        ch = (s % ch_mod) * ch_mul + a * ch_step
        w = 1.0
        b = 0.0
        if HAS_W:
            w = tl.load(W + ch).to(ACC)
        if HAS_B:
            b = tl.load(B + ch).to(ACC)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(ACC)
            y = (x - mean) * rstd * w + b
            tl.store(Y + base + a * outer + idx, y.to(Y.dtype.element_ty), mask=m)
    tl.store(Mean + s, mean)
    tl.store(Var + s, var)
    tl.store(Rstd + s, rstd)


@triton.jit
def _set_bwd(X, DY, DX, W, Mean, Rstd, DWp, DBp, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, count,
             HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    base = s * base_mul
    offs = tl.arange(0, BLOCK)
    mean = tl.load(Mean + s)
    rstd = tl.load(Rstd + s)
    sum_g = tl.zeros([BLOCK], dtype=ACC)
    sum_gx = tl.zeros([BLOCK], dtype=ACC)
    for a in range(0, A):
        ch = (s % ch_mod) * ch_mul + a * ch_step
        w = 1.0
        if HAS_W:
            w = tl.load(W + ch).to(ACC)
        dw = tl.zeros([BLOCK], dtype=ACC)
        db = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(ACC)
            dy = tl.load(DY + base + a * outer + idx, mask=m, other=0.0).to(ACC)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
            sum_g += dy * w
            sum_gx += dy * w * xhat
            dw += dy * xhat
            db += dy
        tl.store(DWp + s * A + a, tl.sum(dw, axis=0))
        tl.store(DBp + s * A + a, tl.sum(db, axis=0))
    c_g = tl.sum(sum_g, axis=0) / count
    c_gx = tl.sum(sum_gx, axis=0) / count
    for a in range(0, A):
        ch = (s % ch_mod) * ch_mul + a * ch_step
        w = 1.0
        if HAS_W:
            w = tl.load(W + ch).to(ACC)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(ACC)
            dy = tl.load(DY + base + a * outer + idx, mask=m, other=0.0).to(ACC)
            xhat = (x - mean) * rstd
            dx = (dy * w - c_g - xhat * c_gx) * rstd
            tl.store(DX + base + a * outer + idx, dx.to(DX.dtype.element_ty), mask=m)


class _SetNorm(torch.autograd.Function):
    """Normalize ``S`` sets, each ``A`` slabs of ``L`` contiguous values (see the module docstring).

    ``reference(x, weight, bias)`` is the same normalization in tensor ops, for the differentiable backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, layout: tuple, eps: float, reference):
        sets, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, reduce_dw = layout
        xc = x.contiguous()
        y = torch.empty_like(xc)
        mean = torch.empty(sets, device=x.device, dtype=F._acc_dtype(x.dtype))
        var, rstd = torch.empty_like(mean), torch.empty_like(mean)
        block = min(triton.next_power_of_2(max(L, 1)), 1024)
        _set_fwd[(sets,)](xc, y, weight if weight is not None else xc, bias if bias is not None else xc, mean, var,
                          rstd, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, A * L, eps,
                          HAS_W=weight is not None, HAS_B=bias is not None, ACC=_acc(x), BLOCK=block)
        ctx.save_for_backward(x, weight, bias, mean, rstd)  # x itself, so that create_graph can reach it
        ctx.layout, ctx.block, ctx.reference = layout, block, reference
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: differentiate the tensor-op forward
            return (*_grad_through(ctx, ctx.reference, (x, weight, bias), (dy,)), None, None, None)
        sets, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, reduce_dw = ctx.layout
        x = x.contiguous()
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        dwp = torch.empty(sets, A, device=x.device, dtype=mean.dtype)
        dbp = torch.empty_like(dwp)
        _set_bwd[(sets,)](x, dy, dx, weight if weight is not None else x, mean, rstd, dwp, dbp, A, L, base_mul, outer,
                          ch_mod, ch_mul, ch_step, A * L, HAS_W=weight is not None, ACC=_acc(x), BLOCK=ctx.block)
        dw = reduce_dw(dwp).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = reduce_dw(dbp).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.group_norm` with the Triton set kernels: one program per (sample, group)."""
    F._check_group_norm(input, num_groups, weight, bias)
    if not _kernels_can_run(input):
        return F.group_norm(input, num_groups, weight, bias, eps)
    n, c = input.shape[:2]
    hw = math.prod(input.shape[2:])
    cpg = c // num_groups
    layout = (n * num_groups, cpg, hw, cpg * hw, hw, num_groups, cpg, 1, lambda p: p.reshape(n, c).sum(0))
    y, _, _ = _SetNorm.apply(input, _contiguous(weight), _contiguous(bias), layout, eps,
                             lambda x, w, b: F.group_norm(x, num_groups, w, b, eps))
    return _in_layout_of(y, input)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.batch_norm`; training uses the Triton set kernels (one program per channel).

    Evaluation is an elementwise affine map with the running statistics and is left to
    :func:`normlib.functional.batch_norm`.
    """
    if not training or not _kernels_can_run(input) or input.dim() < 2 or input.shape[1] == 0:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    channels = F._check_batch_norm(input, running_mean, running_var, weight, bias, training, eps)
    n, hw = input.shape[0], math.prod(input.shape[2:])
    layout = (channels, n, hw, hw, channels * hw, channels, 1, 0, lambda p: p.sum(1))
    y, mean, var = _SetNorm.apply(input, _contiguous(weight), _contiguous(bias), layout, eps,
                                  lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.0, eps))
    _update_running(running_mean, running_var, mean, var, n * hw, momentum)
    return _in_layout_of(y, input)


# ----------------------------------------------------------------------------------------------- dropout


@triton.jit
def _dropout_kernel(X, Y, n, p, seed, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    keep = tl.rand(seed, offs) >= p  # the same (seed, index) gives the same draw in the backward
    x = tl.load(X + offs, mask=m, other=0.0).to(ACC)
    y = tl.where(keep, x / (1.0 - p), 0.0)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


def _run_dropout(x: Tensor, p: float, seed: int) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    block = 1024
    _dropout_kernel[(triton.cdiv(n, block),)](x, y, n, p, seed, ACC=_acc(x), BLOCK=block)
    return y


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return _run_dropout(x, p, seed).reshape(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        # Dropout is linear and its own transpose: the backward is the same dropout, with the mask regenerated
        # (never stored). Through apply when a graph of the gradient is wanted, so that it is differentiable.
        if torch.is_grad_enabled():
            return _Dropout.apply(dy, ctx.p, ctx.seed), None, None
        return _run_dropout(dy, ctx.p, ctx.seed).reshape(dy.shape), None, None


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: torch.Generator | None = None) -> Tensor:
    """:func:`normlib.functional.dropout` with a Triton kernel; the mask comes from a seed, not from memory.

    The seed is drawn from ``generator`` (or torch's global RNG), so ``torch.manual_seed`` makes the
    masks reproducible; they differ from torch's own dropout masks. ``inplace`` writes the result back.
    """
    F._check_p(p)
    if p == 0.0 or not training or input.numel() == 0:
        return input
    if not _kernels_can_run(input) or p == 1.0 or not input.is_floating_point():
        return F.dropout(input, p, training, inplace, generator=generator)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    y = _in_layout_of(_Dropout.apply(input, p, seed), input)
    return input.copy_(y) if inplace else y
