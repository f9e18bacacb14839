"""Helpers shared by the direction-based aggregators (PCGrad, GradVac, GradDrop, Aligned-MTL, DiBS-MTL, DB-MTL,
GradNorm): hyper-parameter checks with one-line ``ConfigError`` s, and the base class of the random methods,
which own a seeded ``torch.Generator`` whose state is part of ``state_dict``; and by the auxiliary-task
combiners (aux_weight, GCS, OL-AUX): the target/auxiliary roles with a cached target mask, and the zero-safe
cosine of each task gradient with the summed target gradient, from the Gramian.

Not a method: the package's auto-import skips modules whose name starts with ``_``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from mtl_bench.combiners.base import GradientAggregator
from mtl_bench import errors
from mtl_bench.errors import ConfigError


def check_real(key: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the given interval; otherwise a ``ConfigError``
    naming ``combiner.<key>``, the value and the valid range."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{key} {'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{key} {'<' if high_open else '<='} {high:g}")
        valid = " and ".join(bounds) if bounds else "a finite number"
        raise ConfigError(f"combiner.{key}={value!r} is invalid; valid: {valid}")
    return float(value)


def check_int(key: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"combiner.{key}={value!r} is invalid; valid: an integer >= {low}")
    return value


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> Any:
    return errors.check_choice(f"combiner.{key}", value, choices)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"combiner.{key}={value!r} is invalid; valid: true or false")
    return value


class SeededAggregator(GradientAggregator):
    """A gradient aggregator that draws its randomness from its own CPU ``torch.Generator``.

    The generator is seeded from ``seed`` and its state is saved as the module's extra state, so a restored
    checkpoint continues the same random stream; the global RNG is never touched.  Drawing on the CPU makes
    the random choices identical on CPU and CUDA runs (values are moved to the gradients' device)."""

    def __init__(self, seed: int = 0, grad_source: str | None = None):
        super().__init__(grad_source)
        self.seed = check_int("seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng_state"])

    def permutation(self, n: int) -> list[int]:
        """A random permutation of ``range(n)`` from the combiner's own generator."""
        return torch.randperm(n, generator=self.generator).tolist()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}


class AuxiliaryRoles:
    """Mixin of the auxiliary-task combiners: ``set_roles(targets)`` (called by ``mode=aux``/``forkmerge``, possibly
    before ``setup``) and the boolean target mask over ``task_names``, built once per (tasks, targets, device) and
    reused, so a training step makes no host-to-device copy for it."""

    name: ClassVar[str]
    task_names: list[str]
    targets: list[str] | None = None
    _target_mask_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def set_roles(self, targets: list[str]) -> None:
        self.targets = list(targets)

    def _target_mask(self, device: torch.device) -> torch.Tensor:
        """Boolean K-vector on ``device``: True for the targets.  A ``ConfigError`` when no roles were set."""
        if self.targets is None:
            raise ConfigError(f"combiner '{self.name}' needs target and auxiliary tasks: use mode=aux mode.targets=[...]")
        key = (tuple(self.task_names), tuple(self.targets), device)
        cached = self._target_mask_cache
        if cached is None or cached[0] != key:
            mask = torch.tensor([t in self.targets for t in self.task_names], device=device)
            self._target_mask_cache = cached = (key, mask)
        return cached[1]


def clone_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of a method's running state (tensors cloned, other values as they are); ``None`` stays ``None``."""
    if state is None:
        return None
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class RunningState:
    """Mixin: the method's running state ``self.state`` (a dict of tensors and numbers, ``None`` before the first
    step) travels in the state dict as extra state, so checkpoints resume it exactly."""

    state: dict[str, Any] | None

    def get_extra_state(self) -> dict[str, Any]:
        return {"state": clone_state(self.state)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.state = clone_state(state["state"])


def cosine_with_target(gramian: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """cos(g_k, g_T) for every task k from the Gramian ``G Gᵀ``, g_T = Σ_targets g_t (``sel``: the target mask in
    the Gramian's dtype); 0 where a norm is 0 (no division by zero, no NaN)."""
    dots = gramian @ sel  # g_k · g_T: row k of the Gramian summed over the targets
    denom = gramian.diagonal().clamp_min(0).sqrt() * (sel @ gramian @ sel).clamp_min(0).sqrt()  # ‖g_k‖ ‖g_T‖
    return torch.where(denom > 0, dots / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dots))
