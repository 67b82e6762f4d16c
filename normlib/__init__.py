"""normlib: every normalization layer and Dropout, built from its formula.

- :mod:`normlib.reference`: NumPy forward passes straight from the formulas (float64 ground truth).
- :mod:`normlib.functional`: the same in torch tensor ops, with ``torch.nn.functional``'s signatures.
- :mod:`normlib.nn`: modules that are drop-ins for their ``torch.nn`` namesakes.
- :mod:`normlib.manual`: the norms as autograd Functions with hand-derived backward passes.
- :func:`fold_batchnorm`, :func:`fold_batchnorms`: merge inference-mode BatchNorms into the layer before.
- :mod:`normlib.bench`: the timing helper every timing cell uses.
"""

from normlib import functional, manual, nn, reference
from normlib.fold import fold_batchnorm, fold_batchnorms
from normlib.utils import cmp, seed_everything

__version__ = "0.1.0"
__all__ = ["functional", "manual", "nn", "reference", "fold_batchnorm", "fold_batchnorms", "cmp", "seed_everything",
           "__version__"]
