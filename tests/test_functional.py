"""normlib.functional against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as TF

import normlib.functional as F

DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}


def _x(shape, dtype):
    return (torch.randn(shape, dtype=torch.float64) * 3 + 2).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("momentum", [0.1, 0.8])
def test_batch_norm_train_updates_running_stats(dtype, shape, momentum):
    c = shape[1]
    w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
    rm, rv = torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    for _ in range(3):
        x = _x(shape, dtype)
        got = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum)
        want = TF.batch_norm(x, rm2, rv2, w, b, training=True, momentum=momentum)
        torch.testing.assert_close(got, want, **_tol(dtype))
        torch.testing.assert_close(rm, rm2, **_tol(dtype))
        torch.testing.assert_close(rv, rv2, **_tol(dtype))
    torch.testing.assert_close(F.batch_norm(x, rm, rv, w, b), TF.batch_norm(x, rm2, rv2, w, b), **_tol(dtype))


def test_batch_norm_running_var_is_unbiased():
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(rv, x.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=True))
    torch.testing.assert_close(rm, x.mean(dim=(0, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
def test_instance_norm(dtype, shape):
    c = shape[1]
    w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    rm2, rv2 = rm.clone(), rv.clone()
    x = _x(shape, dtype)
    torch.testing.assert_close(F.instance_norm(x, rm, rv, w, b, momentum=0.3),
                               TF.instance_norm(x, rm2, rv2, w, b, momentum=0.3), **_tol(dtype))
    torch.testing.assert_close(rm, rm2, **_tol(dtype))
    torch.testing.assert_close(rv, rv2, **_tol(dtype))
    torch.testing.assert_close(F.instance_norm(x, rm, rv, w, b, use_input_stats=False),
                               TF.instance_norm(x, rm2, rv2, w, b, use_input_stats=False), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized", [((4, 6), [6]), ((2, 5, 6), [6]), ((2, 3, 4, 5), [3, 4, 5])])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(dtype, shape, normalized, affine):
    w = torch.randn(normalized, dtype=dtype) if affine else None
    b = torch.randn(normalized, dtype=dtype) if affine else None
    x = _x(shape, dtype)
    torch.testing.assert_close(F.layer_norm(x, normalized, w, b), TF.layer_norm(x, normalized, w, b), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((4, 6), 3), ((2, 6, 5), 2), ((2, 8, 3, 3), 4), ((2, 4, 2, 2, 3), 1)])
def test_group_norm(dtype, shape, groups):
    w, b = torch.randn(shape[1], dtype=dtype), torch.randn(shape[1], dtype=dtype)
    x = _x(shape, dtype)
    torch.testing.assert_close(F.group_norm(x, groups, w, b), TF.group_norm(x, groups, w, b), **_tol(dtype))


def test_gradients_match_torch():
    x = _x((4, 6, 3, 3), torch.float64).requires_grad_()
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    cases = [
        (lambda f, x: f.batch_norm(x, None, None, w, b, training=True)),
        (lambda f, x: f.instance_norm(x, weight=w, bias=b)),
        (lambda f, x: f.group_norm(x, 3, w, b)),
        (lambda f, x: f.layer_norm(x, [3, 3])),
    ]
    for case in cases:
        got = torch.autograd.grad(case(F, x), (x, w, b), dy, allow_unused=True)
        want = torch.autograd.grad(case(TF, x), (x, w, b), dy, allow_unused=True)
        for g1, g2 in zip(got, want, strict=True):
            if g2 is None:
                assert g1 is None
            else:
                torch.testing.assert_close(g1, g2)


def test_statistics_are_accumulated_in_float32_for_bfloat16():
    x = (torch.randn(4, 8, 16) + 100).to(torch.bfloat16)  # a large mean: bf16 sums would be far off
    y = F.layer_norm(x, [16])
    assert y.dtype == torch.bfloat16
    want = TF.layer_norm(x.float(), [16]).to(torch.bfloat16)
    torch.testing.assert_close(y, want, atol=2e-2, rtol=2e-2)


def test_no_cancellation_with_a_large_mean():
    x = torch.randn(64, 32) + 3e3  # float32: E[x^2] ~ 9e6, where one ulp is 1, as large as the variance
    want = TF.layer_norm(x.double(), [32]).float()
    torch.testing.assert_close(F.layer_norm(x, [32]), want, atol=1e-3, rtol=0)
    naive_var = (x * x).mean(-1, keepdim=True) - x.mean(-1, keepdim=True) ** 2  # what we must not do
    naive = (x - x.mean(-1, keepdim=True)) / torch.sqrt(naive_var.clamp_min(0) + 1e-5)
    assert (naive - want).abs().max() > 1e-2  # so the data really does expose cancellation


def test_errors_match_torch():
    x = torch.randn(2, 3, 4)
    cases = [
        lambda f: f.batch_norm(torch.randn(1, 3), None, None, training=True),
        lambda f: f.batch_norm(x, torch.zeros(4), torch.ones(4), training=True),
        lambda f: f.batch_norm(x, None, None, training=False),
        lambda f: f.instance_norm(torch.randn(2, 3, 1)),
        lambda f: f.layer_norm(x, [5]),
        lambda f: f.layer_norm(x, [4], weight=torch.ones(5)),
        lambda f: f.group_norm(x, 2),
        lambda f: f.group_norm(torch.randn(3), 1),
        lambda f: f.group_norm(x, 3, weight=torch.ones(4)),
        lambda f: f.group_norm(torch.randn(1, 2), 2),
    ]
    for case in cases:
        with pytest.raises(Exception) as want:
            case(TF)
        with pytest.raises(want.type):
            case(F)


def test_empty_batch_leaves_running_stats_alone():
    rm, rv = torch.zeros(3), torch.ones(3)
    y = F.batch_norm(torch.randn(0, 3, 4), rm, rv, training=True)
    assert y.shape == (0, 3, 4)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm", "layer_norm", "group_norm"])
def test_compiles_with_fullgraph(name):
    torch._dynamo.reset()
    x = torch.randn(4, 6, 5)
    w, b = torch.randn(6), torch.randn(6)
    calls = {
        "batch_norm": lambda f, rm, rv: f.batch_norm(x, rm, rv, w, b, training=True),
        "instance_norm": lambda f, rm, rv: f.instance_norm(x, rm, rv, w, b),
        "layer_norm": lambda f, rm, rv: f.layer_norm(x, [6, 5]),
        "group_norm": lambda f, rm, rv: f.group_norm(x, 3, w, b),
    }
    rm, rv = torch.zeros(6), torch.ones(6)
    rm2, rv2 = rm.clone(), rv.clone()
    fn = calls[name]
    compiled = torch.compile(lambda rm, rv: fn(F, rm, rv), fullgraph=True)
    torch.testing.assert_close(compiled(rm, rv), fn(TF, rm2, rv2))
    torch.testing.assert_close(rm, rm2)  # in-place running-statistics updates survive compilation
    torch.testing.assert_close(rv, rv2)


def _outcome(call):
    try:
        return "ok", call().dtype
    except Exception as e:  # noqa: BLE001 - compared with torch's
        return type(e).__name__, str(e)


def test_dtype_and_eps_errors_match_torch_word_for_word():
    """Integer input, float64 input into float32 parameters (and the other mixes torch rejects), eps <= 0."""
    xi, xd, xh = torch.ones(4, 3, 5, dtype=torch.long), torch.randn(4, 3, 5, dtype=torch.float64), \
        torch.randn(4, 3, 5).to(torch.bfloat16)
    w, rm, rv = torch.ones(3), torch.zeros(3), torch.ones(3)
    cases = [
        lambda f: f.batch_norm(xi, rm, rv, w, w, training=True),
        lambda f: f.batch_norm(xd, rm, rv, w, w, training=True),
        lambda f: f.batch_norm(xd, None, None, training=True),
        lambda f: f.batch_norm(xh, rm, rv, w, w, training=True),  # allowed: half input, float32 parameters
        lambda f: f.batch_norm(xh.float(), rm, rv, w.bfloat16(), w, training=True),
        lambda f: f.batch_norm(xd, rm, rv, training=True, eps=0.0),
        lambda f: f.batch_norm(xd.float(), rm, rv, training=False, eps=0.0),
        lambda f: f.batch_norm(xd.float(), rm, rv, training=False, eps=-1e-3),
        lambda f: f.instance_norm(xi),
        lambda f: f.instance_norm(xd, weight=w),
        lambda f: f.layer_norm(xi, [5]),
        lambda f: f.layer_norm(xi, [5], torch.ones(5)),
        lambda f: f.layer_norm(xd, [5], torch.ones(5)),
        lambda f: f.group_norm(xi, 3),
        lambda f: f.group_norm(xd, 3, w),
        lambda f: f.rms_norm(xi, [5]),
        lambda f: f.rms_norm(xd, [5], torch.ones(5)),  # allowed, float64 output
        lambda f: f.rms_norm(xd, [4]),
        lambda f: f.dropout(xi, 0.5),
        lambda f: f.dropout(xi, 1.0),
        lambda f: f.alpha_dropout(xi, 0.5, training=True),
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's rms_norm warns about the mix it falls back on
        for i, case in enumerate(cases):
            assert _outcome(lambda case=case: case(F)) == _outcome(lambda case=case: case(TF)), f"case {i}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_rms_norm_eps_none_is_the_computation_dtypes_epsilon(dtype):
    x = (torch.randn(3, 32, dtype=torch.float64) * 0.01).to(dtype)  # RMS 0.01, where bfloat16's eps is large
    torch.testing.assert_close(F.rms_norm(x, [32]), TF.rms_norm(x, [32]))
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    torch.testing.assert_close(F.rms_norm(x, [32]), F.rms_norm(x, [32], eps=eps), atol=0, rtol=0)


def test_moments_of_a_constant_set_are_exact():
    for value in (0.1, 1 / 3, -2.7e3):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.full((2, 3, 7), value, dtype=dtype)
            mu, var = F.moments(x, [0, 2])
            assert torch.equal(mu, torch.full_like(mu, x[0, 0, 0].item())) and torch.equal(var, torch.zeros_like(var))
    mu, var = F.moments(torch.empty(0, 3), [0])  # an empty set's moments are NaN, as a mean of nothing
    assert mu.isnan().all() and var.isnan().all()
