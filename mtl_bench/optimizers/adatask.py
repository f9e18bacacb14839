"""Task-wise adaptive optimizers: AdaTask (Adam, RMSProp, AdaGrad with per-task moments on shared parameters).

Yang, Pan, Wang, Yu, Shen, Chen, Xiao, Jiang, Guo, "AdaTask: A Task-Aware Adaptive Learning Rate Approach
to Multi-Task Learning", AAAI 2023 (arXiv 2211.15055).  Not to be confused with "AdaTask: Adaptive Multitask
Online Learning" (Della Vecchia et al., arXiv 2205.15802).  Official code: ``EnnengYang/AdaTask``
(``adatask.py``, Adam only).

The rule (paper, Algorithm 2; official code).  Every *shared* parameter keeps one set of adaptive moments
**per task**, fed with that task's gradient ``g^k`` of its (already weighted) loss; each task's step is
normalised by its own history and the K per-task steps are **summed**::

    Adam     m^k ← β1 m^k + (1−β1) g^k;  v^k ← β2 v^k + (1−β2) (g^k)²
             θ ← θ − lr Σ_k m̂^k / (√v̂^k + ε),   m̂^k = m^k / (1−β1^t),  v̂^k = v^k / (1−β2^t)
    RMSProp  v^k ← α v^k + (1−α) (g^k)²;         θ ← θ − lr Σ_k g^k / (√v^k + ε)
    AdaGrad  s^k ← s^k + (g^k)²;                 θ ← θ − lr Σ_k g^k / (√s^k + ε)

Task-specific parameters (heads) and any other group (a learnable combiner) get the ordinary single-state
update of the same family from their ``.grad``; for a head only its own task contributes, so this *is* the
per-task state (the official code does the same).

Conventions and deviations (documented, each one tested in ``tests/test_optimizers.py``):

* **Scale**: the per-task steps are summed (``reduction="sum"``, the paper's rule and the official code), so
  the shared step can be up to K times a plain-Adam step at the same lr — tune lr per method.
  ``reduction="mean"`` divides the shared step by K; it is *not* the paper's rule.
* **Step clock / bias correction (Adam)**: the official code keeps one ``step`` counter per parameter,
  incremented once per optimizer step and used for both bias corrections; since every shared parameter is
  stepped on every step, that is one clock shared by all tasks.  We keep one clock **per task**
  (``state["task_step"]``, K ints): with ``missing_task="zero"`` all K clocks advance together on every step
  (identical to the code), with ``missing_task="skip"`` a task's clock advances only on the steps it is
  present, so its moments are bias-corrected exactly like those of a single-task Adam that saw only those
  steps.  RMSProp and AdaGrad have no bias correction; the clock is kept for them too (it is unused).
* **ε placement**: Adam adds ε to the bias-corrected ``√v̂^k`` (outside the root), as the official code and
  ``torch.optim.Adam``.  RMSProp and AdaGrad add ε to ``√v^k`` / ``√s^k`` (outside the root), as
  ``torch.optim.RMSprop`` / ``torch.optim.Adagrad``; the paper's placement for these two variants has not
  been checked against the PDF (only the Adam variant was released as code), so it is our choice.
  (Implementation: Adam computes ``√(1−β2^t)/(1−β1^t) · m / (√v + ε√(1−β2^t))``, algebraically the same.)
* **Weight decay**: decoupled (AdamW-style) ``θ ← θ − lr·wd·θ``, applied **once per step** to every
  parameter that is stepped (not once per task), before the update.  The official code accepts
  ``weight_decay`` but ignores it (deviation); with K = 1 and ``weight_decay > 0`` AdaTask-Adam equals
  ``torch.optim.AdamW``, not ``torch.optim.Adam`` (whose decay is an L2 term in the gradient).
* **Missing tasks** (``present[k] = False``: task k had no gradient on this step; the row of ``grads`` is
  ignored, even if it holds NaN): ``missing_task="zero"`` (paper/code behaviour) treats it as a zero
  gradient — its moments decay, its clock advances and, for Adam, its old momentum still moves the
  parameters; ``missing_task="skip"`` freezes its state and clock and it contributes nothing this step.
  For RMSProp and AdaGrad a zero gradient contributes no step, so the two policies differ only in the
  state (RMSProp's ``v^k`` decays under ``zero``; AdaGrad's sum is unchanged either way).  Heads follow
  their ``.grad``: a parameter without ``.grad`` (its task absent) is not stepped, as in every torch optimizer.
* **ε = 0** is allowed (loss-scale invariance tests); then a task whose second moment is exactly zero gives
  0/0 = NaN, as in torch's optimizers.
* **Gradient clipping / grad scaling** act on ``.grad``; the per-task matrix passed to
  :meth:`TaskWiseOptimizer.set_task_gradients` is used as given (the engine unscales it).

Cost: the shared state is 2K×d (Adam) or K×d (RMSProp, AdaGrad) instead of 2d / d; a step needs one K×d
scratch tensor (kept between steps on CPU, not saved) and about five whole-tensor ops over the K×d block plus
a sum over tasks and one ``_foreach_add_`` into the parameters, i.e. about K plain updates
(``scripts/bench_optimizers.py``).

State layout: the shared state is kept as flat K×d tensors (d = number of shared scalars, in the order of the
``shared`` group's params) in ``self.state[<first shared parameter>]`` (keys ``task_step``, ``task_*``), so
``state_dict()`` / ``load_state_dict()`` move and cast it like any torch optimizer state; heads use the usual
per-parameter state with torch's key names (``step``, ``exp_avg``, ``exp_avg_sq``, ``square_avg``, ``sum``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Sequence

import torch

from mtl_bench.errors import ConfigError

REDUCTIONS = ("sum", "mean")
MISSING_TASK = ("zero", "skip")
SHARED = "shared"


# ---------------------------------------------------------------------------------------------- validation
def _where(group: dict[str, Any]) -> str:
    name = group.get("name")
    return f" (param group '{name}')" if name not in (None, SHARED) else ""


def check_lr(group: dict[str, Any]) -> None:
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"optimizer.lr must be a positive number, got {group['lr']!r}{_where(group)}")


def check_range(group: dict[str, Any], key: str, lo: float, hi: float | None, hi_open: bool = True) -> None:
    """``lo ≤ group[key] < hi`` (or ``≤ hi`` when not ``hi_open``; no upper bound when ``hi`` is None)."""
    value = group[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        rng = f"in [{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else f">= {lo}"
        raise ConfigError(f"optimizer.{key} must be a number {rng}, got {value!r}{_where(group)}")


def dense_grads(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The group's parameters that have a gradient, and those gradients (sparse gradients are refused)."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        params.append(p)
        grads.append(p.grad)
    return params, grads


def check_group_choice(group: dict[str, Any], key: str, choices: Sequence[str]) -> None:
    if group[key] not in choices:
        raise ConfigError(f"optimizer.{key}={group[key]!r} is invalid; choose one of {list(choices)}{_where(group)}")


def _sizes(params: Sequence[torch.Tensor]) -> list[int]:
    return [p.numel() for p in params]


def _views(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat d-vector shaped like ``params`` (no copy)."""
    return [v.view_as(p) for v, p in zip(flat.split(_sizes(params)), params)]


def _row_sum(rows: torch.Tensor, out: torch.Tensor, chain: bool) -> None:
    """``out = rows.sum(0)``; for a few rows on CPU a chain of adds is faster than the dim-0 reduction."""
    if rows.shape[0] == 1:
        out.copy_(rows[0])
    elif chain:
        torch.add(rows[0], rows[1], out=out)
        for j in range(2, rows.shape[0]):
            out.add_(rows[j])
    else:
        torch.sum(rows, 0, out=out)


def _row_ids(mask: Sequence[bool]) -> list[int]:
    return [k for k, m in enumerate(mask) if m]


def _mask_absent(grads: torch.Tensor, present: list[bool] | None, skip: bool) -> tuple[torch.Tensor, list[int], list[bool]]:
    """``grads`` with the rows of absent tasks zeroed (a copy; they may hold anything), the absent rows, and the tasks
    whose state and clock advance (all of them unless ``missing_task="skip"`` and some task is absent)."""
    k = grads.shape[0]
    absent = [] if present is None else _row_ids([not x for x in present])
    if absent:
        grads = grads.clone()
        for j in absent:
            grads[j].zero_()
    active = [True] * k if not (skip and absent) else present
    return grads, absent, active


def _scale_rows(directions: torch.Tensor, frozen: set[int], scales: list[float] | None, lr: float) -> None:
    """Zero the ``frozen`` rows of the K×c block ``directions``; multiply each other row k by −lr·``scales[k]``."""
    for j in frozen:
        directions[j].zero_()
    if scales is not None:
        for j in range(directions.shape[0]):
            if j not in frozen:
                directions[j].mul_(-lr * scales[j])


# ---------------------------------------------------------------------------------------------- base class
class TaskWiseOptimizer(torch.optim.Optimizer):
    """An optimizer that keeps per-task state on the shared parameters.

    The parameter groups must contain exactly one group named ``"shared"`` (``mtl_bench.optim.param_groups``
    builds it).  Before each :meth:`step` the caller (the gradient engine) passes the K×d matrix of per-task
    gradients over the shared parameters with :meth:`set_task_gradients`; the ``.grad`` of the shared
    parameters is then ignored (and a step on which they have ``.grad`` but no task gradients were given is an
    error: the summed gradient is never used silently).  Every other group is stepped from ``.grad`` with the
    single-state rule of the same family.

    ``record_task_updates``: when True, :meth:`step` keeps ``last_task_updates``, the K×d signed per-task updates
    of the shared parameters ``−lr · step_k`` before summation/reduction and without weight decay: the applied
    update is ``last_task_updates.sum(0)`` (``reduction="sum"``) or ``.mean(0)`` (``"mean"``), plus the decay.
    """

    task_wise: ClassVar[bool] = True
    _shared_keys: ClassVar[tuple[str, ...]] = ()  # flat K×d state tensors of the shared group
    _absent_rows_move: ClassVar[bool] = False  # whether an absent task (zero gradient) still moves θ (Adam)
    cpu_block_elements: ClassVar[int] = 1 << 20  # CPU only: K × (columns per block) of the shared update

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        super().__init__(params, defaults)
        names = [g.get("name", f"<unnamed #{i}>") for i, g in enumerate(self.param_groups)]
        if names.count(SHARED) != 1:
            raise ConfigError(
                f"{type(self).__name__} needs exactly one parameter group named '{SHARED}' (its per-task state lives on the "
                f"shared parameters; build the groups with mtl_bench.optim.param_groups), got groups {names}"
            )
        shared = self._shared_group()["params"]
        kinds = {(p.dtype, p.device) for p in shared}
        if len(kinds) > 1:
            raise ValueError(
                f"{type(self).__name__}: all shared parameters must have one dtype and device (flat K×d state), "
                f"got {sorted(str(k) for k in kinds)}"
            )
        self.record_task_updates: bool = False
        self.last_task_updates: torch.Tensor | None = None
        self._task_grads: torch.Tensor | None = None
        self._present: list[bool] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:  # copy.deepcopy / pickle
        super().__setstate__(state)
        self.__dict__.setdefault("record_task_updates", False)
        self.__dict__.setdefault("last_task_updates", None)
        self.__dict__.setdefault("_task_grads", None)
        self.__dict__.setdefault("_present", None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    # -------------------------------------------------------------------------------- hyper-parameters
    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group)
        check_range(group, "eps", 0.0, None)
        check_range(group, "weight_decay", 0.0, None)
        check_group_choice(group, "reduction", REDUCTIONS)
        check_group_choice(group, "missing_task", MISSING_TASK)

    # -------------------------------------------------------------------------------- the interface
    def _shared_group(self) -> dict[str, Any]:
        return next(g for g in self.param_groups if g.get("name") == SHARED)

    @property
    def num_tasks(self) -> int | None:
        """K, fixed by the first step (None before it)."""
        state = self.state.get(self._shared_group()["params"][0])
        return None if not state else len(state["task_step"])

    def set_task_gradients(self, grads: torch.Tensor, present: torch.Tensor | Sequence[bool] | None = None) -> None:
        """Per-task gradients for the next :meth:`step`.

        ``grads``: K×d gradients of the (already weighted) task losses w.r.t. the shared parameters, flattened in
        the order of the ``shared`` group's params (kept by reference until the step: do not modify it in
        between).  ``present``: bool K-vector, False = that task had no gradient on this step (its row is
        ignored; see ``missing_task``); None = all present.  Pass a CPU tensor or a list (a CUDA tensor costs
        one device synchronisation).  A second call before the step replaces the first.
        """
        name = type(self).__name__
        params = self._shared_group()["params"]
        d = sum(_sizes(params))
        if not isinstance(grads, torch.Tensor) or grads.dim() != 2:
            shape = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads).__name__
            raise ValueError(f"{name}.set_task_gradients: grads must be a K×d tensor (K tasks, d = {d} shared scalars), got {shape}")
        k, cols = grads.shape
        if cols != d:
            raise ValueError(
                f"{name}.set_task_gradients: grads has {cols} columns but the '{SHARED}' group has d = {d} scalars "
                f"(flattened in the order of its params)"
            )
        if k < 1:
            raise ValueError(f"{name}.set_task_gradients: grads has no rows (K = 0 tasks)")
        expected = self.num_tasks
        if expected is not None and k != expected:
            raise ValueError(
                f"{name}.set_task_gradients: got gradients of K = {k} tasks, but the optimizer state holds {expected} tasks "
                f"(K is fixed by the first step)"
            )
        ref = params[0]
        if grads.dtype != ref.dtype or grads.device != ref.device:
            raise ValueError(
                f"{name}.set_task_gradients: grads is {grads.dtype} on {grads.device}, the shared parameters are "
                f"{ref.dtype} on {ref.device}"
            )
        mask: list[bool] | None = None
        if present is not None:
            if isinstance(present, torch.Tensor):
                if present.dtype != torch.bool or present.dim() != 1:
                    raise ValueError(f"{name}.set_task_gradients: present must be a bool vector of length K = {k}, "
                                     f"got {present.dtype} of shape {tuple(present.shape)}")
                mask = [bool(x) for x in present.tolist()]
            else:
                mask = [bool(x) for x in present]
            if len(mask) != k:
                raise ValueError(f"{name}.set_task_gradients: present has {len(mask)} entries, expected K = {k}")
            if all(mask):
                mask = None
        self._task_grads, self._present = grads, mask

    # -------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("name") == SHARED:
                self._step_shared(group)
            else:
                params, grads = dense_grads(self, group)
                if params:
                    if group["weight_decay"]:
                        torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
                    self._step_params(group, params, grads)
        return loss

    def _step_shared(self, group: dict[str, Any]) -> None:
        params = group["params"]
        grads, present = self._take_task_gradients(params)
        if grads is None:
            return
        k = grads.shape[0]
        state = self._shared_state(group, params[0], grads)
        grads, absent, active = _mask_absent(grads, present, group["missing_task"] == "skip")
        clock = state["task_step"]
        for j in range(k):
            if active[j]:
                clock[j] += 1
        frozen = set(_row_ids([not a for a in active]))  # rows that contribute no step
        if not self._absent_rows_move:
            frozen.update(absent)
        lr = group["lr"]
        per_k = 1.0 / k if group["reduction"] == "mean" else 1.0
        scale = self._shared_scale(group, clock)
        rescale = isinstance(scale, list) or self.record_task_updates
        if rescale:
            scales = scale if isinstance(scale, list) else [scale] * k
            alpha = per_k
        else:
            scales = None
            alpha = -lr * scale * per_k
        out, update = self._scratch(grads)
        self._shared_update(group, state, grads, active, frozen, scales, out, update)
        if self.record_task_updates:
            self.last_task_updates = out
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
        torch._foreach_add_(params, _views(update, params), alpha=alpha)

    def _take_task_gradients(self, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[bool] | None]:
        """The K×d gradients and presence mask given by :meth:`set_task_gradients` for this step (consumed), or
        (None, None) when none were given and the shared parameters have no ``.grad`` either (nothing to step)."""
        grads = self._task_grads
        self.last_task_updates = None
        if grads is None:
            if any(p.grad is not None for p in params):
                raise RuntimeError(
                    f"{type(self).__name__}.step(): the '{SHARED}' parameters have .grad but set_task_gradients() was not "
                    f"called since the last step; a task-wise optimizer needs the K×d per-task gradients and never falls "
                    f"back to the summed gradient"
                )
            return None, None
        present = self._present
        self._task_grads = self._present = None
        return grads, present

    def _shared_state(self, group: dict[str, Any], first: torch.Tensor, grads: torch.Tensor) -> dict[str, Any]:
        """The flat K×d shared state (kept under the first shared parameter), created on the first step."""
        state = self.state[first]
        if not state:
            state["task_step"] = [0] * grads.shape[0]
            for key in self._shared_keys:
                state[key] = self._initial_shared(group, key, grads)
        return state

    def _scratch(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D (K×d) and the summed update (d).

        On CPU a scratch tensor kept between steps (a fresh K×d allocation per step costs page faults); on
        accelerators a fresh tensor (the caching allocator reuses it, and the memory is free for the forward pass).
        With record_task_updates D is a fresh tensor, handed out as last_task_updates."""
        if self.record_task_updates or grads.device.type != "cpu":
            out = torch.empty_like(grads, memory_format=torch.contiguous_format)
            update = torch.empty_like(grads[0], memory_format=torch.contiguous_format)
            return out, update
        return self._buffer("_work", grads), self._buffer("_update", grads[0])

    def _shared_update(
        self, group: dict[str, Any], state: dict[str, Any], grads: torch.Tensor, active: list[bool], frozen: set[int],
        scales: list[float] | None, out: torch.Tensor, update: torch.Tensor,
    ) -> None:
        """Advance the state of the ``active`` tasks and write Σ_k D_k into ``update`` (each row times −lr·s_k when
        ``scales`` is given; the ``frozen`` rows contribute nothing).  On CPU the columns are processed in blocks of
        ~cpu_block_elements (all K rows at once) so that a block's operands stay in cache; on accelerators one block."""
        k, d = grads.shape
        clock = state["task_step"]
        on_cpu = grads.device.type == "cpu"
        width = max(1, self.cpu_block_elements // k) if on_cpu else d
        fused = on_cpu and 1 < k <= 4 and scales is None and not frozen
        for a in range(0, d, width):
            cols = slice(a, min(d, a + width))
            block = {key: state[key][:, cols] for key in self._shared_keys}
            num, den = self._shared_fraction(group, block, clock, grads[:, cols], active, out[:, cols])
            if fused:  # a few tasks on CPU: Σ_k num_k / den_k accumulated row by row, without materialising D
                u = update[cols]
                torch.div(num[0], den[0], out=u)
                for j in range(1, k):
                    u.addcdiv_(num[j], den[j])
                continue
            directions = torch.div(num, den, out=den)
            _scale_rows(directions, frozen, scales, group["lr"])
            _row_sum(directions, update[cols], chain=on_cpu and k <= 4)

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A scratch tensor shaped like ``like``, reused across steps (not part of the state)."""
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(like.shape, dtype=like.dtype, device=like.device)
            setattr(self, name, buf)
        return buf

    # -------------------------------------------------------------------------------- family hooks
    def _initial_shared(self, group: dict[str, Any], key: str, grads: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grads, memory_format=torch.contiguous_format)

    def _shared_scale(self, group: dict[str, Any], clock: list[int]) -> float | list[float]:
        """The per-task step multiplier s (one float, or one per task): task k's step is ``−lr · s_k · D_k``."""
        return 1.0

    def _shared_fraction(
        self, group: dict[str, Any], state: dict[str, torch.Tensor], clock: list[int], grads: torch.Tensor,
        active: list[bool], out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the K×c state blocks ``state[key]`` of the ``active`` tasks with the gradient block ``grads`` and
        return (N, Q) with the directions D = N / Q; Q is written into the K×c scratch block ``out``.  Rows of
        inactive tasks may hold anything (they are zeroed afterwards)."""
        raise NotImplementedError

    def _step_params(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """The single-state update of a non-shared group (weight decay already applied)."""
        raise NotImplementedError

    @staticmethod
    def _ticks(states: list[dict[str, Any]]) -> list[int]:
        steps = []
        for st in states:
            st["step"] += 1
            steps.append(st["step"])
        return steps


# ---------------------------------------------------------------------------------------------- variants
class AdaTaskAdam(TaskWiseOptimizer):
    """Adam with AdaTask (Yang et al., AAAI 2023): per-task first and second moments on the shared parameters,
    per-task bias-corrected steps summed; ordinary Adam on heads.  Decoupled weight decay (AdamW-style).

    Defaults as the official code's class (lr 1e-3, β = (0.9, 0.999), ε = 1e-8); its CityScapes script uses
    lr 1e-4.  See the module docstring for the clock, ε, reduction, weight-decay and missing-task conventions.
    """

    _shared_keys = ("task_exp_avg", "task_exp_avg_sq")
    _absent_rows_move = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: str = "sum",
        missing_task: str = "zero",
    ):
        if not isinstance(betas, (str, tuple)) and hasattr(betas, "__iter__"):
            betas = tuple(betas)  # a list (YAML) or a ListConfig
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, reduction=reduction, missing_task=missing_task)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        betas = group["betas"]
        ok = isinstance(betas, (list, tuple)) and len(betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas
        )
        if not ok:
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}{_where(group)}")

    @staticmethod
    def _corrections(group: dict[str, Any], t: int) -> tuple[float, float]:
        """(√(1−β2^t), √(1−β2^t) / (1−β1^t)): the ε factor and the step multiplier of a task at clock t."""
        beta1, beta2 = group["betas"]
        bc2 = math.sqrt(1.0 - beta2**t)
        return bc2, (bc2 / (1.0 - beta1**t) if t > 0 else 0.0)  # t = 0: a task never seen (its row is zeroed)

    def _shared_scale(self, group, clock):
        if len(set(clock)) == 1:
            return self._corrections(group, clock[0])[1]
        return [self._corrections(group, t)[1] for t in clock]  # per-task clocks (missing_task="skip")

    def _shared_fraction(self, group, state, clock, grads, active, out):
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        m, v = state["task_exp_avg"], state["task_exp_avg_sq"]
        if all(active):
            m.lerp_(grads, 1.0 - beta1)
            v.mul_(beta2).addcmul_(grads, grads, value=1.0 - beta2)
        else:
            for j in _row_ids(active):
                m[j].lerp_(grads[j], 1.0 - beta1)
                v[j].mul_(beta2).addcmul_(grads[j], grads[j], value=1.0 - beta2)
        denom = torch.sqrt(v, out=out)
        if len(set(clock)) == 1:
            denom.add_(eps * self._corrections(group, clock[0])[0])
        else:
            for j, t in enumerate(clock):
                denom[j].add_(eps * self._corrections(group, t)[0])
        return m, denom

    def _step_params(self, group, params, grads):
        beta1, beta2 = group["betas"]
        eps, lr = group["eps"], group["lr"]
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps = self._ticks(states)
        ms = [st["exp_avg"] for st in states]
        vs = [st["exp_avg_sq"] for st in states]
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(vs)
        bc2 = [math.sqrt(1.0 - beta2**t) for t in steps]
        step_size = [-lr * b / (1.0 - beta1**t) for b, t in zip(bc2, steps)]
        if len(set(steps)) == 1:
            torch._foreach_add_(denom, eps * bc2[0])
            torch._foreach_addcdiv_(params, ms, denom, step_size[0])
        else:
            torch._foreach_add_(denom, [eps * b for b in bc2])
            torch._foreach_addcdiv_(params, ms, denom, step_size)


class AdaTaskRMSprop(TaskWiseOptimizer):
    """RMSProp with AdaTask (Yang et al., AAAI 2023): per-task squared-gradient averages on the shared
    parameters, per-task steps ``g^k / (√v^k + ε)`` summed; ordinary RMSProp (no momentum, not centred) on
    heads.  Defaults as ``torch.optim.RMSprop`` (lr 1e-2, α = 0.99, ε = 1e-8).  ε outside the root (as torch;
    the paper's placement for this variant is unverified).  Decoupled weight decay (torch's RMSprop uses L2)."""

    _shared_keys = ("task_square_avg",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: str = "sum",
        missing_task: str = "zero",
    ):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, reduction=reduction, missing_task=missing_task)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_range(group, "alpha", 0.0, 1.0)

    def _shared_fraction(self, group, state, clock, grads, active, out):
        alpha, eps = group["alpha"], group["eps"]
        v = state["task_square_avg"]
        if all(active):
            v.mul_(alpha).addcmul_(grads, grads, value=1.0 - alpha)
        else:
            for j in _row_ids(active):
                v[j].mul_(alpha).addcmul_(grads[j], grads[j], value=1.0 - alpha)
        denom = torch.sqrt(v, out=out).add_(eps)
        return grads, denom

    def _step_params(self, group, params, grads):
        alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:
                st["step"] = 0
                st["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self._ticks(states)
        vs = [st["square_avg"] for st in states]
        torch._foreach_mul_(vs, alpha)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - alpha)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, grads, denom, -lr)


class AdaTaskAdagrad(TaskWiseOptimizer):
    """AdaGrad with AdaTask (Yang et al., AAAI 2023): per-task sums of squared gradients on the shared
    parameters, per-task steps ``g^k / (√s^k + ε)`` summed; ordinary AdaGrad on heads.  Defaults as
    ``torch.optim.Adagrad`` (lr 1e-2, ε = 1e-10, initial accumulator 0; no ``lr_decay``).  ε outside the root (as
    torch; the paper's placement for this variant is unverified).  Decoupled weight decay (torch's uses L2)."""

    _shared_keys = ("task_sum",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        reduction: str = "sum",
        missing_task: str = "zero",
        initial_accumulator_value: float = 0.0,
    ):
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, reduction=reduction, missing_task=missing_task,
                        initial_accumulator_value=initial_accumulator_value)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_range(group, "initial_accumulator_value", 0.0, None)

    def _initial_shared(self, group, key, grads):
        return torch.full_like(grads, group["initial_accumulator_value"], memory_format=torch.contiguous_format)

    def _shared_fraction(self, group, state, clock, grads, active, out):
        s = state["task_sum"]
        if all(active):
            s.addcmul_(grads, grads)
        else:
            for j in _row_ids(active):
                s[j].addcmul_(grads[j], grads[j])
        denom = torch.sqrt(s, out=out).add_(group["eps"])
        return grads, denom

    def _step_params(self, group, params, grads):
        eps, lr = group["eps"], group["lr"]
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:
                st["step"] = 0
                st["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)
        self._ticks(states)
        sums = [st["sum"] for st in states]
        torch._foreach_addcmul_(sums, grads, grads)
        denom = torch._foreach_sqrt(sums)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, grads, denom, -lr)
