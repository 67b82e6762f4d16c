"""normlib.lab.ghostbn and normlib.lab.convnets: ghost BatchNorm in one call, LayerNorm2d, ConvNet."""

import copy

import pytest
import torch

from normlib import nn as N
from normlib.lab.convnets import ConvNet, LayerNorm2d
from normlib.lab.ghostbn import GhostBatchNorm, ghost_bn
from normlib.lab.models import GhostNorm


@pytest.mark.parametrize("layer, shape", [(N.BatchNorm2d, (32, 5, 4, 3)), (N.BatchNorm1d, (32, 7)),
                                          (torch.nn.BatchNorm2d, (16, 3, 2, 2))])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_ghost_batchnorm_matches_ghostnorm(layer, shape, m):
    torch.manual_seed(0)
    base = layer(shape[1])
    torch.nn.init.normal_(base.weight, 1.0, 0.3)
    torch.nn.init.normal_(base.bias, 0.0, 0.3)
    slow, fast = GhostNorm(copy.deepcopy(base), m), GhostBatchNorm(copy.deepcopy(base), m)
    if m == 1 and len(shape) == 2:  # one value per channel: both refuse, with torch's error
        for layer_ in (slow, fast):
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                layer_(torch.randn(shape))
        return
    assert list(slow.state_dict()) == list(fast.state_dict())
    for step in range(3):
        x = (torch.randn(shape) * 2 + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        dy = torch.randn(shape)
        y_slow, y_fast = slow(x), fast(x2)
        y_slow.backward(dy)
        y_fast.backward(dy)
        torch.testing.assert_close(y_fast, y_slow, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    for key, value in slow.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value, atol=1e-5, rtol=1e-5)
    x = torch.randn(shape)
    torch.testing.assert_close(fast.eval()(x), slow.eval()(x), atol=1e-5, rtol=1e-5)


def test_ghost_batchnorm_outputs_and_fallbacks():
    torch.manual_seed(1)
    base = N.BatchNorm2d(3)
    slow, fast = GhostNorm(copy.deepcopy(base), 4), GhostBatchNorm(copy.deepcopy(base), 4)
    x = torch.randn(16, 3, 5, 5)
    torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(10, 3, 5, 5)  # 4 does not divide 10: GhostNorm's loop
    torch.testing.assert_close(fast(x), slow(x), atol=1e-6, rtol=1e-6)
    for key, value in slow.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value, atol=1e-5, rtol=1e-5)
    layer = ghost_bn(N.BatchNorm1d, 2)(6)
    assert isinstance(layer, GhostBatchNorm) and layer.group_size == 2 and layer.norm.num_features == 6


def test_layernorm2d_normalises_channels_at_each_position():
    torch.manual_seed(2)
    x = torch.randn(3, 6, 4, 5) * 3 + 1
    ln = LayerNorm2d(6)
    y = ln(x)
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, N.GroupNorm(1, 6)(x), atol=1e-3)
    assert [tuple(p.shape) for p in ln.parameters()] == [(6,), (6,)]
    with pytest.raises(ValueError, match="expects"):
        ln(torch.randn(3, 6, 4))


def test_convnet_shapes_norms_and_small_maps():
    net = ConvNet((8, 16, 32), conv_norm=N.BatchNorm2d, image_size=28)
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10) and net.map_size == 7
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and all(c.bias is None for c in convs)
    net = ConvNet((8, 32), norms=[N.BatchNorm2d, None], image_size=14, last_map=2)
    seen = {}
    net.features[-2].register_forward_hook(lambda mod, i, o: seen.update(shape=i[0].shape))
    assert net(torch.randn(4, 1, 14, 14)).shape == (4, 10) and net.map_size == 2
    assert seen["shape"] == (4, 32, 2, 2)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].bias is None and convs[1].bias is not None
    with pytest.raises(ValueError, match="norms"):
        ConvNet((8, 16), norms=[None])
    with pytest.raises(ValueError, match="not both"):
        ConvNet((8, 16), conv_norm=N.BatchNorm2d, norms=[None, None])
