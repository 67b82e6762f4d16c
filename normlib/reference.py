r"""NumPy reference implementations, written straight from the formulas.

Every normalization layer computes, for each element :math:`x_i`,

.. math::

    \mu_i = \frac{1}{m}\sum_{k \in S_i} x_k, \qquad
    \sigma_i^2 = \frac{1}{m}\sum_{k \in S_i} (x_k - \mu_i)^2, \qquad
    \hat{x}_i = \frac{x_i - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}}, \qquad
    y_i = \gamma \hat{x}_i + \beta

and the layers differ only in the set :math:`S_i` (``m = |S_i|``). For an input
of shape ``(N, C, *spatial)``:

============  =====================================================  ==========================
norm          :math:`S_i`                                            axes reduced
============  =====================================================  ==========================
BatchNorm     :math:`\{k : k_C = i_C\}`                              ``N`` and spatial
LayerNorm     :math:`\{k : k_N = i_N\}`                              ``C`` and spatial
InstanceNorm  :math:`\{k : k_N = i_N, k_C = i_C\}`                   spatial
GroupNorm     :math:`\{k : k_N = i_N, \lfloor k_C/(C/G) \rfloor =     ``C/G`` channels and spatial
              \lfloor i_C/(C/G) \rfloor\}`                           (after a reshape)
============  =====================================================  ==========================

:func:`moments` is the one place that computes :math:`\mu` and :math:`\sigma^2`;
every norm below is a choice of axes handed to it. Everything is computed in
float64, so these functions serve as the ground truth the torch code is checked
against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "moments",
    "normalize",
    "batch_norm_axes",
    "layer_norm_axes",
    "instance_norm_axes",
    "batch_norm",
    "layer_norm",
    "instance_norm",
    "group_norm",
    "rms_norm",
    "normalize_backward",
    "batch_norm_backward",
    "layer_norm_backward",
    "instance_norm_backward",
    "group_norm_backward",
    "rms_norm_backward",
    "numeric_grad",
    "rel_error",
]


def moments(x: np.ndarray, axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and biased variance of ``x`` over ``axes`` (the set :math:`S_i`).

    :math:`\mu = \frac{1}{m}\sum_{k \in S} x_k`,
    :math:`\sigma^2 = \frac{1}{m}\sum_{k \in S}(x_k - \mu)^2`, two passes in float64
    (no :math:`E[x^2] - E[x]^2` cancellation). The reduced axes are kept with size 1,
    so the results broadcast against ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(int(a) for a in axes)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return mu, var


def normalize(x: np.ndarray, axes: Sequence[int], eps: float = 1e-5) -> np.ndarray:
    r""":math:`\hat{x} = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` with the moments over ``axes``."""
    x = np.asarray(x, dtype=np.float64)
    mu, var = moments(x, axes)
    return (x - mu) / np.sqrt(var + eps)


def _affine(x_hat: np.ndarray, gamma, beta, shape: tuple[int, ...]) -> np.ndarray:
    """:math:`y = \\gamma \\hat{x} + \\beta`, with gamma and beta reshaped to ``shape``."""
    if gamma is not None:
        x_hat = x_hat * np.asarray(gamma, dtype=np.float64).reshape(shape)
    if beta is not None:
        x_hat = x_hat + np.asarray(beta, dtype=np.float64).reshape(shape)
    return x_hat


def _channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """Shape ``(1, C, 1, ...)`` that broadcasts a per-channel vector over ``(N, C, *)``."""
    return (1, channels) + (1,) * (ndim - 2)


def batch_norm_axes(ndim: int) -> tuple[int, ...]:
    """BatchNorm reduces over the batch and every spatial axis: ``(0, 2, 3, ...)``."""
    return (0,) + tuple(range(2, ndim))


def layer_norm_axes(ndim: int, num_normalized: int) -> tuple[int, ...]:
    """LayerNorm reduces over the trailing ``num_normalized`` axes."""
    return tuple(range(ndim - num_normalized, ndim))


def instance_norm_axes(ndim: int) -> tuple[int, ...]:
    """InstanceNorm reduces over the spatial axes only: ``(2, 3, ...)``."""
    return tuple(range(2, ndim))


def batch_norm(x, gamma=None, beta=None, eps: float = 1e-5, mean=None, var=None) -> np.ndarray:
    r"""BatchNorm over ``(N, C, *)``: statistics per channel over N and the spatial axes.

    With ``mean`` and ``var`` (per-channel running statistics) given, they replace the batch
    statistics, as in evaluation: :math:`y = \gamma (x - E[x]) / \sqrt{Var[x] + \epsilon} + \beta`.
    """
    x = np.asarray(x, dtype=np.float64)
    shape = _channel_shape(x.ndim, x.shape[1])
    if mean is None and var is None:
        x_hat = normalize(x, batch_norm_axes(x.ndim), eps)
    elif mean is not None and var is not None:
        mean = np.asarray(mean, dtype=np.float64).reshape(shape)
        var = np.asarray(var, dtype=np.float64).reshape(shape)
        x_hat = (x - mean) / np.sqrt(var + eps)
    else:
        raise ValueError("give both mean and var (running statistics) or neither")
    return _affine(x_hat, gamma, beta, shape)


def layer_norm(x, normalized_shape, gamma=None, beta=None, eps: float = 1e-5) -> np.ndarray:
    r"""LayerNorm: statistics of each sample over its trailing ``normalized_shape`` axes.

    ``gamma`` and ``beta`` have shape ``normalized_shape`` (one per normalized element).
    """
    x = np.asarray(x, dtype=np.float64)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    if x.shape[x.ndim - len(normalized_shape):] != normalized_shape:
        raise ValueError(f"trailing shape of {x.shape} is not normalized_shape={normalized_shape}")
    x_hat = normalize(x, layer_norm_axes(x.ndim, len(normalized_shape)), eps)
    return _affine(x_hat, gamma, beta, normalized_shape)


def instance_norm(x, gamma=None, beta=None, eps: float = 1e-5) -> np.ndarray:
    """InstanceNorm over ``(N, C, *)``: statistics of each (sample, channel) over the spatial axes."""
    x = np.asarray(x, dtype=np.float64)
    x_hat = normalize(x, instance_norm_axes(x.ndim), eps)
    return _affine(x_hat, gamma, beta, _channel_shape(x.ndim, x.shape[1]))


def group_norm(x, num_groups: int, gamma=None, beta=None, eps: float = 1e-5) -> np.ndarray:
    r"""GroupNorm over ``(N, C, *)``: reshape to ``(N, G, C/G * spatial)``, normalize axis 2.

    The affine parameters are per channel (C of each), not per group.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"num_channels ({c}) must be divisible by num_groups ({num_groups})")
    x_hat = normalize(x.reshape(n, num_groups, -1), (2,), eps).reshape(x.shape)
    return _affine(x_hat, gamma, beta, _channel_shape(x.ndim, c))


def rms_norm(x, normalized_shape, gamma=None, eps: float | None = None) -> np.ndarray:
    r"""RMSNorm: :math:`y = x / \sqrt{\overline{x^2} + \epsilon} \odot \gamma` over the trailing axes.

    ``eps=None`` is the machine epsilon of the dtype the statistics are computed in, as in
    ``torch.nn.RMSNorm``: float64's for float64 input, float32's for anything narrower (float16 included,
    whose own epsilon is about 1e-3).
    """
    if eps is None:
        eps = np.finfo(np.float64 if np.asarray(x).dtype == np.float64 else np.float32).eps
    x = np.asarray(x, dtype=np.float64)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    axes = layer_norm_axes(x.ndim, len(tuple(normalized_shape)))
    y = x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps)
    return _affine(y, gamma, None, tuple(normalized_shape))


# ------------------------------------------------------------------------------------------------
# Backward passes, one node of the computational graph at a time
# ------------------------------------------------------------------------------------------------


def normalize_backward(dx_hat, x, axes: Sequence[int], eps: float = 1e-5,
                       center: bool = True) -> np.ndarray:
    r"""Backprop :math:`\partial L/\partial \hat{x}` through
    :math:`\hat{x} = (x - \mu)/\sqrt{\sigma^2 + \epsilon}`.

    The forward graph, with the moments over ``axes`` (:math:`m` elements each):
    ``mu = mean(x)``, ``xmu = x - mu``, ``sq = xmu**2``, ``var = mean(sq)``,
    ``std = sqrt(var + eps)``, ``istd = 1/std``, ``x_hat = xmu * istd``; the
    backward visits the nodes in reverse. With ``center=False`` the graph is
    RMSNorm's: ``ms = mean(x**2)``, ``x_hat = x / sqrt(ms + eps)``.
    """
    x = np.asarray(x, dtype=np.float64)
    dx_hat = np.asarray(dx_hat, dtype=np.float64)
    axes = tuple(axes)
    m = int(np.prod([x.shape[a] for a in axes]))
    xmu = x - x.mean(axis=axes, keepdims=True) if center else x
    var = (xmu**2).mean(axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    istd = 1.0 / std
    # x_hat = xmu * istd
    d_xmu = dx_hat * istd
    d_istd = (dx_hat * xmu).sum(axis=axes, keepdims=True)
    # istd = 1 / std,  std = sqrt(var + eps)
    d_std = -d_istd / std**2
    d_var = d_std * 0.5 / std
    # var = mean(sq),  sq = xmu**2
    d_sq = np.broadcast_to(d_var / m, x.shape)
    d_xmu = d_xmu + 2.0 * xmu * d_sq
    if not center:
        return d_xmu
    # xmu = x - mu,  mu = mean(x)
    d_mu = -d_xmu.sum(axis=axes, keepdims=True)
    return d_xmu + np.broadcast_to(d_mu / m, x.shape)


def _affine_backward(dy, x_hat, gamma, shape, param_axes):
    r"""Gradients of :math:`y = \gamma \hat{x} + \beta`: (dx_hat, dgamma, dbeta)."""
    g = np.ones(shape) if gamma is None else np.asarray(gamma, dtype=np.float64).reshape(shape)
    dgamma = (dy * x_hat).sum(axis=param_axes)
    dbeta = dy.sum(axis=param_axes)
    return dy * g, dgamma, dbeta


def batch_norm_backward(dy, x, gamma=None, eps: float = 1e-5):
    """``(dx, dgamma, dbeta)`` of :func:`batch_norm` in training (batch statistics)."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    axes = batch_norm_axes(x.ndim)
    dx_hat, dgamma, dbeta = _affine_backward(dy, normalize(x, axes, eps), gamma, _channel_shape(x.ndim, x.shape[1]),
                                             axes)
    return normalize_backward(dx_hat, x, axes, eps), dgamma, dbeta


def instance_norm_backward(dy, x, gamma=None, eps: float = 1e-5):
    """``(dx, dgamma, dbeta)`` of :func:`instance_norm`."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    axes = instance_norm_axes(x.ndim)
    dx_hat, dgamma, dbeta = _affine_backward(dy, normalize(x, axes, eps), gamma, _channel_shape(x.ndim, x.shape[1]),
                                             batch_norm_axes(x.ndim))
    return normalize_backward(dx_hat, x, axes, eps), dgamma, dbeta


def layer_norm_backward(dy, x, normalized_shape, gamma=None, eps: float = 1e-5):
    """``(dx, dgamma, dbeta)`` of :func:`layer_norm`; dgamma and dbeta have ``normalized_shape``."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    axes = layer_norm_axes(x.ndim, len(normalized_shape))
    lead = tuple(range(x.ndim - len(normalized_shape)))
    dx_hat, dgamma, dbeta = _affine_backward(dy, normalize(x, axes, eps), gamma, normalized_shape, lead)
    return normalize_backward(dx_hat, x, axes, eps), dgamma, dbeta


def group_norm_backward(dy, x, num_groups: int, gamma=None, eps: float = 1e-5):
    """``(dx, dgamma, dbeta)`` of :func:`group_norm`: normalize over ``(N, G, C/G * spatial)``, per-channel affine."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    n, c = x.shape[:2]
    x_hat = normalize(x.reshape(n, num_groups, -1), (2,), eps).reshape(x.shape)
    dx_hat, dgamma, dbeta = _affine_backward(dy, x_hat, gamma, _channel_shape(x.ndim, c), batch_norm_axes(x.ndim))
    dx = normalize_backward(dx_hat.reshape(n, num_groups, -1), x.reshape(n, num_groups, -1), (2,), eps)
    return dx.reshape(x.shape), dgamma, dbeta


def rms_norm_backward(dy, x, normalized_shape, gamma=None, eps: float = 1e-6):
    """``(dx, dgamma)`` of :func:`rms_norm` (no bias)."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    axes = layer_norm_axes(x.ndim, len(normalized_shape))
    x_hat = x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps)
    dx_hat, dgamma, _ = _affine_backward(dy, x_hat, gamma, normalized_shape, tuple(range(x.ndim - len(axes))))
    return normalize_backward(dx_hat, x, axes, eps, center=False), dgamma


def numeric_grad(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6) -> np.ndarray:
    r"""Central differences of :math:`L = \sum f(x) \odot dy` with respect to every
    element of ``x``.

    :math:`\partial L/\partial x_k \approx (L(x + h e_k) - L(x - h e_k)) / 2h`, one
    element at a time (``x`` is modified in place and restored). The CS231n way to
    check a backward pass.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = (f(x) * dy).sum()
        x[i] = old - h
        minus = (f(x) * dy).sum()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def rel_error(a, b) -> float:
    r"""Largest relative error :math:`|a - b| / \max(10^{-8}, |a| + |b|)`; about 1e-8 or less for a correct gradient."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
