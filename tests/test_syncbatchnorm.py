"""SyncBatchNorm across 2 and 3 gloo processes equals one BatchNorm on the concatenated batch."""

import pytest
import torch
import torch.distributed as dist
from torch import nn as tnn

import normlib.nn as N
from normlib.distributed import launch


def _global_data(sizes, shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((sum(sizes), *shape), generator=g, dtype=torch.float64) * 2 + 1
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w, b = torch.randn(shape[0], generator=g, dtype=torch.float64), torch.randn(shape[0], generator=g,
                                                                               dtype=torch.float64)
    return x, dy, w, b


def _sync_worker(rank, world_size, sizes, shape, seed, steps, messages):
    x_all, dy_all, w, b = _global_data(sizes, shape, seed)
    start = sum(sizes[:rank])
    layer = N.SyncBatchNorm(shape[0], momentum=0.3).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    outs = []
    for step in range(steps):
        x = (x_all[start:start + sizes[rank]] * (1 + step)).clone().requires_grad_()
        y = layer(x)
        y.backward(dy_all[start:start + sizes[rank]])
        outs.append((y.detach(), x.grad))
    return {"outs": outs, "running_mean": layer.running_mean, "running_var": layer.running_var,
            "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad}


@pytest.mark.parametrize("sizes,shape", [([3, 5], (4,)), ([1, 3], (4, 5)), ([2, 1, 4], (3, 2, 2)),
                                         ([1, 1, 1], (3,))])
def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(sizes, shape):
    steps = 2
    results = launch(_sync_worker, len(sizes), (sizes, shape, 0, steps), timeout=120)
    x_all, dy_all, w, b = _global_data(sizes, shape, 0)
    bn = tnn.BatchNorm1d(shape[0], momentum=0.3).double() if len(shape) < 3 else \
        tnn.BatchNorm2d(shape[0], momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    for step in range(steps):
        x = (x_all * (1 + step)).clone().requires_grad_()
        y = bn(x)
        y.backward(dy_all)
        torch.testing.assert_close(torch.cat([r["outs"][step][0] for r in results]), y.detach())
        torch.testing.assert_close(torch.cat([r["outs"][step][1] for r in results]), x.grad)
    for r in results:  # every rank holds the same running statistics
        torch.testing.assert_close(r["running_mean"], bn.running_mean)
        torch.testing.assert_close(r["running_var"], bn.running_var)
    # Parameter gradients stay local; their sum over ranks is the global one (DDP averages them).
    torch.testing.assert_close(sum(r["weight_grad"] for r in results), bn.weight.grad)
    torch.testing.assert_close(sum(r["bias_grad"] for r in results), bn.bias.grad)


def _failing_worker(rank, world_size, messages):
    if rank == 1:
        raise RuntimeError("boom")
    return rank


def _failing_while_the_other_waits(rank, world_size, messages):
    if rank == 1:
        raise RuntimeError("boom")
    dist.all_reduce(torch.ones(1))  # waits for rank 1, which is gone: fails or hangs
    return rank


@pytest.mark.parametrize("worker", [_failing_worker, _failing_while_the_other_waits])
def test_launch_reports_the_rank_that_failed_first(worker):
    # Rank 1's failure can make rank 0 fail too (its connections close); the cause must be in the error
    # whichever report reaches the parent first, and the parent must not wait for rank 0's timeout.
    with pytest.raises(RuntimeError, match=r"rank 1 failed:\n(.|\n)*RuntimeError: boom") as info:
        launch(worker, 2, timeout=60)
    assert str(info.value).count("failed:") in (1, 2)


def test_outside_a_process_group_it_is_batchnorm():
    sync, bn = N.SyncBatchNorm(3), tnn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)
    sync.eval()
    bn.eval()
    torch.testing.assert_close(sync(x), bn(x))
    assert repr(sync) == repr(tnn.SyncBatchNorm(3))
    assert list(sync.state_dict()) == list(tnn.SyncBatchNorm(3).state_dict())
    with pytest.raises(ValueError):
        sync(torch.randn(3))


def test_convert_sync_batchnorm_keeps_parameters_and_buffers():
    model = tnn.Sequential(tnn.Conv2d(1, 4, 3), tnn.BatchNorm2d(4), tnn.ReLU(),
                           tnn.Sequential(tnn.Flatten(), tnn.Linear(4, 4), N.BatchNorm1d(4, affine=False)),
                           N.GroupNorm(2, 4))
    for _ in range(3):
        model(torch.randn(8, 1, 3, 3))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    converted = N.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], N.SyncBatchNorm) and isinstance(converted[3][2], N.SyncBatchNorm)
    assert isinstance(converted[4], N.GroupNorm) and isinstance(converted[0], tnn.Conv2d)
    assert not converted[1].training and converted[3][2].weight is None
    assert converted[1].weight is weight  # shared, as torch's convert_sync_batchnorm does
    after = converted.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    x = torch.randn(5, 1, 3, 3)
    torch.testing.assert_close(converted(x), tnn.Sequential(*model.children())(x))


def _eval_alone_worker(rank, world_size, messages):
    """Rank 0 evaluates a SyncBatchNorm without running statistics; rank 1 never calls it."""
    torch.manual_seed(rank)
    out = {}
    if rank == 0:
        layer = N.SyncBatchNorm(3, track_running_stats=False).eval()
        x = torch.randn(4, 3, 2, 2)
        out["y"], out["want"] = layer(x), tnn.BatchNorm2d(3, track_running_stats=False).eval()(x)
    # In training it does synchronise, and its backward is once-differentiable: a second derivative raises.
    layer = N.SyncBatchNorm(3).train()
    x = torch.randn(2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    try:
        g.sum().backward()
        out["double_backward"] = "no error"
    except RuntimeError as e:
        out["double_backward"] = str(e)
    return out


def test_eval_does_not_synchronise_and_double_backward_raises():
    """torch synchronises only in training: a rank evaluating alone must neither wait for its peer nor see its
    data (with track_running_stats=False eval uses the local batch's statistics)."""
    results = launch(_eval_alone_worker, 2, timeout=60)
    torch.testing.assert_close(results[0]["y"], results[0]["want"])
    for r in results:
        assert "once_differentiable" in r["double_backward"]


def test_syncbatchnorm_is_a_batchnorm_and_rejects_zero_channels():
    from normlib.nn.batchnorm import _BatchNorm

    assert isinstance(N.SyncBatchNorm(3), _BatchNorm)
    with pytest.raises(ValueError, match="SyncBatchNorm number of input channels should be non-zero"):
        N.SyncBatchNorm(0)(torch.randn(2, 0, 3))
