"""Data-parallel experiments of the SyncBatchNorm lesson, on local gloo processes (:func:`normlib.distributed.launch`).

:func:`train_data_parallel` trains the lessons' LeNet with DistributedDataParallel and the norm layer of
your choice; :func:`check_sync_batchnorm` compares SyncBatchNorm over several processes with one BatchNorm
over the whole batch.
"""

from __future__ import annotations

import sys

import torch

from normlib.distributed import launch

NORMS = ("batchnorm", "syncbatchnorm", "groupnorm")


def _make_lenet(norm: str):
    from normlib import nn as N
    from normlib.lab.models import LeNet

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

    from normlib.lab.data import digits
    from normlib.lab.train import accuracy

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

    from normlib.lab.train import BAR_FORMAT

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
