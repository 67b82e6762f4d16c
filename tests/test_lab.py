"""normlib.lab: the evidence toolkit, the offline data sets and ghost batches."""

import math

import pytest
import torch

from normlib import nn as N
from normlib.lab import evidence
from normlib.lab.data import Dataset, digits
from normlib.lab.models import GhostNorm, LeNet, ghost


def test_estimate_mean_and_standard_error():
    e = evidence.estimate([1.0, 2.0, 3.0, 6.0], "x")
    assert e.n == 4 and e.mean == 3.0
    assert math.isclose(e.std, math.sqrt(14 / 3)) and math.isclose(e.sem, math.sqrt(14 / 3) / 2)
    assert f"{e:.2f}" == f"3.00 ± {e.sem:.2f}"
    assert e.scaled(100).mean == 300.0 and e.scaled(100).values == (100.0, 200.0, 300.0, 600.0)
    assert evidence.estimate([5.0]).sem == 0.0
    with pytest.raises(ValueError, match="no values"):
        evidence.estimate([])


def _toy(seed, norm, m):
    return {"acc": {"BN": 0.5, "GN": 0.8}[norm] + 0.01 * seed + 0.001 * m, "steps": 10}


def test_sweep_records_every_setting_and_seed(capsys):
    runs = evidence.sweep(_toy, {"norm": ["BN", "GN"], "m": [2, 32]}, seeds=(0, 1, 2), desc="toy")
    assert len(runs) == 12 and runs.values_of("norm") == ["BN", "GN"] and runs.values_of("m") == [2, 32]
    est = runs.estimate("acc", norm="GN", m=2)
    assert est.values == pytest.approx((0.802, 0.812, 0.822)) and est.label == "acc at norm=GN, m=2"
    assert "toy" in capsys.readouterr().out  # the bar (cleared when done: leave=False)
    assert len(runs.select(norm="BN")) == 6
    with pytest.raises(KeyError, match="no setting 'batch'"):
        runs.select(batch=2)
    with pytest.raises(KeyError, match="no metric 'loss'"):
        runs.estimate("loss", norm="BN")
    single = evidence.sweep(lambda seed: seed * 2.0, seeds=(1, 2), progress=False)
    assert single.estimate("value").values == (2.0, 4.0)


def test_runs_table_and_plot():
    runs = evidence.sweep(_toy, {"norm": ["BN", "GN"], "m": [2, 32]}, seeds=(0, 1), progress=False)
    text = runs.table("acc", rows="norm", cols="m", scale=100)
    lines = text.splitlines()
    assert lines[0].split() == ["norm", "m=2", "m=32"] and lines[1].startswith("BN") and "50.7 ±" in lines[1]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = runs.plot("acc", x="m", series="norm", scale=100)
    assert len(ax.containers) == 2 and "2 seeds" in ax.get_ylabel()
    plt.close("all")


def test_claim_holds_prints_one_stable_line_and_raises_with_numbers(capsys):
    a, b = evidence.estimate([0.80, 0.82, 0.81]), evidence.estimate([0.30, 0.35, 0.32])
    assert evidence.claim("GN beats BN at 2 samples per statistic", a, ">", b, margin=0.10) is None
    line = "✓ GN beats BN at 2 samples per statistic (means over 3 runs)"
    assert capsys.readouterr().out.strip() == line
    assert evidence.claim("GN beats BN at 2 samples per statistic", a, ">", b, margin=0.10, quiet=True) == line
    assert capsys.readouterr().out == ""
    assert evidence.claim("BN is worse", b, "<", a, margin=0.4, quiet=True).startswith("✓")
    assert evidence.claim("about equal", a, "≈", 0.8, margin=0.02, quiet=True)
    with pytest.raises(evidence.ClaimError, match=r"(?s)claim does not hold: GN beats BN by 60.*difference 48\.67"):
        evidence.claim("GN beats BN by 60", a, ">", b, margin=0.60, unit=100)
    with pytest.raises(evidence.ClaimError):
        evidence.claim("about equal", a, "~", b, margin=0.1)
    # a gap that is there on average but within the seeds' noise fails when sigmas asks for more
    noisy, other = evidence.estimate([0.5, 0.9, 0.7]), evidence.estimate([0.6, 0.62, 0.64])
    evidence.claim("higher on average", noisy, ">", other, quiet=True)
    with pytest.raises(evidence.ClaimError, match="s.e."):
        evidence.claim("higher beyond the noise", noisy, ">", other, sigmas=2, quiet=True)
    with pytest.raises(ValueError, match="op must be"):
        evidence.claim("?", a, ">=", b)


def test_digits_is_a_named_four_tuple():
    data = digits()
    x_tr, y_tr, x_te, y_te = data
    assert isinstance(data, Dataset) and data.name == "digits"
    assert x_tr.shape[1:] == (1, 8, 8) and len(x_tr) + len(x_te) == 1797


def test_ghost_norm_normalizes_each_group_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    g = GhostNorm(N.BatchNorm2d(3), group_size=2)
    want = torch.cat([torch.nn.functional.batch_norm(p, None, None, training=True) for p in x.split(2)])
    torch.testing.assert_close(g(x), want)
    assert g.norm.num_batches_tracked.item() == 4  # one update per ghost batch
    g.eval()
    torch.testing.assert_close(g(x), g.norm(x))
    with pytest.raises(ValueError, match="group_size"):
        GhostNorm(N.BatchNorm2d(3), 0)


def test_lenet_takes_fashion_mnist_sized_images_and_ghost_norms():
    model = LeNet(conv_norm=ghost(N.BatchNorm2d, 4), fc_norm=ghost(N.BatchNorm1d, 4), image_size=28)
    assert model(torch.randn(8, 1, 28, 28)).shape == (8, 10)


def test_plot_without_series_takes_a_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = evidence.sweep(_toy, {"norm": ["BN"], "m": [2, 32]}, seeds=(0, 1), progress=False)
    ax = runs.plot("acc", x="m", label="BatchNorm")
    assert ax.containers[0].get_label() == "BatchNorm"
    plt.close("all")


def test_a_long_claim_is_wrapped_to_fit_a_page():
    a, b = evidence.estimate([0.8, 0.81]), evidence.estimate([0.3, 0.31])
    line = evidence.claim("a statement long enough to need a second line on a phone or a narrow page, "
                          "like the ones lessons make", a, ">", b, quiet=True)
    assert len(line.splitlines()) == 2 and all(len(part) <= 86 for part in line.splitlines())
    assert line.splitlines()[1].startswith("  ")
