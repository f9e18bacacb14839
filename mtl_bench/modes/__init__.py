"""Modes: what a run trains and how (``mode=mtl|stl|aux|forkmerge|transfer``), one module each (see :mod:`.base`).
Importing this package imports every module in it, which registers each mode in :data:`MODES`."""

import importlib
import pkgutil

from mtl_bench.modes.base import MODES, DependencyRun, Mode, RunBuild, TaskRoles, build_mode, mode_class, register_mode

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODES", "DependencyRun", "Mode", "RunBuild", "TaskRoles", "build_mode", "mode_class", "register_mode"]
