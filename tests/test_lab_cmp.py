"""normlib.lab.cmp: one stable line whether two results are identical or only close; exact only on request."""

import math

import torch

from normlib import lab


def test_cmp_says_the_same_for_identical_and_close():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    line = lab.cmp("x", a, a, atol=1e-9)
    assert line == lab.cmp("x", a + 1e-12, a, atol=1e-9) and "agree (max |diff| <= 1e-09)" in line


def test_cmp_with_zero_tolerance_claims_bit_identity():
    a = torch.tensor([1.0, 2.0])
    assert lab.cmp("mask", a, a.clone(), atol=0).endswith("exact")
    assert "DIFFERENT" in lab.cmp("mask", a + 1e-7, a, atol=0)


def test_cmp_reports_a_difference_a_nan_and_a_shape_mismatch():
    a = torch.zeros(3)
    assert "DIFFERENT (0.5)" in lab.cmp("x", a + 0.5, a, atol=1e-6)
    assert "DIFFERENT" in lab.cmp("x", torch.tensor([math.nan, 0, 0]), a, atol=1e-6)
    assert "SHAPE" in lab.cmp("x", torch.zeros(2), a, atol=1e-6)
