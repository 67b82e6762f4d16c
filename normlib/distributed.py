"""Running data-parallel jobs on one machine: processes joined by torch.distributed's gloo backend.

:func:`launch` starts ``world_size`` processes on localhost, runs a function in each and returns what
each returned, with a time limit. :func:`train_data_parallel` trains the lessons' LeNet that way, with
the norm layer of your choice, which is how the SyncBatchNorm lesson compares per-process BatchNorm,
SyncBatchNorm and GroupNorm. The same code runs across machines under ``torchrun``: only the
process-group initialization differs.
"""

from __future__ import annotations

import datetime
import io
import os
import queue as queue_module
import socket
import sys
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


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
        try:
            out = fn(rank, world_size, *args, _Messages(results, rank))
        finally:
            dist.destroy_process_group()
        results.put(("result", rank, _pack(out)))
    except BaseException:  # report, so the parent fails loudly instead of waiting
        results.put(("error", rank, traceback.format_exc()))


def launch(fn: Callable, world_size: int, args: tuple = (), timeout: float = 300.0,
           on_message: Callable[[object], None] | None = None) -> list:
    """Run ``fn(rank, world_size, *args, messages)`` in ``world_size`` gloo processes; return the results by rank.

    ``fn`` must be importable (defined at module level). It may call ``messages.put(obj)`` to report
    progress; the parent passes each ``obj`` to ``on_message``. Raises ``RuntimeError`` with the worker's
    traceback if one fails, and ``TimeoutError`` (after stopping every process) if the job takes longer
    than ``timeout`` seconds.
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
    try:
        while len(outputs) < world_size:
            remaining = (deadline - datetime.datetime.now()).total_seconds()
            if remaining <= 0:
                raise TimeoutError(f"data-parallel job did not finish within {timeout:.0f} s")
            try:
                kind, rank, payload = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker died with exit code {dead[0].exitcode}") from None
                continue
            if kind == "error":
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            if kind == "message":
                if on_message is not None:
                    on_message(_unpack(payload))
                continue
            outputs[rank] = _unpack(payload)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
    return [outputs[r] for r in range(world_size)]


# ------------------------------------------------------------------------------------------------
# Data-parallel training of the lessons' LeNet
# ------------------------------------------------------------------------------------------------

NORMS = ("batchnorm", "syncbatchnorm", "groupnorm")


def _make_lenet(norm: str):
    from normlib import nn as N
    from normlib.models import LeNet

    if norm == "groupnorm":
        return LeNet(conv_norm=lambda c: N.GroupNorm(2, c))
    model = LeNet(conv_norm=N.BatchNorm2d)
    if norm == "syncbatchnorm":
        model = N.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _train_worker(rank: int, world_size: int, norm: str, per_rank_batch: int, epochs: int, lr: float, seed: int,
                  messages) -> dict | None:
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    from normlib.data import digits
    from normlib.train import accuracy

    # A 1-channel conv weight's gradient has harmless odd strides; DDP would warn about it every run.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    x_tr, y_tr, x_te, y_te = digits()
    torch.manual_seed(seed)
    model = DistributedDataParallel(_make_lenet(norm))  # rank 0's initial weights are broadcast
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)  # the same on every rank: ranks take disjoint slices
    global_batch = per_rank_batch * world_size
    history: dict[str, list[float]] = {"loss": [], "test_acc": []}
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        for s in range(len(x_tr) // global_batch):
            idx = perm[s * global_batch + rank * per_rank_batch:s * global_batch + (rank + 1) * per_rank_batch]
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks
            opt.step()
            losses.append(loss.item())
        if rank == 0:
            model.eval()
            history["loss"].append(sum(losses) / len(losses))
            history["test_acc"].append(accuracy(model.module, x_te, y_te))
            messages.put((epoch, history["test_acc"][-1]))
    return history if rank == 0 else None


def train_data_parallel(norm: str, world_size: int = 2, per_rank_batch: int = 2, epochs: int = 3,
                        lr: float = 0.01, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Train LeNet on the digits with DistributedDataParallel over ``world_size`` local gloo processes.

    ``norm`` is ``"batchnorm"`` (each process normalizes with its own ``per_rank_batch`` samples),
    ``"syncbatchnorm"`` (statistics over the global batch of ``world_size * per_rank_batch``) or
    ``"groupnorm"``. Returns rank 0's per-epoch ``{"loss", "test_acc"}`` (test accuracy in eval mode).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    from tqdm import tqdm

    from normlib.train import BAR_FORMAT

    bar = tqdm(total=epochs, desc=f"{norm}, {world_size} processes", bar_format=BAR_FORMAT, disable=not progress,
               file=sys.stdout)
    try:
        results = launch(_train_worker, world_size, (norm, per_rank_batch, epochs, lr, seed),
                         on_message=lambda _: bar.update(1))
    finally:
        bar.close()
    return results[0]


def _check_worker(rank: int, world_size: int, sizes: list[int], channels: int, seed: int, messages) -> dict:
    from normlib.nn import SyncBatchNorm

    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn(sum(sizes), channels, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
    dy_all = torch.randn(x_all.shape, generator=g, dtype=torch.float64)
    start = sum(sizes[:rank])
    x = x_all[start:start + sizes[rank]].clone().requires_grad_()
    layer = SyncBatchNorm(channels).double()
    y = layer(x)
    y.backward(dy_all[start:start + sizes[rank]])
    return {"y": y.detach(), "dx": x.grad, "running_var": layer.running_var}


def check_sync_batchnorm(sizes: list[int], channels: int = 3, seed: int = 0) -> dict[str, float]:
    """Run SyncBatchNorm on ``len(sizes)`` processes holding ``sizes`` samples each; compare with one BatchNorm.

    Returns the largest absolute differences (outputs, input gradients, running variance) between the
    ranks' results, concatenated, and ``torch.nn.BatchNorm2d`` applied to the whole batch, in float64.
    """
    results = launch(_check_worker, len(sizes), (sizes, channels, seed), timeout=120)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(sum(sizes), channels, 4, 4, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(channels).double()
    y = bn(x)
    y.backward(dy)
    return {
        "output": (torch.cat([r["y"] for r in results]) - y).abs().max().item(),
        "input gradient": (torch.cat([r["dx"] for r in results]) - x.grad).abs().max().item(),
        "running_var": max((r["running_var"] - bn.running_var).abs().max().item() for r in results),
    }
