"""``mode=stl``: single-task learning of ``mode.task`` with the same backbone (the Δm baselines)."""

from __future__ import annotations

from mtl_bench.data.base import Benchmark
from mtl_bench.errors import ConfigError
from mtl_bench.modes.base import Mode, TaskRoles, register_mode


@register_mode("stl")
class STLMode(Mode):
    def roles(self, benchmark: Benchmark) -> TaskRoles:
        """``mode.task``; unset, the first of the top-level ``aux_targets`` (the aux_method bundles' STL arm)."""
        task = self.spec.task
        if task is None and self.cfg.get("aux_targets"):
            task = self.cfg.aux_targets[0]
        if task is None:
            raise ConfigError(f"mode=stl needs mode.task=<task>; dataset '{benchmark.name}' has tasks {list(benchmark.tasks)}")
        return TaskRoles([task])
