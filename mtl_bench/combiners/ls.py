"""Linear scalarisation on a uniform grid of the weight simplex, for weight sweeps (Xin et al., 2022)."""

from __future__ import annotations

from math import comb

import torch

from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


def simplex_grid_size(num_tasks: int, resolution: int) -> int:
    """Number of points of {w ∈ Δ^{K−1} : n·w ∈ ℕ^K}: C(n + K − 1, K − 1)."""
    return comb(resolution + num_tasks - 1, num_tasks - 1)


def simplex_grid_counts(num_tasks: int, resolution: int, index: int) -> tuple[int, ...]:
    """The ``index``-th vector c ∈ ℕ^K with Σ c = n in ascending lexicographic order, without listing the
    grid: choose c_0, c_1, … in turn, skipping whole blocks of completions (C(r + m − 1, m − 1) ways to
    split a remainder r over m parts)."""
    size = simplex_grid_size(num_tasks, resolution)
    if not 0 <= index < size:
        raise IndexError(f"grid index {index} out of range [0, {size})")
    counts: list[int] = []
    remaining = resolution
    for position in range(num_tasks - 1):
        parts_after = num_tasks - position - 1
        first = 0
        while True:
            block = comb(remaining - first + parts_after - 1, parts_after - 1)
            if index < block:
                break
            index -= block
            first += 1
        counts.append(first)
        remaining -= first
    counts.append(remaining)
    return tuple(counts)


def simplex_grid(num_tasks: int, resolution: int) -> list[tuple[float, ...]]:
    """All weight vectors of the grid, in the order ``combiner.point`` indexes them: the count vectors
    n·w in ascending lexicographic order.  For K = 2, point p is (p/n, 1 − p/n)."""
    return [
        tuple(c / resolution for c in simplex_grid_counts(num_tasks, resolution, i))
        for i in range(simplex_grid_size(num_tasks, resolution))
    ]


@register("ls")
class GridLinearScalarization(LossWeighting):
    """Linear scalarisation Σ_k w_k L_k with w the ``point``-th element of the uniform simplex grid
    {w ∈ Δ^{K−1} : n·w ∈ ℕ^K} (n = ``resolution``; C(n + K − 1, K − 1) points).

    Xin, Ghorbani, Garg, Firat, Gilmer: "Do Current Multi-Task Optimization Methods in Deep Learning Even
    Help?", NeurIPS 2022: a sweep of fixed scalarisation weights over the simplex, tuned like any other
    hyper-parameter, matches the specialised MTL optimisers.  The study released no code; the grid and
    its order are ours.

    Order: the integer vectors c = n·w in ascending lexicographic order (:func:`simplex_grid` lists them;
    :func:`simplex_grid_counts` computes one without listing).  For K = 2 and n = 10, ``point=p`` gives
    w = (p/10, 1 − p/10), so ``-m combiner=ls combiner.point='range(0,11)'`` sweeps the whole grid.  A
    ``point`` outside the grid is a ``ConfigError`` (checked in :meth:`setup`, when K is known) that
    gives the grid size.

    Scale convention: the weights sum to 1 (a point of the simplex; vertices give single-task training
    of the shared parameters).  Stateless.
    """

    scale = "simplex"

    def __init__(self, resolution: int = 10, point: int = 0, grad_source: str | None = None):
        super().__init__(grad_source)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ConfigError(f"combiner.resolution={resolution!r} must be an integer >= 1")
        if isinstance(point, bool) or not isinstance(point, int) or point < 0:
            raise ConfigError(f"combiner.point={point!r} must be an integer >= 0")
        self.resolution = resolution
        self.point = point
        self.register_buffer("task_weights", torch.empty(0, dtype=torch.float64), persistent=False)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        size = simplex_grid_size(self.num_tasks, self.resolution)
        if self.point >= size:
            raise ConfigError(
                f"combiner.point={self.point} is out of range: the grid for K={self.num_tasks} tasks and "
                f"resolution={self.resolution} has {size} points (valid 0..{size - 1})"
            )
        counts = simplex_grid_counts(self.num_tasks, self.resolution, self.point)
        self.task_weights = torch.tensor(counts, dtype=torch.float64, device=self.task_weights.device) / self.resolution

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.task_weights.numel() != losses.numel():
            raise RuntimeError(f"combiner 'ls' was set up for {self.task_weights.numel()} tasks, got {losses.numel()} losses")
        return self.task_weights.to(losses)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "resolution": self.resolution,
            "point": self.point,
            "weights": dict(zip(self.task_names, self.task_weights.tolist())),
        }
