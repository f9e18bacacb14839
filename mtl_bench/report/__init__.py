"""Sweep reports: ``python -m mtl_bench.report <multirun dir(s)>``.

Reads the job folders of one or more multiruns (or experiment/run folders), groups the runs by everything that
differs except the seed, and writes ``report.md``, ``report.csv``, ``runs.csv`` and PNG figures.  Conventions:

* groups, value lookup, mean ± sample std (ddof=1): :mod:`mtl_bench.report.grouping`;
* job states: running (a live process owns the folder), stopped (``preempted``/``interrupted``: resumable), failed
  (no summary, unreadable, any other status than completed): :mod:`mtl_bench.report.runs`;
* STL runs as reference rows (:func:`mtl_bench.report.grouping.stl_groups`); exploded runs (a target loss far above the
  first-epoch level), kept out of every statistic: :mod:`mtl_bench.report.exploded`;
* Δm baselines and per-run Δm (reusing :mod:`mtl_bench.metrics.delta_m`): :mod:`mtl_bench.report.baselines`;
* Pareto dominance and the reference-set counts: :mod:`mtl_bench.report.pareto`;
* corruption transferability δ of MTL vs STL backbones from ``mode: transfer`` runs (Elich et al., App. A6):
  :mod:`mtl_bench.report.robustness`;
* CSV columns and the Markdown layout: :mod:`mtl_bench.report.outputs`; figures: :mod:`mtl_bench.report.plots`.
"""

from mtl_bench.report.cli import main
from mtl_bench.report.runs import ReportError, Run, find_job_dirs, load_run, load_runs

__all__ = ["ReportError", "Run", "find_job_dirs", "load_run", "load_runs", "main"]
