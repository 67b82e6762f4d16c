"""normlib's Dropout family against its definition and against torch.nn."""

import math

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import normlib.functional as F
import normlib.nn as N

NAMES = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]
SHAPES = {"Dropout": (16, 8, 10), "Dropout1d": (16, 8, 10), "Dropout2d": (16, 8, 5, 5),
          "Dropout3d": (16, 8, 2, 3, 3), "AlphaDropout": (16, 80), "FeatureAlphaDropout": (16, 8, 5, 5)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_same_output_as_torch_under_the_same_seed(name, p):
    x = torch.randn(SHAPES[name])
    torch.manual_seed(3)
    ours = getattr(N, name)(p)(x)
    torch.manual_seed(3)
    theirs = getattr(tnn, name)(p)(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropped_fraction_is_within_a_binomial_bound(p):
    n = 200_000
    y = F.dropout(torch.ones(n), p)
    dropped = (y == 0).sum().item()
    bound = 5 * math.sqrt(n * p * (1 - p))  # five standard deviations of Binomial(n, p)
    assert abs(dropped - n * p) < bound


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_kept_values_are_scaled_and_the_mean_is_kept(p):
    x = torch.rand(100_000) + 1.0
    y = F.dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(y.mean().item() - x.mean().item()) < 0.02


def test_gradient_is_zero_exactly_where_dropped():
    x = torch.randn(50, 40, requires_grad=True)
    y = F.dropout(x, 0.4)
    y.sum().backward()
    dropped = y.detach() == 0
    assert torch.all(x.grad[dropped] == 0)
    torch.testing.assert_close(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.6))


SPATIAL = {"Dropout1d": 1, "Dropout2d": 2, "Dropout3d": 3, "FeatureAlphaDropout": 2}


@pytest.mark.parametrize("name,shape", [("Dropout1d", (6, 5, 7)), ("Dropout1d", (5, 7)), ("Dropout2d", (6, 5, 4, 4)),
                                        ("Dropout3d", (6, 5, 2, 3, 3)), ("Dropout3d", (5, 2, 3, 3)),
                                        ("FeatureAlphaDropout", (6, 5, 4, 4))])
def test_channels_are_dropped_whole(name, shape):
    p = 0.5
    y = getattr(N, name)(p).train()(torch.rand(shape) + 1.0)  # positive input: kept values never collide
    if name == "FeatureAlphaDropout":
        a = ((1 - p) * (1 + p * F.SELU_ALPHA_PRIME**2)) ** -0.5
        dropped_value = a * F.SELU_ALPHA_PRIME - a * F.SELU_ALPHA_PRIME * p
    else:
        dropped_value = 0.0
    rows = y.reshape(-1, math.prod(shape[-SPATIAL[name]:]))  # one row per (sample, channel)
    dropped = torch.isclose(rows, torch.tensor(dropped_value))
    assert torch.all(dropped.all(1) | ~dropped.any(1)), "a channel was dropped in part"
    assert 0 < dropped.all(1).sum() < len(rows), "with p=0.5 some channels drop and some stay"


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("name", ["AlphaDropout", "FeatureAlphaDropout"])
def test_alpha_dropout_keeps_mean_zero_and_std_one(name, p):
    x = torch.randn(400, 50, 10, 10) if name == "FeatureAlphaDropout" else torch.randn(2_000_000)
    y = getattr(N, name)(p).train()(x)
    assert abs(y.mean().item()) < 0.02
    assert abs(y.std().item() - 1) < 0.02


@pytest.mark.parametrize("name", NAMES)
def test_identity_in_eval_at_p0_and_on_empty_input(name):
    x = torch.randn(SHAPES[name])
    assert torch.equal(getattr(N, name)(0.5).eval()(x), x)
    assert torch.equal(getattr(N, name)(0.0)(x), x)
    empty = torch.randn((0,) + SHAPES[name][1:])
    assert getattr(N, name)(0.5)(empty).shape == empty.shape


@pytest.mark.parametrize("name", NAMES)
def test_p_one_gives_zeros(name):
    assert torch.equal(getattr(N, name)(1.0).train()(torch.randn(SHAPES[name])), torch.zeros(SHAPES[name]))


@pytest.mark.parametrize("name", NAMES)
def test_inplace_is_honoured_as_torch_honours_it(name):
    """Dropout and Dropout1d/2d/3d write into their input; the alpha modules never do (torch ignores the flag)."""
    x = torch.randn(SHAPES[name])
    before = x.clone()
    out = getattr(N, name)(0.5, inplace=True).train()(x)
    if name in ("AlphaDropout", "FeatureAlphaDropout"):
        assert out.data_ptr() != x.data_ptr() and torch.equal(x, before)
        leaf = torch.randn(SHAPES[name], requires_grad=True)  # torch's module works on a leaf; so must ours
        getattr(N, name)(0.5, inplace=True).train()(leaf).sum().backward()
        assert leaf.grad is not None
    else:
        assert out.data_ptr() == x.data_ptr()
        assert torch.equal(out, x)
    fn = {"AlphaDropout": F.alpha_dropout, "FeatureAlphaDropout": F.feature_alpha_dropout}.get(name)
    if fn is not None:  # the functional form does honour inplace, as torch.nn.functional's does
        y = torch.randn(SHAPES[name])
        assert fn(y, 0.5, training=True, inplace=True).data_ptr() == y.data_ptr()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_outside_unit_interval_is_a_value_error(name, p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        getattr(N, name)(p)
    fn = {"Dropout": F.dropout, "Dropout1d": F.dropout1d, "Dropout2d": F.dropout2d, "Dropout3d": F.dropout3d,
          "AlphaDropout": F.alpha_dropout, "FeatureAlphaDropout": F.feature_alpha_dropout}[name]
    with pytest.raises(ValueError, match="between 0 and 1"):
        fn(torch.randn(SHAPES[name]), p)


@pytest.mark.parametrize("name", NAMES)
def test_repr_and_empty_state_dict_match_torch(name):
    assert repr(getattr(N, name)(0.3, inplace=True)) == repr(getattr(tnn, name)(0.3, inplace=True))
    assert getattr(N, name)().state_dict() == {} == getattr(tnn, name)().state_dict()


def test_shape_errors_and_warnings_match_torch():
    for fn in (F.dropout1d, TF.dropout1d):
        with pytest.raises(RuntimeError, match="Expected 2D or 3D input"):
            fn(torch.randn(2, 3, 4, 5))
    for fn in (F.dropout2d, TF.dropout2d):
        with pytest.warns(UserWarning, match="Received a 5-D input"):
            fn(torch.randn(2, 3, 4, 5, 6))
    for fn in (F.feature_alpha_dropout, torch.nn.functional.feature_alpha_dropout):
        with pytest.raises(RuntimeError):
            fn(torch.randn(5), 0.5, training=True)


def test_generator_makes_masks_reproducible_without_touching_the_global_rng():
    x = torch.randn(100)
    state = torch.get_rng_state()
    y1 = F.dropout(x, 0.5, generator=torch.Generator().manual_seed(7))
    y2 = N.Dropout(0.5, generator=torch.Generator().manual_seed(7))(x)
    assert torch.equal(y1, y2)
    assert torch.equal(torch.get_rng_state(), state)
