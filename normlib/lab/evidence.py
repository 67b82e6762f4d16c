r"""Experiments as evidence: run over seeds, summarise with a standard error, plot error bars, check claims.

A trained result depends on float rounding: the same lesson on another CPU (or with another ATen kernel set)
takes other paths through training and prints other digits. So a lesson does not ask nbval to compare those
digits; it states what the text says about them as a :func:`claim`, which prints one stable line when it holds
and raises :class:`ClaimError`, with the measured numbers, when it does not. nbval compares the line, so the
lesson fails on any machine where its statement stops being true.

Typical use::

    runs = evidence.sweep(train_one, {"norm": ["BN", "GN"], "m": [2, 32]}, seeds=(0, 1, 2))
    runs.plot("test_acc", x="m", series="norm", ax=ax)          # mean and standard error per point
    evidence.claim("GroupNorm beats BatchNorm at 2 samples per statistic",
                   runs.estimate("test_acc", norm="GN", m=2), ">", runs.estimate("test_acc", norm="BN", m=2),
                   margin=0.10)

``train_one(seed=..., norm=..., m=...)`` returns a number or a dict of numbers (the metrics of one run).

A claim is decided with the seeds' noise: ">" holds only when the difference exceeds the margin by its
one-sided 95% confidence bound (Student's t, so 3 seeds need about 2.9 standard errors, 10 seeds 1.8), "≈"
only when the whole 90% interval of the difference lies within the margin (an equivalence test), and a claim
over seeds needs at least 3 runs. Where two arms share each seed's initialisation and data order,
``paired=True`` uses the per-seed differences, whose spread is often far smaller.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ClaimError", "Difference", "Estimate", "Runs", "claim", "difference", "estimate", "sweep", "table"]


class ClaimError(AssertionError):
    """A lesson's claim did not hold on this run; the message carries the measured numbers."""


@dataclass(frozen=True)
class Estimate:
    """The values of one quantity over independent runs (seeds), with their mean and standard error."""

    values: tuple[float, ...]
    label: str = ""
    seeds: tuple = ()  # the seed of each value, where known (a paired claim checks both sides have the same)

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"no values for {self.label or 'this estimate'}: did the selection match any run?")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 in the denominator); 0 for a single value."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def sem(self) -> float:
        """Standard error of the mean, std / sqrt(n)."""
        return self.std / math.sqrt(self.n)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def scaled(self, factor: float, label: str | None = None) -> Estimate:
        """The same runs in other units (``factor=100`` turns fractions into percent)."""
        return Estimate(tuple(v * factor for v in self.values), self.label if label is None else label, self.seeds)

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.mean:{spec}} ± {self.sem:{spec}}"

    def __str__(self) -> str:
        name = f"{self.label}: " if self.label else ""
        return f"{name}{self:.4g} (mean ± s.e., n={self.n}; values {', '.join(f'{v:.4g}' for v in self.values)})"


def estimate(values: Iterable[float], label: str = "") -> Estimate:
    """An :class:`Estimate` of plain numbers (one per seed)."""
    return Estimate(tuple(float(v) for v in values), label)


class Runs:
    """The records of an experiment: one dict per run, with its settings, its seed and its metrics."""

    def __init__(self, records: Sequence[Mapping[str, object]]) -> None:
        self.records = [dict(r) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Runs({len(self)} runs, keys {sorted(self.keys())})"

    def keys(self) -> set[str]:
        return set().union(*(r.keys() for r in self.records)) if self.records else set()

    def values_of(self, key: str) -> list:
        """The distinct values ``key`` takes, in the order they first appear."""
        return list(dict.fromkeys(r[key] for r in self.records if key in r))

    def select(self, **where) -> Runs:
        """The runs whose settings equal every ``key=value`` given."""
        for key in where:
            if key not in self.keys():
                raise KeyError(f"no setting {key!r}; the runs have {sorted(self.keys())}")
        return Runs([r for r in self.records if all(r.get(k) == v for k, v in where.items())])

    def estimate(self, metric: str, **where) -> Estimate:
        """The ``metric`` of the runs matching ``where``, over their seeds."""
        chosen = self.select(**where)
        if metric not in self.keys():
            raise KeyError(f"no metric {metric!r}; the runs have {sorted(self.keys())}")
        label = metric + (" at " + ", ".join(f"{k}={v}" for k, v in where.items()) if where else "")
        return Estimate(tuple(float(r[metric]) for r in chosen.records), label,
                        tuple(r.get("seed") for r in chosen.records))

    def plot(self, metric: str, x: str, series: str | None = None, ax=None, scale: float = 1.0,
             labels: Mapping[object, str] | None = None, **kwargs):
        """Mean of ``metric`` against setting ``x``, one line per value of ``series``, error bars of one s.e.

        ``scale`` multiplies the values (100 for percent); ``labels`` renames series in the legend;
        other keyword arguments go to ``ax.errorbar``. Returns the axes.
        """
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.gca()
        groups = self.values_of(series) if series else [None]
        for group in groups:
            sub = self.select(**{series: group}) if series else self
            xs = sub.values_of(x)
            ests = [sub.estimate(metric, **{x: v}).scaled(scale) for v in xs]
            name = (labels or {}).get(group, str(group)) if series else None
            style = {"marker": "o", "capsize": 3, "label": name} | kwargs
            ax.errorbar(xs, [e.mean for e in ests], yerr=[e.sem for e in ests], **style)
        ax.set_xlabel(x)
        n = {len(self.select(**{x: v} | ({series: g} if series else {}))) for v in self.values_of(x)
             for g in groups} - {0}
        ax.set_ylabel(f"{metric} (mean ± s.e., {_count(n)} seeds)")
        if series:
            ax.legend()
        return ax

    def table(self, metric: str, rows: str, cols: str, scale: float = 1.0, fmt: str = ".1f") -> str:
        """A text table of ``metric`` as mean ± s.e., ``rows`` down, ``cols`` across."""
        col_values = self.values_of(cols)
        cells = [[f"{self.estimate(metric, **{rows: r, cols: c}).scaled(scale):{fmt}}"
                  if len(self.select(**{rows: r, cols: c})) else "" for c in col_values]
                 for r in self.values_of(rows)]
        return table([rows] + [f"{cols}={c}" for c in col_values],
                     [[str(r)] + cell for r, cell in zip(self.values_of(rows), cells, strict=True)])


def _count(ns: set[int]) -> str:
    return str(ns.pop()) if len(ns) == 1 else f"{min(ns)}-{max(ns)}" if ns else "0"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest entry, first column left-aligned, the rest right-aligned."""
    grid = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                    strict=True)))
                     for row in grid)


def sweep(fn: Callable[..., float | Mapping[str, float]], grid: Mapping[str, Sequence] | None = None,
          seeds: Sequence[int] = (0, 1, 2), desc: str = "runs", progress: bool = True) -> Runs:
    """Call ``fn(seed=s, **setting)`` for every setting of ``grid`` (its product) and every seed.

    ``fn`` returns one number (recorded as ``"value"``) or a dict of named metrics. A progress bar (to
    stdout, without rates or times) counts the runs. Returns the :class:`Runs`.
    """
    from tqdm import tqdm

    grid = dict(grid or {})
    settings = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    records = []
    bar = tqdm(total=len(settings) * len(seeds), desc=desc, disable=not progress, file=sys.stdout, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} runs")
    with bar:
        for setting in settings:
            for seed in seeds:
                out = fn(seed=seed, **setting)
                metrics = dict(out) if isinstance(out, Mapping) else {"value": float(out)}
                records.append({**setting, "seed": seed, **metrics})
                bar.update(1)
    return Runs(records)


_OPS = {">": "exceeds", "<": "is below", "≈": "is within"}
CONFIDENCE = 0.95
MIN_RUNS = 3


@dataclass(frozen=True)
class Difference:
    """The difference of two quantities' means, its standard error and degrees of freedom.

    ``df`` is ``math.inf`` when neither side varies over seeds (two exact numbers), so that the bounds are
    the difference itself.
    """

    value: float
    se: float
    df: float
    paired: bool = False

    def bound(self, confidence: float = CONFIDENCE) -> float:
        """How far below (or above) ``value`` the true difference may lie, one-sided at ``confidence``."""
        return self.se * _t_quantile(confidence, self.df) if self.se else 0.0

    def interval(self, confidence: float = 0.90) -> tuple[float, float]:
        """The two-sided ``confidence`` interval of the difference."""
        half = self.se * _t_quantile(0.5 + confidence / 2, self.df) if self.se else 0.0
        return self.value - half, self.value + half


def _t_quantile(p: float, df: float) -> float:
    """Student's t quantile (the normal one for infinite degrees of freedom)."""
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    from scipy.stats import t

    return float(t.ppf(p, df))


def difference(left: Estimate | float, right: Estimate | float = 0.0, paired: bool = False) -> Difference:
    """``mean(left) - mean(right)`` with its standard error, for a claim or an interval in a table.

    Unpaired (the default), Welch's standard error :math:`\\sqrt{s_l^2/n_l + s_r^2/n_r}` with the
    Welch-Satterthwaite degrees of freedom; a plain number counts as exact (no spread). ``paired=True``
    takes the difference seed by seed (both arms share each seed's initialisation and data order): its
    standard error is that of the n differences, with n - 1 degrees of freedom; both sides need the same
    seeds, in the same order.
    """
    a = left if isinstance(left, Estimate) else None
    b = right if isinstance(right, Estimate) else None
    mean_a = a.mean if a else float(left)
    mean_b = b.mean if b else float(right)
    if paired:
        if a is None or b is None or a.n != b.n:
            raise ValueError("a paired difference needs two estimates over the same seeds")
        if a.seeds and b.seeds and a.seeds != b.seeds:
            raise ValueError(f"a paired difference needs the same seeds on both sides: {a.seeds} and {b.seeds}")
        d = Estimate(tuple(x - y for x, y in zip(a.values, b.values, strict=True)))
        return Difference(d.mean, d.sem, d.n - 1, paired=True)
    parts = [(e.sem**2, e.n - 1) for e in (a, b) if e is not None and e.n > 1]
    var = sum(v for v, _ in parts)
    if not parts or var == 0:
        df = math.inf if not parts else float(sum(k for _, k in parts))
    else:
        df = var**2 / sum(v**2 / k for v, k in parts)
    return Difference(mean_a - mean_b, math.sqrt(var), df)


def claim(statement: str, left: Estimate | float, op: str, right: Estimate | float = 0.0, *, margin: float = 0.0,
          paired: bool = False, confidence: float = CONFIDENCE, unit: float = 1.0,
          quiet: bool = False) -> str | None:
    r"""Check a lesson's statement against the runs, with the seeds' noise: print one stable line, or raise.

    With :math:`d` the difference of the means and :math:`t\,se` its one-sided bound at ``confidence``
    (Student's t; Welch's for two independent arms, or the per-seed differences with ``paired=True``):

    - ``op=">"``: holds when :math:`d - t\,se > \text{margin}`, i.e. left exceeds right by more than
      ``margin`` with that confidence (``margin=0``: left is larger);
    - ``op="<"``: the same with the sides exchanged;
    - ``op="≈"`` (or ``"~"``): an equivalence test (two one-sided tests): holds when the whole
      :math:`1 - 2(1 - \text{confidence})` interval of :math:`d` (90% by default) lies within
      :math:`\pm\text{margin}`. A point estimate inside the margin is not enough: with a wide interval the
      data cannot tell "equal" from "different", and the claim fails.

    A claim over seeds needs at least 3 runs on each side that varies (an :class:`Estimate`); a plain number
    is taken as exact. ``unit`` only scales the numbers in the messages (100 for percent points).
    The printed line names the statement, the runs and the test, never the measured values, so it is the
    same on every machine where the statement holds (wrapped at 86 characters, to fit a page); it is
    printed, or returned with ``quiet=True``. :class:`ClaimError` carries the values.
    """
    op = "≈" if op == "~" else op
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)} or '~', got {op!r}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be between 0.5 and 1, got {confidence}")
    ests = [e for e in (left, right) if isinstance(e, Estimate)]
    for e in ests:
        if e.n < MIN_RUNS:
            raise ValueError(f"a claim over seeds needs at least {MIN_RUNS} runs; {e.label or 'one side'} has "
                             f"{e.n} (pass a plain number for an exact quantity)")
    diff = difference(left, right, paired=paired)
    a = left if isinstance(left, Estimate) else estimate([left], "value")
    b = right if isinstance(right, Estimate) else estimate([right], "reference")
    value = -diff.value if op == "<" else diff.value
    exact = not ests
    if op == "≈":
        low, high = diff.interval(2 * confidence - 1)
        holds = -margin <= low and high <= margin
        level = f"{2 * confidence - 1:.0%}"
        needed = f"the {level} interval [{low * unit:.4g}, {high * unit:.4g}] within ±{margin * unit:.4g}"
        test = f"{level} interval of the difference within ±{margin * unit:g}"
    else:
        bound = diff.bound(confidence)
        holds = value - bound > margin
        needed = f"difference - {bound * unit:.3g} (one-sided {confidence:.0%} bound) > {margin * unit:.4g}"
        test = f"{confidence:.0%} one-sided bound" + (f", margin {margin * unit:g}" if margin else "")
    if not holds:
        raise ClaimError(
            f"claim does not hold: {statement}\n  left:  {a.scaled(unit)}\n  right: {b.scaled(unit)}\n"
            f"  measured difference {value * unit:.4g} (s.e. {diff.se * unit:.3g}"
            f"{', paired' if paired else ''}); needed {needed}")
    if exact:
        over = ""
    else:
        runs = "/".join(map(str, sorted({e.n for e in ests})))
        over = f" ({'paired, ' if paired else ''}{runs} runs; {test})"
    line = "\n  ".join(textwrap.wrap(f"✓ {statement}{over}", width=86, break_on_hyphens=False))
    if quiet:
        return line
    print(line)  # and return nothing, so a claim that ends a notebook cell is not echoed a second time
    return None
