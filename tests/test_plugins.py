"""Extension points without touching mtl_bench: a diagnostic and a mode defined only in this file, enabled only
through config (``+diagnostics.my_probe._target_=...``, ``mode._target_=...``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import torch
from omegaconf import open_dict

from mtl_bench.diagnostics.base import Diagnostic, FigureSpec, RunContext
from mtl_bench.errors import ConfigError
from mtl_bench.modes import MODES, DependencyRun, Mode, TaskRoles
from mtl_bench.train import build_and_train

HERE = "tests.test_plugins"


class GradientNormProbe(Diagnostic):
    """Per task, the mean norm of its gradient over the shared parameters on every step; checks on every step that
    the per-task gradients it receives sum to the shared ``.grad`` the optimizer is about to apply (EW, sum)."""

    key = "my_probe"

    def setup(self, run: RunContext) -> None:
        self.shared = [p for _, p in run.shared_named_parameters]
        self.task_names = list(run.tasks)
        self.sums = torch.zeros(len(self.task_names), dtype=torch.float64)
        self.steps, self.epoch_steps, self.max_mismatch = 0, 0, 0.0
        self._grads: torch.Tensor | None = None

    def wants_grads(self, step: int) -> bool:
        return True

    def observe(self, step: int, grads: torch.Tensor | None, task_names: Sequence[str], losses: torch.Tensor,
                source: str | None) -> None:
        assert list(task_names) == self.task_names and source == "params"
        self._grads = grads.detach().clone()

    def before_step(self, step: int) -> None:
        applied = torch.cat([p.grad.reshape(-1) for p in self.shared])
        scale = float(applied.abs().max()) or 1.0
        self.max_mismatch = max(self.max_mismatch, float((self._grads.sum(0) - applied).abs().max()) / scale)
        self.sums += self._grads.norm(dim=1).double()
        self.steps += 1
        self.epoch_steps += 1

    def epoch_record(self, epoch: int) -> dict[str, float]:
        record = {f"my_probe/grad_norm/{t}": float(v) / self.epoch_steps for t, v in zip(self.task_names, self.sums)}
        self.sums.zero_()
        self.epoch_steps = 0
        return record

    def metric_directions(self) -> dict[str, bool | None]:
        return {"my_probe/grad_norm/*": False}

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_relative_mismatch": self.max_mismatch}

    def results_line(self, entry: Mapping[str, Any]) -> str:
        return f"my_probe: {entry['steps']} steps observed"

    def figures(self, entry: Mapping[str, Any]) -> list[FigureSpec]:
        return [FigureSpec("steps", "my_probe.txt", f"{HERE}:write_steps", {"steps": entry["steps"]})]

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "steps": self.steps, "epoch_steps": self.epoch_steps, "mismatch": self.max_mismatch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = state["sums"].clone()
        self.steps, self.epoch_steps, self.max_mismatch = state["steps"], state["epoch_steps"], state["mismatch"]


def write_steps(data: Mapping[str, Any], path: Path) -> Path:
    """A "renderer" outside mtl_bench (figures are files drawn from a diagnostic's data)."""
    path.write_text(str(data["steps"]))
    return path


PROBE = [f"+diagnostics.my_probe._target_={HERE}.GradientNormProbe"]


def epoch_records(run: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


def test_a_diagnostic_from_config_only_sees_the_gradients_logs_summarises_and_draws(make_cfg):
    cfg = make_cfg(*PROBE)
    summary = build_and_train(cfg)
    run = Path(cfg.paths.output_dir)
    steps = summary["global_steps"]
    assert summary["my_probe"]["steps"] == steps > 0
    # the gradients it received are the per-task gradients that the update applies (float32 sum of 2 rows)
    assert summary["my_probe"]["max_relative_mismatch"] <= 4 * torch.finfo(torch.float32).eps
    assert summary["diagnostics"]["built"]["my_probe"] == f"{HERE}.GradientNormProbe"
    assert summary["diagnostics"]["metrics"]["my_probe/grad_norm/*"] is False
    records = epoch_records(run)
    assert len(records) == 2 and all(r["my_probe/grad_norm/t0"] > 0 and r["my_probe/grad_norm/t1"] > 0 for r in records)
    assert (run / "my_probe.txt").read_text() == str(steps)


def test_a_diagnostic_s_state_survives_a_resume(make_cfg):
    reference = make_cfg(*PROBE, "trainer.epochs=3")
    full = build_and_train(reference)
    first = make_cfg(*PROBE, "trainer.epochs=1")
    build_and_train(first)
    with open_dict(first):
        first.trainer.epochs = 3  # the same run folder: resumes from its last.pt
    resumed = build_and_train(first)
    assert resumed["resumed"] and resumed["my_probe"] == full["my_probe"]
    assert untimed(epoch_records(Path(first.paths.output_dir))) == untimed(epoch_records(Path(reference.paths.output_dir)))


def untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records]


def test_a_bad_diagnostic_entry_names_what_is_wrong(make_cfg):
    with pytest.raises(ConfigError, match=r"diagnostics.oops._target_ must build a mtl_bench.diagnostics.Diagnostic"):
        build_and_train(make_cfg("+diagnostics.oops._target_=collections.OrderedDict"))
    with pytest.raises(ConfigError, match=r"key 'my_probe' is empty or used by another diagnostic"):
        build_and_train(make_cfg(*PROBE, f"+diagnostics.again._target_={HERE}.GradientNormProbe"))


class TargetFirstMode(Mode):
    """A toy auxiliary-task mode: every task trained, the first one the only target; it depends on that target's
    STL run (trained first into ``<output_dir>/../stl_<target>``, as Δm baselines or a transfer source would be) and
    adds a block to the summary."""

    name = "target_first"

    def _target(self, task_names: Sequence[str]) -> str:
        return list(task_names)[0]

    def dependencies(self, task_names: Sequence[str]) -> list[DependencyRun]:
        cfg = self.cfg.copy()
        with open_dict(cfg):
            cfg.mode = {"_target_": "mtl_bench.modes.stl.STLMode", "name": "stl", "task": self._target(task_names)}
        return [DependencyRun("stl baseline", cfg, Path(self.cfg.paths.output_dir).parent / f"stl_{self._target(task_names)}")]

    def roles(self, benchmark: Any) -> TaskRoles:
        return TaskRoles(list(benchmark.tasks), [self._target(benchmark.tasks)])

    def run(self, trainer: Any, build: Any) -> dict[str, Any]:
        summary = trainer.fit()
        baseline = json.loads((self.trained_dependencies[0].output_dir / "summary.json").read_text()) \
            if self.trained_dependencies else None
        return {**summary, "toy": {"baseline_tasks": baseline["tasks"] if baseline else None}}


def test_a_mode_from_config_only_declares_roles_and_a_dependency_run(make_cfg):
    cfg = make_cfg(f"mode._target_={HERE}.TargetFirstMode")
    summary = build_and_train(cfg)
    stl = Path(cfg.paths.output_dir).parent / "stl_t0"
    assert summary["mode"] == "target_first" and "target_first" not in MODES
    assert summary["targets"] == ["t0"] and summary["auxiliaries"] == ["t1"]
    assert summary["toy"] == {"baseline_tasks": ["t0"]}  # the dependency ran before, in its own folder
    assert json.loads((stl / "summary.json").read_text())["status"] == "completed"
    again = make_cfg(f"mode._target_={HERE}.TargetFirstMode")
    with open_dict(again):
        again.paths.output_dir = str(stl.parent / "run_again")
    assert build_and_train(again)["toy"] == {"baseline_tasks": None}  # complete: reused, not trained again


def test_a_mode_target_that_is_not_a_mode_names_the_registered_ones(make_cfg):
    with pytest.raises(ConfigError, match=r"is not a mtl_bench.modes.Mode; registered modes: \['aux', 'forkmerge', 'mtl'"):
        build_and_train(make_cfg("mode._target_=collections.OrderedDict"))
    with pytest.raises(ConfigError, match=r"mode._target_=nowhere.Mode: cannot import it"):
        build_and_train(make_cfg("mode._target_=nowhere.Mode"))


def test_a_dependency_that_another_process_is_training_is_waited_for_then_reused(make_cfg):
    import subprocess
    import sys

    cfg = make_cfg(f"mode._target_={HERE}.TargetFirstMode")
    stl = Path(cfg.paths.output_dir).parent / "stl_t0"
    # another job of a parallel sweep owns the dependency's folder: it finishes it 2 s later
    code = (f"import json, time; from mtl_bench import runlock; runlock.acquire({str(stl)!r}); print('owned', flush=True); "
            f"time.sleep(2); open({str(stl / 'summary.json')!r}, 'w').write(json.dumps({{'status': 'completed'}}))")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "owned"
        summary = build_and_train(cfg)
    finally:
        other.wait(timeout=60)
    assert summary["status"] == "completed"
    assert summary["toy"] == {"baseline_tasks": None}  # not trained by this job: waited for, then reused
    assert not (stl / "metrics.jsonl").exists()
