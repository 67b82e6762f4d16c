"""normlib.lab.within: one stable line whether two results are identical or only close."""

import torch

from normlib import lab


def test_within_says_the_same_for_identical_and_close():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    line = lab.within("x", a, a, atol=1e-9)
    assert line == lab.within("x", a + 1e-12, a, atol=1e-9) and "agree" in line


def test_within_reports_a_difference_and_a_shape_mismatch():
    a = torch.zeros(3)
    assert "DIFFERENT (0.5)" in lab.within("x", a + 0.5, a, atol=1e-6)
    assert "SHAPE" in lab.within("x", torch.zeros(2), a, atol=1e-6)
