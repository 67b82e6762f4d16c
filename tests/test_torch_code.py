"""normlib in torch code: the idioms of training code written for torch.nn, run on normlib's modules.

isinstance-based idioms (freezing BatchNorm, weight-decay groups by type, SyncBatchNorm conversion), torch.fx
(tracing, feature extraction), torch.export in training and evaluation, meta-device init, pickling, strict
state_dict exchange both ways, a torch.nn.Transformer with its norms swapped for normlib's, eager quantization
fusion, TorchScript and autocast. Each runs under every backend that applies (triton in its interpreter on a
CPU). What normlib deliberately does otherwise is listed in ``normlib.nn``'s docstring.
"""

import copy
import io
import os
import pickle

import pytest
import torch
import torch.fx as fx
from torch import nn

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before normlib.kernels is imported (see tests/test_kernels.py)

import normlib  # noqa: E402
import normlib.functional as NF  # noqa: E402
import normlib.nn as N  # noqa: E402

BACKENDS = ["torch", "manual"]
try:
    import normlib.kernels  # noqa: F401
    BACKENDS.append("triton")
except ImportError:  # pragma: no cover - triton is in requirements.txt
    pass
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Every normlib.nn module with a torch.nn namesake: (name, args, kwargs, input shape).
NAMESAKES = [
    ("BatchNorm1d", (3,), {}, (4, 3, 5)),
    ("BatchNorm2d", (3,), {}, (2, 3, 4, 4)),
    ("BatchNorm3d", (2,), {"bias": False}, (2, 2, 2, 3, 3)),
    ("SyncBatchNorm", (3,), {}, (2, 3, 4, 4)),
    ("InstanceNorm1d", (3,), {"affine": True, "track_running_stats": True}, (2, 3, 6)),
    ("InstanceNorm2d", (3,), {}, (2, 3, 4, 4)),
    ("InstanceNorm3d", (2,), {"affine": True}, (2, 2, 2, 3, 3)),
    ("LayerNorm", ([4, 4],), {}, (2, 3, 4, 4)),
    ("GroupNorm", (2, 4), {}, (2, 4, 3, 3)),
    ("RMSNorm", ([4],), {"eps": 1e-6}, (3, 2, 4)),
    ("Dropout", (0.3,), {}, (4, 6)),
    ("Dropout1d", (0.3,), {}, (2, 4, 5)),
    ("Dropout2d", (0.3,), {}, (2, 4, 3, 3)),
    ("Dropout3d", (0.3,), {}, (2, 4, 2, 3, 3)),
    ("AlphaDropout", (0.3,), {}, (4, 6)),
    ("FeatureAlphaDropout", (0.3,), {}, (2, 4, 3, 3)),
]
NAMES = [spec[0] for spec in NAMESAKES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(name, dtype=torch.float64):
    """torch's module (random parameters and running statistics) and normlib's, loaded from its state."""
    _, args, kwargs, shape = NAMESAKES[NAMES.index(name)]
    theirs = getattr(nn, name)(*args, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in theirs.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
    ours = getattr(N, name)(*args, **kwargs).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours, torch.randn(shape, generator=g, dtype=dtype)


class Block(nn.Module):
    """A ResNet basic block: conv-norm-relu-conv-norm, plus the (projected) input."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet(seed=0, dtype=torch.float64):
    """A small ResNet with torch's norms (BatchNorm, a GroupNorm, a LayerNorm) and a Dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Sequential(Block(8, 8), Block(8, 16, stride=2)),
                         nn.GroupNorm(4, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(16),
                         nn.Dropout(0.2), nn.Linear(16, 5)).to(dtype)


def _twins(seed=0):
    """The small ResNet with torch's norms, and a copy with every norm swapped for normlib's."""
    theirs = resnet(seed)
    return theirs, N.from_torch(copy.deepcopy(theirs))


def _images(seed=0, n=4):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _masks_as_torch_s(backend, *models):
    """The triton backend's Dropout draws its masks from a seed, not as torch does: there, no dropout at all."""
    if backend == "triton":
        for m in (m for model in models for m in model.modules()):
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            elif isinstance(m, nn.MultiheadAttention):
                m.dropout = 0.0


def _run(model, x, seed=0):
    torch.manual_seed(seed)  # the same dropout masks for both
    return model(x)


# ---------------------------------------------------------------------------------------------
# isinstance, and what torch's code does with it
# ---------------------------------------------------------------------------------------------

TORCH_BASES = {
    "BatchNorm": nn.modules.batchnorm._BatchNorm,
    "SyncBatchNorm": nn.modules.batchnorm._BatchNorm,
    "InstanceNorm": nn.modules.instancenorm._InstanceNorm,
    "Dropout": nn.modules.dropout._DropoutNd,
    "AlphaDropout": nn.modules.dropout._DropoutNd,
}


@pytest.mark.parametrize("name", NAMES)
def test_each_module_is_an_instance_of_its_torch_namesake_and_keeps_its_attributes(name):
    theirs, ours, _ = _pair(name)
    assert type(ours).__module__.startswith("normlib.nn")
    if name == "SyncBatchNorm":
        # Not a torch SyncBatchNorm, which DistributedDataParallel refuses in a CPU module; a torch BatchNorm.
        assert not isinstance(ours, nn.SyncBatchNorm) and isinstance(ours, nn.modules.batchnorm._BatchNorm)
    else:
        assert isinstance(ours, getattr(nn, name))
    for prefix, base in TORCH_BASES.items():
        if name.startswith(prefix):
            assert isinstance(ours, base)
    if "Norm" in name and not name.startswith(("Layer", "Group", "RMS")):
        assert isinstance(ours, nn.modules.batchnorm._NormBase)
    # The same attributes as torch's (what from_torch/to_torch carry over); normlib's dropouts add `generator`.
    assert set(vars(ours)) - {"generator"} == set(vars(theirs))
    assert repr(ours) == repr(theirs)


def test_normlib_only_norms_are_torch_norm_bases_but_not_batchnorms():
    """BatchRenorm and SwitchableNorm have no torch namesake: torch's BatchNorm converters must leave them alone."""
    for module in (N.BatchRenorm2d(3), N.SwitchableNorm2d(3)):
        assert isinstance(module, nn.modules.batchnorm._NormBase)
        assert not isinstance(module, nn.modules.batchnorm._BatchNorm)
    model = nn.Sequential(N.BatchRenorm2d(3))
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(model)[0]) is N.BatchRenorm2d


def _freeze_batchnorm(model):
    """The fine-tuning idiom: BatchNorms in eval mode with frozen affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_freezing_batchnorm_by_type_freezes_normlib_batchnorm(backend):
    theirs, ours = _twins()
    _masks_as_torch_s(backend, theirs, ours)
    for model in (theirs, ours):
        model.train()
        _freeze_batchnorm(model)
    frozen = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(frozen) == 6 and all(type(m) is N.BatchNorm2d and not m.training for m in frozen)
    before = copy.deepcopy(ours.state_dict())
    x = _images()
    with normlib.use_backend(backend):
        y = _run(ours, x)
        y.square().sum().backward()
    _run(theirs, x).square().sum().backward()
    torch.testing.assert_close(y, _run(theirs, x), rtol=1e-10, atol=1e-10)
    for key, value in ours.state_dict().items():
        if "running" in key or "num_batches" in key:
            assert torch.equal(value, before[key]), key  # frozen statistics stay as they were
    assert all(p.grad is None for m in frozen for p in m.parameters())
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)


def _weight_decay_groups(model):
    """minGPT's idiom: decay the weights of Linear/Conv layers, not biases nor any norm's parameters."""
    decay, no_decay = set(), set()
    norms = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name.endswith("bias") or isinstance(module, norms):
                no_decay.add(full)
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                decay.add(full)
    assert decay | no_decay == {name for name, _ in model.named_parameters()}  # every parameter has a group
    return decay, no_decay


def test_weight_decay_groups_by_type_are_the_same_as_with_torch_norms():
    theirs, ours = _twins()
    decay, no_decay = _weight_decay_groups(ours)
    assert (decay, no_decay) == _weight_decay_groups(theirs)
    assert {"1.weight", "4.weight", "7.weight", "3.1.downsample.1.weight"} <= no_decay


def test_sync_batchnorm_conversion_torch_gives_torch_s_and_normlib_gives_normlib_s():
    """torch's converter finds normlib's BatchNorms and makes torch's SyncBatchNorm; normlib's makes normlib's."""
    theirs, ours = _twins()
    torch_sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))
    normlib_sync = N.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))
    from_torch_model = N.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(theirs))
    for converted, kind in ((torch_sync, nn.SyncBatchNorm), (normlib_sync, N.SyncBatchNorm),
                            (from_torch_model, N.SyncBatchNorm)):
        kinds = [type(m) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert kinds == [kind] * 6
    assert sum(isinstance(m, N.SyncBatchNorm) for m in torch_sync.modules()) == 0  # torch's own, not normlib's
    # Parameters and buffers are shared with the converted layers, by both converters.
    model = nn.Sequential(N.BatchNorm2d(3))
    for converter in (nn.SyncBatchNorm.convert_sync_batchnorm, N.SyncBatchNorm.convert_sync_batchnorm):
        sync = converter(model)[0]
        assert sync.weight is model[0].weight and sync.running_mean is model[0].running_mean
    # Outside a process group either SyncBatchNorm is BatchNorm: the converted models compute the same.
    x = _images()
    torch.testing.assert_close(_run(torch_sync, x), _run(normlib_sync, x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# torch.fx
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_traces_normlib_modules_as_leaves_like_torch_s(backend):
    theirs, ours = _twins()
    _masks_as_torch_s(backend, theirs, ours)
    g_theirs, g_ours = fx.symbolic_trace(theirs), fx.symbolic_trace(ours)
    # The same graph: every norm is one call_module node, where torch's are.
    assert [(n.op, n.name, n.target) for n in g_ours.graph.nodes] == \
        [(n.op, n.name, n.target) for n in g_theirs.graph.nodes]
    leaves = [g_ours.get_submodule(n.target) for n in g_ours.graph.nodes if n.op == "call_module"]
    # 6 BatchNorms, a GroupNorm, a LayerNorm, a Dropout
    assert sum(type(m).__module__.startswith("normlib.nn") for m in leaves) == 9
    x = _images()
    with normlib.use_backend(backend):
        for mode in ("train", "eval"):  # the graph's submodules follow GraphModule.train()/.eval()
            getattr(g_ours, mode)()
            getattr(ours, mode)()
            traced, eager = _run(g_ours, x), _run(copy.deepcopy(ours), x)
            torch.testing.assert_close(traced, eager, rtol=0, atol=0)
            torch.testing.assert_close(traced, _run(getattr(theirs, mode)(), x), rtol=1e-10, atol=1e-10)


def test_fx_graph_runs_the_backend_chosen_when_it_runs(monkeypatch):
    calls = []
    real = normlib.manual.batch_norm
    monkeypatch.setattr(normlib.manual, "batch_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, ours = _twins()
    graph = fx.symbolic_trace(ours)  # traced under the default backend
    x = _images()
    graph(x)
    assert not calls
    with normlib.use_backend("manual"):
        graph(x)
    assert len(calls) == 6  # every BatchNorm ran normlib.manual's


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fx_traces_each_module_on_its_own(name, mode):
    """Traced as the root, a module is one node running its forward on the graph module's own state."""
    theirs, ours, x = _pair(name)
    getattr(ours, mode)()
    twin = copy.deepcopy(ours)
    graph = fx.symbolic_trace(ours)
    assert [n.op for n in graph.graph.nodes if n.op.startswith("call")] == ["call_function"]
    for step in range(2):
        y, want = _run(graph, x + step), _run(twin, x + step)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        state = graph.state_dict()  # running statistics are updated in the graph's own buffers
        assert state.keys() == twin.state_dict().keys()
        for key, value in twin.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    restored = pickle.loads(pickle.dumps(graph))  # the graph module pickles (the node imports its forward)
    torch.testing.assert_close(_run(restored, x), _run(copy.deepcopy(graph), x), rtol=0, atol=0)


def test_fx_dropout_with_a_generator_traces_or_says_what_to_do():
    """Traced on its own, the generator must be stored in the graph: torch >= 2.8 or so can, older ones cannot."""
    x = torch.ones(3, 8)
    try:
        graph = fx.symbolic_trace(N.Dropout(0.5, generator=torch.Generator().manual_seed(0)))
    except TypeError as error:
        assert "trace a model that holds it" in str(error)
    else:
        assert torch.equal(graph(x), N.Dropout(0.5, generator=torch.Generator().manual_seed(0))(x))
    model = nn.Sequential(N.Dropout(0.5, generator=torch.Generator().manual_seed(0)))
    y = fx.symbolic_trace(model)(x)  # inside a model it is a call_module node, generator and all
    assert torch.equal(y, N.Dropout(0.5, generator=torch.Generator().manual_seed(0))(x))


def _feature_extractor(model, return_nodes):
    """What torchvision's create_feature_extractor does: trace, and return the named nodes' values."""
    graph = fx.symbolic_trace(model)
    nodes = {n.name: n for n in graph.graph.nodes}
    output = next(n for n in graph.graph.nodes if n.op == "output")
    with graph.graph.inserting_after(output):
        graph.graph.output({name: nodes[name] for name in return_nodes})
    graph.graph.erase_node(output)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fx_feature_extraction_gives_torch_s_features(backend, mode):
    theirs, ours = _twins()
    names = ["_1", "_3_0_bn2", "_3_1_downsample_1", "_3_1_relu_1", "_4", "_7"]
    extract_theirs = _feature_extractor(getattr(theirs, mode)(), names)
    extract_ours = _feature_extractor(getattr(ours, mode)(), names)
    x = _images(n=3)
    with normlib.use_backend(backend):
        got = _run(extract_ours, x)
    want = _run(extract_theirs, x)
    assert list(got) == names
    for name in names:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-10)
    assert torch.allclose(ours.state_dict()["1.running_mean"], theirs.state_dict()["1.running_mean"], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# torch.export, meta device, pickling, state_dict
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_export(backend, mode):
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.GroupNorm(2, 4),
                           nn.Flatten(), nn.LayerNorm(144), nn.Linear(144, 3), nn.RMSNorm(3)).double()
    ours = N.from_torch(copy.deepcopy(theirs))
    for model in (theirs, ours):
        getattr(model, mode)()
    x = _images()
    with normlib.use_backend(backend):
        exported = torch.export.export(ours, (x,))
        y = exported.module()(x)
    torch.testing.assert_close(y, theirs(x), rtol=1e-10, atol=1e-10)


def test_meta_device_init_then_load():
    theirs, ours = _twins()
    with torch.device("meta"):
        empty = N.from_torch(resnet().float())
    assert all(t.is_meta for t in empty.state_dict().values())
    assert type(empty[1]) is N.BatchNorm2d
    empty.load_state_dict(theirs.state_dict(), assign=True)
    x = _images()
    torch.testing.assert_close(_run(empty, x), _run(theirs, x), rtol=1e-10, atol=1e-10)
    with torch.device("meta"):
        layer = N.LayerNorm(4)
    layer.to_empty(device="cpu").reset_parameters()
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))


def test_pickling_a_model_and_its_traced_graph():
    theirs, ours = _twins()
    x = _images()
    for obj in (ours, fx.symbolic_trace(ours)):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        restored = torch.load(buffer, weights_only=False)
        assert type(restored[1] if isinstance(restored, nn.Sequential) else restored.get_submodule("1")) \
            is N.BatchNorm2d
        torch.testing.assert_close(_run(restored, x), _run(copy.deepcopy(ours), x), rtol=0, atol=0)
        restored = pickle.loads(pickle.dumps(obj))
        torch.testing.assert_close(_run(restored, x), _run(copy.deepcopy(ours), x), rtol=0, atol=0)


def test_strict_state_dict_both_ways():
    theirs, ours = _twins()
    fresh_theirs, fresh_ours = resnet(seed=1), N.from_torch(resnet(seed=2))
    fresh_theirs.load_state_dict(ours.state_dict(), strict=True)
    fresh_ours.load_state_dict(theirs.state_dict(), strict=True)
    x = _images()
    for model in (fresh_theirs, fresh_ours):
        torch.testing.assert_close(_run(model, x), _run(theirs, x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# A whole torch model's norms swapped
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_transformer_with_normlib_norms_gives_torch_s_outputs_and_gradients(backend):
    torch.manual_seed(0)
    theirs = nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                            dim_feedforward=16, dropout=0.1, batch_first=True).double()
    ours = N.from_torch(copy.deepcopy(theirs))
    _masks_as_torch_s(backend, theirs, ours)
    swapped = [type(m) for m in ours.modules() if isinstance(m, (nn.LayerNorm, nn.Dropout))]
    assert swapped and all(t in (N.LayerNorm, N.Dropout) for t in swapped)
    assert len(swapped) == len([m for m in theirs.modules() if isinstance(m, (nn.LayerNorm, nn.Dropout))])
    g = torch.Generator().manual_seed(3)
    src = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    tgt = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    with normlib.use_backend(backend):
        torch.manual_seed(0)  # the same dropout masks for both
        y = ours(src, tgt)
        y.square().sum().backward()
    torch.manual_seed(0)
    want = theirs(src, tgt)
    want.square().sum().backward()
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_from_torch_and_to_torch_swap_types_and_share_state():
    theirs = resnet()
    ours = N.from_torch(copy.deepcopy(theirs))
    assert {type(m).__module__.split(".")[0] for m in ours.modules()
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Dropout))} == {"normlib"}
    back = N.to_torch(ours)
    assert [type(m) for m in back.modules()] == [type(m) for m in theirs.modules()]
    assert back[1].weight is ours[1].weight and back[1].running_var is ours[1].running_var
    # the root is swapped too; a dropout drawing from its own generator has no torch equivalent
    assert type(N.from_torch(nn.LayerNorm(3))) is N.LayerNorm
    assert N.from_torch(nn.Dropout(0.3)).generator is None
    with pytest.raises(ValueError, match="torch.Generator"):
        N.to_torch(N.Dropout(0.3, generator=torch.Generator()))
    # a subclass of a torch module is someone's own code: left alone
    own = type("MyNorm", (nn.LayerNorm,), {})(3)
    assert N.from_torch(own) is own


# ---------------------------------------------------------------------------------------------
# Quantization fusion, TorchScript (deliberate differences)
# ---------------------------------------------------------------------------------------------

def test_eager_quantization_fusion_refuses_normlib_types_and_works_after_to_torch():
    from torch.ao.quantization import fuse_modules

    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double().eval()
    with torch.no_grad():
        theirs[1].running_mean.uniform_(-1, 1)
        theirs[1].running_var.uniform_(0.5, 2)
    ours = N.from_torch(copy.deepcopy(theirs))
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse_modules(copy.deepcopy(ours), [["0", "1", "2"]])
    fused = fuse_modules(N.to_torch(copy.deepcopy(ours)), [["0", "1", "2"]])
    x = _images()
    torch.testing.assert_close(fused(x), theirs(x), rtol=1e-10, atol=1e-10)
    # torch's functional fuser reads the attributes, so it takes normlib's BatchNorm as it is
    conv = torch.nn.utils.fusion.fuse_conv_bn_eval(copy.deepcopy(ours[0]), ours[1])
    torch.testing.assert_close(conv(x), theirs[1](theirs[0](x)), rtol=1e-10, atol=1e-10)


def test_torchscript_is_not_supported():
    with pytest.raises(Exception):  # noqa: B017 - the error is TorchScript's, from deep in its compiler
        torch.jit.script(N.LayerNorm(4))


# ---------------------------------------------------------------------------------------------
# Autocast
# ---------------------------------------------------------------------------------------------

def test_autocast_table_is_torch_s_registrations():
    """normlib runs a norm in float32 under autocast exactly where torch registers an autocast kernel for it."""
    table = NF._AUTOCAST_FLOAT32
    assert {("layer_norm", "cuda"), ("group_norm", "cuda")} <= table
    assert not {op for op, device in table if device == "cpu"}  # torch's CPU autocast leaves every norm alone
    for op in ("batch_norm", "instance_norm", "dropout"):  # neither list has them: the input's dtype is kept
        for key in ("AutocastCUDA", "AutocastCPU"):
            assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", key)


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith(("Dropout", "Alpha", "Feature"))])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("input_dtype", [torch.float32, "autocast"])
def test_cpu_autocast_gives_torch_s_dtypes_and_values(name, autocast_dtype, input_dtype):
    theirs, ours, x = _pair(name, torch.float32)
    x = x.to(autocast_dtype if input_dtype == "autocast" else input_dtype)
    with torch.autocast("cpu", dtype=autocast_dtype):
        y, want = ours(x), theirs(x)
    assert y.dtype == want.dtype
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[y.dtype]  # rounding of the dtype
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)


def test_autocast_cast_runs_a_float32_policy_op_in_float32(monkeypatch):
    """The cast itself, on the CPU: CUDA's policy for layer_norm and group_norm, pretended for CPU tensors."""
    monkeypatch.setattr(NF, "_AUTOCAST_FLOAT32", NF._AUTOCAST_FLOAT32 | {("layer_norm", "cpu"),
                                                                          ("group_norm", "cpu")})
    layer, group = N.LayerNorm(6), N.GroupNorm(2, 4)
    x = torch.randn(3, 4, 6, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for norm, fn in ((layer, lambda t: torch.nn.functional.layer_norm(t, (6,), layer.weight, layer.bias)),
                         (group, lambda t: torch.nn.functional.group_norm(t, 2, group.weight, group.bias))):
            y = norm(x)
            assert y.dtype == torch.float32
            torch.testing.assert_close(y, fn(x.float()))
            y.sum().backward()
            assert x.grad.dtype == torch.bfloat16
    assert NF.layer_norm(x, (6,)).dtype == torch.bfloat16  # outside autocast: the input's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert NF.layer_norm(x, (6,)).dtype == torch.float32
        assert NF.layer_norm(x.double(), (6,)).dtype == torch.float64  # float64 is never cast


def test_readme_snippet_runs():
    """The README's "Using normlib" example, exactly as printed there."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Using normlib", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "normlib.nn.from_torch(model)" in code
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    model = namespace["model"]
    assert not any(type(m).__module__.startswith("torch.nn") for m in model.modules()
                   if isinstance(m, (nn.LayerNorm, nn.Dropout)))
    assert namespace["out"].shape == (2, 3, 32)
