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
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ClaimError", "Estimate", "Runs", "claim", "estimate", "sweep", "table"]


class ClaimError(AssertionError):
    """A lesson's claim did not hold on this run; the message carries the measured numbers."""


@dataclass(frozen=True)
class Estimate:
    """The values of one quantity over independent runs (seeds), with their mean and standard error."""

    values: tuple[float, ...]
    label: str = ""

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
        return Estimate(tuple(v * factor for v in self.values), self.label if label is None else label)

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
        return Estimate(tuple(float(r[metric]) for r in chosen.records), label)

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


def claim(statement: str, left: Estimate | float, op: str, right: Estimate | float = 0.0, *, margin: float = 0.0,
          sigmas: float = 0.0, unit: float = 1.0, quiet: bool = False) -> str | None:
    r"""Check a lesson's statement against the runs: print one stable line (or, with ``quiet``, return it), or raise.

    - ``op=">"``: holds when ``mean(left) - mean(right) > margin``;
    - ``op="<"``: holds when ``mean(right) - mean(left) > margin``;
    - ``op="≈"`` (or ``"~"``): holds when ``|mean(left) - mean(right)| <= margin``.

    For ``>`` and ``<``, ``sigmas=k`` also asks the difference to exceed ``margin`` by ``k`` standard errors
    of the difference, :math:`\sqrt{se_l^2 + se_r^2}`, so that a gap within the noise of the seeds is not
    taken for an effect. ``unit`` only scales the numbers in the messages (100 for percent points).
    The printed line names the statement and the number of runs, never the measured values, so it is the
    same on every machine where the statement holds (wrapped at 86 characters, to fit a page); it is
    printed, or returned with ``quiet=True``. :class:`ClaimError` carries the values.
    """
    op = "≈" if op == "~" else op
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)} or '~', got {op!r}")
    a = left if isinstance(left, Estimate) else estimate([left], "value")
    b = right if isinstance(right, Estimate) else estimate([right], "reference")
    diff = a.mean - b.mean if op != "<" else b.mean - a.mean
    se = math.sqrt(a.sem**2 + b.sem**2)
    if op == "≈":
        holds, needed = abs(diff) <= margin, f"|difference| <= {margin * unit:.4g}"
    else:
        holds = diff > margin + sigmas * se
        needed = f"difference > {margin * unit:.4g}"
        if sigmas:
            needed += f" + {sigmas:g} s.e. ({sigmas * se * unit:.3g})"
    runs = sorted({est.n for est in (left, right) if isinstance(est, Estimate)})
    over = f" (means over {'/'.join(map(str, runs))} runs)" if runs and runs != [1] else ""
    if not holds:
        raise ClaimError(
            f"claim does not hold: {statement}\n  left:  {a.scaled(unit)}\n  right: {b.scaled(unit)}\n"
            f"  measured difference {diff * unit:.4g} (s.e. {se * unit:.3g}); needed {needed}")
    line = "\n  ".join(textwrap.wrap(f"✓ {statement}{over}", width=86, break_on_hyphens=False))
    if quiet:
        return line
    print(line)  # and return nothing, so a claim that ends a notebook cell is not echoed a second time
    return None
