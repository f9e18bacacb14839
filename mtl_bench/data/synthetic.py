"""The synthetic multi-task regression benchmark of Ma et al. (MMoE, KDD 2018), generalised to K tasks.

Recipe (Ma et al., Sec. 3.2), with our K-task generalisation and loss-imbalance knob:

1. Draw K orthonormal directions ``u_1..u_K`` in R^d (Haar-random) and form the task weight vectors
   ``w = c · L Uᵀ`` where ``L Lᵀ = C`` and ``C = (1 − p) I + p 11ᵀ``: every pair of tasks has
   ``cos(w_i, w_j) = p`` (the *task correlation*).  For K = 2, L is the Cholesky factor and this is
   exactly Ma et al.'s ``w_1 = c u_1``, ``w_2 = c (p u_1 + sqrt(1 − p²) u_2)``.  C is positive
   semi-definite iff ``-1/(K-1) <= p <= 1``, so for K > 2 strongly negative correlations are impossible.
2. Inputs ``x ~ N(0, I_d)``.
3. Labels ``y_k = w_kᵀx + Σ_{j=1..m} sin(α_j w_kᵀx + β_j) + ε_k`` with ``α_j, β_j ~ N(0, 1)`` drawn once
   (shared by all tasks, as in the paper) and ``ε_k ~ N(0, noise_std²)`` (paper: variance 0.01).
4. Our addition: ``y_k ← s_k · y_k`` with a per-task ``label_scales`` factor, which scales task k's MSE
   by ``s_k²`` — the loss imbalance used by the AdaTask and Elich et al. studies.

The data depend only on ``seed`` (the *data* seed), not on the training seed, so runs over training
seeds share one problem.  Train/val/test are disjoint draws from the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.errors import ConfigError
from mtl_bench.metrics.regression import RegressionMetrics
from mtl_bench.tasks import Task


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.reshape(target.shape), target)


def regression_task(name: str, out_dim: int = 1) -> Task:
    return Task(name=name, loss=mse_loss, metrics=RegressionMetrics, out_dim=out_dim, kind="regression")


def haar_frame(input_dim: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """d×k float64 Haar-random orthonormal frame: QR of a d×k Gaussian drawn from ``generator``."""
    gauss = torch.randn(input_dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r))  # sign fix makes the orthonormal frame Haar-distributed


def sine_labels(proj: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Noise-free labels ``p + Σ_j sin(α_j p + β_j)`` of the projections ``p = wᵀx`` (elementwise over ``proj``)."""
    return proj + torch.sin(proj.unsqueeze(-1) * alpha + beta).sum(-1)


def check_split_sizes(sizes: Mapping[str, int]) -> None:
    """Every split (``{"train": n_train, ...}``) must hold at least one sample."""
    for split, n in sizes.items():
        if n < 1:
            raise ConfigError(f"dataset.n_{split} must be >= 1, got {n}")


def task_weight_vectors(
    num_tasks: int, input_dim: int, correlation: float, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """K×d matrix of task weight vectors with pairwise cosine ``correlation`` and norm ``scale``."""
    k = num_tasks
    u = haar_frame(input_dim, k, generator)
    corr = (1.0 - correlation) * torch.eye(k, dtype=torch.float64) + correlation * torch.ones(k, k, dtype=torch.float64)
    try:
        factor = torch.linalg.cholesky(corr)
    except torch.linalg.LinAlgError:  # singular (|p| = 1 or p = -1/(K-1)): symmetric square root
        evals, evecs = torch.linalg.eigh(corr)
        factor = evecs * evals.clamp_min(0).sqrt()
    return scale * factor @ u.T


def validate_synthetic(
    num_tasks: int, input_dim: int, correlation: float, label_scales: Sequence[float] | None,
    sizes: dict[str, int], num_sin: int, noise_std: float, task_names: Sequence[str] | None,
) -> None:
    if num_tasks < 1:
        raise ConfigError(f"dataset.num_tasks must be >= 1, got {num_tasks}")
    if input_dim < num_tasks:
        raise ConfigError(f"dataset.input_dim ({input_dim}) must be >= dataset.num_tasks ({num_tasks})")
    if not -1.0 <= correlation <= 1.0:
        raise ConfigError(f"dataset.correlation must lie in [-1, 1], got {correlation}")
    if num_tasks > 2 and correlation < -1.0 / (num_tasks - 1) - 1e-12:
        raise ConfigError(
            f"dataset.correlation={correlation} is impossible for {num_tasks} tasks: pairwise correlations "
            f"of K tasks must be >= -1/(K-1) = {-1.0 / (num_tasks - 1):.4f}"
        )
    if label_scales is not None:
        if len(label_scales) != num_tasks:
            raise ConfigError(
                f"dataset.label_scales has {len(label_scales)} entries but dataset.num_tasks={num_tasks}"
            )
        if any(not (s > 0 and math.isfinite(s)) for s in label_scales):
            raise ConfigError(f"dataset.label_scales must be positive and finite, got {list(label_scales)}")
    check_split_sizes(sizes)
    if num_sin < 0:
        raise ConfigError(f"dataset.num_sin must be >= 0, got {num_sin}")
    if noise_std < 0:
        raise ConfigError(f"dataset.noise_std must be >= 0, got {noise_std}")
    if task_names is not None and (len(task_names) != num_tasks or len(set(task_names)) != num_tasks):
        raise ConfigError(f"dataset.task_names must be {num_tasks} distinct names, got {list(task_names)}")


@dataclass
class MMoEGenerator:
    """The sampled ground truth of one synthetic problem (everything is float64)."""

    weights: torch.Tensor  # K×d task weight vectors
    alpha: torch.Tensor  # m sine frequencies
    beta: torch.Tensor  # m sine phases
    noise_std: float
    label_scales: torch.Tensor  # K

    def clean_labels(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free, unscaled labels ``w_kᵀx + Σ_j sin(α_j w_kᵀx + β_j)`` (n×K)."""
        return sine_labels(x @ self.weights.T, self.alpha, self.beta)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.weights.shape[1], generator=generator, dtype=torch.float64)
        noise = torch.randn(n, self.weights.shape[0], generator=generator, dtype=torch.float64)
        y = (self.clean_labels(x) + self.noise_std * noise) * self.label_scales
        return x, y


def make_generator(
    num_tasks: int, input_dim: int, correlation: float, weight_scale: float, num_sin: int, noise_std: float,
    label_scales: Sequence[float] | None, generator: torch.Generator,
) -> MMoEGenerator:
    weights = task_weight_vectors(num_tasks, input_dim, float(correlation), float(weight_scale), generator)
    alpha = torch.randn(num_sin, generator=generator, dtype=torch.float64)
    beta = torch.randn(num_sin, generator=generator, dtype=torch.float64)
    scales = torch.tensor(list(label_scales) if label_scales is not None else [1.0] * num_tasks, dtype=torch.float64)
    return MMoEGenerator(weights, alpha, beta, float(noise_std), scales)


def build_synthetic(
    num_tasks: int = 2,
    input_dim: int = 100,
    correlation: float = 0.5,
    weight_scale: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.1,
    label_scales: Sequence[float] | None = None,
    n_train: int = 8192,
    n_val: int = 2048,
    n_test: int = 2048,
    seed: int = 0,
    task_names: Sequence[str] | None = None,
    name: str = "synthetic",
) -> Benchmark:
    """Build the benchmark; see the module docstring for the recipe."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    validate_synthetic(num_tasks, input_dim, correlation, label_scales, sizes, num_sin, noise_std, task_names)
    names = list(task_names) if task_names is not None else [f"t{k}" for k in range(num_tasks)]
    gen = torch.Generator().manual_seed(int(seed))
    truth = make_generator(num_tasks, input_dim, correlation, weight_scale, num_sin, noise_std, label_scales, gen)
    splits = {}
    for split, n in sizes.items():
        x, y = truth.sample(n, gen)
        targets = {t: y[:, k : k + 1].float().contiguous() for k, t in enumerate(names)}
        splits[split] = TensorDictDataset(x.float(), targets)
    info = {
        "generator": "MMoE (Ma et al., KDD 2018), K-task generalisation",
        "num_tasks": num_tasks, "input_dim": input_dim, "correlation": correlation,
        "label_scales": truth.label_scales.tolist(), "data_seed": int(seed), "sizes": sizes,
    }
    return Benchmark(name=name, tasks={t: regression_task(t) for t in names}, splits=splits,
                     input_shape=(input_dim,), info=info, extras={"ground_truth": truth})
