"""``mode=aux``: auxiliary-task learning — the targets with auxiliary tasks; selection, Δm and reporting on the
targets only; ``mode.post_train_epochs=N`` fine-tunes on the targets alone in the last N epochs."""

from __future__ import annotations

from typing import Any, Mapping

from mtl_bench.data.base import Benchmark
from mtl_bench.errors import ConfigError
from mtl_bench.modes.base import Mode, TaskRoles, register_mode


def aux_roles(mode: Mapping[str, Any], benchmark: Benchmark, defaults: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(targets, auxiliaries) of an auxiliary-task mode, validated against the dataset's tasks; unset mode
    fields fall back to the top-level ``aux_targets`` / ``aux_auxiliaries`` (the aux_method bundles)."""
    names = list(benchmark.tasks)
    fallback = defaults if defaults is not None else {}
    targets = list(mode.get("targets") or fallback.get("aux_targets") or [])
    if not targets:
        raise ConfigError(f"mode={mode.get('name')} needs mode.targets=[<task>, ...]; dataset '{benchmark.name}' has tasks {names}")
    given_aux = mode.get("auxiliaries") if mode.get("auxiliaries") is not None else fallback.get("aux_auxiliaries")
    aux = list(given_aux) if given_aux is not None else [t for t in names if t not in targets]
    unknown = [t for t in [*targets, *aux] if t not in names]
    if unknown:
        raise ConfigError(f"task(s) {unknown} not in dataset '{benchmark.name}'; its tasks are {names}")
    both = [t for t in aux if t in targets]
    if both:
        raise ConfigError(f"task(s) {both} are both targets and auxiliaries")
    return targets, aux


@register_mode("aux")
class AuxMode(Mode):
    def roles(self, benchmark: Benchmark) -> TaskRoles:
        targets, aux = aux_roles(self.spec, benchmark, self.cfg)
        return TaskRoles([*targets, *aux], targets)

    def trainer_options(self) -> dict[str, Any]:
        return {"post_train_epochs": int(self.spec.get("post_train_epochs", 0) or 0)}
