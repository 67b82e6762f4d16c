"""normlib.lab.landscape: loss and gradient change along the gradient."""

import torch
from torch import nn

from normlib.lab.landscape import along_gradient


def test_quadratic_gives_its_curvature_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.BatchNorm1d(1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = along_gradient(model, nn.MSELoss(), x, y, etas=[0.01, 0.1])
    assert len(out["losses"]) == 2 and len(out["grad_changes"]) == 2 and out["beta"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_linear_least_squares_beta_is_the_curvature_along_the_gradient():
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    x = torch.full((4, 1), 2.0)
    y = torch.zeros(4, 1)
    # L(w) = mean((2w)^2) = 4 w^2, so grad = 8 w and the gradient changes by 8 per unit step: beta = 8.
    out = along_gradient(model, nn.MSELoss(), x, y, etas=[0.01, 0.05])
    assert abs(out["beta"] - 8.0) < 1e-4
