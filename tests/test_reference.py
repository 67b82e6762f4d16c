"""normlib.reference (NumPy, from the formulas) against torch.nn in float64."""

import numpy as np
import pytest
import torch

from normlib import reference as R
from normlib.lab.viz import norm_set_mask


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64) * 3 + 2


def test_moments_is_two_pass_and_biased():
    x = np.array([1e8 + 1, 1e8 + 2, 1e8 + 3])  # E[x^2]-E[x]^2 would lose this variance
    mu, var = R.moments(x, [0])
    assert mu.item() == pytest.approx(1e8 + 2)
    assert var.item() == pytest.approx(2 / 3, rel=1e-9)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
def test_batch_norm(shape):
    x = _x(*shape)
    g, b = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    want = torch.nn.functional.batch_norm(x, None, None, g, b, training=True)
    np.testing.assert_allclose(R.batch_norm(x.numpy(), g.numpy(), b.numpy()), want.numpy(), atol=1e-12)
    rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64) + 0.5
    want = torch.nn.functional.batch_norm(x, rm, rv, g, b, training=False)
    got = R.batch_norm(x.numpy(), g.numpy(), b.numpy(), mean=rm.numpy(), var=rv.numpy())
    np.testing.assert_allclose(got, want.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((2, 5, 6), (6,)), ((2, 3, 4, 5), (3, 4, 5))])
def test_layer_norm(shape, normalized):
    x = _x(*shape)
    g, b = torch.randn(normalized, dtype=torch.float64), torch.randn(normalized, dtype=torch.float64)
    want = torch.nn.functional.layer_norm(x, normalized, g, b)
    np.testing.assert_allclose(R.layer_norm(x.numpy(), normalized, g.numpy(), b.numpy()), want.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
def test_instance_norm(shape):
    x = _x(*shape)
    g, b = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    want = torch.nn.functional.instance_norm(x, weight=g, bias=b)
    np.testing.assert_allclose(R.instance_norm(x.numpy(), g.numpy(), b.numpy()), want.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape,groups", [((4, 6), 3), ((2, 6, 5), 2), ((2, 8, 3, 3), 4), ((2, 4, 2, 2, 3), 1)])
def test_group_norm(shape, groups):
    x = _x(*shape)
    g, b = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    want = torch.nn.functional.group_norm(x, groups, g, b)
    np.testing.assert_allclose(R.group_norm(x.numpy(), groups, g.numpy(), b.numpy()), want.numpy(), atol=1e-12)


def test_group_norm_extremes_are_layer_and_instance_norm():
    x = _x(2, 6, 4, 4).numpy()
    np.testing.assert_allclose(R.group_norm(x, 1), R.layer_norm(x, x.shape[1:]), atol=1e-12)
    np.testing.assert_allclose(R.group_norm(x, 6), R.instance_norm(x), atol=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        R.group_norm(x, 4)


@pytest.mark.parametrize("kind,size", [("batch", 4 * 6), ("layer", 6 * 6), ("instance", 6), ("group", 2 * 6)])
def test_norm_set_sizes(kind, size):
    """|S_i| for an (N=4, C=6, HW=6) block: BN N*HW, LN C*HW, IN HW, GN (C/G)*HW with G=3."""
    assert norm_set_mask(kind, 4, 6, 6, groups=3, i=(1, 2)).sum() == size


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rms_norm_default_eps_follows_torch(dtype):
    """eps=None: float32's epsilon for float16 and float32 input, float64's for float64, as torch.nn.RMSNorm."""
    x = np.full((2, 8), 1e-3, dtype=dtype)  # small enough that eps shows in the output
    want = torch.nn.functional.rms_norm(torch.from_numpy(x.astype(np.float64)), [8],
                                        eps=torch.finfo(torch.float64 if dtype == np.float64 else torch.float32).eps)
    np.testing.assert_allclose(R.rms_norm(x, 8), want.numpy(), rtol=1e-6)
