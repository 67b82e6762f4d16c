"""normlib.nn as a drop-in for torch.nn: PyTorch's own module inputs, state_dicts, reprs and errors."""

import copy

import pytest
import torch
from torch import nn as tnn

import normlib
import normlib.nn as N

NAMES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
         "LayerNorm", "GroupNorm", "RMSNorm"]


def _module_db_cases():
    from torch.testing._internal.common_modules import module_db

    return [info for info in module_db if info.module_cls.__name__ in NAMES]


MODULE_INFOS = _module_db_cases()


def test_module_db_covers_every_class():
    assert {info.module_cls.__name__ for info in MODULE_INFOS} == set(NAMES)


def _pair(info, module_input, dtype):
    """torch's module and ours from the same constructor input, ours loaded from torch's randomised state."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(dtype)
    ours = getattr(N, info.module_cls.__name__)(*args, **kwargs).to(dtype)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _context(where):
    """An assert_close message that says which input and step failed."""
    return lambda message: f"{where}: {message}"


def _inputs(module_input, dtype, step):
    """The module input, shifted and scaled differently at each step, as fresh leaf tensors."""
    return [(a.detach().to(dtype) * (1 + step) + step).requires_grad_() if isinstance(a, torch.Tensor) else a
            for a in module_input.forward_input.args]


@pytest.mark.parametrize("backend", ["torch", "manual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("info", MODULE_INFOS, ids=lambda i: i.module_cls.__name__)
def test_matches_torch_on_pytorch_module_inputs(info, dtype, backend):
    """Several training steps then evaluation: outputs, input and parameter gradients, and buffers agree.

    With the default backend (normlib.functional, autograd) and the "manual" one (hand-derived backward).
    """
    with normlib.use_backend(backend):
        _check_against_torch(info, dtype)


def _check_against_torch(info, dtype):
    tol = {"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    module_inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=True)
    assert module_inputs
    for module_input in module_inputs:
        ours, theirs = _pair(info, module_input, dtype)
        for step, training in enumerate([True, True, True, False]):
            ours.train(training)
            theirs.train(training)
            xs = _inputs(module_input, dtype, step)
            xs_t = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in xs]
            y, y_t = ours(*xs), theirs(*xs_t)
            torch.testing.assert_close(y, y_t, **tol, msg=_context(f"{module_input.desc} step {step}"))
            if y.requires_grad:
                dy = torch.randn_like(y)
                y.backward(dy)
                y_t.backward(dy)
                torch.testing.assert_close(xs[0].grad, xs_t[0].grad, **tol)
            for (name, b), (_, b_t) in zip(ours.named_buffers(), theirs.named_buffers(), strict=True):
                torch.testing.assert_close(b, b_t, **tol, msg=_context(f"{module_input.desc} {name}"))
        for (name, p), (_, p_t) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_t.grad, **tol, msg=_context(f"{module_input.desc} {name}.grad"))


CONSTRUCTORS = [
    ("BatchNorm1d", (5,), {}), ("BatchNorm2d", (5,), {"momentum": None}), ("BatchNorm3d", (5,), {"affine": False}),
    ("BatchNorm2d", (5,), {"track_running_stats": False}), ("BatchNorm2d", (5,), {"bias": False}),
    ("InstanceNorm1d", (5,), {}), ("InstanceNorm2d", (5,), {"affine": True, "track_running_stats": True}),
    ("InstanceNorm3d", (5,), {"affine": True}), ("LayerNorm", ((3, 4),), {}), ("LayerNorm", (4,), {"bias": False}),
    ("LayerNorm", ([4],), {"elementwise_affine": False}), ("GroupNorm", (2, 6), {}),
    ("GroupNorm", (3, 6), {"affine": False, "eps": 1e-3}), ("RMSNorm", ((3, 4),), {}),
    ("RMSNorm", (4,), {"eps": 1e-3, "elementwise_affine": False}),
]


@pytest.mark.parametrize("name,args,kwargs", CONSTRUCTORS)
def test_state_dict_and_repr_match(name, args, kwargs):
    ours, theirs = getattr(N, name)(*args, **kwargs), getattr(tnn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    sd, sd_t = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(sd_t)
    for k in sd:
        assert sd[k].dtype == sd_t[k].dtype and torch.equal(sd[k], sd_t[k]), k
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    for (k, v), (_, v_t) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(v, v_t), k


def test_momentum_none_is_cumulative_average():
    bn = N.BatchNorm1d(3, momentum=None)
    batches = [torch.randn(16, 3) * (i + 1) + i for i in range(4)]
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0))
    assert bn.num_batches_tracked.item() == 4


def test_momentum_is_the_weight_of_the_new_batch():
    bn = N.BatchNorm1d(2, momentum=0.25)
    x = torch.randn(10, 2)
    bn(x)
    torch.testing.assert_close(bn.running_mean, 0.25 * x.mean(0))
    torch.testing.assert_close(bn.running_var, 0.75 + 0.25 * x.var(0, unbiased=True))


def test_eval_uses_running_stats_and_without_them_batch_stats():
    x = torch.randn(8, 3, 4) * 2 + 5
    bn = N.BatchNorm1d(3).eval()
    torch.testing.assert_close(bn(x), x / (1 + bn.eps) ** 0.5)  # running mean 0, var 1 at start
    free = N.BatchNorm1d(3, track_running_stats=False).eval()
    assert free.running_mean is None and free.num_batches_tracked is None
    torch.testing.assert_close(free(x), tnn.functional.batch_norm(x, None, None, training=True))


def test_old_checkpoint_without_num_batches_tracked_loads():
    bn = N.BatchNorm2d(3)
    sd = bn.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    bn.load_state_dict(sd, strict=True)
    assert bn.num_batches_tracked.item() == 0


@pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (3, 7)), ("InstanceNorm2d", (3, 4, 5)),
                                        ("InstanceNorm3d", (3, 2, 3, 4))])
def test_unbatched_instance_norm(name, shape):
    ours, theirs = getattr(N, name)(3, affine=True, track_running_stats=True), getattr(tnn, name)(3, affine=True,
                                                                                               track_running_stats=True)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_instance_norm_channel_mismatch_warns_without_affine():
    with pytest.warns(UserWarning, match="does not match num_features"):
        N.InstanceNorm1d(3)(torch.randn(2, 4, 5))


BAD_INPUTS = [
    ("BatchNorm1d", (3,), {}, (2, 3, 4, 5)),  # wrong rank
    ("BatchNorm2d", (3,), {}, (2, 3, 4)),
    ("BatchNorm3d", (3,), {}, (2, 3, 4, 4)),
    ("BatchNorm2d", (3,), {}, (2, 4, 5, 5)),  # wrong channel count
    ("BatchNorm1d", (3,), {"affine": False}, (2, 4)),
    ("BatchNorm1d", (3,), {}, (1, 3)),  # one value per channel in training
    ("BatchNorm2d", (3,), {}, (1, 3, 1, 1)),
    ("InstanceNorm1d", (3,), {}, (2, 3, 4, 5)),
    ("InstanceNorm2d", (3,), {"affine": True}, (2, 4, 5, 5)),
    ("InstanceNorm1d", (3,), {}, (2, 3, 1)),  # one spatial element
    ("LayerNorm", (4,), {}, (2, 3)),
    ("GroupNorm", (2, 4), {}, (2, 6, 3)),
    ("GroupNorm", (2, 4), {}, (4,)),
]


@pytest.mark.parametrize("name,args,kwargs,shape", BAD_INPUTS)
def test_bad_input_raises_the_same_exception_type(name, args, kwargs, shape):
    x = torch.randn(shape)
    with pytest.raises(Exception) as want:
        getattr(tnn, name)(*args, **kwargs)(x)
    with pytest.raises(want.type):
        getattr(N, name)(*args, **kwargs)(x)


def test_group_norm_groups_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        N.GroupNorm(4, 6)


def test_deepcopy_and_eval_train_round_trip():
    bn = N.BatchNorm2d(4)
    bn(torch.randn(3, 4, 2, 2))
    clone = copy.deepcopy(bn)
    assert torch.equal(clone.running_mean, bn.running_mean)
    assert clone.num_batches_tracked.item() == 1


@pytest.mark.parametrize("backend", ["torch", "manual"])
def test_modules_work_under_torch_compile(backend):
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), N.BatchNorm2d(4), N.GroupNorm(2, 4), N.InstanceNorm2d(4),
                                N.LayerNorm([4, 4]), N.RMSNorm(4))
    reference = copy.deepcopy(model)
    x = torch.randn(4, 2, 6, 6)
    dy = torch.randn(4, 4, 4, 4)
    with normlib.use_backend(backend):
        compiled = torch.compile(model, fullgraph=True)
        y = compiled(x)
    y_ref = reference(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    grads = torch.autograd.grad(y, list(model.parameters()), dy)
    grads_ref = torch.autograd.grad(y_ref, list(reference.parameters()), dy)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref)
