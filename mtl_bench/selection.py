"""Model-selection rules, recorded in every run summary.

* ``best`` — keep the model with the best validation value of ``metric`` (early stopping on validation,
  as Elich et al. do with validation Δm); report its validation and test metrics.
* ``last`` — report the final model.
* ``last_k`` — report the mean of the validation and test metrics over the last ``k`` evaluations
  (the protocol of CAGrad / Nash-MTL / AdaTask papers, who average the last 10 epochs).

``metric`` is a validation key such as ``val/loss`` (sum of task losses), ``val/<task>/loss`` or
``val/<task>/<metric>``; ``mode: auto`` reads the direction from the metric's ``higher_is_better``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

from mtl_bench.errors import ConfigError, check_choice

RULES = ("best", "last", "last_k")


class ModelSelector:
    def __init__(self, rule: str, metric: str, mode: str, k: int, directions: Mapping[str, bool]):
        check_choice("trainer.selection.rule", rule, RULES)
        if rule == "best" and metric not in directions:
            raise ConfigError(
                f"trainer.selection.metric='{metric}' is not a validation metric of this run; "
                f"available: {sorted(k for k in directions if k.startswith('val/'))}"
            )
        check_choice("trainer.selection.mode", mode, ("auto", "min", "max"))
        if rule == "last_k" and k < 1:
            raise ConfigError(f"trainer.selection.k must be >= 1, got {k}")
        self.rule, self.metric, self.k = rule, metric, k
        if mode == "auto":
            mode = "max" if directions.get(metric, False) else "min"
        self.mode = mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.history: deque[tuple[int, dict[str, float]]] = deque(maxlen=max(k, 1))

    @property
    def needs_test_each_eval(self) -> bool:
        return self.rule == "last_k"

    def update(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record one evaluation; returns True when it is the new best model under rule ``best``."""
        self.history.append((epoch, dict(metrics)))
        if self.rule != "best":
            return False
        value = metrics[self.metric]
        if value is None or not math.isfinite(value):
            return False
        better = (
            self.best_value is None
            or (self.mode == "min" and value < self.best_value)
            or (self.mode == "max" and value > self.best_value)
        )
        if better:
            self.best_value, self.best_epoch = float(value), epoch
        return better

    def last_k_average(self) -> dict[str, float]:
        keys = set.intersection(*(set(m) for _, m in self.history)) if self.history else set()
        return {key: sum(m[key] for _, m in self.history) / len(self.history) for key in sorted(keys)}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rule": self.rule}
        if self.rule == "best":
            d.update(metric=self.metric, mode=self.mode, best_value=self.best_value, selected_epoch=self.best_epoch)
        elif self.rule == "last_k":
            d.update(k=self.k, epochs=[e for e, _ in self.history])
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.history = deque((tuple(h) for h in state["history"]), maxlen=self.history.maxlen)
