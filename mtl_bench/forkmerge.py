"""ForkMerge (Jiang, Chen, Pan, Wang, Liu, Jiang, Long, "ForkMerge: Mitigating Negative Transfer in
Auxiliary-Task Learning", NeurIPS 2023; official code ``thuml/ForkMerge`` and TL-Library's ``ATL`` branch).

Every merge period the current parameters θ are *forked* into branches, each a full copy of the model with
its own optimizer and LR-schedule state, trained for Δt (``merge_every`` epochs or steps) on the targets plus a
subset of the auxiliaries (equal weights on the included tasks); the branches are then *merged*,
θ ← Σ_b Λ_b θ_b, with Λ on the simplex searched on the **targets' validation score** (the run's selection
metric, by default the sum of the target losses), and every branch restarts from the merged θ (its optimizer
state carries over, as in the official code).  With a target-only branch and a joint branch, Λ is a per-period,
validation-tuned auxiliary weight: a harmful auxiliary gets weight 0.

* Branches (``branches``): lists of auxiliaries per branch (``[]`` = target only, ``"all"`` = all auxiliaries);
  default target-only + target-and-all, the paper's two-branch setting.  ``topk`` instead runs a ranking phase
  (target + each auxiliary alone for ``ranking_epochs`` from the initial weights, ranked by validation score)
  and builds branch b from the top-``topk[b]`` auxiliaries.
* Search (``search``): ``greedy`` — the official normalised greedy scheme (branches ranked by their own
  validation score; the best gets Λ = 1, each next one tries Λ_b = a · mean(Λ so far) for a in ``grid``, the
  whole Λ renormalised, kept if it beats the best score seen so far in this merge); ``lambda`` — a plain grid
  θ(λ) = (1 − λ) θ_0 + λ θ_1 over λ ∈ ``grid`` (two branches).  With two branches the greedy scheme can only
  give the weaker branch a/(1 + a) ≤ ½; the λ grid reaches every point.
* Merging averages every floating-point entry of the state dict, BatchNorm running statistics included;
  integer buffers (``num_batches_tracked``) come from the branch with the largest weight.
* ``prune_to`` (our extension, not in the official code): after the first merge keep only the branches with
  the largest weights.
* Memory: (branches + 1) model copies; branches train one after another on one device.

Deviations from the official code (``develop`` branch of ``thuml/ForkMerge``:
``auxiliary_task_scene_understanding/forkmerge.py`` and ``auxiliary_domain_image_recognition/forkmerge.py``):

* A branch hands back its *last* state of the period (the official code reloads the branch's best-on-validation
  checkpoint, whose tracker is never reset after a merge, so an old pre-merge state can come back).
* Greedy search: ours starts from the best branch's own validation score and skips α = 0; the official search
  starts from −∞ (0 for DomainNet accuracy) and its grid contains α = 0, which scores the merge without the
  branch.  The same decisions when the best branch's score is that of the state being merged (as here, see the
  next point), one validation pass fewer per branch.
* Branch order: by the validation score of the state each branch hands back this period; the official code
  orders by each trainer's best score so far (``best_improvement`` / ``best_acc1``, never reset).
* Ranking phase (``topk``): auxiliaries are ranked by the validation score after the last of ``ranking_epochs``
  epochs; the official code by the best score over those epochs (its ``--pruning_epochs``).
* Criterion: the run's selection metric (``selection.metric``, by default the sum of the target validation
  losses) scores the merges, the ranking and the branch order; the official scripts use Δm against hard-coded
  single-task results (``count_improvement``, scene understanding) or the mean target validation accuracy
  (DomainNet).
* Integer buffers: ``num_batches_tracked`` comes from the branch with the largest weight; the official
  ``sum_all_weights`` (called with ``no_sum=[]``) takes the Λ-weighted sum of every entry, the integer counters
  included (truncated when loaded).
* ``prune_to`` is our extension: the official code keeps every branch for the whole run (its
  ``--pruning_epochs`` is the length of the ranking phase, not a pruning step).

Every branch's loader generator is seeded like a plain run's, so in a period all branches see the same batches
(common random numbers): branches differ by their task weights alone, and a run whose merges all put weight 1
on the target-only branch reproduces the STL run of the same seed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.trainer import Trainer

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


def merge_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Σ_b w_b · state_b for floating-point entries; other entries from the branch with the largest weight."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"merge_states needs one weight per state, got {len(states)} states and {len(weights)} weights")
    lead = max(range(len(weights)), key=lambda b: weights[b])
    merged: State = {}
    for key, ref in states[0].items():
        if torch.is_floating_point(ref):
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for s, w in zip(states, weights):
                if w != 0.0:
                    acc += float(w) * s[key].to(torch.float64)
            merged[key] = acc.to(ref.dtype)
        else:
            merged[key] = states[lead][key].clone()
    return merged


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    if not math.isfinite(a):
        return False
    return a > b if higher_is_better else a < b


def greedy_merge_search(
    scores: Sequence[float], evaluate: Callable[[list[float]], float], grid: Sequence[float], higher_is_better: bool
) -> tuple[list[float], list[dict[str, Any]]]:
    """The official normalised greedy search; returns the normalised weights and every trial."""
    k = len(scores)
    order = sorted(range(k), key=lambda b: -scores[b] if higher_is_better else scores[b])
    lam = [0.0] * k
    lam[order[0]] = 1.0
    best = scores[order[0]]
    trials: list[dict[str, Any]] = []
    for j, b in enumerate(order[1:], start=1):
        mean = sum(lam) / j
        chosen = 0.0
        for a in grid:
            if a == 0:
                continue
            cand = list(lam)
            cand[b] = a * mean
            total = sum(cand)
            norm = [c / total for c in cand]
            s = evaluate(norm)
            trials.append({"branch": b, "a": a, "weights": norm, "score": s})
            if _better(s, best, higher_is_better):
                best, chosen = s, a
        lam[b] = chosen * mean
    total = sum(lam)
    return [c / total for c in lam], trials


def lambda_merge_search(
    evaluate: Callable[[list[float]], float], grid: Sequence[float], higher_is_better: bool
) -> tuple[list[float], list[dict[str, Any]]]:
    """θ(λ) = (1 − λ)θ_0 + λθ_1 for λ in ``grid``: the best-scoring point (ties: the first, i.e. smallest λ)."""
    best_w, best_s, trials = None, None, []
    for lam in grid:
        w = [1.0 - lam, lam]
        s = evaluate(w)
        trials.append({"lambda": lam, "weights": w, "score": s})
        if best_s is None or _better(s, best_s, higher_is_better):
            best_w, best_s = w, s
    if best_w is None:
        raise ConfigError("mode.grid is empty")
    return best_w, trials


class ForkMerge:
    """Runs ForkMerge around a *main* trainer (the merged model: evaluation, selection, checkpoints, summary)
    and branch trainers built by ``make_branch(name, auxiliaries) -> Trainer``."""

    def __init__(self, main: Trainer, make_branch: Callable[[str, list[str]], Trainer], spec: Any):
        self.main, self.make_branch, self.spec = main, make_branch, spec
        self._trial_vals: dict[tuple[float, ...], dict[str, float]] = {}  # this period's merge trials: validation metrics
        check_choice("mode.search", spec.search, ("greedy", "lambda"))
        check_choice("mode.merge_unit", spec.merge_unit, ("epochs", "steps"))
        if not isinstance(spec.merge_every, int) or spec.merge_every < 1:
            raise ConfigError(f"mode.merge_every must be a positive integer, got {spec.merge_every!r}")
        grid = [float(a) for a in spec.grid]
        if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
            raise ConfigError(f"mode.grid must be a non-empty list of values in [0, 1], got {list(spec.grid)}")
        self.grid = grid
        self.aux = list(main.auxiliaries)
        if not self.aux:
            raise ConfigError("mode=forkmerge needs at least one auxiliary task")
        self.topk = [int(k) for k in spec.topk] if spec.topk is not None else None
        if self.topk is not None and any(not 0 <= k <= len(self.aux) for k in self.topk):
            raise ConfigError(f"mode.topk={self.topk} must lie in [0, {len(self.aux)}] (the number of auxiliaries {self.aux})")
        self.metric, self.higher = main.selector.metric, main.selector.mode == "max"
        if main.selector.rule != "best":
            self.metric, self.higher = "val/loss", False
        self.merges: list[dict[str, Any]] = []
        self.branch_time = 0.0

    # ------------------------------------------------------------------ branches
    def _resolve(self, entry: Any) -> list[str]:
        if entry == "all":
            return list(self.aux)
        names = list(entry or [])
        unknown = [t for t in names if t not in self.aux]
        if unknown:
            raise ConfigError(f"mode.branches names {unknown}, which are not auxiliaries; auxiliaries: {self.aux}")
        return names

    def _ranking(self) -> list[str]:
        """Rank the auxiliaries: target + each one alone from the initial weights, best validation score first."""
        scores = {}
        init = copy.deepcopy(self.main.model.state_dict())
        for a in self.aux:
            trainer = self.make_branch(f"rank_{a}", [a])
            trainer.model.load_state_dict(init)
            for _ in range(self.spec.ranking_epochs):
                trainer.run_epoch()
            scores[a] = trainer.evaluate("val")[self.metric]
            del trainer
        ranked = sorted(self.aux, key=lambda a: -scores[a] if self.higher else scores[a])
        self.main.logger.log_event("forkmerge_ranking", {"scores": scores, "ranking": ranked})
        return ranked

    def _branch_specs(self) -> list[tuple[str, list[str]]]:
        if self.topk is not None:
            ranked = self._ranking()
            specs = [(f"top{k}", ranked[:k]) for k in self.topk]
        else:
            specs = []
            for entry in self.spec.branches:
                auxs = self._resolve(entry)
                name = "target" if not auxs else ("all" if entry == "all" else "+".join(auxs))
                specs.append((name, auxs))
        if len(specs) < 2:
            raise ConfigError(f"ForkMerge needs at least 2 branches, got {[n for n, _ in specs]}")
        if self.spec.search == "lambda" and len(specs) != 2:
            raise ConfigError(f"mode.search=lambda merges exactly 2 branches, got {len(specs)}; use search=greedy")
        return specs

    # ------------------------------------------------------------------ loop
    def _evaluate_weights(self, states: Sequence[State], weights: list[float]) -> float:
        """The validation score of the merge with ``weights``; all its validation metrics are kept for the period
        (the chosen merge is one of the trials unless the greedy search kept the best branch alone)."""
        self.main.model.load_state_dict(merge_states(states, weights))
        val = self.main.evaluate("val")
        self._trial_vals[tuple(weights)] = val
        return val[self.metric]

    def _state(self) -> dict[str, Any]:
        """What a resumed run needs besides the main trainer's state: the branches (model, optimizer, scheduler,
        data generator), the branch layout (so a top-k ranking is not redone) and the merge history."""
        return {
            "period": self._period, "merges": list(self.merges), "branch_time": self.branch_time,
            "branch_specs": [[n, list(a)] for n, a in self.branch_specs.items()], "active": list(self._branches),
            "branches": {n: b.state_dict() for n, b in self._branches.items()},
        }

    def _start(self) -> tuple[dict[str, Trainer], int]:
        """The branches (restored from a resumed run's checkpoint) and the first period to train."""
        main = self.main
        saved = main.loaded_extra.get("forkmerge")
        specs = [(n, list(a)) for n, a in saved["branch_specs"]] if saved else self._branch_specs()
        self.branch_specs = {name: auxs for name, auxs in specs}
        branches = {name: self.make_branch(name, auxs) for name, auxs in specs}
        for b in branches.values():  # branches are checkpointed inside the main checkpoint, at merges only
            b.checkpoint_only_at_boundaries()
        if not saved:
            return branches, 1
        branches = {n: branches[n] for n in saved["active"]}
        for n, b in branches.items():  # (each branch state holds the same RNG streams as the main state)
            b.load_state_dict(saved["branches"][n], f"{main.last_checkpoint} [branch {n}]")
            b.logger.truncate(int(saved["branches"][n]["metrics_offset"]))
        self.merges, self.branch_time = list(saved["merges"]), float(saved["branch_time"])
        return branches, int(saved["period"]) + 1

    def _periods(self, branches: Mapping[str, Trainer]) -> tuple[int, int | None]:
        """Number of merge periods and, for ``merge_unit=steps``, the steps per period (branches train that many)."""
        s = self.main.settings
        if self.spec.merge_unit == "epochs":
            return math.ceil(s.epochs / self.spec.merge_every), None
        steps = self.spec.merge_every
        for b in branches.values():
            b.limit_steps_per_epoch(steps)
        return math.ceil(s.epochs * len(self.main.train_loader) / steps), steps

    def _train_branches(self, branches: Mapping[str, Trainer], merged: State, period: int, steps: int | None
                        ) -> tuple[dict[str, State], dict[str, float]]:
        """Every branch from the merged state for one period; their states and validation scores."""
        s = self.main.settings
        states, scores = {}, {}
        t0 = time.monotonic()
        for name, b in branches.items():
            b.model.load_state_dict(merged)
            for _ in range(1 if steps else min(self.spec.merge_every, s.epochs - (period - 1) * self.spec.merge_every)):
                b.run_epoch()
            # no copy: nothing writes to a branch between here and the merge, which builds new tensors
            states[name] = b.model.state_dict()
            scores[name] = b.evaluate("val")[self.metric]
        self.branch_time += time.monotonic() - t0
        return states, scores

    def _merge(self, states: Mapping[str, State], scores: Mapping[str, float]
               ) -> tuple[dict[str, float], list[dict[str, Any]], State]:
        """Search the merge weights on the targets' validation score; the weights, the trials and the merged state
        (which the main model holds after)."""
        names = list(states)
        state_list = [states[n] for n in names]
        self._trial_vals = {}

        def evaluate(w: list[float]) -> float:
            return self._evaluate_weights(state_list, w)

        if self.spec.search == "greedy":
            weights, trials = greedy_merge_search([scores[n] for n in names], evaluate, self.grid, self.higher)
        else:
            weights, trials = lambda_merge_search(evaluate, self.grid, self.higher)
        merged = merge_states(state_list, weights)
        self.main.model.load_state_dict(merged)
        return dict(zip(names, weights)), trials, merged

    def _record(self, period: int, periods: int, chosen: Mapping[str, float], scores: Mapping[str, float],
                trials: list[dict[str, Any]], global_step: int) -> None:
        """Select on the merged model (its validation metrics from the chosen trial) and log the merge."""
        main = self.main
        self.merges.append({"period": period, "weights": dict(chosen), "branch_scores": dict(scores), "trials": len(trials)})
        main.advance_to(period, global_step)
        record: dict[str, float] = {f"forkmerge/weight/{n}": w for n, w in chosen.items()}
        record.update({f"forkmerge/branch_score/{n}": v for n, v in scores.items()})
        val = main.evaluate_and_select(period, record, val=self._trial_vals.get(tuple(chosen.values())))
        main.logger.log_epoch(record, epoch=period, global_step=main.global_step)
        main.logger.log_event("merge", {"period": period, "weights": dict(chosen), "branch_scores": dict(scores), "trials": trials})
        log.info("merge %d/%d  weights %s  %s=%.4g", period, periods, {n: round(w, 3) for n, w in chosen.items()},
                 self.metric, val[self.metric])

    def _prune(self, branches: dict[str, Trainer], chosen: Mapping[str, float], period: int) -> dict[str, Trainer]:
        if period == 1 and self.spec.prune_to and self.spec.prune_to < len(branches):
            keep = sorted(chosen, key=lambda n: -chosen[n])[: self.spec.prune_to]
            log.info("pruned the branches to %s", keep)
            return {n: branches[n] for n in chosen if n in keep}
        return branches

    def fit(self) -> dict[str, Any]:
        """Train, merging every period; checkpoints (``main``'s ``last.pt``, branches included) at merge boundaries,
        so a resumed run continues after its last saved merge.  A preemption signal stops at the next merge."""
        main = self.main
        branches, start = self._start()
        self._branches, self._period = branches, start - 1
        main.extra_state["forkmerge"] = self._state
        periods, steps = self._periods(branches)
        merged = copy.deepcopy(main.model.state_dict())
        with main.guarded():
            for period in range(start, periods + 1):
                states, scores = self._train_branches(branches, merged, period, steps)
                chosen, trials, merged = self._merge(states, scores)
                self._record(period, periods, chosen, scores, trials, sum(b.global_step for b in branches.values()))
                branches = self._prune(branches, chosen, period)
                self._branches, self._period = branches, period
                main.boundary_checkpoint(period)
            main.save_last()
            results = main.final_results()
        results["forkmerge"] = self.describe(periods)
        return main.finish(results)

    def describe(self, periods: int) -> dict[str, Any]:
        return {
            "branches": self.branch_specs, "search": self.spec.search, "grid": self.grid, "merge_every": self.spec.merge_every,
            "merge_unit": self.spec.merge_unit, "periods": periods, "prune_to": self.spec.prune_to, "topk": self.topk,
            "selection_metric": self.metric, "merges": [{k: v for k, v in m.items()} for m in self.merges],
            "branch_train_time_s": self.branch_time,
        }
