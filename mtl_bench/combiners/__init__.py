"""Combiner library.  Importing this package registers every method in :data:`COMBINERS`."""

from mtl_bench.combiners.base import GRAD_SOURCES, Aggregation, Combiner, GradientAggregator, LossWeighting
from mtl_bench.combiners.registry import COMBINERS, register
from mtl_bench.combiners import ew  # noqa: F401  (registers "ew")

__all__ = [
    "GRAD_SOURCES", "Aggregation", "Combiner", "GradientAggregator", "LossWeighting", "COMBINERS", "register",
]
