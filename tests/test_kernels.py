"""normlib.kernels against normlib.functional and torch: on a GPU when there is one, else in Triton's interpreter.

The interpreter runs the same kernel code on CPU tensors, one program at a time: slow, so the shapes are
small, but it checks every kernel's arithmetic, forward and backward. On a GPU the same tests also cover
every dtype the kernels serve (float32, bfloat16, float16), odd row widths, rows of one and sets larger
than a kernel's block, against torch (``NORMLIB_KERNEL_TESTS=full`` asks for that scope in the interpreter
too: it takes several minutes there).
"""

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton.jit sees the kernels
triton = pytest.importorskip("triton", reason="triton is in requirements.txt; without it there are no kernels")

import normlib  # noqa: E402
import normlib.functional as F  # noqa: E402
from normlib import kernels as K  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
FULL = ON_GPU or os.environ.get("NORMLIB_KERNEL_TESTS") == "full"
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if FULL else [torch.float32]
# How far a kernel's result may be from torch's float64 result on the same (rounded) inputs, in units of the
# dtype's epsilon, relative to each value plus the largest one: a half-precision result is rounded once from
# float32 (one unit, doubled for the float32 arithmetic before it); float32 results carry the float32 sums.
# Compared with float64, not with torch in the same dtype: torch's CPU bfloat16 LayerNorm sums its parameter
# gradients less accurately than the kernels do (errors of several units).
UNITS = {torch.float32: 64, torch.bfloat16: 2, torch.float16: 2}
# Rows: one element, rows of one, widths that are not powers of two (masked tails), wide rows.
ROWS = [(1, 1), (1, 4097), (7, 33), (64, 1000), (3, 5, 4096), (2, 16387)] if FULL else [(1, 7), (3, 33)]
# Sets (shape, groups): a batch of one, odd spatial sizes, one group, one channel per group, and sets of
# several thousand values, visited in chunks of the kernel's block.
GROUPS = ([((1, 4, 7, 7), 2), ((3, 6, 33, 33), 3), ((2, 64, 9, 9), 64), ((2, 8, 65, 65), 1), ((5, 6), 2)]
          if FULL else [((1, 4, 3, 3), 2)])
BATCHES = [(1, 5, 7, 7), (5, 3), (2, 7, 33, 33), (3, 4, 1000)] if FULL else [(1, 3, 2, 3)]


def _compare(kernel_fn, reference_fn, *tensors, atol=1e-5, rtol=1e-4):
    a = [t.detach().clone().to(DEVICE).requires_grad_(t.requires_grad) for t in tensors]
    b = [t.detach().clone().to(DEVICE).requires_grad_(t.requires_grad) for t in tensors]
    y, y_ref = kernel_fn(*a), reference_fn(*b)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    for t, t_ref in zip(a, b, strict=True):
        if t.requires_grad:
            torch.testing.assert_close(t.grad, t_ref.grad, atol=atol * 10, rtol=rtol * 10)


def _param(*shape):
    return torch.randn(*shape).requires_grad_()


@pytest.mark.parametrize("shape,normalized", [((6, 40), [40]), ((2, 3, 7), [7]), ((3, 2, 4, 4), [2, 4, 4])])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(shape, normalized, affine):
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    w, b = (_param(*normalized), _param(*normalized)) if affine else (None, None)
    tensors = [t for t in (x, w, b) if t is not None]

    def call(lib):
        return lambda *ts: lib.layer_norm(ts[0], normalized, *(ts[1:] if affine else ()))

    _compare(call(K), call(F), *tensors)


@pytest.mark.parametrize("shape,normalized", [((5, 33), [33]), ((2, 3, 16), [16])])
def test_rms_norm(shape, normalized):
    _compare(lambda x, w: K.rms_norm(x, normalized, w), lambda x, w: F.rms_norm(x, normalized, w),
             (torch.randn(shape) * 2).requires_grad_(), _param(*normalized))


@pytest.mark.parametrize("shape,groups", [((3, 8, 5, 5), 4), ((2, 6, 7), 3), ((2, 4, 3, 3), 1), ((4, 6), 6)])
def test_group_norm(shape, groups):
    c = shape[1]
    _compare(lambda x, w, b: K.group_norm(x, groups, w, b), lambda x, w, b: F.group_norm(x, groups, w, b),
             (torch.randn(shape) * 2 + 1).requires_grad_(), _param(c), _param(c))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (8, 5), (3, 4, 6)])
def test_batch_norm_training_and_running_stats(shape):
    c = shape[1]
    rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    rm2, rv2 = rm.clone(), rv.clone()
    _compare(lambda x, w, b: K.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3),
             lambda x, w, b: F.batch_norm(x, rm2, rv2, w, b, training=True, momentum=0.3),
             (torch.randn(shape) * 2 + 1).requires_grad_(), _param(c), _param(c))
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


def test_dropout_mask_is_regenerated_in_the_backward():
    x = torch.randn(20_000, device=DEVICE, requires_grad=True)
    torch.manual_seed(0)
    y = K.dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.3) < 5 * (0.3 * 0.7 / 20_000) ** 0.5
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.7)
    assert torch.equal(x.grad == 0, dropped)  # the same mask, though none was stored
    torch.manual_seed(0)
    assert torch.equal(K.dropout(x.detach(), 0.3), y.detach())  # reproducible under torch.manual_seed
    assert torch.equal(K.dropout(x, 0.3, training=False), x)


def test_the_triton_backend_routes_normlib_nn_through_the_kernels(monkeypatch):
    calls = []
    original = K.layer_norm
    monkeypatch.setattr(K, "layer_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = normlib.nn.LayerNorm(8).to(DEVICE)
    x = torch.randn(4, 8, device=DEVICE)
    with normlib.use_backend("triton"):
        y = layer(x)
    assert calls and normlib.get_backend() == "torch"
    torch.testing.assert_close(y, layer(x))
    with pytest.raises(ValueError):
        normlib.set_backend("cuda")


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "group_norm", "batch_norm"])
def test_float64_is_computed_in_float64(name):
    x = (torch.randn(4, 6, 5, dtype=torch.float64) * 3 + 2).to(DEVICE)
    calls = {"layer_norm": lambda f: f.layer_norm(x, [5]), "rms_norm": lambda f: f.rms_norm(x, [5]),
             "group_norm": lambda f: f.group_norm(x, 3), "batch_norm": lambda f: f.batch_norm(x, None, None, None,
                                                                                               None, True)}
    y = calls[name](K)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, calls[name](torch.nn.functional), atol=1e-12, rtol=1e-12)  # float32 is ~1e-7


def test_second_derivatives_are_exact():
    """With create_graph the backward differentiates the tensor-op forward: gradgradcheck holds (the kernels'
    own numbers would be constants to a second derivative), and dropout's backward is itself a dropout."""
    x = torch.randn(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: K.layer_norm(x, [3], w, w), (x, w))
    y = torch.randn(1000, device=DEVICE, requires_grad=True)
    out = K.dropout(y, 0.3)
    (g,) = torch.autograd.grad(out.square().sum(), y, create_graph=True)
    g.sum().backward()  # d/dy sum(2 * out * mask / 0.7) = 2 * mask / 0.49
    torch.testing.assert_close(y.grad, 2 * (out != 0).float() / 0.49)


def test_long_rows_and_empty_input_use_normlib_functional():
    x = torch.randn(2, 2, 256, 129, device=DEVICE)  # rows of 66,048 elements, over MAX_ROW
    assert 256 * 129 * 2 > K.MAX_ROW
    layer = normlib.nn.LayerNorm([2, 256, 129]).to(DEVICE)
    with normlib.use_backend("triton"):
        y = layer(x)
        assert torch.equal(K.rms_norm(torch.zeros(0, 8, device=DEVICE), [8]), torch.zeros(0, 8, device=DEVICE))
    torch.testing.assert_close(y, F.layer_norm(x, [2, 256, 129], layer.weight, layer.bias))


# --- every dtype, against torch -------------------------------------------------------------------------------


def _run(fn, tensors, dy):
    """``fn``'s output and the gradients of its inputs that require them, after ``backward(dy)``."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    y = fn(*leaves)
    y.backward(dy)
    return y, [t.grad for t in leaves if t.requires_grad]


def _assert_near(got, want, dtype, what):
    """``got`` (in ``dtype``) within UNITS[dtype] epsilons of the float64 ``want``, relative to each value and
    to the largest."""
    assert got.dtype == dtype, what
    tol = UNITS[dtype] * torch.finfo(dtype).eps
    err = (got.double() - want).abs()
    bound = tol * (want.abs() + want.abs().max()) + 1e-12  # where every value is 0, float64's own rounding
    assert (err <= bound).all(), f"{what}: off by {err.max().item():.3g} (allowed {tol:.2g} x (|value| + max))"


def _against_torch(kernel_fn, torch_fn, *tensors):
    """The kernel's output and every input and parameter gradient, in the tensors' dtype, against torch's in
    float64 on the same values."""
    dtype = tensors[0].dtype
    dy = torch.randn_like(tensors[0], requires_grad=False)  # every norm's output has its input's shape
    y, grads = _run(kernel_fn, tensors, dy)
    y_ref, grads_ref = _run(torch_fn, [t.double() for t in tensors], dy.double())
    _assert_near(y, y_ref, dtype, "output")
    assert len(grads) == len(grads_ref) == len(tensors)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        _assert_near(g, g_ref, dtype, f"gradient of input {i}")


def _tensor(*shape, dtype, scale=2.0, shift=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale + shift).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROWS, ids=str)
def test_row_kernels_against_torch(shape, dtype):
    n = shape[-1]
    x, w, b = _tensor(*shape, dtype=dtype), _tensor(n, dtype=dtype), _tensor(n, dtype=dtype)
    _against_torch(lambda x, w, b: K.layer_norm(x, [n], w, b),
                   lambda x, w, b: torch.nn.functional.layer_norm(x, [n], w, b), x, w, b)
    _against_torch(lambda x, w: K.rms_norm(x, [n], w), lambda x, w: torch.nn.functional.rms_norm(x, [n], w), x, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", GROUPS, ids=str)
def test_group_norm_against_torch(shape, groups, dtype):
    c = shape[1]
    _against_torch(lambda x, w, b: K.group_norm(x, groups, w, b),
                   lambda x, w, b: torch.nn.functional.group_norm(x, groups, w, b),
                   _tensor(*shape, dtype=dtype), _tensor(c, dtype=dtype), _tensor(c, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BATCHES, ids=str)
def test_batch_norm_and_its_running_statistics_against_torch(shape, dtype):
    c = shape[1]
    running = {"ours": (torch.zeros(c, device=DEVICE, dtype=dtype), torch.ones(c, device=DEVICE, dtype=dtype))}
    running["torch"] = tuple(t.double() for t in running["ours"])
    _against_torch(lambda x, w, b: K.batch_norm(x, *running["ours"], w, b, training=True, momentum=0.3),
                   lambda x, w, b: torch.nn.functional.batch_norm(x, *running["torch"], w, b, training=True,
                                                                  momentum=0.3),
                   _tensor(*shape, dtype=dtype), _tensor(c, dtype=dtype), _tensor(c, dtype=dtype))
    for ours, theirs, name in zip(running["ours"], running["torch"], ("running_mean", "running_var"), strict=True):
        _assert_near(ours, theirs, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_in_every_dtype(dtype):
    x = torch.randn(4099, device=DEVICE).to(dtype).requires_grad_()
    y = K.dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert y.dtype == x.grad.dtype == dtype
    # one rounding from float32 (the interpreter rounds bfloat16 towards zero, a GPU to nearest), after a
    # float32 division that a GPU may compute to 2 units in the last place
    rtol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(y[kept], (x[kept].float() / 0.75).to(dtype), atol=0, rtol=rtol)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75), atol=0, rtol=rtol)
    assert torch.equal(x.grad == 0, ~kept)  # the mask regenerated from the seed is the forward's
    assert abs((~kept).float().mean().item() - 0.25) < 5 * (0.25 * 0.75 / 4099) ** 0.5
