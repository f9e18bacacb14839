"""``mode=transfer``: feature transferability under image corruptions (Elich et al., App. A6) — a finished run's
frozen backbone, heads fine-tuned on corrupted images, evaluated on every corruption × severity (the protocol and
its parts: :mod:`mtl_bench.transfer`).  An automatic source (``mode.source=mtl`` or ``stl:<task>``) is a
dependency run, trained before the job is built (or reused when complete)."""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig

from mtl_bench.data.base import Benchmark
from mtl_bench.modes.base import DependencyRun, Mode, TaskRoles, register_mode
from mtl_bench.utils import seed_everything


@register_mode("transfer")
class TransferMode(Mode):
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        from mtl_bench import transfer  # only here: its corruptions (scipy.ndimage) cost every other run's start-up

        self.transfer = transfer
        self.source = None
        self.eval_base = None
        self.corrupt_info: dict[str, Any] = {}

    def dependencies(self, task_names: Sequence[str]) -> list[DependencyRun]:
        planned = self.transfer.planned_source(self.cfg, task_names)
        return [DependencyRun(tag, src_cfg, run_dir) for tag, src_cfg, run_dir in ([planned] if planned else [])]

    def roles(self, benchmark: Benchmark) -> TaskRoles:
        self.source = self.transfer.find_source(self.cfg, list(benchmark.tasks))
        self.source.trained_here = any(d.output_dir == self.source.dir for d in self.trained_dependencies)
        if self.source.kind == "path":
            self.transfer.check_architecture(self.cfg, self.source)
        seed_everything(self.cfg.seed)
        return TaskRoles(self.transfer.transfer_tasks(self.cfg, self.source))

    def adapt_model(self, model: Any) -> None:
        """The source encoder (frozen) and heads."""
        self.transfer.load_source_weights(model, self.source, str(self.spec.heads))

    def adapt_combiner(self, combiner: Any) -> Any:
        """The heads are independent given the frozen encoder: equal weights."""
        from mtl_bench.combiners import COMBINERS

        return COMBINERS["ew"]()

    def adapt_data(self, benchmark: Benchmark) -> None:
        """The clean evaluation split is kept; train/val are corrupted at random per sample."""
        self.eval_base = benchmark.splits[str(self.spec.eval_split)]
        self.corrupt_info = self.transfer.corrupt_training_splits(benchmark, self.spec)

    def attach(self, trainer: Any) -> None:
        trainer.result_hooks["transfer"] = self.transfer.CorruptionEvaluation(
            trainer, self.eval_base, self.spec, self.source, self.corrupt_info)
