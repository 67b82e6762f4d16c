"""Data-parallel experiments of the SyncBatchNorm lesson, on local gloo processes (:func:`normlib.distributed.launch`).

:func:`check_sync_batchnorm` compares SyncBatchNorm over several processes with one BatchNorm
over the whole batch; :func:`step_by_step` trains the same model for a few steps in one process and data
parallel (with SyncBatchNorm, and with per-process BatchNorm) and returns the states after every step.
"""

from __future__ import annotations

import torch

from normlib.distributed import launch


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


STEP_BY_STEP_VARIANTS = ("one process", "SyncBatchNorm", "per-process BatchNorm")


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, running mean and running variance of ``model``, each kind flattened into one vector."""
    norms = [m for m in model.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]
    return {"parameters": torch.cat([p.detach().flatten() for p in model.parameters()]).clone(),
            "running means": torch.cat([m.running_mean.flatten() for m in norms]).clone(),
            "running variances": torch.cat([m.running_var.flatten() for m in norms]).clone()}


def _lenet64(norm_2d, norm_1d, seed: int) -> torch.nn.Module:
    from normlib.lab.models import LeNet

    torch.manual_seed(seed)  # the same initial weights in every process and every variant
    return LeNet(conv_norm=norm_2d, fc_norm=norm_1d).double()


def _global_batches(world_size: int, per_rank_batch: int, steps: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The digits in float64 and, for each step, the indices of the global batch (rank r takes the r-th slice)."""
    from normlib.lab.data import digits

    x_tr, y_tr, _, _ = digits()
    global_batch = world_size * per_rank_batch
    if steps * global_batch > len(x_tr):
        raise ValueError(f"{steps} steps of {global_batch} samples need more than the {len(x_tr)} training digits")
    perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))
    return x_tr.double(), y_tr, perm[:steps * global_batch].reshape(steps, global_batch)


def _sgd_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batches, lr: float,
               snapshot_of: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    states = []
    for idx in batches:
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        states.append(_snapshot(snapshot_of))
    return states


def _step_by_step_worker(rank: int, world_size: int, per_rank_batch: int, steps: int, lr: float, seed: int,
                         messages) -> dict | None:
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    from normlib import nn as N

    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    x, y, batches = _global_batches(world_size, per_rank_batch, steps, seed)
    mine = batches[:, rank * per_rank_batch:(rank + 1) * per_rank_batch]
    out = {}
    for variant in ("SyncBatchNorm", "per-process BatchNorm"):
        model = _lenet64(N.BatchNorm2d, N.BatchNorm1d, seed)
        if variant == "SyncBatchNorm":
            model = N.SyncBatchNorm.convert_sync_batchnorm(model)
        # DDP averages the gradients over the processes and, before each forward, copies rank 0's buffers
        # (the running statistics) to the others.
        out[variant] = _sgd_steps(DistributedDataParallel(model), x, y, mine, lr, snapshot_of=model)
    return out if rank == 0 else None


def step_by_step(world_size: int = 2, per_rank_batch: int = 2, steps: int = 20, lr: float = 0.05,
                 seed: int = 0) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Train LeNet on the digits for ``steps`` SGD steps three ways, in float64, from the same weights and batches.

    - ``"one process"``: ``torch.nn.BatchNorm2d``/``BatchNorm1d`` on the global batch of
      ``world_size * per_rank_batch`` samples;
    - ``"SyncBatchNorm"``: DistributedDataParallel over ``world_size`` gloo processes, each holding
      ``per_rank_batch`` samples of that batch, with every BatchNorm converted to ``normlib.nn.SyncBatchNorm``;
    - ``"per-process BatchNorm"``: the same, with ``normlib.nn.BatchNorm2d``/``BatchNorm1d`` (each process
      normalizes over its own samples).

    Returns, for each variant, the state after each step (rank 0's for the data-parallel ones): a dict of
    flat float64 vectors ``"parameters"``, ``"running means"`` and ``"running variances"`` (every
    BatchNorm's, in model order).
    """
    x, y, batches = _global_batches(world_size, per_rank_batch, steps, seed)  # checks steps first
    model = _lenet64(torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, seed)
    single = _sgd_steps(model, x, y, batches, lr, snapshot_of=model)
    results = launch(_step_by_step_worker, world_size, (per_rank_batch, steps, lr, seed), timeout=300)
    return {"one process": single, **results[0]}


STEP_TIME_VARIANTS = ("SyncBatchNorm", "per-process BatchNorm")


def _step_time_worker(rank: int, world_size: int, per_rank_batch: int, steps: int, seed: int, messages) -> dict:
    import statistics
    import time
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from normlib import nn as N

    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    x, y, _ = _global_batches(world_size, per_rank_batch, 1, seed)
    x = x.float()
    gen = torch.Generator().manual_seed(seed + rank)
    models, optimizers = {}, {}
    for variant in STEP_TIME_VARIANTS:
        model = _lenet64(N.BatchNorm2d, N.BatchNorm1d, seed).float()
        if variant == "SyncBatchNorm":
            model = N.SyncBatchNorm.convert_sync_batchnorm(model)
        models[variant] = DistributedDataParallel(model)
        optimizers[variant] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    times: dict[str, list[float]] = {v: [] for v in STEP_TIME_VARIANTS}
    for step in range(steps + 5):  # the first 5 steps of each variant warm up and are not timed
        idx = torch.randint(len(x), (per_rank_batch,), generator=gen)
        order = STEP_TIME_VARIANTS if step % 2 == 0 else STEP_TIME_VARIANTS[::-1]
        for variant in order:
            dist.barrier()  # both processes start the step together
            start = time.perf_counter()
            loss = loss_fn(models[variant](x[idx]), y[idx])
            optimizers[variant].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[variant].step()
            if step >= 5:
                times[variant].append(time.perf_counter() - start)
    # one collective of the size SyncBatchNorm's forward sends for a layer of 16 channels, alone
    stats = torch.zeros(2 * 16 + 1)
    gathered = [torch.empty_like(stats) for _ in range(world_size)]
    collective = []
    for i in range(steps + 5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_gather(gathered, stats)
        if i >= 5:
            collective.append(time.perf_counter() - start)
    layers = sum(isinstance(m, N.SyncBatchNorm) for m in models["SyncBatchNorm"].modules())
    return {"step_s": times, "all_gather_s": collective, "sync_layers": layers,
            "median_step_s": {v: statistics.median(t) for v, t in times.items()}}


def step_times(world_size: int = 2, per_rank_batch: int = 16, steps: int = 200, seed: int = 0) -> dict:
    """Time training steps of the digits LeNet (float32) data-parallel, with and without SyncBatchNorm.

    ``world_size`` gloo processes each train two copies of the model under DistributedDataParallel, one
    with every BatchNorm converted to ``normlib.nn.SyncBatchNorm`` and one with per-process BatchNorm, on
    the same random batches of ``per_rank_batch`` samples, alternating the two step by step (so that a
    slow moment of the machine lands on both). Each step (forward, backward with DDP's gradient
    all-reduce, SGD update) starts after a barrier and is timed on rank 0; the first 5 are warm-up.
    Also times one ``all_gather`` of 33 numbers (a 16-channel layer's statistics) alone.

    Returns rank 0's ``{"step_s": {variant: [seconds per step]}, "all_gather_s": [...],
    "sync_layers": number of SyncBatchNorm layers, "median_step_s": {variant: median}}``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return launch(_step_time_worker, world_size, (per_rank_batch, steps, seed), timeout=300)[0]
