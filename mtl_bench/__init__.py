"""mtl_bench: a Hydra-composed PyTorch framework for multi-task learning research.

Data flow of one training step (see ``mtl_bench.trainer``)::

    batch -> model.encode (shared representation) -> model.decode (per-task heads)
          -> per-task losses (separate scalars) -> GradientEngine(combiner) -> optimizer.step()
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin while waiting make a run on a machine whose cores are busy with other work up to 20x
# slower (measured: 2-core VM, one core busy; docs/benchmarks.md).  Sleeping waiters cost nothing measurable on
# an idle machine.  Only set where torch is not imported yet (its OpenMP runtime reads this once) and never over
# a user's own choice.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
