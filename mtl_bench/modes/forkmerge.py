"""``mode=forkmerge``: ForkMerge (Jiang et al., NeurIPS 2023) around the run's trainer — branches with different
auxiliary sets, merged by a search on the targets' validation score (the algorithm: :mod:`mtl_bench.forkmerge`)."""

from __future__ import annotations

import copy
from typing import Any

from mtl_bench.combiners import COMBINERS
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.modes.aux import AuxMode
from mtl_bench.modes.base import RunBuild, register_mode
from mtl_bench.selection import ModelSelector


class BranchFactory:
    """``make_branch(name, auxiliaries)``: a full copy of the run's initial model with its own optimizer and scheduler,
    trained on the targets + ``auxiliaries`` with equal weights.  The other tasks' heads are not run at all in the
    branch (no forward, no gradient, no BatchNorm statistics, no weight decay): they keep the merged values, and
    merging averages them."""

    def __init__(self, trainer: Any, build: RunBuild):
        self.model, self.build = trainer.model, build
        self.initial = copy.deepcopy(trainer.model.state_dict())

    def __call__(self, name: str, auxiliaries: list[str]) -> Any:
        from mtl_bench.trainer import Trainer

        b = self.build
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.initial)
        tasks = {t: task for t, task in b.tasks.items() if t in b.targets or t in auxiliaries}
        combiner = COMBINERS["fixed"](weights={t: 1.0 for t in tasks})
        combiner.setup(list(tasks))
        optimizer = b.make_optimizer(model, combiner)
        branch_dir = b.output_dir / "branches" / name
        return Trainer(
            model=model, benchmark=b.benchmark, tasks=tasks, combiner=combiner, optimizer=optimizer,
            scheduler=b.make_scheduler(optimizer), settings=copy.deepcopy(b.settings),
            selector=ModelSelector("last", "val/loss", "auto", 1, b.directions),
            logger=RunLogger(branch_dir, {}, enabled=b.dist.is_main),
            output_dir=branch_dir, device=b.device, seed=b.cfg.seed, delta=b.delta, transforms=b.transforms, targets=b.targets,
        )


@register_mode("forkmerge")
class ForkMergeMode(AuxMode):
    """The targets and auxiliaries of :class:`~mtl_bench.modes.aux.AuxMode` (no post-training: ``mode=forkmerge``
    has no ``post_train_epochs``); ForkMerge drives the run's trainer and its branch trainers."""

    def metric_directions(self) -> dict[str, bool | None]:
        """Per merge: each branch's weight and validation score (``forkmerge/weight/<branch>``, ...)."""
        return {"forkmerge/*": None}

    def run(self, trainer: Any, build: RunBuild) -> dict[str, Any]:
        from mtl_bench.forkmerge import ForkMerge

        return ForkMerge(trainer, BranchFactory(trainer, build), self.spec).fit()
