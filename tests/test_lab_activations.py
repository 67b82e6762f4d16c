"""normlib.lab.activations: each activation, its derivative and each pooling against torch."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from normlib.lab import activations as A

TORCH = {"ReLU": nn.ReLU(), "LeakyReLU": nn.LeakyReLU(), "PReLU": nn.PReLU().double(), "Sigmoid": nn.Sigmoid(),
         "Tanh": nn.Tanh(), "SiLU": nn.SiLU(), "GELU": nn.GELU(), "GELU (tanh)": nn.GELU(approximate="tanh")}


@pytest.mark.parametrize("name", list(A.ACTIVATIONS))
def test_activation_and_derivative_match_torch(name):
    z = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_()
    f, df = A.ACTIVATIONS[name]
    out = TORCH[name](z)
    out.sum().backward()
    np.testing.assert_allclose(f(z.detach().numpy()), out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(df(z.detach().numpy()), z.grad.numpy(), atol=1e-12)


def test_sigmoid_does_not_overflow():
    assert np.all(np.isfinite(A.sigmoid(np.array([-1000.0, 1000.0]))))


def test_pooling_matches_torch():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    for ours, back, theirs in ((A.max_pool2d, A.max_pool2d_backward, F.max_pool2d),
                               (A.avg_pool2d, A.avg_pool2d_backward, F.avg_pool2d)):
        y = theirs(x, 2)
        (g,) = torch.autograd.grad(y, x, dy)
        np.testing.assert_allclose(ours(x.detach().numpy(), 2), y.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(back(dy.numpy(), x.detach().numpy(), 2), g.numpy(), atol=1e-12)
    np.testing.assert_allclose(A.global_avg_pool2d(x.detach().numpy()),
                               F.adaptive_avg_pool2d(x, 1).flatten(1).detach().numpy(), atol=1e-12)


def test_max_pool_gradient_goes_to_one_position_per_window():
    x = np.random.default_rng(0).normal(size=(1, 1, 4, 4))
    g = A.max_pool2d_backward(np.ones((1, 1, 2, 2)), x, 2)
    assert (g != 0).sum() == 4 and g.sum() == 4
