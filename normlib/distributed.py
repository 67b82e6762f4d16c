"""Running data-parallel jobs on one machine: processes joined by torch.distributed's gloo backend.

:func:`launch` starts ``world_size`` processes on localhost, runs a function in each and returns what
each returned, with a time limit (the SyncBatchNorm tests and lesson use it; :mod:`normlib.lab.ddp` trains
with it). The same code runs across machines under ``torchrun``: only the process-group initialization
differs.
"""

from __future__ import annotations

import datetime
import io
import os
import queue as queue_module
import socket
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_ERROR_GRACE_S = 5.0  # how long the parent collects the other ranks' errors after the first one


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pack(obj) -> bytes:
    """Serialize by value: tensors sent through a queue would otherwise be shared file descriptors that
    vanish when the worker exits."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)  # our own workers' results


class _Messages:
    """What a worker function gets to report progress with: ``messages.put(obj)``."""

    def __init__(self, queue, rank: int) -> None:
        self.queue, self.rank = queue, rank

    def put(self, obj) -> None:
        self.queue.put(("message", self.rank, _pack(obj)))


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
    except BaseException:  # report, so the parent fails loudly instead of waiting
        results.put(("error", rank, traceback.format_exc()))
        return
    try:
        out = fn(rank, world_size, *args, _Messages(results, rank))
    except BaseException:
        # Report before tearing the group down: closing this rank's connections makes the other ranks
        # fail too, and the parent must hear of this (the cause) as well as of those (the consequences).
        results.put(("error", rank, traceback.format_exc()))
        dist.destroy_process_group()
        return
    try:
        dist.destroy_process_group()
        payload = _pack(out)
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        return
    results.put(("result", rank, payload))


def _failure(errors: dict[int, str]) -> RuntimeError:
    """One error naming every rank that failed, in the order their reports arrived."""
    parts = [f"rank {rank} failed:\n{tb}" for rank, tb in errors.items()]
    return RuntimeError("\n".join(parts))


def launch(fn: Callable, world_size: int, args: tuple = (), timeout: float = 300.0,
           on_message: Callable[[object], None] | None = None) -> list:
    """Run ``fn(rank, world_size, *args, messages)`` in ``world_size`` gloo processes; return the results by rank.

    ``fn`` must be importable (defined at module level). It may call ``messages.put(obj)`` to report
    progress; the parent passes each ``obj`` to ``on_message``. Raises ``RuntimeError`` with the traceback
    of every worker that failed, in the order their reports arrived (one rank's failure often makes the
    others fail, so the parent waits a few seconds for their reports and shows them all), and
    ``TimeoutError`` (after stopping every process) if the job takes longer than ``timeout`` seconds.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, results), daemon=True)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    outputs: dict[int, object] = {}
    errors: dict[int, str] = {}
    grace_end = None  # once a rank fails, wait briefly for the others' reports: the first may be a consequence
    try:
        while len(outputs) + len(errors) < world_size:
            now = datetime.datetime.now()
            if grace_end is not None and now >= grace_end:
                break
            remaining = (deadline - now).total_seconds()
            if remaining <= 0:
                if errors:
                    break
                raise TimeoutError(f"data-parallel job did not finish within {timeout:.0f} s")
            try:
                kind, rank, payload = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and not errors:
                    raise RuntimeError(f"a worker died with exit code {dead[0].exitcode}") from None
                continue
            if kind == "error":
                errors[rank] = payload
                if grace_end is None:
                    grace_end = datetime.datetime.now() + datetime.timedelta(seconds=_ERROR_GRACE_S)
            elif kind == "message":
                if on_message is not None:
                    on_message(_unpack(payload))
            else:
                outputs[rank] = _unpack(payload)
        if errors:
            raise _failure(errors)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
    return [outputs[r] for r in range(world_size)]
