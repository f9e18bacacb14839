"""mtl_bench: a Hydra-composed PyTorch framework for multi-task learning research.

Data flow of one training step (see ``mtl_bench.trainer``)::

    batch -> model.encode (shared representation) -> model.decode (per-task heads)
          -> per-task losses (separate scalars) -> GradientEngine(combiner) -> optimizer.step()
"""

__version__ = "0.1.0"
