"""Modules that are drop-ins for their ``torch.nn`` namesakes: same arguments, state_dict keys and errors.

Each module takes its ``torch.nn`` namesake's constructor arguments, has its state_dict keys, dtypes and
memory layouts, gives the same outputs, gradients and buffers in training and evaluation, in float64, float32,
float16 and bfloat16 (and float16/bfloat16 input into a float32 module), under every backend
(:func:`normlib.set_backend`), with ``torch.compile``, :mod:`torch.func` (``vmap``, ``grad``, ``jacrev``,
``jacfwd``, ``hessian``) and double backward, and raises the same exception types with the same messages.
Under autocast they follow torch's policy: on CUDA, LayerNorm, GroupNorm and (where torch registers it)
RMSNorm run in float32 and return float32; on the CPU, and for the other modules, the input's dtype is kept.
``tests/test_conformance.py`` checks this case by case against the installed torch.

Each module but SyncBatchNorm (see below) is also an instance of its ``torch.nn`` namesake
(``class BatchNorm2d(torch.nn.BatchNorm2d)``, with normlib's constructor and forward), and each is an instance of
torch's shared bases (``_BatchNorm``, ``_InstanceNorm``, ``_NormBase``,
``_DropoutNd``), so code written for torch.nn finds it: freezing BatchNorms by type, weight-decay groups by type,
converters. :func:`from_torch` swaps every norm and dropout of a torch model for normlib's (sharing parameters and
buffers), :func:`to_torch` swaps them back. ``torch.fx`` records each module as one ``call_module`` node, as it does
torch's, and the graph runs the backend selected when it runs. ``tests/test_torch_code.py`` runs these idioms.

Three layers have no ``torch.nn`` namesake and follow their usual counterparts instead
(:mod:`normlib.nn.batchfree`, tested in ``tests/test_batchfree.py``): :class:`StdConv2d` (timm's),
:class:`DynamicTanh` (the paper's) and :class:`FrozenBatchNorm2d` (torchvision's).

Deliberate differences from torch
---------------------------------
This is the one list of the places where normlib knowingly behaves otherwise.

- **Empty input where torch fails or corrupts state.** A BatchNorm with zero channels returns the empty output
  (torch raises ``IndexError: select(): index 0 out of range``). An InstanceNorm with
  ``track_running_stats=True`` leaves its running statistics alone on an empty batch (torch writes NaN into
  them). Empty input never changes running means and variances.
- **Constant rows and channels are exact for every norm.** Statistics are taken over the data shifted by each
  set's first element, so a set of equal values normalizes to exactly 0 (output exactly ``beta``, weight
  gradient exactly 0). torch is exact for LayerNorm and GroupNorm but leaves about 1e-6 for BatchNorm and
  InstanceNorm. Elsewhere results agree with torch to rounding (float32: about 1e-6 relative), not bit for bit.
- **The dtype rule is torch's CPU rule on every device.** float16/bfloat16 input with float32 parameters is
  allowed (the output keeps the input's dtype); any other mix, float64 input into a float32 module included, is
  torch's ``RuntimeError("mixed dtype (CPU): ...")``, also for CUDA tensors, where torch's own kernels accept
  some of those mixes. RMSNorm accepts any mix, as torch does, but without torch's warning that it "cannot
  dispatch to fused implementation".
- **SyncBatchNorm runs on CPUs** (gloo) as well as GPUs; torch's raises ``ValueError`` for CPU tensors in a
  process group. So that ``DistributedDataParallel`` accepts it in a CPU module, it is a torch BatchNorm
  (``torch.nn.modules.batchnorm._BatchNorm``) but not a ``torch.nn.SyncBatchNorm``: DDP refuses every
  ``torch.nn.SyncBatchNorm`` on the CPU, before any tensor is seen. While it synchronises, its second
  derivative raises (``once_differentiable``) instead of being computed;
  outside a process group it is BatchNorm, twice differentiable.
- **Dropout modules also take a** ``generator`` **keyword**, to draw their masks from a ``torch.Generator``.
  With the same global seed the masks equal torch's, except under the ``triton`` backend, whose kernel draws
  its mask from a seed (Philox), so the masks differ while their law is the same.
- **The triton backend hands some work to** :mod:`normlib.functional`: BatchNorm in evaluation, every norm
  inside ``torch.compile`` and under :mod:`torch.func` transforms, empty input, and LayerNorm/RMSNorm rows of
  more than :data:`normlib.kernels.MAX_ROW` elements. With ``create_graph=True`` its backward differentiates
  normlib.functional's forward, so higher derivatives are exact.
- **torch's converters produce torch's modules.** ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns
  normlib's BatchNorms (which are torch BatchNorms) into torch's SyncBatchNorm; normlib's
  :meth:`SyncBatchNorm.convert_sync_batchnorm` turns torch's and normlib's into normlib's. BatchRenorm and
  SwitchableNorm, which have no torch namesake, are torch's ``_NormBase`` but not ``_BatchNorm``, so BatchNorm
  converters (and code selecting ``_BatchNorm``) leave them alone.
- **TorchScript is not supported** (``torch.jit.script`` fails inside normlib's forward; torch 2.13 deprecates
  it). ``torch.export`` and ``torch.compile`` are the supported paths; :func:`to_torch` gives a scriptable model.
- **Eager quantization fusion refuses normlib's modules:** ``torch.ao.quantization.fuse_modules`` picks its
  fuser by exact type, and its fused modules (``ConvBn2d``, ``BNReLU2d``) assert torch's exact types, so it
  raises "did not find fuser method". Quantized models run torch's quantized kernels, not normlib's code:
  call :func:`to_torch` first (the same goes for FX-mode quantization). ``fuse_conv_bn_eval`` and
  :func:`normlib.fold_batchnorm` take normlib's BatchNorms as they are.
- **torch.fx traces a module on its own as one** ``call_function`` **node** running its forward on the graph
  module's parameters and buffers, with the training mode it had when traced (torch's BatchNorm and
  InstanceNorm cannot be traced on their own; its LayerNorm traces through to ``F.layer_norm``). Inside a model
  each module is a ``call_module`` node, as torch's are.
- **A BatchNorm channel whose first value in the batch is infinite** gets a NaN running mean in training where
  torch's is that infinity: the moments are taken about the first value (what makes constant channels exact),
  and ``inf - inf`` is NaN. The output and the running variance are NaN there in both. Getting torch's value
  would cost one more pass over the data in every training step.
- :func:`normlib.fold_batchnorm` **folds in float64** (torch's fuser in the layer's dtype), accepts normlib's
  and torch's BatchNorms alike, and gives the folded layer parameters that require grad exactly when the
  layer's did; a bias the layer did not have follows the layer's weight (torch's fuser makes it frozen).
"""

from normlib.nn._torch import from_torch, to_torch
from normlib.nn.batchfree import DynamicTanh, FrozenBatchNorm2d, StdConv2d
from normlib.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlib.nn.dropout import AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout
from normlib.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlib.nn.normalization import GroupNorm, LayerNorm, RMSNorm
from normlib.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, renorm_limits, set_renorm_limits
from normlib.nn.switchable import SwitchableNorm1d, SwitchableNorm2d, SwitchableNorm3d
from normlib.nn.syncbatchnorm import SyncBatchNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "renorm_limits",
    "set_renorm_limits",
    "SwitchableNorm1d",
    "SwitchableNorm2d",
    "SwitchableNorm3d",
    "SyncBatchNorm",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "StdConv2d",
    "DynamicTanh",
    "FrozenBatchNorm2d",
    "from_torch",
    "to_torch",
]
