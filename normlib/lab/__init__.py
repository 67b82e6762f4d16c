"""What the book's lessons share, kept apart from the drop-in library (:mod:`normlib`'s other modules).

- :mod:`normlib.lab.data`: small data sets (digits and generated tasks, offline; Fashion-MNIST from Debian's
  package, a cache or a checked download).
- :mod:`normlib.lab.models`: the small models the lessons train, with the norm as an argument, ghost batches
  and He initialisation; :mod:`normlib.lab.convnets` (a CNN of chosen widths, ConvNeXt's LayerNorm2d) and
  :mod:`normlib.lab.ghostbn` (ghost batches of a BatchNorm in one call).
- :mod:`normlib.lab.renorm_variants`: Batch Renorm as the paper's Algorithm 1 keeps sigma, for comparison.
- :mod:`normlib.lab.train`: the one training loop, accuracy, and BatchNorm recalibration.
- :mod:`normlib.lab.evidence`: runs over seeds, mean and standard error, error bars, checked claims.
- :mod:`normlib.lab.viz`: figures computed from the definitions they illustrate.
- :mod:`normlib.lab.timing`: the timing helper every timing cell uses; :mod:`normlib.lab.bench`, the
  benchmark suite (``python -m normlib.lab.bench``) and its recorded results; :mod:`normlib.lab.gpu_results`,
  the recorded GPU results the lessons plot; :mod:`normlib.lab.memory`, page faults and cache reuse.
- :mod:`normlib.lab.ddp`: the SyncBatchNorm lesson's data-parallel experiments.
- :mod:`normlib.lab.transformer`: a tiny Transformer with the norm and its place (pre-LN, post-LN) as
  arguments, a sorting task, and Adam with learning-rate warm-up.
- :mod:`normlib.lab.numerics`: mean and variance in floating point (naive, two-pass, Welford and Chan's merge)
  with every rounding pinned down, the float64 reference and errors in ulps.

Needs what the lessons need beyond normlib (matplotlib, scikit-learn, scipy, tqdm): ``pip install normlib[lab]``.
"""

from normlib.lab import evidence
from normlib.lab.utils import cmp, seed_everything, setup

__all__ = ["cmp", "evidence", "seed_everything", "setup"]
