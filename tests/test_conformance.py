"""The conformance matrix: every normlib.nn module against its torch.nn namesake, case by case.

Each module is run, next to torch's, through a *history*: two training steps with a backward each, an evaluation
step, then a state_dict round trip both ways (normlib's state into a fresh torch module and torch's into a fresh
normlib module) and one more training step on each. At every step the outputs (values, dtype and memory layout),
the input gradients and the buffers must agree, and at the end the parameter gradients. The history runs over

- dtypes: float64, float32, float16, bfloat16 and mixed (a float32 module fed bfloat16 input);
- layouts: contiguous, channels_last (4-D and 5-D input) and a strided view;
- backends: ``torch`` (normlib.functional), ``manual`` (hand-derived backward) and ``triton`` (the kernels, in
  Triton's interpreter on a CPU, which is slow: that backend runs a diagonal of dtypes and layouts and a
  shorter history).

The transforms (``torch.compile`` with a second input shape, ``torch.func.vmap`` and double backward through a
gradient penalty) run over module x backend; errors compare exception type and message; and a ResNet-18-shaped
network with normlib's norms, loaded from torch's state_dict, trains a few steps in float64 equal to torch's.
What normlib deliberately does differently is listed in ``normlib.nn``'s docstring.
"""

import copy
import os

import pytest
import torch
from torch import nn as tnn

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before normlib.kernels is imported (see tests/test_kernels.py)

import normlib  # noqa: E402
import normlib.nn as N  # noqa: E402

HAS_TRITON = True
try:
    import normlib.kernels  # noqa: E402, F401
except ImportError:  # pragma: no cover - triton is in requirements.txt
    HAS_TRITON = False

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "manual", "triton"]

# name, constructor args, constructor kwargs, input shape
SPECS = [
    ("BatchNorm1d", (3,), {}, (5, 3)),
    ("BatchNorm1d", (3,), {"momentum": None}, (4, 3, 5)),
    ("BatchNorm2d", (3,), {}, (3, 3, 4, 4)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, (3, 3, 4, 4)),
    ("BatchNorm2d", (3,), {"affine": False, "momentum": 0.3}, (2, 3, 3, 5)),
    ("BatchNorm3d", (2,), {"bias": False}, (2, 2, 2, 3, 3)),
    ("SyncBatchNorm", (3,), {}, (3, 3, 4, 4)),
    ("InstanceNorm1d", (3,), {"affine": True, "track_running_stats": True}, (2, 3, 6)),
    ("InstanceNorm2d", (3,), {}, (2, 3, 4, 4)),
    ("InstanceNorm2d", (3,), {"affine": True}, (3, 4, 5)),  # unbatched
    ("InstanceNorm3d", (2,), {"affine": True, "track_running_stats": True}, (2, 2, 2, 3, 3)),
    ("LayerNorm", ([4, 4],), {}, (2, 3, 4, 4)),
    ("LayerNorm", (5,), {"bias": False}, (3, 2, 5)),
    ("GroupNorm", (2, 4), {}, (2, 4, 3, 3)),
    ("GroupNorm", (4, 4), {"affine": False}, (2, 4, 5)),
    ("RMSNorm", ([4],), {}, (3, 2, 4)),
    ("RMSNorm", ((3, 4),), {"eps": 1e-6}, (2, 3, 4)),
]
# The ones the triton backend runs in its kernels (the rest, and BatchNorm in eval, use normlib.functional).
KERNEL_NAMES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm", "RMSNorm"}

DTYPES = {  # case: (module dtype, input dtype)
    "float64": (torch.float64, torch.float64),
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float16),
    "bfloat16": (torch.bfloat16, torch.bfloat16),
    "mixed": (torch.float32, torch.bfloat16),
}
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (3e-5, 3e-5), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: torch's thread pool costs far more than the work (90 ms a call on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec_id(spec):
    name, args, kwargs, shape = spec
    extra = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({','.join(map(str, args))}{',' + extra if extra else ''}){'x'.join(map(str, shape))}"


def _layouts(shape):
    return ["contiguous", "channels_last", "strided"] if len(shape) in (4, 5) else ["contiguous", "strided"]


def _matrix():
    """(spec, dtype, layout, backend): everything for torch and manual; a diagonal for triton."""
    cases = []
    for spec in SPECS:
        layouts = _layouts(spec[3])
        for backend in BACKENDS:
            if backend == "triton" and spec[0] not in KERNEL_NAMES:
                continue
            for i, dtype in enumerate(DTYPES):
                pairs = [(dtype, layout) for layout in layouts]
                if backend == "triton":  # one layout per dtype, cycling
                    pairs = [(dtype, layouts[i % len(layouts)])]
                cases += [pytest.param(spec, d, lay, backend, id=f"{_spec_id(spec)}-{d}-{lay}-{backend}")
                          for d, lay in pairs]
    return cases


def _device(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def _input(shape, dtype, layout, seed, device="cpu", requires_grad=True):
    """A deterministic input in the given layout, as a leaf (a strided view stays a non-contiguous leaf)."""
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(shape, generator=g, dtype=torch.float64) * (1 + seed % 3) + seed % 5).to(dtype)
    if layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = values.to(device).contiguous(memory_format=fmt)
    elif layout == "strided":
        big = torch.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype, device=device)
        big[..., ::2] = values.to(device)
        x = big[..., ::2]
        assert not x.is_contiguous()
    else:
        x = values.to(device)
    return x.detach().requires_grad_(requires_grad)


def _layout_of(t):
    return t.is_contiguous(), t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last), \
        t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def _pair(name, args, kwargs, dtype, device="cpu", seed=0):
    """torch's module with random parameters and running statistics, and normlib's loaded from its state."""
    theirs = getattr(tnn, name)(*args, **kwargs).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5 + 1).to(p))
        for key, b in theirs.named_buffers():
            if key.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64).to(b))
            elif key.endswith("running_var"):
                b.copy_((torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5).to(b))
    ours = getattr(N, name)(*args, **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _close(got, want, what, tol_dtype=None):
    """Equal to the dtype's tolerance; for half-precision gradients (sums of rounded values) relative to the
    largest value, since torch accumulates some of them in the half dtype itself."""
    atol, rtol = TOL[tol_dtype or want.dtype]
    if tol_dtype in (torch.float16, torch.bfloat16) and want.numel():
        atol *= max(1.0, want.detach().abs().max().item())
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _compare_buffers(ours, theirs, what):
    for (name, b), (name_t, b_t) in zip(ours.named_buffers(), theirs.named_buffers(), strict=True):
        assert name == name_t
        if b.dtype == torch.long:
            assert torch.equal(b, b_t), f"{what} {name}"
        else:
            _close(b, b_t, f"{what} {name}")


def _step(ours, theirs, x_args, training, backward, what, grad_dtype):
    """One forward (and backward) of both modules on equal inputs; compare outputs and input gradients."""
    ours.train(training)
    theirs.train(training)
    x, x_t = _input(*x_args), _input(*x_args)
    y, y_t = ours(x), theirs(x_t)
    _close(y, y_t, f"{what} output")
    assert y.dtype == y_t.dtype and _layout_of(y) == _layout_of(y_t), f"{what}: output dtype or layout"
    if backward:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(y)
        y.backward(dy)
        y_t.backward(dy)
        _close(x.grad, x_t.grad, f"{what} input grad", grad_dtype)
        assert _layout_of(x.grad) == _layout_of(x_t.grad), f"{what}: input grad layout"
    _compare_buffers(ours, theirs, what)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # torch's RMSNorm on a mix
@pytest.mark.parametrize("spec,dtype,layout,backend", _matrix())
def test_history_matches_torch(spec, dtype, layout, backend):
    name, args, kwargs, shape = spec
    module_dtype, input_dtype = DTYPES[dtype]
    device = _device(backend)
    if input_dtype in (torch.float16, torch.bfloat16):  # backward sums of half values: compare at a looser level
        grad_dtype = torch.bfloat16 if input_dtype == torch.bfloat16 else torch.float16
    else:
        grad_dtype = None
    steps = [(True, True), (False, False)] if backend == "triton" else [(True, True), (True, True), (False, True)]
    with normlib.use_backend(backend):
        ours, theirs = _pair(name, args, kwargs, module_dtype, device)
        for step, (training, backward) in enumerate(steps):
            _step(ours, theirs, (shape, input_dtype, layout, step, device), training, backward,
                  f"step {step} ({'train' if training else 'eval'})", grad_dtype)
        if steps[0][1]:
            for (p_name, p), (_, p_t) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
                _close(p.grad, p_t.grad, f"{p_name}.grad", grad_dtype or p_t.dtype)
        # The state_dict history: each side's state loads into a fresh module of the other, which then trains on.
        fresh_t = getattr(tnn, name)(*args, **kwargs).to(device=device, dtype=module_dtype)
        fresh_o = getattr(N, name)(*args, **kwargs).to(device=device, dtype=module_dtype)
        fresh_t.load_state_dict(ours.state_dict(), strict=True)
        fresh_o.load_state_dict(theirs.state_dict(), strict=True)
        for a, b, what in ((fresh_o, theirs, "torch state in normlib"), (ours, fresh_t, "normlib state in torch")):
            if backend != "triton" or a is ours:
                _step(a, b, (shape, input_dtype, layout, 9, device), True, False, what, grad_dtype)


# ------------------------------------------------------------------------------------------------- dropout

DROPOUTS = [("Dropout", (3, 4, 5)), ("Dropout1d", (3, 4, 5)), ("Dropout2d", (3, 4, 3, 3)),
            ("Dropout3d", (2, 3, 2, 3, 3)), ("AlphaDropout", (4, 6, 5)), ("FeatureAlphaDropout", (3, 4, 3, 3))]


def _dropout_cases():
    cases = []
    for name, shape in DROPOUTS:
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            for layout in _layouts(shape):
                for backend in BACKENDS:
                    if backend == "triton" and (name != "Dropout" or dtype in ("float16", "bfloat16")):
                        continue
                    cases.append(pytest.param(name, shape, dtype, layout, backend,
                                              id=f"{name}-{dtype}-{layout}-{backend}"))
    return cases


@pytest.mark.parametrize("name,shape,dtype,layout,backend", _dropout_cases())
def test_dropout_matches_torch(name, shape, dtype, layout, backend):
    """Same seed, same masks (the triton kernel draws its own: there the mask's effect is checked instead)."""
    dt = DTYPES[dtype][1]
    device = _device(backend)
    with normlib.use_backend(backend):
        for inplace in (False, True):
            x, x_t = _input(shape, dt, layout, 1, device), _input(shape, dt, layout, 1, device)
            a, b = (x.clone(), x_t.clone()) if inplace else (x, x_t)  # in place needs a non-leaf
            torch.manual_seed(5)
            y = getattr(N, name)(0.4, inplace=inplace).train()(a)
            torch.manual_seed(5)
            y_t = getattr(tnn, name)(0.4, inplace=inplace).train()(b)
            assert (y.data_ptr() == a.data_ptr()) == (y_t.data_ptr() == b.data_ptr()), "in place or not, as torch"
            assert y.dtype == y_t.dtype and _layout_of(y) == _layout_of(y_t)
            dy = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(y)
            y.backward(dy)
            y_t.backward(dy)
            if backend == "triton":
                kept = y.detach() != 0
                _close(y.detach()[kept], (x.detach() / 0.6)[kept], "kept values scaled")
                _close(x.grad, torch.where(kept, dy / 0.6, 0), "gradient through the same mask")
            else:
                _close(y, y_t, "output")
                _close(x.grad, x_t.grad, "input grad")
            for module in (getattr(N, name)(0.4).eval(), getattr(N, name)(0.0)):
                assert module(x) is x or torch.equal(module(x), x)


# ---------------------------------------------------------------------------------------------- transforms

CHAIN = [  # one of each kind of norm, on (N, 4, 3, 3)
    ("BatchNorm2d", (4,), {}), ("GroupNorm", (2, 4), {}), ("InstanceNorm2d", (4,), {"affine": True,
                                                                                 "track_running_stats": True}),
    ("LayerNorm", ([3, 3],), {}), ("SyncBatchNorm", (4,), {"momentum": None}), ("RMSNorm", ([3],), {}),
    ("Dropout2d", (0.3,), {}), ("AlphaDropout", (0.2,), {}),
]


def _chain_pair():
    """The chain from torch's modules (random affine parameters) and from normlib's, loaded from its state."""
    def build(lib):
        return tnn.Sequential(*(getattr(lib, name)(*a, **k) if isinstance(name, str) else name(*a, **k)
                                for name, a, k in CHAIN)).double()

    theirs = build(tnn)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours = build(N)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_with_a_second_shape_matches_torch(backend):
    """torch.compile (aot_eager: dynamo and AOT autograd, without code generation) of each kind of norm, fed a
    second batch size, which recompiles with dynamic shapes: training steps with running statistics, then eval.
    (The triton backend hands the work to normlib.functional under compile; inductor is tested in test_nn.)"""
    torch._dynamo.reset()
    ours, theirs = _chain_pair()
    compiled = torch.compile(ours, backend="aot_eager")
    with normlib.use_backend(backend):
        for step, (n, training) in enumerate([(2, True), (3, True), (5, True), (4, False)]):
            ours.train(training)
            theirs.train(training)
            shape = (n, 4, 3, 3)
            x, x_t = _input(shape, torch.float64, "contiguous", step), _input(shape, torch.float64, "contiguous", step)
            torch.manual_seed(step)  # the same dropout masks on both sides
            y = compiled(x)
            torch.manual_seed(step)
            y_t = theirs(x_t)
            _close(y, y_t, f"step {step} output")
            y.backward(torch.ones_like(y).mul_(0.3).cumsum_(-1))
            y_t.backward(torch.ones_like(y_t).mul_(0.3).cumsum_(-1))
            _close(x.grad, x_t.grad, f"step {step} input grad")
            _compare_buffers(ours, theirs, f"step {step}")
    for (name, p), (_, p_t) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        _close(p.grad, p_t.grad, f"{name}.grad")
    torch._dynamo.reset()


def _vmap_case(lib, name, args, kwargs, shape, training, backend):
    """torch.func.vmap of the module over an extra leading dim: the output, or the exception's type and text."""
    from torch.func import vmap

    module = getattr(lib, name)(*args, **kwargs).double().train(training)
    xs = torch.stack([_input(shape, torch.float64, "contiguous", s, requires_grad=False) for s in range(2)])
    try:
        with normlib.use_backend(backend):
            return vmap(module, randomness="same")(xs)
    except Exception as e:  # noqa: BLE001 - compared with torch's
        return type(e), str(e)


DROPOUT_SPECS = [(name, (0.4,), {}, shape) for name, shape in DROPOUTS]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS + DROPOUT_SPECS, ids=_spec_id)
def test_vmap_matches_torch(spec, backend):
    name, args, kwargs, shape = spec
    for training in (True, False):
        got, want = [], []
        for lib, results in ((N, got), (tnn, want)):
            torch.manual_seed(4)  # dropout: the same masks (under vmap the triton backend uses normlib.functional)
            results.append(_vmap_case(lib, name, args, kwargs, shape, training, backend))
        got, want = got[0], want[0]
        if isinstance(want, tuple):
            assert got == want
        else:
            _close(got, want, f"vmap ({'train' if training else 'eval'})")


def _gradient_penalty(module, x):
    """A WGAN-GP style penalty: the squared norm of d(sum(r * module(x)))/dx, itself differentiated."""
    y = module(x)
    r = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (g,) = torch.autograd.grad((y * r).sum(), x, create_graph=True)
    penalty = g.square().sum() + (y * y).mean()
    return penalty, torch.autograd.grad(penalty, [x, *module.parameters()])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_double_backward_matches_torch(spec, backend):
    name, args, kwargs, shape = spec
    device = _device(backend)
    with normlib.use_backend(backend):
        for training in (True, False):
            ours, theirs = _pair(name, args, kwargs, torch.float64, device)
            ours.train(training)
            theirs.train(training)
            x, x_t = _input(shape, torch.float64, "contiguous", 3, device), \
                _input(shape, torch.float64, "contiguous", 3, device)
            (p, grads), (p_t, grads_t) = _gradient_penalty(ours, x), _gradient_penalty(theirs, x_t)
            _close(p, p_t, "penalty")
            for i, (g, g_t) in enumerate(zip(grads, grads_t, strict=True)):
                _close(g, g_t, f"gradient of the penalty, input {i}")


@pytest.mark.parametrize("backend", ["torch", "manual"])  # the triton kernel's own masks: see test_kernels
@pytest.mark.parametrize("name,shape", DROPOUTS)
def test_dropout_double_backward_matches_torch(name, shape, backend):
    with normlib.use_backend(backend):
        results = []
        for lib in (N, tnn):
            torch.manual_seed(6)
            x = _input(shape, torch.float64, "contiguous", 2)
            results.append(_gradient_penalty(getattr(lib, name)(0.4).train(), x))
    (p, grads), (p_t, grads_t) = results
    _close(p, p_t, "penalty")
    _close(grads[0], grads_t[0], "gradient of the penalty")


def test_gradient_penalty_through_linear_layernorm_linear():
    """The case where the hand-written backward passes were 19% (manual) and 42% (triton) off."""
    torch.manual_seed(0)
    model_t = tnn.Sequential(tnn.Linear(6, 8), tnn.LayerNorm(8), tnn.Linear(8, 1)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    for backend in BACKENDS:
        for norm_first in (False, True):
            layers = [tnn.Linear(6, 8), N.LayerNorm(8), tnn.Linear(8, 1)]
            model = tnn.Sequential(*layers).double()
            model.load_state_dict(model_t.state_dict())
            pair = [(model, model_t)]
            if norm_first:
                pair = [(tnn.Sequential(N.LayerNorm(6), *model).double(),
                         tnn.Sequential(tnn.LayerNorm(6), *model_t).double())]
            with normlib.use_backend(backend):
                for ours, theirs in pair:
                    xs = [x.clone().to(_device(backend)).requires_grad_() for _ in range(2)]
                    (p, g), (p_t, g_t) = _gradient_penalty(ours.to(_device(backend)), xs[0]), \
                        _gradient_penalty(theirs, xs[1].cpu().detach().requires_grad_())
                    _close(p.cpu(), p_t, f"{backend} penalty")
                    for a, b in zip(g, g_t, strict=True):
                        _close(a.cpu(), b, f"{backend} gradient of the penalty")


# -------------------------------------------------------------------------------------------------- errors

ERRORS = [  # (name, args, kwargs, input shape, input dtype, training, module dtype)
    ("BatchNorm1d", (3,), {}, (1, 4), torch.float32, True, torch.float32),  # batch size first, then channels
    ("BatchNorm1d", (3,), {}, (2, 4), torch.float32, True, torch.float32),
    ("BatchNorm1d", (3,), {}, (2, 4), torch.float32, False, torch.float32),
    ("BatchNorm1d", (3,), {"track_running_stats": False}, (2, 4), torch.float32, True, torch.float32),
    ("BatchNorm1d", (3,), {"eps": 0.0}, (4, 3), torch.float32, True, torch.float32),
    ("BatchNorm1d", (3,), {"eps": -1.0}, (4, 3), torch.float32, False, torch.float32),
    ("BatchNorm1d", (3,), {}, (2, 3, 4, 5), torch.float32, True, torch.float32),
    ("BatchNorm2d", (3,), {}, (1, 3, 1, 1), torch.float32, True, torch.float32),
    ("BatchNorm1d", (3,), {}, (4, 3), torch.int64, True, torch.float32),
    ("BatchNorm1d", (3,), {}, (4, 3), torch.int64, False, torch.float32),
    ("BatchNorm1d", (3,), {}, (4, 3), torch.float64, True, torch.float32),  # mixed dtype
    ("BatchNorm1d", (3,), {"affine": False}, (4, 3), torch.float64, False, torch.float32),
    ("BatchNorm1d", (3,), {}, (4, 3), torch.float32, True, torch.float64),
    ("BatchNorm1d", (3,), {}, (4, 3), torch.float32, True, torch.bfloat16),
    ("SyncBatchNorm", (0,), {}, (2, 0, 3), torch.float32, True, torch.float32),
    ("SyncBatchNorm", (3,), {}, (3,), torch.float32, True, torch.float32),
    ("InstanceNorm1d", (3,), {}, (2, 3, 1), torch.float32, True, torch.float32),
    ("InstanceNorm1d", (3,), {}, (2, 3, 4, 5), torch.float32, True, torch.float32),
    ("InstanceNorm2d", (3,), {"affine": True}, (2, 4, 5, 5), torch.float32, True, torch.float32),
    ("InstanceNorm1d", (3,), {}, (2, 3, 4), torch.int32, True, torch.float32),
    ("InstanceNorm1d", (3,), {"affine": True}, (2, 3, 4), torch.float64, True, torch.float32),
    ("LayerNorm", (4,), {}, (2, 3), torch.float32, True, torch.float32),
    ("LayerNorm", ([3, 4],), {}, (2, 3), torch.float32, True, torch.float32),
    ("LayerNorm", (4,), {}, (2, 4), torch.int64, True, torch.float32),
    ("LayerNorm", (4,), {"elementwise_affine": False}, (2, 4), torch.int64, True, torch.float32),
    ("LayerNorm", (4,), {}, (2, 4), torch.float64, True, torch.float32),
    ("LayerNorm", (4,), {}, (2, 4), torch.float32, True, torch.float16),
    ("GroupNorm", (2, 4), {}, (2, 6, 3), torch.float32, True, torch.float32),
    ("GroupNorm", (2, 4), {}, (4,), torch.float32, True, torch.float32),
    ("GroupNorm", (2, 2), {}, (1, 2), torch.float32, True, torch.float32),
    ("GroupNorm", (2, 4), {}, (2, 4, 3), torch.uint8, True, torch.float32),
    ("GroupNorm", (2, 4), {"affine": False}, (2, 4, 3), torch.bool, True, torch.float32),
    ("GroupNorm", (2, 4), {}, (2, 4, 3), torch.float64, True, torch.float32),
    ("RMSNorm", (4,), {}, (2, 3), torch.float32, True, torch.float32),
    ("RMSNorm", ([3, 4],), {}, (2, 3), torch.float32, True, torch.float32),
    ("RMSNorm", (4,), {}, (2, 4), torch.int64, True, torch.float32),
    ("LayerNorm", ((),), {}, (3,), torch.float32, True, torch.float32),  # an empty normalized_shape
    ("RMSNorm", ((),), {}, (3,), torch.float32, True, torch.float32),
    ("Dropout", (0.5,), {}, (4, 5), torch.int64, True, None),
    ("Dropout1d", (0.5,), {}, (2, 3, 4, 5), torch.float32, True, None),
    ("FeatureAlphaDropout", (0.5,), {}, (5,), torch.float32, True, None),
    ("AlphaDropout", (0.5,), {}, (4, 5), torch.int64, True, None),
]


def _outcome(lib, name, args, kwargs, shape, dtype, training, module_dtype, backend):
    """What the module does with the input: ``("ok", dtype)``, or the exception's type and message."""
    import warnings

    try:
        module = getattr(lib, name)(*args, **kwargs)
        if module_dtype is not None:
            module = module.to(module_dtype)
        x = torch.ones(shape, dtype=dtype) if dtype in (torch.int32, torch.int64, torch.uint8, torch.bool) else \
            torch.randn(shape).to(dtype)
        with normlib.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "ok", module.train(training)(x).dtype
    except Exception as e:  # noqa: BLE001 - compared with torch's
        return type(e).__name__, str(e)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ERRORS, ids=lambda c: f"{c[0]}{c[1]}-{'x'.join(map(str, c[3]))}-{c[4]}".replace(
    "torch.", ""))
def test_errors_match_torch(case, backend):
    got = _outcome(N, *case, backend)
    want = _outcome(tnn, *case, "torch")
    assert got == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_errors_on_low_rank_input_match_torch(backend):
    """batch_norm on 0-D and 1-D input (torch counts no channels in it), layer_norm over an empty shape."""
    import torch.nn.functional as TF

    x, v = torch.randn(3), torch.ones(3)
    cases = [("batch_norm", (x, v, v)), ("batch_norm", (x, None, None)), ("batch_norm", (x, v, v, None, None, True)),
             ("batch_norm", (x, None, None, v, None, True)), ("batch_norm", (x, None, None, None, None, True)),
             ("batch_norm", (torch.randn(()), v[:1], v[:1])), ("batch_norm", (x, v[:0], v[:0])),
             ("layer_norm", (x, ())), ("layer_norm", (x, [], v)), ("rms_norm", (x, ()))]
    for name, args in cases:
        outcomes = []
        for lib in ("normlib", "torch"):
            try:
                with normlib.use_backend(backend):
                    (normlib.backend.ops(x, name) if lib == "normlib" else getattr(TF, name))(*args)
                outcomes.append("ok")
            except Exception as e:  # noqa: BLE001 - compared with torch's
                outcomes.append((type(e).__name__, str(e)))
        assert outcomes[0] == outcomes[1] and outcomes[0] != "ok", (name, outcomes)


@pytest.mark.parametrize("name,shape", [("Dropout2d", (2, 3, 4, 5, 6)), ("Dropout2d", (2, 3, 4)),
                                        ("Dropout3d", (2, 3, 4)), ("Dropout3d", (2, 3, 4, 1, 1, 1))])
def test_dropout_warnings_match_torch(name, shape):
    import warnings

    texts = []
    for lib in (N, tnn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            getattr(lib, name)(0.5)(torch.randn(shape))
        texts.append([(w.category, str(w.message)) for w in caught])
    assert texts[0] == texts[1] and texts[0]


def test_instance_norm_old_checkpoint_message_matches_torch():
    messages = []
    for lib in (N, tnn):
        sd = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
        with pytest.raises(RuntimeError) as caught:
            lib.InstanceNorm1d(3).load_state_dict(sd)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


def test_state_dict_without_num_batches_tracked_keeps_the_count():
    """No version metadata and no count: torch keeps the module's count (momentum=None depends on it)."""
    x = [torch.randn(8, 3) * (i + 1) + i for i in range(3)]
    modules = []
    for lib in (N, tnn):
        bn = lib.BatchNorm1d(3, momentum=None)
        bn(x[0])
        bn(x[1])
        sd = dict(bn.state_dict())  # a plain dict: no _metadata, so no version
        del sd["num_batches_tracked"]
        bn.load_state_dict(sd)
        assert bn.num_batches_tracked.item() == 2
        bn(x[2])
        modules.append(bn)
    _compare_buffers(*modules, "after one more step")
    torch.testing.assert_close(modules[0].running_mean, torch.stack([t.mean(0) for t in x]).mean(0))


# ----------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_rows_and_channels_are_exact(backend):
    """Zero variance: LayerNorm gives exactly beta (as torch), and a constant channel gives InstanceNorm and
    BatchNorm weight gradients of exactly zero (no rounding noise amplified by 1/sqrt(eps))."""
    device = _device(backend)
    with normlib.use_backend(backend):
        for value in (0.1, 0.3, -7.7, 1e4 / 3):
            ln = N.LayerNorm(7).to(device)
            with torch.no_grad():
                ln.bias.normal_()
            x = torch.full((3, 7), value, device=device)
            assert torch.equal(ln(x), ln.bias.detach().expand(3, 7))
            for norm in (N.InstanceNorm2d(3, affine=True), N.BatchNorm2d(3), N.GroupNorm(3, 3)):
                norm = norm.to(device)
                x = torch.full((2, 3, 5, 5), value, device=device)
                y = norm(x)
                assert torch.equal(y, torch.zeros_like(y))
                y.backward(torch.randn_like(y))
                assert torch.equal(norm.weight.grad, torch.zeros_like(norm.weight))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_rms_norm_default_eps_is_torchs(dtype, backend):
    """eps=None is float32's epsilon for half and single input (float64's for double), on every backend."""
    x = (torch.randn(4, 64, dtype=torch.float64) * 0.01).to(dtype)  # RMS 0.01: bfloat16's eps would matter
    with normlib.use_backend(backend):
        got = N.RMSNorm(64).to(dtype).to(_device(backend))(x.to(_device(backend)))
    want = tnn.RMSNorm(64).to(dtype)(x)
    _close(got.cpu(), want, "RMSNorm(eps=None)")
    rms = got.double().square().mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=2e-2, rtol=0)


# --------------------------------------------------------------------------------------------- a real model


class _BasicBlock(tnn.Module):
    def __init__(self, norm, c_in, c_out, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet18(norm, width=8, num_classes=10):
    """torchvision's ResNet-18 topology (7x7 stem, max-pool, four stages of two basic blocks), narrower."""
    widths = [width, 2 * width, 4 * width, 8 * width]
    layers = [tnn.Conv2d(3, width, 7, 2, 3, bias=False), norm(width), tnn.ReLU(inplace=True),
              tnn.MaxPool2d(3, 2, 1)]
    c_in = width
    for i, c_out in enumerate(widths):
        layers += [_BasicBlock(norm, c_in, c_out, 1 if i == 0 else 2), _BasicBlock(norm, c_out, c_out, 1)]
        c_in = c_out
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c_in, num_classes)]
    return tnn.Sequential(*layers)


@pytest.mark.parametrize("backend", ["torch", "manual"])
def test_resnet18_trains_like_torch_in_float64(backend):
    """normlib's BatchNorm2d in a ResNet-18, loaded from torch's state_dict: three SGD steps (momentum, weight
    decay) then evaluation agree with torch's to 1e-10, parameters and running statistics included."""
    torch.manual_seed(0)
    theirs = resnet18(tnn.BatchNorm2d).double()
    ours = resnet18(N.BatchNorm2d).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert sum(isinstance(m, N.BatchNorm2d) for m in ours.modules()) == 20
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) for m in (ours, theirs)]
    g = torch.Generator().manual_seed(1)
    with normlib.use_backend(backend):
        for step in range(3):
            x = torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64)
            target = torch.randint(0, 10, (6,), generator=g)
            losses = []
            for model, opt in zip((ours, theirs), opts, strict=True):
                opt.zero_grad()
                loss = tnn.functional.cross_entropy(model(x), target)
                loss.backward()
                opt.step()
                losses.append(loss)
            _close(losses[0], losses[1], f"loss at step {step}")
        ours.eval()
        theirs.eval()
        x = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
        _close(ours(x), theirs(x), "eval output")
    for (name, t), (_, t_t) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        if t.dtype == torch.long:
            assert torch.equal(t, t_t), name
        else:
            _close(t, t_t, name)
    theirs_again = resnet18(tnn.BatchNorm2d).double()
    theirs_again.load_state_dict(copy.deepcopy(ours.state_dict()), strict=True)


# ----------------------------------------------------------------------------------- deliberate differences


@pytest.mark.parametrize("backend", BACKENDS)
def test_deliberate_differences_on_empty_input(backend):
    """Listed in normlib.nn's docstring: where torch fails or writes NaN into its buffers on empty input."""
    with normlib.use_backend(backend):
        for training in (True, False):
            bn = N.BatchNorm1d(0).train(training)  # torch: IndexError
            assert bn(torch.randn(2, 0, 3)).shape == (2, 0, 3)
        norm = N.InstanceNorm1d(3, track_running_stats=True)  # torch: running statistics become NaN
        assert norm(torch.randn(0, 3, 4)).shape == (0, 3, 4)
        assert torch.equal(norm.running_mean, torch.zeros(3)) and torch.equal(norm.running_var, torch.ones(3))
