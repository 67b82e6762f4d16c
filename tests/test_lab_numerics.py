"""normlib.lab.numerics: naive, two-pass and Welford/Chan moments, with a fixed order of roundings."""

import numpy as np
import pytest
import torch

from normlib.lab.numerics import (
    Moments,
    chunked_welford,
    exact_moments,
    merge,
    naive_moments,
    relative_error,
    two_pass_moments,
    ulp,
    ulp_error,
    welford,
)


def _data(offset=0.0, rows=8, m=256, seed=0):
    return torch.from_numpy(offset + np.random.default_rng(seed).standard_normal((rows, m)))


def test_every_algorithm_is_the_variance_in_float64():
    x = _data(3.0)
    mean, var = x.mean(-1), x.var(-1, unbiased=False)
    for got_mean, got_var in (naive_moments(x), two_pass_moments(x), (welford(x).mean, welford(x).var),
                              (chunked_welford(x, 8).mean, chunked_welford(x, 8).var), exact_moments(x)):
        torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(got_var, var, rtol=1e-12, atol=0)


def test_merge_combines_uneven_parts():
    x = _data(5.0, rows=3, m=100)
    merged = merge(welford(x[:, :37]), welford(x[:, 37:]))
    assert merged.count == 100
    torch.testing.assert_close(merged.var, x.var(-1, unbiased=False), rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.mean, x.mean(-1), rtol=0, atol=1e-12)


def test_chunked_welford_checks_its_chunks_and_one_chunk_is_welford():
    x = _data(rows=2, m=64).float()
    one = chunked_welford(x, 1)
    assert isinstance(one, Moments) and torch.equal(one.m2, welford(x).m2)
    for bad in (3, 0, 128):
        with pytest.raises(ValueError, match="power of two"):
            chunked_welford(x, bad)


def test_naive_cancels_two_pass_and_welford_do_not():
    x = _data(1e4, m=1024).float()  # offset 10^4 times the spread, in float32
    _, want = exact_moments(x)
    assert relative_error(naive_moments(x)[1], want).max() > 1.0
    for var in (two_pass_moments(x)[1], welford(x).var, chunked_welford(x, 16).var):
        assert relative_error(var, want).max() < 1e-2


def test_half_precision_sum_of_squares_overflows_and_float32_accumulation_does_not():
    x = torch.full((1, 1024), 16.0, dtype=torch.float16)  # sum of squares 262144 > 65504
    assert torch.isinf(naive_moments(x)[1]).all()
    mean, var = naive_moments(x, torch.float32)
    assert mean.item() == 16.0 and var.item() == 0.0
    assert relative_error(torch.tensor([float("inf")]), torch.tensor([1.0])).item() == float("inf")


def test_low_precision_accumulation_loses_what_float32_keeps():
    x = _data(4.0, m=1024).to(torch.bfloat16)
    _, want = exact_moments(x)
    assert relative_error(two_pass_moments(x)[1], want).max() > 0.5  # a running sum in bfloat16 stalls
    assert relative_error(two_pass_moments(x, torch.float32)[1], want).max() < 1e-4


def test_ulp_is_the_spacing_of_the_dtype():
    x = torch.tensor([1.0, 1.5, 3.0, 1000.0, 0.0])
    assert ulp(x, torch.float16).tolist() == [2**-10, 2**-10, 2**-9, 0.5, 2**-24]
    assert ulp(x[:4], torch.bfloat16).tolist() == [2**-7, 2**-7, 2**-6, 4.0]
    want = torch.tensor([1.0, 1000.1], dtype=torch.float64)
    assert ulp_error(want.to(torch.float16), want) == pytest.approx(0.1 / 0.5)  # 1000.1 -> 1000
    assert ulp_error(want.to(torch.float32), want) <= 0.5
