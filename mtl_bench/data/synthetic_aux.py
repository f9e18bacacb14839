"""A synthetic auxiliary-task benchmark with a known ranking of auxiliaries: helpful, irrelevant, harmful.

Built on the MMoE generator (:mod:`mtl_bench.data.synthetic`): inputs ``x ~ N(0, I_d)`` and labels
``y = wᵀx + Σ_j sin(α_j wᵀx + β_j) + ε``, with

* ``target`` — weight vector ``u_1`` (the task we care about; few training samples, so help matters);
* ``helpful`` — the latent factor ``w_hᵀx`` (+ noise) along ``w_h = ρ u_1 + sqrt(1 − ρ²) u_2`` (cosine
  ``helpful_correlation`` with the target's direction): a simpler, related signal that points the shared
  representation at the feature the target needs — sharing helps when target data are scarce;
* ``noise`` — labels are pure noise ``N(0, noise_scale²)``, independent of x: irrelevant, it only adds
  gradient noise to the shared layers;
* ``harmful`` — an orthogonal direction ``u_3`` with labels ×``harmful_scale`` (loss ×``harmful_scale²``):
  under equal weighting it dominates the shared representation, and with a narrow shared bottleneck the
  target loses the capacity it needs — negative transfer by construction.

``u_1, u_2, u_3`` are orthonormal (Haar-random from ``seed``).  The expected ranking for the target is
helpful > none ≈ noise > harmful for joint training with equal weights; a method that notices negative
transfer (ForkMerge, GCS, …) should not fall below single-task learning with the harmful auxiliary.

**Noisy target labels** (``target_noise_std`` σ_t, default ``noise_std``) are the setting in which the helpful
auxiliary helps by construction (``dataset=synthetic_aux_noisy_target``: σ_t = 1, ``helpful_correlation`` 1,
3 sines).  Why, and by how much it can:

* the target depends on x only through z = u_1ᵀx: ``y = g(z) + ε``, so the best possible test MSE is σ_t² and the
  best R² is Var g(z) / (Var g(z) + σ_t²);
* a model of the target alone must find the direction u_1 among ``input_dim`` = d directions from n training labels
  with noise σ_t.  For the linear part of g, least squares on Gaussian inputs has the excess risk
  σ_t² · d / (n − d − 1) (0.24 at σ_t = 1, d = 50, n = 256);
* with ``helpful_correlation`` 1 the helpful labels are ``z + N(0, noise_std²)``: the same direction with noise 0.1
  instead of 1, i.e. an excess risk (σ_t / noise_std)² = 100 times smaller for the shared layers to learn.  Joint
  training with the helpful auxiliary can therefore remove the direction part of the target's estimation error,
  never the noise floor σ_t² nor the error of fitting g along z (the target head's own job);
* the targets are the same for every choice of auxiliaries, so scenarios that differ only in ``mode.auxiliaries``
  share their single-task reference.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.data.synthetic import check_split_sizes, haar_frame, regression_task, sine_labels
from mtl_bench.errors import ConfigError

AUX_TASKS = ("target", "helpful", "noise", "harmful")


def build_synthetic_aux(
    input_dim: int = 50,
    num_sin: int = 10,
    noise_std: float = 0.1,
    helpful_correlation: float = 0.9,
    harmful_scale: float = 10.0,
    noise_scale: float = 1.0,
    target_noise_std: float | None = None,
    n_train: int = 512,
    n_val: int = 512,
    n_test: int = 4096,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    name: str = "synthetic_aux",
) -> Benchmark:
    selected = list(tasks) if tasks is not None else list(AUX_TASKS)
    target_std = _check_aux_args(selected, input_dim, helpful_correlation, harmful_scale, noise_scale, noise_std,
                                 target_noise_std)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    check_split_sizes(sizes)
    # the task directions and the splits come from separate streams: resizing one split leaves the others as they are
    gen = torch.Generator().manual_seed(4 * int(seed))
    u = haar_frame(input_dim, 3, gen)
    rho = float(helpful_correlation)
    weights = {
        "target": u[:, 0],
        "helpful": rho * u[:, 0] + (1.0 - rho * rho) ** 0.5 * u[:, 1],
        "harmful": u[:, 2],
    }
    alpha = torch.randn(num_sin, generator=gen, dtype=torch.float64)
    beta = torch.randn(num_sin, generator=gen, dtype=torch.float64)
    stds = {t: target_std if t == "target" else noise_std for t in AUX_TASKS}
    splits = {}
    for i, (split, n) in enumerate(sizes.items(), start=1):
        gen = torch.Generator().manual_seed(4 * int(seed) + i)
        x = torch.randn(n, input_dim, generator=gen, dtype=torch.float64)
        labels = _aux_labels(x, gen, weights, (alpha, beta), stds, noise_scale, harmful_scale)
        splits[split] = TensorDictDataset(x.float(), {t: labels[t] for t in selected})
    info = {"generator": "MMoE-based auxiliary benchmark (target / helpful / noise / harmful)", "input_dim": input_dim,
            "helpful_correlation": rho, "harmful_scale": harmful_scale, "noise_scale": noise_scale,
            "target_noise_std": target_std, "data_seed": int(seed),
            "sizes": sizes}
    return Benchmark(name=name, tasks={t: regression_task(t) for t in selected}, splits=splits, input_shape=(input_dim,), info=info)


def _check_aux_args(selected: list[str], input_dim: int, helpful_correlation: float, harmful_scale: float,
                    noise_scale: float, noise_std: float, target_noise_std: float | None) -> float:
    """Validate :func:`build_synthetic_aux`'s arguments (``ConfigError``); returns the target's noise std."""
    unknown = [t for t in selected if t not in AUX_TASKS]
    if unknown:
        raise ConfigError(f"dataset.tasks {unknown} unknown; synthetic_aux has tasks {list(AUX_TASKS)}")
    if input_dim < 3:
        raise ConfigError(f"dataset.input_dim must be >= 3, got {input_dim}")
    if not -1.0 <= helpful_correlation <= 1.0:
        raise ConfigError(f"dataset.helpful_correlation must lie in [-1, 1], got {helpful_correlation}")
    for key, value in (("harmful_scale", harmful_scale), ("noise_scale", noise_scale)):
        if not value > 0:
            raise ConfigError(f"dataset.{key} must be positive, got {value}")
    target_std = noise_std if target_noise_std is None else float(target_noise_std)
    if not target_std >= 0:
        raise ConfigError(f"dataset.target_noise_std must be >= 0, got {target_noise_std}")
    return target_std


def _aux_labels(x: torch.Tensor, gen: torch.Generator, weights: dict[str, torch.Tensor],
                sines: tuple[torch.Tensor, torch.Tensor], stds: dict[str, float], noise_scale: float,
                harmful_scale: float) -> dict[str, torch.Tensor]:
    """The N×1 float32 labels of every task in :data:`AUX_TASKS` order for the float64 inputs ``x``, each task
    drawing its label noise (``stds[t]``; then the noise task its labels) from ``gen`` in turn."""
    n = x.shape[0]
    labels = {}
    for t in AUX_TASKS:
        eps = stds[t] * torch.randn(n, generator=gen, dtype=torch.float64)
        if t == "noise":
            y = noise_scale * torch.randn(n, generator=gen, dtype=torch.float64)
        elif t == "helpful":
            y = x @ weights[t] + eps
        else:
            y = sine_labels(x @ weights[t], *sines) + eps
            if t == "harmful":
                y = harmful_scale * y
        labels[t] = y.float().unsqueeze(1)
    return labels
