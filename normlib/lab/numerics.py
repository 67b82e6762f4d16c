r"""Mean and variance in floating point: three algorithms, written so that every rounding is the same on every machine.

- :func:`naive_moments`: one pass of :math:`\sum x` and :math:`\sum x^2`, then :math:`E[x^2] - E[x]^2`;
- :func:`two_pass_moments`: the mean first, then :math:`\frac{1}{m}\sum (x - \mu)^2` (a second read of ``x``);
- :func:`welford` (Welford 1962): one pass that updates a count, a mean and :math:`M_2 = \sum (x - \mu)^2`
  per element; :func:`merge` (Chan, Golub & LeVeque) combines the moments of two parts,

  .. math::

      n = n_a + n_b, \quad \delta = \mu_b - \mu_a, \quad \mu = \mu_a + \delta \frac{n_b}{n}, \quad
      M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n},

  so that parts computed apart (threads, GPU blocks, data-parallel ranks) give the statistics of the whole;
  :func:`chunked_welford` does that: Welford within chunks, then a tree of merges, as fast kernels do.

Each function reduces the **last** dimension one element at a time, every operation in ``dtype`` (each
elementwise add, multiply and divide is one IEEE-754 operation, correctly rounded), the leading dimensions being
independent rows handled side by side. The order of operations is fixed, so the results are the same to the last
bit on any IEEE machine, unlike torch's own reductions, whose summation order depends on the CPU's vector width.
Counts stay exact Python integers (a bfloat16 cannot hold 257). :func:`exact_moments` is the float64 reference,
with exactly rounded sums (``math.fsum``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Moments", "naive_moments", "two_pass_moments", "welford", "merge", "chunked_welford",
           "exact_moments", "relative_error", "ulp", "ulp_error"]


class Moments(NamedTuple):
    """Count, mean and sum of squared deviations :math:`M_2` of a set of values (per row)."""

    count: int
    mean: Tensor
    m2: Tensor

    @property
    def var(self) -> Tensor:
        """The biased variance :math:`M_2 / n`, in the moments' dtype."""
        return self.m2 / self.count


def _columns(x: Tensor, dtype: torch.dtype):
    """The last dimension's slices, each converted (rounded) to ``dtype`` as it is read."""
    return (x[..., k].to(dtype) for k in range(x.shape[-1]))


def naive_moments(x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    r"""Mean and biased variance over the last dim as :math:`E[x^2] - E[x]^2`, sums sequential in ``dtype``.

    One read of ``x``, but the subtraction cancels: when :math:`|\mu| \gg \sigma` both terms are close to
    :math:`\mu^2` and their rounding errors, of relative size :math:`\epsilon`, are what is left.
    """
    dtype = dtype or x.dtype
    s = x.new_zeros(x.shape[:-1], dtype=dtype)
    q = x.new_zeros(x.shape[:-1], dtype=dtype)
    for xk in _columns(x, dtype):
        s = s + xk
        q = q + xk * xk
    m = x.shape[-1]
    mean = s / m
    return mean, q / m - mean * mean


def two_pass_moments(x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    r"""Mean, then biased variance :math:`\frac{1}{m}\sum_k (x_k - \mu)^2` over the last dim, in ``dtype``.

    Two reads of ``x``; the deviations are small numbers when the spread is small, so nothing cancels.
    """
    dtype = dtype or x.dtype
    s = x.new_zeros(x.shape[:-1], dtype=dtype)
    for xk in _columns(x, dtype):
        s = s + xk
    mean = s / x.shape[-1]
    q = torch.zeros_like(s)
    for xk in _columns(x, dtype):
        d = xk - mean
        q = q + d * d
    return mean, q / x.shape[-1]


def welford(x: Tensor, dtype: torch.dtype | None = None) -> Moments:
    r"""Welford's single pass over the last dim, in ``dtype``: for :math:`k = 1, \dots, m`,

    :math:`\delta = x_k - \mu_{k-1}`, :math:`\mu_k = \mu_{k-1} + \delta / k`,
    :math:`M_{2,k} = M_{2,k-1} + \delta\,(x_k - \mu_k)`.
    """
    dtype = dtype or x.dtype
    mean = x.new_zeros(x.shape[:-1], dtype=dtype)
    m2 = torch.zeros_like(mean)
    for k, xk in enumerate(_columns(x, dtype), start=1):
        delta = xk - mean
        mean = mean + delta / k
        m2 = m2 + delta * (xk - mean)
    return Moments(x.shape[-1], mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    r"""The moments of two disjoint parts combined (Chan et al.).

    No sum of raw squares is formed, so nothing cancels.
    """
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / n)
    return Moments(n, mean, m2)


def chunked_welford(x: Tensor, chunks: int, dtype: torch.dtype | None = None) -> Moments:
    """Welford within ``chunks`` equal, contiguous chunks of the last dim, then the chunks merged pairwise.

    ``chunks`` must be a power of two dividing the last dim. This is the shape of a parallel reduction: each
    chunk stands for a thread (or a block, or a rank) that reads its values once.
    """
    m = x.shape[-1]
    if chunks < 1 or chunks & (chunks - 1) or m % chunks:
        raise ValueError(f"chunks must be a power of two dividing {m}, got {chunks}")
    parts = welford(x.reshape(*x.shape[:-1], chunks, m // chunks), dtype)
    while parts.mean.shape[-1] > 1:
        left = Moments(parts.count, parts.mean[..., 0::2], parts.m2[..., 0::2])
        right = Moments(parts.count, parts.mean[..., 1::2], parts.m2[..., 1::2])
        parts = merge(left, right)
    return Moments(parts.count, parts.mean[..., 0], parts.m2[..., 0])


def exact_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 mean and biased variance over the last dim with exactly rounded sums (``math.fsum``), per row.

    The reference the algorithms are measured against: the moments of the values ``x`` actually holds
    (already rounded to its dtype), so an error is the algorithm's, not the input's.
    """
    rows = x.detach().to(torch.float64).reshape(-1, x.shape[-1]).numpy()
    m = rows.shape[1]
    means = np.array([math.fsum(r) / m for r in rows])
    variances = np.array([math.fsum((r - mu) ** 2) / m for r, mu in zip(rows, means, strict=True)])
    shape = x.shape[:-1]
    return torch.from_numpy(means).reshape(shape), torch.from_numpy(variances).reshape(shape)


def relative_error(got: Tensor, want: Tensor) -> Tensor:
    """:math:`|got - want| / |want|` in float64, elementwise (``inf`` where ``got`` is not finite)."""
    got, want = got.to(torch.float64), want.to(torch.float64)
    err = (got - want).abs() / want.abs()
    return torch.where(torch.isfinite(got), err, torch.full_like(err, math.inf))


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    r"""The spacing of ``dtype``'s numbers around each value of ``x`` (one unit in the last place), in float64.

    For :math:`2^{e-1} \le |x| < 2^e` it is :math:`2^{e-1}\epsilon`; below the smallest normal number it is the
    subnormal spacing. Rounding to nearest is off by at most half of it.
    """
    fi = torch.finfo(dtype)
    x = x.detach().to(torch.float64).abs()
    _, exponent = torch.frexp(x)  # x = mantissa * 2**exponent, mantissa in [0.5, 1)
    spacing = torch.ldexp(torch.full_like(x, fi.eps), exponent - 1)
    return torch.where(x < fi.tiny, torch.full_like(x, fi.tiny * fi.eps), spacing)


def ulp_error(got: Tensor, want: Tensor) -> float:
    """Largest error of ``got`` against the exact ``want``, in units in the last place of ``got``'s dtype.

    A correctly rounded result scores at most 0.5, whatever the magnitude of its values.
    """
    err = (got.detach().to(torch.float64) - want.detach().to(torch.float64)).abs() / ulp(want, got.dtype)
    return err.max().item()
