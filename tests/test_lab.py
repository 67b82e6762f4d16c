"""normlib.lab: the evidence toolkit, the offline data sets and ghost batches."""

import math

import numpy as np
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
    line = "✓ GN beats BN at 2 samples per statistic (3 runs; 95% one-sided bound, margin 0.1)"
    assert capsys.readouterr().out.strip() == line
    assert evidence.claim("GN beats BN at 2 samples per statistic", a, ">", b, margin=0.10, quiet=True) == line
    assert capsys.readouterr().out == ""
    assert evidence.claim("BN is worse", b, "<", a, margin=0.4, quiet=True).startswith("✓")
    assert evidence.claim("about equal", a, "≈", 0.81, margin=0.05, quiet=True).endswith(
        "(3 runs; 90% interval of the difference within ±0.05)")
    with pytest.raises(evidence.ClaimError, match=r"(?s)claim does not hold: GN beats BN by 60.*difference 48\.67"):
        evidence.claim("GN beats BN by 60", a, ">", b, margin=0.60, unit=100)
    with pytest.raises(evidence.ClaimError):
        evidence.claim("about equal", a, "~", b, margin=0.1)
    with pytest.raises(ValueError, match="op must be"):
        evidence.claim("?", a, ">=", b)
    # two exact numbers: no noise, the plain comparison, and no runs in the line
    assert evidence.claim("two is more than one", 2.0, ">", 1.0, quiet=True) == "✓ two is more than one"


def _with_mean_and_sem(mean, sem, n):
    """n values with exactly this mean and standard error (symmetric around the mean)."""
    half = n // 2
    spread = [(-1) ** i * (i // 2 + 1) for i in range(2 * half)] + ([0] * (n % 2))
    values = np.array(sorted(spread), dtype=float)
    values *= sem * math.sqrt(n) / values.std(ddof=1)
    return evidence.estimate(mean + values)


@pytest.mark.parametrize("n, t95", [(3, 2.919986), (10, 1.833113)])
def test_greater_than_needs_the_one_sided_t_bound(n, t95):
    """Against an exact number, ">" holds just beyond mean - t * s.e. > margin and fails just inside it."""
    sem = 0.01
    inside, outside = _with_mean_and_sem(0.5 + t95 * sem * 0.99, sem, n), _with_mean_and_sem(
        0.5 + t95 * sem * 1.01, sem, n)
    assert inside.sem == pytest.approx(sem) and outside.n == n
    evidence.claim("above a half", outside, ">", 0.5, quiet=True)
    with pytest.raises(evidence.ClaimError, match="one-sided 95% bound"):
        evidence.claim("above a half", inside, ">", 0.5, quiet=True)
    # "2 standard errors" is not enough at n = 3, and it is at n = 10
    two_se = _with_mean_and_sem(0.5 + 2.1 * sem, sem, n)
    if n == 3:
        with pytest.raises(evidence.ClaimError):
            evidence.claim("above a half", two_se, ">", 0.5, quiet=True)
    else:
        evidence.claim("above a half", two_se, ">", 0.5, quiet=True)


def test_welch_difference_of_two_arms():
    a, b = evidence.estimate([1.0, 2.0, 3.0]), evidence.estimate([0.0, 0.0, 1.0, 1.0, 2.0])
    d = evidence.difference(a, b)
    va, vb = 1.0 / 3, 0.7 / 5  # s^2 / n of each arm
    assert d.value == pytest.approx(1.2) and d.se == pytest.approx(math.sqrt(va + vb))
    assert d.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 4))
    from scipy.stats import ttest_ind

    # the bound is the one of Welch's t-test: the claim holds exactly when its one-sided p is below 5%
    p = ttest_ind(a.values, b.values, equal_var=False, alternative="greater").pvalue
    assert (p < 0.05) == (d.value - d.bound() > 0)


def test_about_equal_is_an_equivalence_test():
    """A point estimate inside the margin is not enough: the whole 90% interval must be."""
    narrow = evidence.estimate([0.80, 0.81, 0.82])
    wide = evidence.estimate([0.70, 0.81, 0.92])  # same mean, interval about +-0.19
    evidence.claim("within 3 points", narrow, "≈", 0.81, margin=0.03, quiet=True)
    with pytest.raises(evidence.ClaimError, match=r"90% interval \[.*\] within ±0\.03"):
        evidence.claim("within 3 points", wide, "≈", 0.81, margin=0.03, quiet=True)
    low, high = evidence.difference(wide, 0.81).interval(0.90)
    assert low == pytest.approx(-high) and high == pytest.approx(2.919986 * wide.sem, rel=1e-5)


def test_paired_claims_use_the_differences_per_seed():
    base = evidence.Estimate((0.60, 0.70, 0.80, 0.65, 0.75), seeds=(0, 1, 2, 3, 4))
    better = evidence.Estimate(tuple(v + 0.01 + 0.002 * i for i, v in enumerate(base.values)), seeds=base.seeds)
    with pytest.raises(evidence.ClaimError):  # the seeds' spread swamps a 1-point gain unpaired
        evidence.claim("better", better, ">", base, quiet=True)
    assert evidence.claim("better", better, ">", base, paired=True, quiet=True) == (
        "✓ better (paired, 5 runs; 95% one-sided bound)")
    d = evidence.difference(better, base, paired=True)
    assert d.df == 4 and d.value == pytest.approx(0.014)
    shuffled = evidence.Estimate(better.values, seeds=(1, 0, 2, 3, 4))
    with pytest.raises(ValueError, match="same seeds"):
        evidence.claim("better", shuffled, ">", base, paired=True)
    with pytest.raises(ValueError, match="same seeds"):
        evidence.difference(better, 0.5, paired=True)


def test_runs_estimates_carry_their_seeds_for_pairing():
    runs = evidence.sweep(_toy, {"norm": ["BN", "GN"], "m": [2]}, seeds=(3, 4, 5), progress=False)
    est = runs.estimate("acc", norm="GN", m=2)
    assert est.seeds == (3, 4, 5) and est.scaled(100).seeds == (3, 4, 5)
    evidence.difference(est, runs.estimate("acc", norm="BN", m=2), paired=True)


def test_claims_over_fewer_than_three_runs_are_refused():
    two = evidence.estimate([0.9, 0.91])
    with pytest.raises(ValueError, match="at least 3 runs"):
        evidence.claim("high", two, ">", 0.5)
    with pytest.raises(ValueError, match="at least 3 runs"):
        evidence.claim("high", evidence.estimate([0.9]), ">", 0.5)


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
    assert g.norm.momentum == 0.1  # restored after the pieces
    g.eval()
    torch.testing.assert_close(g(x), g.norm(x))
    with pytest.raises(ValueError, match="group_size"):
        GhostNorm(N.BatchNorm2d(3), 0)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_ghost_norm_moves_the_running_statistics_as_far_as_one_plain_update(momentum):
    """Pieces with the same statistics move the running mean and variance by ``momentum`` per step in all."""
    torch.manual_seed(0)
    piece = torch.randn(2, 3, 4, 4) * 2 + 5
    x = piece.repeat(8, 1, 1, 1)  # 8 pieces of 2, all alike
    ghost_bn, plain = GhostNorm(N.BatchNorm2d(3, momentum=momentum), 2), N.BatchNorm2d(3, momentum=momentum)
    ghost_bn(x), plain(piece)
    torch.testing.assert_close(ghost_bn.norm.running_mean, plain.running_mean)
    torch.testing.assert_close(ghost_bn.norm.running_var, plain.running_var)
    cumulative = GhostNorm(N.BatchNorm2d(3, momentum=None), 2)
    cumulative(torch.randn(8, 3, 4, 4))
    assert cumulative.norm.momentum is None and cumulative.norm.num_batches_tracked.item() == 4


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
    a, b = evidence.estimate([0.8, 0.81, 0.82]), evidence.estimate([0.3, 0.31, 0.32])
    line = evidence.claim("a statement long enough to need a second line on a phone or a narrow page, "
                          "like the ones lessons make", a, ">", b, quiet=True)
    assert len(line.splitlines()) == 2 and all(len(part) <= 86 for part in line.splitlines())
    assert line.splitlines()[1].startswith("  ")


def test_he_init_keeps_a_relu_networks_activations_at_scale():
    from normlib.lab.models import he_init, norm_mlp

    torch.manual_seed(0)
    x = torch.randn(2048, 256)
    default, he = norm_mlp([256] * 9 + [10]), he_init(norm_mlp([256] * 9 + [10]))
    assert all(m.bias is None or not m.bias.any() for m in he.modules() if isinstance(m, torch.nn.Linear))
    # through 8 Linear-ReLU layers: He keeps the mean square near the input's; the default's weights
    # shrink it by 6x per layer (1/(3 fan_in) against 2/fan_in), and only its biases keep it above zero
    hidden = slice(0, -1)
    assert 0.3 < he[hidden](x).pow(2).mean().item() < 3
    assert default[hidden](x).pow(2).mean().item() < 0.01


def test_fit_measures_the_training_set_in_eval_mode_when_asked():
    from normlib.lab.models import norm_mlp
    from normlib.lab.train import accuracy, fit

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = norm_mlp([5, 16, 3], norm=N.BatchNorm1d)
    history = fit(model, (x, y, x[:16], y[:16]), epochs=2, batch_size=16, lr=0.1, eval_train=True, progress=False)
    assert len(history["train_acc_eval"]) == len(history["train_loss_eval"]) == 2
    assert history["train_acc_eval"][-1] == accuracy(model, x, y)
    assert "train_acc_eval" not in fit(model, (x, y, x, y), epochs=1, batch_size=16, lr=0.1, progress=False)
