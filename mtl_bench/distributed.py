"""Multi-GPU (and multi-process CPU) training with ``torch.distributed``, launched by ``torchrun``.

Design: *no* ``nn.parallel.DistributedDataParallel``.  DDP's bucketed all-reduce hooks fire on every backward
pass, which breaks the engine's K separate per-task backward passes; instead the
:class:`~mtl_bench.engine.GradientEngine` reduces explicitly, once per step, at the point where it is exact:

* loss weightings: one backward of ``combine(losses)`` in which the combiner sees the *global-batch* mean
  losses (values all-reduced, gradients flowing through the local losses), then one coalesced all-reduce
  (average) of every model parameter's ``.grad``.  Since ∂f/∂L_k is evaluated at the global losses on every
  rank, the averaged gradient is Σ_k ∂f/∂L_k(L) ∇L_k on the global batch, also for combiners that are
  nonlinear in the losses (GLS, UW, IMTL-L, FAMO, ...);
* gradient aggregators, ``grad_source=params`` / ``last_shared``: the K×d per-task gradient matrix G and the K
  losses are all-reduced (averaged) *before* the combiner runs, so every rank aggregates the global-batch G
  into the same direction; the heads' gradients are averaged after being weighted;
* ``grad_source=representation``: representation gradients are per sample, so the global G is the
  concatenation of the ranks' blocks (each divided by the world size W), not their average.  The Gramian is
  exact: G Gᵀ = Σ_r G_r G_rᵀ / W², so Gramian weightings whose update is ``wᵀG`` (MGDA, MGDA-UB, IMTL-G,
  UPGrad, CAGrad, FairGrad, GCS, OL-AUX) are supported: rank r pushes ``wᵀG_r`` through its encoder and the
  parameter gradients are averaged.  Every other aggregator (PCGrad, GradVac, GradDrop, Nash-MTL with its
  norm clipping, DiBS-MTL, Aligned-MTL) is refused with a ``ConfigError`` under this source.

Data: every rank iterates the *same* seeded sampler over global batches of ``trainer.batch_size`` and loads
only its contiguous slice ``[rank·b, (rank+1)·b)`` with ``b = batch_size / world_size``
(:meth:`DistContext.shard_dataset`), so the union of the ranks' local batches is exactly the single-process
batch.  Incomplete last batches are always dropped under DDP (they could not be split evenly).

With ``WORLD_SIZE`` unset or 1 :func:`init_distributed` returns a no-op context (``enabled`` False): every
method returns at once and single-process runs are unchanged.  See ``docs/distributed.md``.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")

#: Gradient aggregators that are exact under DDP with ``grad_source=representation``: the GramianWeighting
#: subclasses that keep the base ``aggregate`` (direction ``wᵀG`` with ``w`` from the Gramian).
REPRESENTATION_NOTE = (
    "representation gradients are per sample, so under DDP only Gramian weightings with the plain update wᵀG "
    "(mgda, mgda_ub, imtl_g, upgrad, cagrad, fairgrad, gcs, ol_aux) can use grad_source=representation"
)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run; the default instance is the single-process no-op."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None
    sync_bn: bool = False
    group: Any = field(default=None, compare=False)  # process group (None: the default WORLD group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints and ``summary.json``."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What the run summary should record (``run_info["distributed"]``)."""
        return {"world_size": self.world_size, "backend": self.backend, "sync_bn": self.sync_bn,
                "local_batch_divisor": self.world_size}

    # ------------------------------------------------------------------ collectives (no-ops on one process)
    def _all_reduce_(self, tensors: Sequence[torch.Tensor], average: bool) -> None:
        """In-place SUM (or mean) over ranks of ``tensors``: one flat all-reduce per (device, dtype) group."""
        if not self.enabled or not tensors:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        for members in groups.values():
            if len(members) == 1 and members[0].is_contiguous():  # reduce in place, no staging copy
                torch.distributed.all_reduce(members[0], op=torch.distributed.ReduceOp.SUM, group=self.group)
                if average:
                    members[0].div_(self.world_size)
                continue
            flat = torch.cat([t.reshape(-1) for t in members])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=self.group)
            if average:
                flat.div_(self.world_size)
            offset = 0
            for t in members:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def average_(self, *tensors: torch.Tensor) -> None:
        """Replace each tensor by its mean over the ranks, in place (one collective per dtype)."""
        self._all_reduce_(tensors, average=True)

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Replace each tensor by its sum over the ranks, in place."""
        self._all_reduce_(tensors, average=False)

    def stack_means(self, *lists: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``torch.stack([t.detach().float() for t in lst])`` for each list of scalars; under DDP the means over the
        ranks, reduced in float64 before the cast (one collective), so they round like the global-batch values."""
        if not self.enabled:
            return tuple(torch.stack([t.detach().float() for t in lst]) for lst in lists)
        flat = torch.cat([torch.stack([t.detach().double() for t in lst]) for lst in lists])
        self.average_(flat)
        return tuple(part.float() for part in flat.split([len(lst) for lst in lists]))

    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` over the ranks (parameters without a gradient are skipped: which
        ones have none is a property of the graph, the same on every rank)."""
        if self.enabled:
            self._all_reduce_([p.grad for p in params if p.grad is not None], average=True)

    def average_buffers(self, module: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so that every rank
        evaluates and checkpoints the same model.  Exact for running means (an average of EMAs of the local
        batch means is the EMA of the global batch means); running variances miss the between-rank spread of
        the local means (use ``trainer.sync_bn`` for global statistics).  A collective: call it on every rank."""
        if self.enabled:
            self._all_reduce_([b for b in module.buffers() if b.is_floating_point()], average=True)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical seeds already give identical
        initialisations; this makes it a guarantee, as DDP's constructor does)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t, src=0, group=self.group)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value of a picklable object on every rank (e.g. the output folder, whose Hydra timestamp may
        differ between the ranks)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the ranks (one collective): rank-local decisions that lead to collectives or to
        stopping — a preemption signal, a wall-time checkpoint — must be agreed on before acting on them."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return tuple(bool(v > 0) for v in t.tolist())

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" and self.device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ model and data
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Before the optimizer is built: SyncBatchNorm if ``sync_bn`` (parameters are reused, so existing
        references stay valid), then rank 0's weights on every rank.  Returns the model to use."""
        if not self.enabled:
            return model
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif has_bn:
            log.warning("the model has BatchNorm layers: under DDP each rank normalises with the statistics of its local "
                        "batch (batch_size / %d samples; running statistics are averaged at the end of each epoch); set "
                        "trainer.sync_bn=true for global-batch statistics", self.world_size)
        self.broadcast_module(model)
        return model

    def shard_dataset(self, dataset: Dataset, batch_size: int, drop_last: bool = True) -> Dataset:
        """The training split as this rank sees it: a batch-indexed view whose item for a *global* batch of
        indices is this rank's contiguous slice of it.  Use it with an unchanged, identically seeded sampler
        of global batches (``make_loader(view, batch_size, shuffle=True, drop_last=True, ...)``)."""
        if not self.enabled:
            return dataset
        check_batch_size(batch_size, self.world_size)
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size:
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {n} training samples; under DDP every step needs "
                              f"a full global batch (use a trainer.batch_size <= {n} divisible by the world size {self.world_size})")
        if not drop_last and n % batch_size:
            log.warning("trainer.drop_last=false is ignored under DDP: the last incomplete batch (%d samples) cannot be "
                        "split evenly over %d ranks and is dropped", n % batch_size, self.world_size)
        return BatchShard(rank_seeded_augmentation(dataset, self.rank), batch_size, self.rank, self.world_size)


NO_DIST = DistContext()
_current: DistContext = NO_DIST


def current() -> DistContext:
    """The context set by :func:`init_distributed` (the no-op context otherwise)."""
    return _current


def set_current(ctx: DistContext) -> DistContext:
    global _current
    _current = ctx
    return ctx


def check_batch_size(batch_size: int, world_size: int) -> int:
    """The per-rank batch size; ``ConfigError`` unless the global batch splits evenly."""
    if batch_size % world_size:
        raise ConfigError(f"trainer.batch_size={batch_size} (the global batch) must be divisible by the world size "
                          f"{world_size} under DDP; e.g. trainer.batch_size={max(1, batch_size // world_size) * world_size}")
    return batch_size // world_size


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer (set by torchrun)") from e


def init_distributed(settings: Any = None) -> DistContext:
    """Join the process group ``torchrun`` describes in ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``
    (``MASTER_ADDR`` / ``MASTER_PORT``) and make the context current; the no-op context if ``WORLD_SIZE`` is
    unset or 1.  ``settings`` is the :class:`~mtl_bench.config.schema.TrainerConf` (``device``, ``batch_size``,
    ``per_task_backward``, optional ``sync_bn``).  Device: ``cuda:<LOCAL_RANK>`` with NCCL when
    ``trainer.device`` is ``auto``/``cuda`` and CUDA exists, else the CPU with gloo."""
    world = env_world_size()
    if world <= 1:
        return set_current(NO_DIST)
    missing = [k for k in ENV_VARS if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {missing} are unset; launch with torchrun --nproc_per_node=N -m mtl_bench.train ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    spec = str(getattr(settings, "device", "auto") or "auto")
    sync_bn = bool(getattr(settings, "sync_bn", False))
    if spec.startswith("cuda:"):
        raise ConfigError(f"trainer.device={spec} would put every rank on one GPU; under torchrun use trainer.device=cuda "
                          "or auto (rank r then uses cuda:<LOCAL_RANK>)")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
    if spec not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"trainer.device={spec} is not supported under torchrun; choose one of auto, cuda, cpu")
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                              "use --nproc_per_node <= the number of GPUs")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if sync_bn and device.type != "cuda":
        raise ConfigError("trainer.sync_bn=true needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
                          "set trainer.sync_bn=false")
    if sync_bn and getattr(settings, "per_task_backward", "sequential") == "batched":
        raise ConfigError("trainer.sync_bn=true cannot be combined with trainer.per_task_backward=batched (SyncBatchNorm's "
                          "backward communicates and cannot be vmapped); use trainer.per_task_backward=sequential")
    batch_size = getattr(settings, "batch_size", None)
    if batch_size is not None:
        check_batch_size(int(batch_size), world)
    if not torch.distributed.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    ctx = DistContext(world_size=world, rank=rank, local_rank=local_rank, backend=backend, device=device, sync_bn=sync_bn)
    if rank != 0:  # one log stream: the other ranks report warnings and errors only
        logging.getLogger("mtl_bench").setLevel(logging.WARNING)
    log.info("distributed run: %d processes (%s), rank %d on %s", world, backend, rank, device)
    return set_current(ctx)


def cleanup() -> None:
    """Leave the process group (if this process joined one) and restore the no-op context.  Safe to call in a
    ``finally`` block: no collective is issued."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    set_current(NO_DIST)


# ---------------------------------------------------------------------- data
class BatchShard(Dataset):
    """``dataset`` as one rank sees it: handed a *global* batch of indices ``[i_0, ..., i_{B-1}]``, it returns only
    the rank's samples ``i_{rank·b}, ..., i_{(rank+1)·b - 1}`` (``b = B / world_size``).

    It keeps the loader path of ``dataset``, so the sampler chain — and the data generator's consumption — is the
    single-process one: batch-indexed datasets (``batch_indexing``) receive the index list in ``__getitem__`` and
    gather the slice in one call; per-sample datasets receive it in ``__getitems__`` (the DataLoader's batched
    fetch), load the slice sample by sample and the DataLoader collates it as usual."""

    def __init__(self, dataset: Dataset, batch_size: int, rank: int, world_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self.local = check_batch_size(batch_size, world_size)
        self.rank = rank
        self.batch_indexing = bool(getattr(dataset, "batch_indexing", False))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _mine(self, indices: Any) -> list[int]:
        indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        if len(indices) != self.batch_size:
            raise RuntimeError(f"BatchShard expects global batches of {self.batch_size} indices, got {len(indices)} "
                               "(the sampler must drop the last incomplete batch)")
        return indices[self.rank * self.local : (self.rank + 1) * self.local]

    def __getitem__(self, index: Any) -> Any:
        if self.batch_indexing:
            return self.dataset[self._mine(index)]
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        mine = self._mine(indices)
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(mine) if getitems is not None else [self.dataset[i] for i in mine]


def rank_seeded_augmentation(dataset: Dataset, rank: int) -> Dataset:
    """``dataset``, or for rank > 0 a shallow copy whose random augmentation (``RandomScaleCropFlip``) has a
    rank-specific seed: the ranks' augmentation streams would otherwise be identical, giving sample j of every
    rank's slice the same crop and flip."""
    from mtl_bench.data.transforms import RandomScaleCropFlip

    transform = getattr(dataset, "transform", None)
    if rank == 0 or not isinstance(transform, RandomScaleCropFlip):
        return dataset
    seed = int(np.random.SeedSequence([transform.seed % 2**64, rank]).generate_state(1, np.uint64)[0] % 2**63)
    view = copy.copy(dataset)
    view.transform = RandomScaleCropFlip(transform.scales, transform.flip_prob, seed, transform.kinds,  # type: ignore[attr-defined]
                                         transform.renormalize_normals)
    return view


# ---------------------------------------------------------------------- autograd helper
class _GlobalValue(torch.autograd.Function):
    """Forward: the given (global) value; backward: the gradient flows to the local tensor unchanged."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def with_global_value(local: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is routed to ``local`` (a straight-through substitution):
    a combiner applied to it evaluates its weights at the global losses while differentiating the local ones."""
    return _GlobalValue.apply(local, value.to(dtype=local.dtype, device=local.device))
