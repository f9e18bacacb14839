"""A single registry of combiners: ``combiner=NAME`` selects ``configs/combiner/NAME.yaml`` whose
``_target_`` is the registered class; tests check that registry and config files agree."""

from __future__ import annotations

from typing import Callable, TypeVar

from mtl_bench.combiners.base import Combiner

COMBINERS: dict[str, type[Combiner]] = {}

C = TypeVar("C", bound=type[Combiner])


def register(name: str) -> Callable[[C], C]:
    def deco(cls: C) -> C:
        if name in COMBINERS:
            raise ValueError(f"combiner '{name}' registered twice")
        cls.name = name
        COMBINERS[name] = cls
        return cls

    return deco
