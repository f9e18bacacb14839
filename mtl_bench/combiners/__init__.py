"""Combiner library.  Importing this package imports every module in it, which registers each method in
:data:`COMBINERS` (one module per method; see ``registry.register``)."""

import importlib
import pkgutil

from mtl_bench.combiners.base import (
    GRAD_SOURCES,
    Aggregation,
    Combiner,
    GradientAggregator,
    GramianWeighting,
    LossWeighting,
)
from mtl_bench.combiners.registry import COMBINERS, register

_INFRASTRUCTURE = {"base", "registry", "solvers"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "GRAD_SOURCES", "Aggregation", "Combiner", "GradientAggregator", "GramianWeighting", "LossWeighting",
    "COMBINERS", "register",
]
