"""Hand-derived backward passes (normlib.manual, normlib.reference) and BatchNorm folding."""

import numpy as np
import pytest
import torch
from torch import nn as tnn

import normlib
import normlib.functional as F
import normlib.manual as M
from normlib import reference as R

CASES = {  # name: (call on (f, x, w, b), input shape, parameter shape)
    "batch_norm": (lambda f, x, w, b: f.batch_norm(x, None, None, w, b, training=True), (4, 6, 3, 3), (6,)),
    "batch_norm_1d": (lambda f, x, w, b: f.batch_norm(x, None, None, w, b, training=True), (8, 5), (5,)),
    "instance_norm": (lambda f, x, w, b: f.instance_norm(x, weight=w, bias=b), (3, 4, 5), (4,)),
    "layer_norm": (lambda f, x, w, b: f.layer_norm(x, [3, 3], w, b), (4, 6, 3, 3), (3, 3)),
    "group_norm": (lambda f, x, w, b: f.group_norm(x, 3, w, b), (4, 6, 3, 3), (6,)),
    "rms_norm": (lambda f, x, w, b: f.rms_norm(x, [6], w, eps=1e-5), (4, 5, 6), (6,)),
}


def _tensors(shape, pshape, dtype):
    x = (torch.randn(shape, dtype=dtype) * 2 + 1).requires_grad_()
    w = (torch.randn(pshape, dtype=dtype) + 1).requires_grad_()
    b = torch.randn(pshape, dtype=dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_float64(name):
    call, shape, pshape = CASES[name]
    x, w, b = _tensors(shape, pshape, torch.float64)
    if name == "rms_norm":
        assert torch.autograd.gradcheck(lambda x, w: call(M, x, w, None), (x, w))
    else:
        assert torch.autograd.gradcheck(lambda x, w, b: call(M, x, w, b), (x, w, b))


@pytest.mark.parametrize("name", CASES)
def test_agrees_with_autograd_through_functional_float32(name):
    call, shape, pshape = CASES[name]
    x, w, b = _tensors(shape, pshape, torch.float32)
    b = None if name == "rms_norm" else b
    inputs = [t for t in (x, w, b) if t is not None]
    y = call(M, x, w, b)
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    y_ref = call(F, *copies, *([None] if b is None else []))
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, copies, dy), strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


def test_eval_batch_norm_and_running_stats():
    rm, rv = torch.zeros(3), torch.ones(3)
    rm2, rv2 = rm.clone(), rv.clone()
    x = torch.randn(6, 3, 4) * 2 + 1
    torch.testing.assert_close(M.batch_norm(x, rm, rv, training=True), F.batch_norm(x, rm2, rv2, training=True))
    torch.testing.assert_close(rv, rv2)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: M.batch_norm(x, rm.double(), rv.double(), training=False), (x,))


def _count_saved(fn):
    """Number and total bytes of the tensors autograd saves for the backward of ``fn()``."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return len(saved), sum(saved)


def test_manual_saves_less_than_autograd():
    x = torch.randn(16, 32, 8, 8, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    _, manual_bytes = _count_saved(lambda: M.batch_norm(x, None, None, w, b, training=True))
    _, auto_bytes = _count_saved(lambda: F.batch_norm(x, None, None, w, b, training=True))
    assert manual_bytes <= x.numel() * 4 + 1024  # x_hat plus per-channel vectors
    assert auto_bytes > manual_bytes


# ----------------------------------------------------------------------- NumPy backward passes


def test_numeric_grad_and_rel_error_on_a_known_gradient():
    x, dy = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[1.0, 2.0], [-1.0, 0.5]])
    np.testing.assert_allclose(R.numeric_grad(lambda t: t**3, x.copy(), dy), 3 * x**2 * dy, rtol=1e-7)
    assert R.rel_error(x, x) == 0 and R.rel_error(1.0, 1.1) == pytest.approx(0.1 / 2.1)


NUMPY_CASES = {
    "batch_norm": (lambda x, g, b: R.batch_norm(x, g, b), lambda dy, x, g: R.batch_norm_backward(dy, x, g),
                   (5, 3, 2), (3,)),
    "layer_norm": (lambda x, g, b: R.layer_norm(x, (3, 2), g, b),
                   lambda dy, x, g: R.layer_norm_backward(dy, x, (3, 2), g), (4, 3, 2), (3, 2)),
    "instance_norm": (lambda x, g, b: R.instance_norm(x, g, b), lambda dy, x, g: R.instance_norm_backward(dy, x, g),
                      (3, 2, 4), (2,)),
    "group_norm": (lambda x, g, b: R.group_norm(x, 2, g, b), lambda dy, x, g: R.group_norm_backward(dy, x, 2, g),
                   (3, 4, 3), (4,)),
    "rms_norm": (lambda x, g, b: R.rms_norm(x, 4, g, eps=1e-6), lambda dy, x, g: R.rms_norm_backward(dy, x, 4, g),
                 (3, 4), (4,)),
}


@pytest.mark.parametrize("name", NUMPY_CASES)
def test_numpy_backward_matches_finite_differences(name):
    forward, backward, shape, pshape = NUMPY_CASES[name]
    rng = np.random.default_rng(0)
    x, dy = rng.normal(1, 2, shape), rng.normal(size=shape)
    gamma, beta = rng.normal(1, 0.5, pshape), rng.normal(size=pshape)
    grads = backward(dy, x, gamma)
    assert R.rel_error(grads[0], R.numeric_grad(lambda x: forward(x, gamma, beta), x.copy(), dy)) < 1e-6
    assert R.rel_error(grads[1], R.numeric_grad(lambda g: forward(x, g, beta), gamma.copy(), dy)) < 1e-6
    if name != "rms_norm":
        assert R.rel_error(grads[2], R.numeric_grad(lambda b: forward(x, gamma, b), beta.copy(), dy)) < 1e-6


# ----------------------------------------------------------------------------- Folding


@pytest.mark.parametrize("layer", [tnn.Linear(5, 4), tnn.Linear(5, 4, bias=False), tnn.Conv1d(3, 4, 3),
                                   tnn.Conv2d(3, 4, 3, bias=False), tnn.Conv3d(3, 4, 2), tnn.Conv2d(4, 4, 3, groups=2)])
@pytest.mark.parametrize("bn_cls", ["torch", "normlib"])
def test_fold_batchnorm_equals_layer_then_bn(layer, bn_cls):
    dims = {tnn.Linear: 1, tnn.Conv1d: 1, tnn.Conv2d: 2, tnn.Conv3d: 3}[type(layer)]
    name = f"BatchNorm{max(dims, 1)}d"
    bn = getattr(tnn if bn_cls == "torch" else normlib.nn, name)(4)
    in_ch = layer.weight.shape[1] * (layer.groups if hasattr(layer, "groups") else 1)
    shape = (8, in_ch) + (5,) * (0 if isinstance(layer, tnn.Linear) else dims)
    for _ in range(3):  # give the BatchNorm non-trivial running statistics
        bn(layer(torch.randn(shape) * 2 + 1))
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    folded = normlib.fold_batchnorm(layer, bn)
    assert type(folded) is type(layer) and folded.bias is not None
    x = torch.randn(shape)
    torch.testing.assert_close(folded(x), bn(layer(x)), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_errors():
    conv, bn = tnn.Conv2d(3, 4, 3), tnn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="training mode"):
        normlib.fold_batchnorm(conv, bn)
    with pytest.raises(ValueError, match="running statistics"):
        normlib.fold_batchnorm(conv, tnn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="output channels"):
        normlib.fold_batchnorm(conv, tnn.BatchNorm2d(5).eval())
    with pytest.raises(TypeError):
        normlib.fold_batchnorm(tnn.ReLU(), bn.eval())


def test_fold_batchnorms_in_a_model():
    model = tnn.Sequential(tnn.Conv2d(1, 6, 3, padding=1, bias=False), tnn.BatchNorm2d(6), tnn.ReLU(),
                           tnn.Sequential(tnn.Conv2d(6, 4, 3), normlib.nn.BatchNorm2d(4)), tnn.Flatten(),
                           tnn.Linear(4 * 6 * 6, 10), tnn.BatchNorm1d(10))
    for _ in range(3):
        model(torch.randn(16, 1, 8, 8))
    model.eval()
    folded = normlib.fold_batchnorms(model)
    assert not any(isinstance(m, (tnn.BatchNorm2d, tnn.BatchNorm1d, normlib.nn.BatchNorm2d)) for m in folded.modules())
    # the originals are untouched (normlib's BatchNorm2d is a torch.nn.BatchNorm2d too)
    assert sum(isinstance(m, tnn.BatchNorm2d) for m in model.modules()) == 2
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        normlib.fold_batchnorms(model.train())


def test_recalibrate_batchnorm_gives_the_batch_average_statistics():
    from normlib.lab.train import recalibrate_batchnorm

    model = tnn.Sequential(tnn.Linear(3, 4), normlib.nn.BatchNorm1d(4, momentum=0.3), tnn.ReLU(), tnn.BatchNorm1d(4))
    model.eval()
    x = torch.randn(64, 3) * 2 + 1
    recalibrate_batchnorm(model, x, batch_size=16)
    assert not model.training and model[1].momentum == 0.3
    h = model[0](x).detach()
    chunks = h.split(16)
    torch.testing.assert_close(model[1].running_mean, torch.stack([c.mean(0) for c in chunks]).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([c.var(0) for c in chunks]).mean(0))
    assert model[1].num_batches_tracked.item() == 4


def test_lenet_norm_placement():
    from normlib.lab.models import LeNet

    before = LeNet(conv_norm=tnn.BatchNorm2d)
    after = LeNet(conv_norm=tnn.BatchNorm2d, norm_after_activation=True)
    assert [type(m).__name__ for m in before.features[:3]] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in after.features[:3]] == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert before.features[0].bias is None and after.features[0].bias is not None
    assert after(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------- higher derivatives, torch.func, compile


@pytest.mark.parametrize("name", CASES)
def test_double_backward_is_exact(name):
    """The backward is itself differentiable: gradgradcheck, and forward mode (jvp) through gradcheck."""
    call, shape, pshape = CASES[name]
    x, w, b = _tensors((2, *shape[1:]) if len(shape) > 3 else shape, pshape, torch.float64)
    inputs = (x, w) if name == "rms_norm" else (x, w, b)
    fn = (lambda x, w: call(M, x, w, None)) if name == "rms_norm" else (lambda x, w, b: call(M, x, w, b))
    assert torch.autograd.gradgradcheck(fn, inputs)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True)


@pytest.mark.parametrize("name", CASES)
def test_torch_func_transforms_match_autograd(name):
    """vmap, grad, jacrev, jacfwd and hessian of the hand-derived Function equal those of normlib.functional."""
    from torch.func import grad, hessian, jacfwd, jacrev, vmap

    call, shape, pshape = CASES[name]
    x, w, b = (t.detach() for t in _tensors(shape, pshape, torch.float64))
    b = None if name == "rms_norm" else b

    def loss(lib):
        return lambda x: call(lib, x, w, b).sin().sum()

    for transform in (grad, jacrev):
        torch.testing.assert_close(transform(loss(M))(x), transform(loss(F))(x), atol=1e-12, rtol=1e-10)
    small = x[:2] if name.startswith("batch") else x[:1]
    torch.testing.assert_close(hessian(loss(M))(small), hessian(loss(F))(small), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(jacfwd(loss(M))(small), jacfwd(loss(F))(small), atol=1e-12, rtol=1e-10)
    xs = torch.stack([x, 2 * x + 1])
    torch.testing.assert_close(vmap(lambda t: call(M, t, w, b))(xs), vmap(lambda t: call(F, t, w, b))(xs))
    # per-sample gradients with batched parameters: vmap over grad
    ws = torch.stack([w, w + 0.5])
    per = vmap(grad(lambda w, x: call(M, x, w, b).square().sum()), in_dims=(0, None))(ws, x)
    ref = vmap(grad(lambda w, x: call(F, x, w, b).square().sum()), in_dims=(0, None))(ws, x)
    torch.testing.assert_close(per, ref)


def test_group_norm_compiles_for_a_second_shape():
    """A second (channels, groups) recompiles with dynamic shapes; that used to die in sympy ("BooleanAtom not
    allowed in this context") on a tuple comparison of symbolic booleans."""
    torch._dynamo.reset()
    compiled = torch.compile(M.group_norm, backend="aot_eager")
    for n, c, groups in ((4, 16, 4), (2, 32, 8), (3, 24, 24)):
        x = torch.randn(n, c, 5, 5, requires_grad=True)
        w, b = torch.randn(c, requires_grad=True), torch.randn(c, requires_grad=True)
        y = compiled(x, groups, w, b)
        torch.testing.assert_close(y, F.group_norm(x, groups, w, b), atol=1e-5, rtol=1e-5)
        y.sum().backward()
    torch._dynamo.reset()


def test_fold_keeps_requires_grad_and_takes_normlib_syncbatchnorm():
    conv = tnn.Conv2d(3, 4, 3)
    conv.requires_grad_(False)
    for bn in (normlib.nn.SyncBatchNorm(4), normlib.nn.BatchNorm2d(4), tnn.BatchNorm2d(4)):
        bn(torch.randn(4, 4, 3, 3))
        folded = normlib.fold_batchnorm(conv, bn.eval())
        assert not folded.weight.requires_grad and not folded.bias.requires_grad  # frozen stays frozen
        x = torch.randn(2, 3, 5, 5)
        torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    trainable = normlib.fold_batchnorm(tnn.Linear(3, 4, bias=False), tnn.BatchNorm1d(4).eval())
    assert trainable.weight.requires_grad and trainable.bias.requires_grad
    model = tnn.Sequential(tnn.Conv2d(3, 4, 3), normlib.nn.SyncBatchNorm(4)).eval()
    assert isinstance(normlib.fold_batchnorms(model)[1], tnn.Identity)
