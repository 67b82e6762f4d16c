"""normlib: every normalization layer and Dropout, built from its formula.

- :mod:`normlib.reference`: NumPy forward passes straight from the formulas (float64 ground truth).
- :mod:`normlib.functional`: the same in torch tensor ops, with ``torch.nn.functional``'s signatures.
- :mod:`normlib.nn`: modules that are drop-ins for their ``torch.nn`` namesakes.
- :mod:`normlib.bench`: the timing helper every timing cell uses.
"""

from normlib import functional, nn, reference
from normlib.utils import cmp, seed_everything

__version__ = "0.1.0"
__all__ = ["functional", "nn", "reference", "cmp", "seed_everything", "__version__"]
