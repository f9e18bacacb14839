"""A single registry of combiners: ``combiner=NAME`` selects ``configs/combiner/NAME.yaml`` whose
``_target_`` is the registered class; tests check that registry and config files agree."""

from __future__ import annotations

from typing import Callable, TypeVar

from mtl_bench.combiners.base import Combiner
from mtl_bench.utils import registrar

COMBINERS: dict[str, type[Combiner]] = {}

C = TypeVar("C", bound=type[Combiner])

register: Callable[[str], Callable[[C], C]] = registrar(COMBINERS, "combiner")
