r"""Activation functions and pooling from their formulas, in NumPy, with their derivatives.

The lessons check each against ``torch.nn``. Each activation ``f`` comes with ``f_grad``, its derivative
:math:`f'(z)` (elementwise), so a backward pass is ``dz = dy * f_grad(z)``.

- ReLU :math:`\max(0, z)`; Leaky ReLU / PReLU :math:`\max(0, z) + a \min(0, z)` (PReLU learns :math:`a`);
- sigmoid :math:`\sigma(z) = 1 / (1 + e^{-z})`, :math:`\sigma' = \sigma (1 - \sigma)`;
- tanh, :math:`\tanh' = 1 - \tanh^2`;
- SiLU (swish) :math:`z \sigma(z)`;
- GELU :math:`z \Phi(z)` with :math:`\Phi` the standard normal CDF, or its tanh approximation
  :math:`\tfrac12 z (1 + \tanh(\sqrt{2/\pi}(z + 0.044715 z^3)))`.

Pooling on ``(N, C, H, W)`` arrays with a ``k x k`` window and stride ``k`` (non-overlapping, as in LeNet):
max, average, and global average; :func:`max_pool2d_backward` routes each window's gradient to the
position of its maximum (the first one, on ties, as torch does).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ACTIVATIONS", "avg_pool2d", "avg_pool2d_backward", "gelu", "gelu_grad", "gelu_tanh", "gelu_tanh_grad",
           "global_avg_pool2d", "leaky_relu", "leaky_relu_grad", "max_pool2d", "max_pool2d_backward", "relu",
           "relu_grad", "sigmoid", "sigmoid_grad", "silu", "silu_grad", "tanh", "tanh_grad"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def relu(z):
    return np.maximum(z, 0.0)


def relu_grad(z):
    """1 where z > 0, else 0 (torch's choice at z = 0 is 0)."""
    return (np.asarray(z) > 0).astype(np.float64)


def leaky_relu(z, a: float = 0.01):
    """Leaky ReLU with slope ``a`` for negative input; PReLU is the same formula with ``a`` learned."""
    z = np.asarray(z, dtype=np.float64)
    return np.where(z > 0, z, a * z)


def leaky_relu_grad(z, a: float = 0.01):
    return np.where(np.asarray(z) > 0, 1.0, a)


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    # = 1 / (1 + exp(-z)), without overflow for large |z|
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sigmoid_grad(z):
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh(z):
    return np.tanh(np.asarray(z, dtype=np.float64))


def tanh_grad(z):
    return 1.0 - np.tanh(np.asarray(z, dtype=np.float64)) ** 2


def silu(z):
    z = np.asarray(z, dtype=np.float64)
    return z * sigmoid(z)


def silu_grad(z):
    """d/dz z sigma(z) = sigma(z) (1 + z (1 - sigma(z)))."""
    z = np.asarray(z, dtype=np.float64)
    s = sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _phi(z):
    return np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)


def _Phi(z):
    from scipy.special import erf

    return 0.5 * (1.0 + erf(z / math.sqrt(2.0)))


def gelu(z):
    """Exact GELU, z * Phi(z)."""
    z = np.asarray(z, dtype=np.float64)
    return z * _Phi(z)


def gelu_grad(z):
    """Phi(z) + z phi(z)."""
    z = np.asarray(z, dtype=np.float64)
    return _Phi(z) + z * _phi(z)


def gelu_tanh(z):
    """GELU's tanh approximation (torch's ``approximate="tanh"``)."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * z * (1.0 + np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3)))


def gelu_tanh_grad(z):
    z = np.asarray(z, dtype=np.float64)
    t = np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t**2) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z**2)


# name -> (function, derivative); Leaky ReLU with torch's default slope 0.01, PReLU with its initial 0.25.
ACTIVATIONS = {
    "ReLU": (relu, relu_grad),
    "LeakyReLU": (leaky_relu, leaky_relu_grad),
    "PReLU": (lambda z: leaky_relu(z, 0.25), lambda z: leaky_relu_grad(z, 0.25)),
    "Sigmoid": (sigmoid, sigmoid_grad),
    "Tanh": (tanh, tanh_grad),
    "SiLU": (silu, silu_grad),
    "GELU": (gelu, gelu_grad),
    "GELU (tanh)": (gelu_tanh, gelu_tanh_grad),
}


def _windows(x, k: int):
    """``(N, C, H, W)`` -> ``(N, C, H//k, W//k, k*k)``: each non-overlapping k x k window as a row."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    h2, w2 = h // k, w // k
    x = x[:, :, :h2 * k, :w2 * k].reshape(n, c, h2, k, w2, k)
    return x.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, k * k)


def max_pool2d(x, k: int = 2):
    """Max over each k x k window (stride k; a remainder row/column is dropped, as in torch)."""
    return _windows(x, k).max(-1)


def avg_pool2d(x, k: int = 2):
    """Mean over each k x k window (stride k)."""
    return _windows(x, k).mean(-1)


def global_avg_pool2d(x):
    """Mean over the whole H x W map of each channel: ``(N, C, H, W)`` -> ``(N, C)``."""
    return np.asarray(x, dtype=np.float64).mean(axis=(2, 3))


def _unwindow(win, shape, k: int):
    n, c, h, w = shape
    h2, w2 = h // k, w // k
    out = np.zeros(shape)
    out[:, :, :h2 * k, :w2 * k] = (win.reshape(n, c, h2, w2, k, k).transpose(0, 1, 2, 4, 3, 5)
                                   .reshape(n, c, h2 * k, w2 * k))
    return out


def max_pool2d_backward(dy, x, k: int = 2):
    """The gradient of :func:`max_pool2d`: each window's ``dy`` goes to its (first) maximum, 0 elsewhere."""
    win = _windows(x, k)
    onehot = np.zeros_like(win)
    np.put_along_axis(onehot, win.argmax(-1)[..., None], 1.0, axis=-1)
    return _unwindow(onehot * np.asarray(dy, dtype=np.float64)[..., None], np.shape(x), k)


def avg_pool2d_backward(dy, x, k: int = 2):
    """The gradient of :func:`avg_pool2d`: each window's ``dy`` shared equally, ``dy / k**2`` per position."""
    win = np.broadcast_to(np.asarray(dy, dtype=np.float64)[..., None] / k**2, _windows(x, k).shape)
    return _unwindow(win, np.shape(x), k)
