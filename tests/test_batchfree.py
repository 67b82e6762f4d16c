"""Weight Standardization, Dynamic Tanh and FrozenBatchNorm2d against their formulas and their counterparts."""

import pytest
import torch
import torch.nn.functional as TF

import normlib
import normlib.nn as N


def _timm_std_conv2d(conv, x):
    """timm's StdConv2d forward, written from its definition: the weights through a training batch_norm."""
    w = TF.batch_norm(conv.weight.reshape(1, conv.out_channels, -1), None, None, training=True, momentum=0.0,
                      eps=conv.eps).reshape_as(conv.weight)
    return TF.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=3), dict(kernel_size=3, stride=2, bias=True),
                                    dict(kernel_size=(3, 5), dilation=2, groups=2), dict(kernel_size=1)])
@pytest.mark.parametrize("backend", ["torch", "manual"])
def test_std_conv2d_standardises_each_filter_and_matches_timm(dtype, kwargs, backend):
    torch.manual_seed(0)
    conv = N.StdConv2d(4, 6, dtype=dtype, **kwargs)
    with torch.no_grad():
        conv.weight.mul_(3).add_(0.5)  # filters with a mean and a scale of their own
    x = torch.randn(2, 4, 9, 9, dtype=dtype, requires_grad=True)
    with normlib.use_backend(backend):
        y = conv(x)
        w = conv.standardized_weight()
    flat = w.detach().reshape(6, -1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-6, rtol=0)
    fan_in = flat.shape[1]
    want_var = conv.weight.detach().reshape(6, -1).double().var(1, correction=0)
    torch.testing.assert_close(flat.var(1, correction=0), want_var / (want_var + conv.eps), atol=1e-5, rtol=1e-5)
    assert fan_in == 4 // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    torch.testing.assert_close(y, _timm_std_conv2d(conv, x))
    ref = _timm_std_conv2d(conv, x)
    g = torch.randn_like(ref)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}  # sums of ~100 terms of size ~10
    torch.testing.assert_close(torch.autograd.grad(y, (x, conv.weight), g),
                               torch.autograd.grad(ref, (x, conv.weight), g), **tol)


def test_std_conv2d_arguments_padding_and_scale_invariance():
    conv = N.StdConv2d(3, 8, 3)
    assert conv.padding == (1, 1) and conv.bias is None and conv.eps == 1e-6
    assert N.StdConv2d(3, 8, 3, stride=2).padding == (1, 1) and N.StdConv2d(3, 8, 5, dilation=2).padding == (4, 4)
    assert N.StdConv2d(3, 8, (3, 5)).padding == (1, 2)
    assert list(conv.state_dict()) == ["weight"] and isinstance(conv, torch.nn.Conv2d)
    x = torch.randn(2, 3, 8, 8)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7).add_(2)  # a filter's scale and mean do not change what it computes
    torch.testing.assert_close(conv(x), y, atol=1e-4, rtol=1e-4)
    assert "eps=1e-06" in repr(conv)


@pytest.mark.parametrize("channels_last, shape", [(True, (2, 5, 8)), (False, (2, 8, 4, 4)), (False, (3, 8, 6))])
def test_dynamic_tanh_is_its_formula(channels_last, shape):
    torch.manual_seed(0)
    dyt = N.DynamicTanh(8, channels_last=channels_last, alpha_init_value=0.7)
    assert sorted(dyt.state_dict()) == ["alpha", "bias", "weight"] and dyt.alpha.item() == pytest.approx(0.7)
    with torch.no_grad():
        dyt.weight.normal_(), dyt.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    dyt = dyt.double()
    view = (8,) if channels_last else (8,) + (1,) * (x.dim() - 2)
    want = dyt.weight.view(view) * torch.tanh(dyt.alpha * x) + dyt.bias.view(view)
    torch.testing.assert_close(dyt(x), want, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: dyt(t), (x.requires_grad_(),))
    with pytest.raises(RuntimeError, match="expected 8 channels"):
        dyt(torch.randn(2, 7, 4, dtype=torch.float64))
    assert "channels_last" in repr(dyt)


def test_frozen_batchnorm_is_batchnorm_in_eval_and_loads_its_state_dict():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5)
    bn(torch.randn(16, 5, 4, 4) * 3 + 2)  # running statistics away from 0 and 1
    with torch.no_grad():
        bn.weight.normal_(), bn.bias.normal_()
    frozen = N.FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped, strict load works
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    assert list(frozen.parameters()) == []
    x = torch.randn(4, 5, 3, 3, requires_grad=True)
    frozen.train()
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    (frozen(x).sum()).backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="expected 4D input"):
        frozen(torch.randn(4, 5, 3))
    assert repr(frozen) == "FrozenBatchNorm2d(5, eps=1e-05)"


@pytest.mark.parametrize("bn_class", [torch.nn.BatchNorm2d, N.BatchNorm2d])
def test_convert_frozen_batchnorm_swaps_every_batchnorm2d(bn_class):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bn_class(4), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), bn_class(4)))
    model(torch.randn(8, 3, 6, 6))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    want = model(x)
    out = N.FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert out is model and isinstance(model[1], N.FrozenBatchNorm2d) and isinstance(model[3][1], N.FrozenBatchNorm2d)
    model.train()  # frozen: training mode changes nothing
    torch.testing.assert_close(model(x), want)
    single = N.FrozenBatchNorm2d.convert_frozen_batchnorm(bn_class(4, dtype=torch.float64))
    assert isinstance(single, N.FrozenBatchNorm2d) and single.running_var.dtype == torch.float64
    with pytest.raises(ValueError, match="no running statistics"):
        N.FrozenBatchNorm2d.convert_frozen_batchnorm(bn_class(4, track_running_stats=False))


def test_the_three_layers_trace_with_torch_fx_as_one_node_each():
    torch.manual_seed(0)
    model = torch.nn.Sequential(N.StdConv2d(3, 8, 3), N.FrozenBatchNorm2d(8), torch.nn.ReLU(),
                                N.DynamicTanh(8, channels_last=False))
    x = torch.randn(2, 3, 6, 6)
    graph = torch.fx.symbolic_trace(model)
    calls = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1", "2", "3"]
    torch.testing.assert_close(graph(x), model(x))
