"""normlib.lab.models.norm_mlp: where the norm goes, and which Linear keeps its bias."""

import torch
from torch import nn

from normlib.lab.models import norm_mlp


def test_norm_before_activation_drops_the_bias_it_makes_redundant():
    m = norm_mlp([4, 8, 8, 3], nn.BatchNorm1d)
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert m[1].bias is None and m[4].bias is None and m[7].bias is not None
    assert m(torch.randn(5, 4)).shape == (5, 3)


def test_norm_after_activation_and_no_norm():
    after = norm_mlp([4, 8, 3], nn.BatchNorm1d, activation=nn.Tanh, norm_after_activation=True)
    assert [type(layer).__name__ for layer in after] == ["Flatten", "Linear", "Tanh", "BatchNorm1d", "Linear"]
    assert after[1].bias is not None
    plain = norm_mlp([4, 8, 3])
    assert [type(layer).__name__ for layer in plain] == ["Flatten", "Linear", "ReLU", "Linear"]
