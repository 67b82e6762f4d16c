r"""Triton kernels for the norms and dropout, forward and backward, with :mod:`normlib.functional`'s signatures.

Two kernel families cover the norms:

- **row kernels** (LayerNorm, RMSNorm): one program normalizes one row of an ``(M, N)`` view, the row held
  in registers; elementwise :math:`\gamma, \beta`. The backward kernel runs a fixed number of programs,
  each looping over rows and keeping partial :math:`\partial\gamma, \partial\beta` sums, which torch adds up.
- **set kernels** (BatchNorm, GroupNorm): one program normalizes one *set* :math:`S_i`, visited as ``A``
  slabs of ``L`` contiguous values (BatchNorm: a channel = ``N`` slabs of ``H*W``; GroupNorm: a group of one
  sample = ``C/G`` slabs of ``H*W``), in chunks, so sets of any size work; per-channel :math:`\gamma, \beta`.

Dropout regenerates its mask in the backward from the seed and the element index (Philox via ``tl.rand``),
so no mask is stored. All statistics are accumulated in float32.

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
from normlib.functional import _check_channel_vectors, _check_group_norm, _check_normalized_shape, _update_running

__all__ = ["layer_norm", "rms_norm", "group_norm", "batch_norm", "dropout"]

MAX_ROW = 65536  # elements of one row held in registers by the row kernels


# ------------------------------------------------------------------------------------------- row kernels


@triton.jit
def _row_fwd(X, Y, W, B, Mean, Rstd, n_cols, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
             CENTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if CENTER:
        mean = tl.sum(x, axis=0) / n_cols
        xc = tl.where(mask, x - mean, 0.0)
    else:
        mean = 0.0
        xc = x
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _row_bwd(X, DY, DX, W, Mean, Rstd, DWp, DBp, n_rows, n_cols, HAS_W: tl.constexpr, CENTER: tl.constexpr,
             BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask, 1.0, 0.0)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(pid, n_rows, programs):
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
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


class _RowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, n_cols: int, eps: float, center: bool):
        x2 = x.reshape(-1, n_cols).contiguous()
        rows = x2.shape[0]
        if n_cols > MAX_ROW:
            raise ValueError(f"the Triton row kernels hold a row in registers: at most {MAX_ROW} elements, "
                             f"got {n_cols}")
        y = torch.empty_like(x2)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        block = triton.next_power_of_2(n_cols)
        dummy = x2  # stands in for absent weight/bias pointers; never read
        _row_fwd[(rows,)](x2, y, weight if weight is not None else dummy, bias if bias is not None else dummy,
                          mean, rstd, n_cols, eps, HAS_W=weight is not None, HAS_B=bias is not None, CENTER=center,
                          BLOCK=block, num_warps=min(max(block // 256, 1), 16))
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.center, ctx.has_bias, ctx.shape = center, bias is not None, x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, weight, mean, rstd = ctx.saved_tensors
        rows, n_cols = x2.shape
        dy2 = dy.reshape(rows, n_cols).contiguous()
        dx = torch.empty_like(x2)
        programs = _backward_programs(x2, rows)
        dwp = torch.empty(programs, n_cols, device=x2.device, dtype=torch.float32)
        dbp = torch.empty_like(dwp)
        block = triton.next_power_of_2(n_cols)
        _row_bwd[(programs,)](x2, dy2, dx, weight if weight is not None else x2, mean, rstd, dwp, dbp, rows, n_cols,
                              HAS_W=weight is not None, CENTER=ctx.center, BLOCK=block,
                              num_warps=min(max(block // 256, 1), 16))
        dw = dwp.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = dbp.sum(0).to(weight.dtype if weight is not None else dy.dtype) \
            if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx.reshape(ctx.shape), dw, db, None, None, None


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.layer_norm` with Triton row kernels (forward and backward)."""
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, bias)
    n = math.prod(normalized_shape)
    w = weight.reshape(n).contiguous() if weight is not None else None
    b = bias.reshape(n).contiguous() if bias is not None else None
    return _RowNorm.apply(input, w, b, n, eps, True)


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """:func:`normlib.functional.rms_norm` with Triton row kernels (forward and backward)."""
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, None)
    n = math.prod(normalized_shape)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    w = weight.reshape(n).contiguous() if weight is not None else None
    return _RowNorm.apply(input, w, None, n, eps, False)


# ------------------------------------------------------------------------------------------- set kernels


@triton.jit
def _set_fwd(X, Y, W, B, Mean, Var, Rstd, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, count, eps,
             HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    base = s * base_mul
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for a in range(0, A):
        for start in range(0, L, BLOCK):
            idx = start + offs
            acc += tl.load(X + base + a * outer + idx, mask=idx < L, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for a in range(0, A):
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            d = tl.where(m, tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
            acc += d * d
    var = tl.sum(acc, axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    for a in range(0, A):
        ch = (s % ch_mod) * ch_mul + a * ch_step
        w = 1.0
        b = 0.0
        if HAS_W:
            w = tl.load(W + ch).to(tl.float32)
        if HAS_B:
            b = tl.load(B + ch).to(tl.float32)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(tl.float32)
            y = (x - mean) * rstd * w + b
            tl.store(Y + base + a * outer + idx, y.to(Y.dtype.element_ty), mask=m)
    tl.store(Mean + s, mean)
    tl.store(Var + s, var)
    tl.store(Rstd + s, rstd)


@triton.jit
def _set_bwd(X, DY, DX, W, Mean, Rstd, DWp, DBp, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, count,
             HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    base = s * base_mul
    offs = tl.arange(0, BLOCK)
    mean = tl.load(Mean + s)
    rstd = tl.load(Rstd + s)
    sum_g = tl.zeros([BLOCK], dtype=tl.float32)
    sum_gx = tl.zeros([BLOCK], dtype=tl.float32)
    for a in range(0, A):
        ch = (s % ch_mod) * ch_mul + a * ch_step
        w = 1.0
        if HAS_W:
            w = tl.load(W + ch).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        db = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + a * outer + idx, mask=m, other=0.0).to(tl.float32)
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
            w = tl.load(W + ch).to(tl.float32)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(X + base + a * outer + idx, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + a * outer + idx, mask=m, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            dx = (dy * w - c_g - xhat * c_gx) * rstd
            tl.store(DX + base + a * outer + idx, dx.to(DX.dtype.element_ty), mask=m)


class _SetNorm(torch.autograd.Function):
    """Normalize ``S`` sets, each ``A`` slabs of ``L`` contiguous values (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, layout: tuple, eps: float):
        sets, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, reduce_dw = layout
        x = x.contiguous()
        y = torch.empty_like(x)
        mean = torch.empty(sets, device=x.device, dtype=torch.float32)
        var, rstd = torch.empty_like(mean), torch.empty_like(mean)
        block = min(triton.next_power_of_2(max(L, 1)), 1024)
        _set_fwd[(sets,)](x, y, weight if weight is not None else x, bias if bias is not None else x, mean, var, rstd,
                          A, L, base_mul, outer, ch_mod, ch_mul, ch_step, A * L, eps,
                          HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=block)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.layout, ctx.has_bias, ctx.block = layout, bias is not None, block
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):
        x, weight, mean, rstd = ctx.saved_tensors
        sets, A, L, base_mul, outer, ch_mod, ch_mul, ch_step, reduce_dw = ctx.layout
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        dwp = torch.empty(sets, A, device=x.device, dtype=torch.float32)
        dbp = torch.empty_like(dwp)
        _set_bwd[(sets,)](x, dy, dx, weight if weight is not None else x, mean, rstd, dwp, dbp, A, L, base_mul, outer,
                          ch_mod, ch_mul, ch_step, A * L, HAS_W=weight is not None, BLOCK=ctx.block)
        dw = reduce_dw(dwp).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = reduce_dw(dbp).to(weight.dtype if weight is not None else dy.dtype) \
            if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.group_norm` with the Triton set kernels: one program per (sample, group)."""
    _check_group_norm(input, num_groups, weight, bias)
    n, c = input.shape[:2]
    hw = math.prod(input.shape[2:])
    cpg = c // num_groups
    layout = (n * num_groups, cpg, hw, cpg * hw, hw, num_groups, cpg, 1, lambda p: p.reshape(n, c).sum(0))
    y, _, _ = _SetNorm.apply(input, weight, bias, layout, eps)
    return y


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """:func:`normlib.functional.batch_norm`; training uses the Triton set kernels (one program per channel).

    Evaluation is an elementwise affine map with the running statistics and is left to
    :func:`normlib.functional.batch_norm`.
    """
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    channels = _check_channel_vectors(input, 2, running_mean=running_mean, running_var=running_var, weight=weight,
                                      bias=bias)
    F._verify_batch_size(input.shape)
    n, hw = input.shape[0], math.prod(input.shape[2:])
    layout = (channels, n, hw, hw, channels * hw, channels, 1, 0, lambda p: p.sum(1))
    y, mean, var = _SetNorm.apply(input, weight, bias, layout, eps)
    _update_running(running_mean, running_var, mean, var, n * hw, momentum)
    return y


# ----------------------------------------------------------------------------------------------- dropout


@triton.jit
def _dropout_kernel(X, Y, n, p, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    keep = tl.rand(seed, offs) >= p  # the same (seed, index) gives the same draw in the backward
    x = tl.load(X + offs, mask=m, other=0.0)
    y = tl.where(keep, x.to(tl.float32) / (1.0 - p), 0.0)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


def _run_dropout(x: Tensor, p: float, seed: int) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    block = 1024
    _dropout_kernel[(triton.cdiv(n, block),)](x, y, n, p, seed, BLOCK=block)
    return y


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return _run_dropout(x, p, seed)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return _run_dropout(dy, ctx.p, ctx.seed), None, None  # the mask is regenerated, never stored


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: torch.Generator | None = None) -> Tensor:
    """:func:`normlib.functional.dropout` with a Triton kernel; the mask comes from a seed, not from memory.

    The seed is drawn from ``generator`` (or torch's global RNG), so ``torch.manual_seed`` makes the
    masks reproducible; they differ from torch's own dropout masks. ``inplace`` writes the result back.
    """
    F._check_p(p)
    if p == 0.0 or not training or input.numel() == 0:
        return input
    if p == 1.0:
        return input.mul_(0) if inplace else input * 0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    y = _Dropout.apply(input, p, seed)
    return input.copy_(y) if inplace else y
