"""Batch Renormalization, Switchable Normalization and RMSNorm."""

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import normlib.functional as F
import normlib.nn as N

# ---------------------------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("shape,normalized", [((4, 6), [6]), ((2, 5, 6), [5, 6])])
def test_rms_norm_matches_torch(dtype, eps, shape, normalized):
    x = torch.randn(shape, dtype=dtype) * 3 + 1
    w = torch.randn(normalized, dtype=dtype)
    torch.testing.assert_close(F.rms_norm(x, normalized, w, eps), TF.rms_norm(x, normalized, w, eps))


def test_rms_norm_is_layer_norm_on_zero_mean_input():
    x = torch.randn(8, 32, dtype=torch.float64)
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(F.rms_norm(x, [32], eps=1e-5), F.layer_norm(x, [32], eps=1e-5))


def test_rms_norm_eps_none_is_the_dtype_eps():
    x = torch.full((1, 4), 1e-4)  # mean square 1e-8, comparable to float32's eps (1.2e-7)
    want = x / torch.sqrt(torch.tensor(1e-8) + torch.finfo(torch.float32).eps)
    torch.testing.assert_close(N.RMSNorm(4)(x), want)


def test_rms_norm_bad_shape_is_a_runtime_error_like_torch():
    for layer in (N.RMSNorm(5), tnn.RMSNorm(5)):
        with pytest.raises(RuntimeError):
            layer(torch.randn(2, 4))


# ----------------------------------------------------------------------------------- Batch Renormalization


@pytest.mark.parametrize("name,shape", [("1d", (8, 4)), ("1d", (8, 4, 5)), ("2d", (6, 4, 3, 3)),
                                        ("3d", (4, 4, 2, 2, 2))])
def test_batch_renorm_with_unit_limits_is_batchnorm(name, shape):
    bn = getattr(tnn, f"BatchNorm{name}")(4).double()
    brn = getattr(N, f"BatchRenorm{name}")(4, r_max=1.0, d_max=0.0).double()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    brn.load_state_dict(bn.state_dict(), strict=True)
    for step in range(3):
        x = (torch.randn(shape, dtype=torch.float64) * (step + 1) + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = brn(x), bn(x2)
        torch.testing.assert_close(y, y2)
        dy = torch.randn_like(y)
        y.backward(dy)
        y2.backward(dy)
        torch.testing.assert_close(x.grad, x2.grad)
        torch.testing.assert_close(brn.running_var, bn.running_var)
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad)
    brn.eval()
    bn.eval()
    torch.testing.assert_close(brn(x), bn(x2))
    bn.load_state_dict(brn.state_dict(), strict=True)  # and back


def _renorm_by_hand(x, running_mean, running_var, eps, r_max, d_max):
    mu = x.mean(0)
    sigma_b = torch.sqrt(x.var(0, unbiased=False) + eps)
    sigma = torch.sqrt(running_var + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mu - running_mean) / sigma).clamp(-d_max, d_max).detach()
    return (x - mu) / sigma_b * r + d


def test_batch_renorm_formula_and_r_d_carry_no_gradient():
    torch.manual_seed(0)
    brn = N.BatchRenorm1d(3, affine=False, r_max=2.0, d_max=0.5).double()
    brn.running_mean.copy_(torch.tensor([0.3, -5.0, 0.0]))
    brn.running_var.copy_(torch.tensor([1.5, 1.0, 100.0]))  # channel 1: d clips; channel 2: r clips
    x = (torch.randn(16, 3, dtype=torch.float64) * 1.2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    want = _renorm_by_hand(x2, brn.running_mean.clone(), brn.running_var.clone(), brn.eps, 2.0, 0.5)
    y = brn(x)
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad)
    # With gradients through r and d the input gradient would differ: the test can tell.
    x3 = x.detach().clone().requires_grad_()
    mu, sigma_b = x3.mean(0), torch.sqrt(x3.var(0, unbiased=False) + brn.eps)
    sigma = torch.sqrt(torch.tensor([1.5, 1.0, 100.0], dtype=torch.float64) + brn.eps)
    r = (sigma_b / sigma).clamp(0.5, 2.0)
    ((x3 - mu) / sigma_b * r).backward(dy)
    assert (x3.grad - x2.grad).abs().max() > 1e-3


def test_batch_renorm_eval_uses_running_stats():
    brn = N.BatchRenorm2d(2)
    for _ in range(5):
        brn(torch.randn(4, 2, 3, 3) * 2 + 1)
    brn.eval()
    x = torch.randn(1, 2, 3, 3)
    want = TF.batch_norm(x, brn.running_mean, brn.running_var, brn.weight, brn.bias, training=False)
    torch.testing.assert_close(brn(x), want)


def test_renorm_schedule():
    assert N.renorm_limits(0) == (1.0, 0.0)
    assert N.renorm_limits(5000) == (1.0, 0.0)
    r, d = N.renorm_limits(15000)
    assert r == pytest.approx(1 + 2 * 10000 / 35000) and d == pytest.approx(5 * 10000 / 20000)
    assert N.renorm_limits(10**6) == (3.0, 5.0)
    model = tnn.Sequential(N.BatchRenorm1d(3), tnn.ReLU(), N.BatchRenorm1d(3))
    assert N.set_renorm_limits(model, 0) == (1.0, 0.0)
    assert model[0].r_max == 1.0 and model[2].d_max == 0.0


def test_batch_renorm_bad_input():
    with pytest.raises(ValueError):
        N.BatchRenorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError):
        N.BatchRenorm1d(3)(torch.randn(1, 3))
    with pytest.raises(RuntimeError):
        N.BatchRenorm1d(3)(torch.randn(4, 5))
    with pytest.raises(ValueError):
        N.BatchRenorm1d(3, r_max=0.5)


# ------------------------------------------------------------------------------ Switchable Normalization


def _one_hot_sn(k, cls=N.SwitchableNorm2d, c=4):
    sn = cls(c).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([-1e4, -1e4, -1e4]).index_fill(0, torch.tensor(k), 1e4))
        sn.var_weight.copy_(sn.mean_weight)
        sn.weight.normal_()
        sn.bias.normal_()
    return sn


@pytest.mark.parametrize("cls,shape", [(N.SwitchableNorm1d, (6, 4, 7)), (N.SwitchableNorm2d, (6, 4, 3, 3)),
                                       (N.SwitchableNorm3d, (3, 4, 2, 3, 3))])
def test_switchable_norm_one_hot_is_in_ln_bn(cls, shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    sn_in, sn_ln, sn_bn = (_one_hot_sn(k, cls) for k in range(3))
    w, b = sn_in.weight, sn_in.bias
    torch.testing.assert_close(sn_in(x), TF.instance_norm(x, weight=w, bias=b))
    w, b = sn_ln.weight, sn_ln.bias
    per_channel = (1, 4) + (1,) * (len(shape) - 2)
    ln = TF.layer_norm(x, x.shape[1:]) * w.reshape(per_channel) + b.reshape(per_channel)
    torch.testing.assert_close(sn_ln(x), ln)
    bn = tnn.__dict__[cls.__name__.replace("SwitchableNorm", "BatchNorm")](4).double()
    with torch.no_grad():
        bn.weight.copy_(sn_bn.weight)
        bn.bias.copy_(sn_bn.bias)
    for _ in range(3):
        torch.testing.assert_close(sn_bn(x), bn(x))
    torch.testing.assert_close(sn_bn.running_var, bn.running_var)
    sn_bn.eval()
    bn.eval()
    torch.testing.assert_close(sn_bn(x), bn(x))


def test_switchable_norm_mixes_with_softmax_and_learns_the_weights():
    torch.manual_seed(0)
    sn = N.SwitchableNorm2d(3).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
        sn.var_weight.copy_(torch.tensor([1.0, 0.0, -0.5]))
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3 + 2
    w, v = torch.softmax(sn.mean_weight, 0), torch.softmax(sn.var_weight, 0)
    stats = [(x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)),
             (x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)),
             (x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True))]
    mu = sum(w[k] * stats[k][0] for k in range(3))
    var = sum(v[k] * stats[k][1] for k in range(3))
    want = (x - mu) / torch.sqrt(var + sn.eps)
    y = sn(x)
    torch.testing.assert_close(y, want)
    y.square().mean().backward()
    assert sn.mean_weight.grad.abs().sum() > 0 and sn.var_weight.grad.abs().sum() > 0
    w_mean, w_var = sn.importance()
    torch.testing.assert_close(w_mean.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_switchable_norm_state_dict_and_errors():
    sn = N.SwitchableNorm2d(4)
    assert list(sn.state_dict()) == ["weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var",
                                     "num_batches_tracked"]
    with pytest.raises(ValueError):
        sn(torch.randn(2, 4, 5))
    with pytest.raises(RuntimeError):
        sn(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError):
        sn(torch.randn(2, 4, 1, 1))  # one spatial element: no instance statistics
