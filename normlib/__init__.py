"""normlib: every normalization layer and Dropout, built from its formula.

- :mod:`normlib.reference`: NumPy forward passes straight from the formulas (float64 ground truth).
- :mod:`normlib.functional`: the same in torch tensor ops, with ``torch.nn.functional``'s signatures.
- :mod:`normlib.nn`: modules that are drop-ins for their ``torch.nn`` namesakes.
- :mod:`normlib.manual`: the norms as autograd Functions with hand-derived backward passes.
- :func:`fold_batchnorm`, :func:`fold_batchnorms`: merge inference-mode BatchNorms into the layer before.
- :mod:`normlib.kernels`: Triton kernels; :func:`set_backend` (``"triton"``) routes normlib.nn through them.
- :mod:`normlib.distributed`: local multi-process jobs on torch.distributed (SyncBatchNorm's tests use it).

What only the book's lessons need (data, models, the training loop, figures, the evidence toolkit, timing
and the benchmark suite) lives apart, in :mod:`normlib.lab`.
"""

from normlib import functional, manual, nn, reference
from normlib.backend import get_backend, set_backend, use_backend
from normlib.fold import fold_batchnorm, fold_batchnorms

__version__ = "0.1.0"
__all__ = ["functional", "manual", "nn", "reference", "fold_batchnorm", "fold_batchnorms", "set_backend",
           "get_backend", "use_backend", "__version__"]
