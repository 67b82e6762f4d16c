"""One command for a GPU: the kernel tests on CUDA, then the benchmark suite, its result file where the lessons
find it (``normlib/lab/results/``).

Usage, from the repository root, on a machine with an NVIDIA GPU, torch >= 2.4 and triton (it installs
nothing, and never reinstalls torch: it runs with the Python it is started with)::

    python tools/gpu_run.py                      # tests, then the suite: --device cuda --repeats 3
    python tools/gpu_run.py --results DIR        # write the result file into DIR instead
    python tools/gpu_run.py --dry-run --results DIR   # on the CPU: Triton's interpreter, tiny shapes

Steps, each printed with the time it took: (1) the environment (GPU, driver, torch, triton); (2)
``pytest tests/test_kernels.py`` (on CUDA it covers float32, bfloat16 and float16, odd row widths, rows of
one, every gradient and BatchNorm's running statistics against torch); (3) the lessons that time the
kernels, run as scripts (a lesson's ``.py`` is plain Python; figures go to matplotlib's Agg backend), so
that their GPU cells run: the fused-kernel lesson and the speed lesson (``--lessons``); (4) ``python -m
normlib.lab.bench --device cuda --repeats 3 --out RESULTS/cuda-<gpu>.json`` (every norm and dropout, float32
and bfloat16, forward and forward+backward, torch against normlib eager, compiled and Triton; the file is
rewritten after each case, so a run cut short keeps what it measured). ``--budget-minutes`` (default 9, none on a dry
run) bounds the whole run: a step that would outlast it is stopped (exit status 124), and a step that finds
the budget spent is skipped. The exit status is the first failing step's.

The dry run (``--dry-run``) takes the same steps on the CPU, with ``TRITON_INTERPRET=1`` (the kernels run in
Triton's interpreter), the tests' quick scope, no lessons unless ``--lessons`` names some (nbval runs them
on the CPU anyway) and the suite's tiny shapes (``--tiny``, bfloat16, a few operations, one round): the
test suite runs it, so that the command is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "normlib" / "lab" / "results"
LESSONS = ("notebooks/19_fused_kernels.py", "notebooks/14_speed.py")  # the lessons whose cells time on a GPU


def _say(message: str) -> None:
    print(message, flush=True)


def _step(title: str, command: list[str], env: dict, timeout: float | None, cwd: Path = ROOT) -> int:
    """Run one step in its own process, its output passed through; return its exit status."""
    _say(f"\n== {title}\n$ {' '.join(command)}")
    start = time.perf_counter()
    try:
        status = subprocess.run(command, cwd=cwd, env=env,
                                timeout=None if timeout == float("inf") else timeout).returncode
    except subprocess.TimeoutExpired:
        status = 124
        _say(f"   stopped after {timeout:.0f} s")
    _say(f"== {title}: {'ok' if status == 0 else f'FAILED (exit status {status})'}, "
         f"{time.perf_counter() - start:.0f} s")
    return status


def environment(dry_run: bool) -> dict:
    """What the run uses, printed; raises SystemExit where it cannot run (no GPU, torch < 2.4, no triton)."""
    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    if tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) < (2, 4):
        raise SystemExit(f"torch {torch.__version__}: normlib needs torch >= 2.4")
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError as error:
        raise SystemExit("triton is not installed: the kernels need it") from error
    if dry_run:
        found["device"] = "CPU (dry run: Triton's interpreter)"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run it on a GPU, or with --dry-run on the CPU")
    else:
        from normlib.lab.timing import gpu_details

        found.update(gpu_details("cuda"))
        found["device"] = found.pop("name")
    for key, value in found.items():
        _say(f"   {key:<16} {value}")
    return found


def result_name(device: str) -> str:
    """The result file's name for a device: ``cuda-`` and the GPU's name in lower case, words joined by -."""
    return "cuda-" + "-".join(re.findall(r"[a-z0-9]+", device.lower()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/gpu_run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU: Triton's interpreter, the tests' quick scope, the suite's tiny shapes")
    parser.add_argument("--results", default=None,
                        help=f"folder for the result file (default: {RESULTS.relative_to(ROOT)}; dry run: required)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each case (default: 3; dry run: 2)")
    parser.add_argument("--ops", default=None, help="only these operations in the suite, comma-separated")
    parser.add_argument("--select", default=None, help="only the kernel tests that match (pytest -k)")
    parser.add_argument("--skip-tests", action="store_true", help="no kernel tests")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop what is still running after this long (default: 9; dry run: no limit)")
    parser.add_argument("--lessons", default=None,
                        help=f"lessons to run as scripts, comma-separated; '' for none (default: {','.join(LESSONS)}; "
                             "dry run: none)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def left() -> float | None:
        """Seconds of the budget left (None: spent; infinite: no budget)."""
        budget = args.budget_minutes if args.budget_minutes is not None else None if args.dry_run else 9.0
        if budget is None:
            return float("inf")
        remaining = budget * 60 - (time.perf_counter() - start)
        if remaining < 1:
            _say("\n== the budget is spent: the remaining steps are skipped")
            return None
        return remaining

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        if not args.results:
            parser.error("--dry-run needs --results (a scratch folder: a dry run's figures are not results)")
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("TRITON_INTERPRET", None)
    _say("== environment")
    found = environment(args.dry_run)
    results = Path(args.results) if args.results else RESULTS
    results.mkdir(parents=True, exist_ok=True)

    status = 0
    if not args.skip_tests:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"]
        command += ["-k", args.select] if args.select else []
        remaining = left()
        status = _step("kernel tests" + (" (interpreter, quick scope)" if args.dry_run else " on CUDA"), command,
                       env, timeout=remaining) if remaining else 124

    lessons = args.lessons.split(",") if args.lessons else [] if args.dry_run or args.lessons == "" else LESSONS
    for lesson in lessons:
        remaining = left()
        if remaining is None:
            status = status or 124
            break
        path = (ROOT / lesson).resolve()
        lesson_env = dict(env, MPLBACKEND="Agg")
        lesson_status = _step(f"lesson {path.name}", [sys.executable, path.name], lesson_env, timeout=remaining,
                              cwd=path.parent)
        status = status or lesson_status

    repeats = args.repeats or (2 if args.dry_run else 3)
    if args.dry_run:
        out = results / "dry-run.json"
        command = [sys.executable, "-m", "normlib.lab.bench", "--device", "cpu", "--allocator", "held", "--tiny",
                   "--dtypes", "bfloat16", "--ops", args.ops or "layer_norm,instance_norm,dropout",
                   "--impls", "torch,normlib-triton", "--rounds", "1", "--min-run-time", "0", "--threads", "1"]
    else:
        out = results / f"{result_name(found['device'])}.json"
        command = [sys.executable, "-m", "normlib.lab.bench", "--device", "cuda"]
        command += ["--ops", args.ops] if args.ops else []
    command += ["--repeats", str(repeats), "--out", str(out)]
    remaining = left()
    bench_status = _step("benchmark suite", command, env, timeout=remaining) if remaining else 124
    status = status or bench_status
    if out.exists():
        report = json.loads(out.read_text())
        triton_rows = sum(r["impl"] == "normlib-triton" for r in report["results"])
        _say(f"\n{out}: {len(report['results'])} figures ({triton_rows} of the Triton kernels), "
             f"{'complete' if report.get('complete') else 'INCOMPLETE'}, {report['device']}, {report['date']}")
    else:
        _say(f"\nno result file was written ({out})")
        status = status or 1
    _say(f"== done in {time.perf_counter() - start:.0f} s, exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
