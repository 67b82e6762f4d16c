"""The recorded GPU benchmark files, for the lessons that end on a statement about GPUs.

A lesson that says what a GPU does can only plot it when a GPU run was recorded (``python -m
normlib.lab.bench`` on a CUDA device writes one file into ``normlib/lab/results/``, shipped with
normlib). Until then its statement is the byte model's prediction. :func:`cuda_reports` finds the
recorded CUDA files; :func:`series` picks the timings of one operation, implementation, mode and
dtype from one of them, ordered by the size of the input.
"""

from __future__ import annotations

import math

from normlib.lab import bench

__all__ = ["cuda_reports", "series", "describe"]


def cuda_reports() -> dict[str, dict]:
    """The recorded benchmark files measured on a CUDA device, by file name (empty when there is none)."""
    return {name: report for name, report in bench.recorded().items() if report.get("device_type") == "cuda"}


def series(report: dict, op: str, impl: str = "torch", mode: str = "forward+backward",
           dtype: str = "float32") -> list[dict]:
    """The result rows of one case in ``report``, ordered by the number of elements of the input.

    Each row has ``numel``, ``shape``, ``median_ms`` and ``GBps`` (the byte model's bytes over the time).
    """
    rows = [r for r in report.get("results", []) if r.get("op") == op and r.get("impl") == impl
            and r.get("mode") == mode and r.get("dtype") == dtype]
    out = [{"numel": math.prod(r["shape"]), "shape": tuple(r["shape"]), "median_ms": r["median_ms"],
            "GBps": r["GBps"]} for r in rows]
    return sorted(out, key=lambda r: (r["numel"], r["shape"]))


def describe(report: dict) -> str:
    """One line naming the device, torch and date of a recorded report."""
    return f"{report.get('device', '?')}, torch {report.get('torch', '?')}, {report.get('date', '?')}"
