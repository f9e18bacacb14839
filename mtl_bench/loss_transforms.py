"""Per-task loss transforms: strictly increasing maps applied to the batch-averaged task loss before the
combiner sees it.

This is the experimental knob of the invariance studies: Elich et al. scale task losses by constants
(Adam's partial scale invariance), DiBS-MTL (Murthy et al.) applies strictly increasing non-affine
transforms (powers, logs, exponentials) under which its update — and any per-task-direction method's — is
unchanged, while loss-magnitude methods (EW, MGDA, PCGrad, …) change.  Metrics and the logged losses are
those of the untransformed task; only the training objective the combiner receives changes.

Config (``loss_transforms``, keyed by task)::

    loss_transforms:
      t1: {kind: scale, factor: 100.0}       # c·L, c > 0
      t0: {kind: power, exponent: 2.0}       # L^p, p > 0 (L ≥ 0)
      t2: {kind: log, eps: 1.0e-8}           # log(L + eps)
      t3: {kind: exp, rate: 1.0}             # exp(a·L), a > 0
      t4: {kind: custom, fn: my_pkg.my_increasing_fn}               # any strictly increasing callable (dotted path)

The wildcard key ``"*"`` gives every trained task the same transform; an explicit task key wins over it, and an
explicit empty entry (``t1: null``) exempts that task.  ``loss_transforms=log_all``
(``configs/loss_transforms/log_all.yaml``) is ``"*": {kind: log, eps: 1e-8}``: log(L_k + 1e-8) for every task.

The FAMO repository's LOG-* variants are gradient combiners composed with ``log_all``.  ``combiner=imtl_g
loss_transforms=log_all`` is its LOG-IMTL-G exactly.  ``combiner=mgda loss_transforms=log_all`` gives the direction
of its LOG-MGDA times c = Σ_k s_k / L_k (FAMO divides the objective Σ_k s_k log L_k by this detached normaliser,
so its effective weights on the ∇L_k sum to one; ours are s_k / L_k with the min-norm s on the simplex).
LOG-CAGrad there is CAGrad on the ∇log L_k (no eps) in the sum scale — K·(g₀ + λ g_w)/(1 + c²), g₀ the mean row,
c = 0.4 — with the shared gradient clipped to norm 1 and unit-weight heads; the closest here is ``combiner=cagrad
combiner.reduction=sum combiner.c=0.4 loss_transforms=log_all`` (our default ``reduction=mean`` is 1/K of it; our
heads get CAGrad's weights; clip with ``trainer.grad_clip_norm``, which clips the whole model).  Combiners defined
for non-negative losses only (FAMO, UW-O, STCH, …) refuse a log-transformed loss below 0 with their one-line error.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from mtl_bench.errors import ConfigError, check_choice

KINDS = ("scale", "power", "log", "exp", "custom")
WILDCARD = "*"  # the key whose transform applies to every trained task without its own key
Transform = Callable[[torch.Tensor], torch.Tensor]


def _positive(task: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"loss_transforms.{task}.{key} must be a positive number, got {value!r}")
    return float(value)


def make_transform(task: str, spec: Mapping[str, Any], resolve: Callable[[Any], Any] | None = None) -> Transform:
    """One task's transform from its config ``spec`` (see the module docstring)."""
    kind = spec.get("kind")
    allowed = {"scale": {"factor"}, "power": {"exponent"}, "log": {"eps"}, "exp": {"rate"}, "custom": {"fn"}}
    check_choice(f"loss_transforms.{task}.kind", kind, KINDS)
    unknown = set(spec) - {"kind"} - allowed[kind]
    if unknown:
        raise ConfigError(f"loss_transforms.{task}: unknown key(s) {sorted(unknown)} for kind '{kind}'; allowed: {sorted(allowed[kind])}")
    if kind == "scale":
        c = _positive(task, "factor", spec.get("factor", 1.0))
        return lambda loss: loss * c
    if kind == "power":
        p = _positive(task, "exponent", spec.get("exponent", 1.0))
        return lambda loss: loss.clamp_min(0.0) ** p
    if kind == "log":
        eps = _positive(task, "eps", spec.get("eps", 1e-8))
        return lambda loss: torch.log(loss + eps)
    if kind == "exp":
        a = _positive(task, "rate", spec.get("rate", 1.0))
        return lambda loss: torch.exp(a * loss)
    if "fn" not in spec or resolve is None:
        raise ConfigError(f"loss_transforms.{task}: kind 'custom' needs fn: <dotted path of a function>")
    fn = resolve(spec["fn"])
    check_increasing(task, fn)
    return fn


def check_increasing(task: str, fn: Transform) -> None:
    """Reject a custom transform that is not finite and strictly increasing on a grid of loss values."""
    grid = torch.logspace(-4, 2, 25, dtype=torch.float64)
    try:
        values = fn(grid)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ConfigError(f"loss_transforms.{task}: the custom fn failed on a tensor of losses: {e}") from e
    if not isinstance(values, torch.Tensor) or values.shape != grid.shape:
        raise ConfigError(f"loss_transforms.{task}: the custom fn must map a tensor to a tensor of the same shape")
    if not bool(torch.isfinite(values).all()) or not bool((values[1:] > values[:-1]).all()):
        raise ConfigError(f"loss_transforms.{task}: the custom fn is not finite and strictly increasing on losses in [1e-4, 100]")


def build_transforms(cfg: Mapping[str, Any] | None, tasks: list[str], all_tasks: list[str],
                     resolve: Callable[[Any], Any] | None = None) -> dict[str, Transform]:
    """Transforms of the active tasks; naming a task the dataset lacks is an error, an inactive one is ignored.
    The wildcard ``"*"`` applies to every active task without an explicit key (an explicit empty key: none)."""
    cfg = dict(cfg or {})
    unknown = [t for t in cfg if t not in all_tasks and t != WILDCARD]
    if unknown:
        raise ConfigError(f"loss_transforms names unknown task(s) {unknown}; the dataset's tasks are {all_tasks} "
                          f"(or '{WILDCARD}' for every task)")
    out: dict[str, Transform] = {}
    if cfg.get(WILDCARD):
        every = make_transform(WILDCARD, dict(cfg[WILDCARD]), resolve)
        out = {t: every for t in tasks if t not in cfg}
    out.update({t: make_transform(t, dict(spec), resolve) for t, spec in cfg.items() if t in tasks and spec})
    return out


def describe(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    return {t: dict(spec) for t, spec in (cfg or {}).items() if spec}
