"""normlib.lab.renorm_variants: the paper's Batch Renorm (a moving average of sigma_B), checked against its formula."""

import math

import pytest
import torch

from normlib import nn as N
from normlib.lab.models import GhostNorm, LeNet, ghost
from normlib.lab.renorm_variants import (
    PaperBatchRenorm1d,
    PaperBatchRenorm2d,
    recalibrate_layerwise,
    running_sigma,
    set_limits,
)


def formula(x, mu, sigma, r_max, d_max, eps, weight, bias):
    """Algorithm 1 of Ioffe (2017), written out over (N, C, H, W) in float64."""
    x = x.double()
    mu_b = x.mean((0, 2, 3), keepdim=True)
    sigma_b = (x.var((0, 2, 3), unbiased=False, keepdim=True) + eps).sqrt()
    mu, sigma = mu.double().view(1, -1, 1, 1), sigma.double().view(1, -1, 1, 1)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max)
    d = ((mu_b - mu) / sigma).clamp(-d_max, d_max)
    y = ((x - mu_b) / sigma_b * r + d) * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
    return y, mu_b.flatten(), sigma_b.flatten()


@pytest.mark.parametrize("r_max, d_max", [(1.0, 0.0), (1.5, 0.3), (3.0, 5.0), (math.inf, math.inf)])
def test_training_step_matches_algorithm_1(r_max, d_max):
    torch.manual_seed(0)
    layer = PaperBatchRenorm2d(3, momentum=0.2, r_max=r_max, d_max=d_max)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_std.copy_(torch.tensor([0.5, 2.0, 1.5]))
        layer.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        layer.bias.copy_(torch.tensor([0.0, 0.1, 0.2]))
    mu0, sigma0 = layer.running_mean.clone(), layer.running_std.clone()
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    expected, mu_b, sigma_b = formula(x, mu0, sigma0, r_max, d_max, layer.eps, layer.weight.detach(),
                                      layer.bias.detach())
    y = layer(x)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    # the moving averages follow mu_B and sigma_B itself (not the unbiased variance)
    torch.testing.assert_close(layer.running_mean.double(), 0.8 * mu0.double() + 0.2 * mu_b, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.running_std.double(), 0.8 * sigma0.double() + 0.2 * sigma_b, atol=1e-6, rtol=0)
    assert int(layer.num_batches_tracked) == 1


def test_eval_uses_running_mean_and_std():
    layer = PaperBatchRenorm1d(2).eval()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_std.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(5, 2)
    torch.testing.assert_close(layer(x), (x - layer.running_mean) / layer.running_std)


def test_r_and_d_carry_no_gradient_and_limits_one_zero_is_batchnorm():
    torch.manual_seed(1)
    x = (torch.randn(6, 4) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    layer = PaperBatchRenorm1d(4, r_max=1.0, d_max=0.0)
    bn = torch.nn.BatchNorm1d(4)
    y, y2 = layer(x), bn(x2)
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    (y * torch.arange(4.0)).sum().backward()
    (y2 * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_cumulative_average_reaches_expected_sigma_b():
    """Over many groups of 2 standard Gaussian values, running_std -> E[sigma_B] = 1/sqrt(pi)."""
    torch.manual_seed(2)
    layer = PaperBatchRenorm1d(1000, eps=0.0, momentum=None, r_max=1.0, d_max=0.0)
    for _ in range(400):
        layer(torch.randn(2, 1000))
    assert abs(layer.running_std.mean().item() - 1 / math.sqrt(math.pi)) < 0.005


def test_errors_as_batchnorm():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        PaperBatchRenorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        PaperBatchRenorm1d(3)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        PaperBatchRenorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="need r_max >= 1"):
        PaperBatchRenorm1d(3, r_max=0.5)


def test_running_sigma_of_both_definitions():
    normlib_layer = N.BatchRenorm1d(2)
    with torch.no_grad():
        normlib_layer.running_var.fill_(4.0)
    torch.testing.assert_close(running_sigma(normlib_layer), torch.full((2,), math.sqrt(4.0 + 1e-5)))
    paper = PaperBatchRenorm1d(2)
    with torch.no_grad():
        paper.running_std.fill_(0.7)
    torch.testing.assert_close(running_sigma(paper), torch.full((2,), 0.7))


def test_set_limits_both_kinds_and_infinite():
    model = torch.nn.Sequential(N.BatchRenorm1d(2), PaperBatchRenorm1d(2))
    schedule = {"warmup": 10, "r_ramp_end": 30, "d_ramp_end": 20}
    assert set_limits(model, 20, **schedule) == N.renorm_limits(20, **schedule)
    assert all(m.r_max == 2.0 and m.d_max == 5.0 for m in model)
    assert set_limits(model, 5, r_max=math.inf, **schedule) == (1.0, 0.0)
    assert set_limits(model, 10, r_max=math.inf, **schedule) == (math.inf, math.inf)
    assert all(m.r_max == math.inf and m.d_max == math.inf for m in model)


@pytest.mark.parametrize("norm", [N.BatchNorm1d, N.BatchRenorm1d, PaperBatchRenorm1d])
def test_recalibrate_layerwise_gives_the_inference_inputs_statistics(norm):
    """Each layer's recalibrated statistics are those of the input it sees with the model in eval mode."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), GhostNorm(norm(4), 2), torch.nn.ReLU(),
                                torch.nn.Linear(4, 3), GhostNorm(norm(3), 2))
    x = torch.randn(64, 5) * 2 + 1
    model.train()
    for _ in range(3):  # running statistics away from their start
        model(torch.randn(8, 5))
    model.train()
    recalibrate_layerwise(model, x, batch_size=8)
    assert model.training and model[1].norm.momentum == 0.1
    model.eval()
    first = model[0](x)
    second = model[3](model[2](model[1](first)))
    for layer, h in ((model[1].norm, first), (model[4].norm, second)):
        pairs = h.view(-1, 2, h.shape[1])  # the ghost groups of 2 inside each batch of 8
        torch.testing.assert_close(layer.running_mean, h.mean(0), atol=1e-5, rtol=1e-5)
        if isinstance(layer, PaperBatchRenorm1d):
            sigma_b = (pairs.var(1, unbiased=False) + layer.eps).sqrt().mean(0)
            torch.testing.assert_close(layer.running_std, sigma_b, atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(layer.running_var, pairs.var(1).mean(0), atol=1e-5, rtol=1e-5)


def test_lenet_with_paper_renorm_trains_one_step():
    torch.manual_seed(4)
    model = LeNet(conv_norm=ghost(PaperBatchRenorm2d, 2), fc_norm=ghost(PaperBatchRenorm1d, 2), image_size=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
