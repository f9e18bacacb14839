"""``python -m mtl_bench.report DIR [DIR ...] [options]``: the command line of the sweep report.

Exit codes: 0 report written; 1 report written but no completed run to tabulate (only failed jobs); 2 bad input
(a folder that does not exist or holds no runs, an invalid option value, unusable ``--stl`` runs), printed as one
line without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mtl_bench.report.runs import ReportError, Run

if TYPE_CHECKING:  # imported where used at run time (the report modules pull in numpy, matplotlib, ...)
    from mtl_bench.report.build import Report, ReportOptions

DESCRIPTION = """Summarise mtl_bench runs (multirun folders, experiment folders or run folders): per-group mean ± std over
seeds with the STL runs as reference rows, Δm% against STL baselines, Pareto counts, exploded runs (flagged and left out of
the means), running, stopped (resumable) and failed jobs, and for transfer runs the corruption transferability δ of MTL
vs STL backbones; writes report.md, report.csv, runs.csv (robustness.csv) and PNG figures."""

EPILOG = """examples:
  python -m mtl_bench.report outputs/elich_optimizers/multiruns/2025-01-01_12-00-00
  python -m mtl_bench.report outputs/elich_optimizers --stl outputs/synthetic_stl_baselines/stl --delta-convention per_task
  python -m mtl_bench.report SWEEP --group-by combiner,optimizer --pareto-ref optimizer=adam --pareto-within combiner
  python -m mtl_bench.report outputs/elich_transfer --transfer-group-by transfer.source.combiner"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtl_bench.report", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", type=Path, help="multirun folders, experiment folders or run folders")
    p.add_argument("--out", type=Path, help="output folder (default: <first dir>/report)")
    p.add_argument("--group-by", type=_csv_list, metavar="K1,K2",
                   help="group keys, e.g. combiner,optimizer,optimizer.lr (default: the overrides that vary, minus seed)")
    p.add_argument("--stl", nargs="+", metavar="DIR", help="STL baseline runs for Δm (default: STL runs among DIRs, then "
                   "the baselines recorded in the runs' summaries)")
    p.add_argument("--stl-select", choices=["unique", "val_loss"], default=None,
                   help="which STL runs are the Δm baselines: unique (one per task and seed) or val_loss (per task the "
                   "configuration, e.g. lr, with the lowest mean val loss); default: the delta_m.stl_select the runs recorded")
    p.add_argument("--delta-convention", choices=["per_metric", "per_task"], default="per_metric",
                   help="Δm aggregation: per_metric (Nash-MTL/FAMO) or per_task (LibMTL); default per_metric")
    p.add_argument("--allow-missing", action="store_true", help="compute Δm over the metrics that have a baseline")
    p.add_argument("--val", action="store_true", help="also tabulate the validation metrics (and Δm)")
    p.add_argument("--results", choices=["selected", "final"], default="selected",
                   help="which results of summary.json: the selected model (default) or the final one")
    p.add_argument("--include-loss", action="store_true", help="also tabulate the per-task losses")
    p.add_argument("--pareto-metrics", type=_csv_list, metavar="T/M,...",
                   help="metrics for Pareto dominance, e.g. t0/mse,t1/mse (default: every target metric all runs report)")
    p.add_argument("--pareto-split", choices=["test", "val"], default="test", help="split of the Pareto metrics")
    p.add_argument("--pareto-ref", metavar="K=V[,K=V]", help="reference runs, e.g. optimizer=adam: per group, how many runs "
                   "no reference run dominates and how many dominate one")
    p.add_argument("--pareto-within", type=_csv_list, metavar="K1,K2",
                   help="compare only runs that share these keys' values (e.g. combiner: Adam vs SGD per method); "
                        "runs are always compared within their dataset")
    p.add_argument("--scatter", type=_csv_list, metavar="T/M,T/M",
                   help="the two metrics of the Pareto scatter plot (default: first metric of the first two targets)")
    p.add_argument("--transfer-group-by", type=_csv_list, metavar="K1,K2",
                   help="groups of the MTL-source transfer runs for the corruption transferability δ (default: the source's "
                   "combiner and optimizer plus the transfer settings/overrides that vary, seed and source paths excluded)")
    p.add_argument("--explode-factor", type=float, default=100.0, metavar="F",
                   help="flag a completed run as exploded (kept out of means, Δm means, Pareto counts and plots) when a "
                   "target task's test or val loss exceeds F × the median first-epoch val loss of that task over the "
                   "runs on the same dataset (default 100; see docs/report.md)")
    p.add_argument("--claims", type=Path, metavar="FILE.yaml",
                   help="evaluate these claims (a mapping id -> spec, or study.claims) instead of the study.claims the runs "
                   "recorded (docs/studies.md)")
    p.add_argument("--no-claims", action="store_true", help="skip the verdicts")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT[:GROUP]", help="also read runs from the W&B API (needs network)")
    p.add_argument("--log-wandb", action="store_true", help="log the table (wandb.Table + artifact) and figures to W&B "
                   "(mode from WANDB_MODE; a no-op when disabled)")
    p.add_argument("--wandb-project", default="mtl_bench", help="W&B project of --log-wandb (default mtl_bench)")
    p.add_argument("--wandb-workspace", metavar="ENTITY/PROJECT", help="build the study's W&B workspace view (needs the "
                   "wandb-views extra): saved when WANDB_MODE=online, else written to <out>/wandb_workspace.json")
    p.add_argument("--wandb-report", metavar="ENTITY/PROJECT", help="the same as a W&B report, with the verdict table and "
                   "report.md above the panels (<out>/wandb_report.json offline); docs/report.md")
    return p


def run_report(args: argparse.Namespace) -> int:
    from mtl_bench.report.build import build_report

    out = _output_folder(args)
    views = _wandb_views(args)
    runs = _load(args, out)
    options = _options(args)
    report = build_report(runs, options)
    out.mkdir(parents=True, exist_ok=True)
    dirs = list(args.dirs)
    report_csv, figures = _write_files(report, args, out, dirs)
    _print_summary(report, options, out, dirs)
    if args.log_wandb:
        from mtl_bench.report.wandb_io import log_report

        name = "report_" + (args.dirs[0].resolve().name if args.dirs else args.wandb.replace("/", "_"))
        print(log_report(report_csv, figures, args.wandb_project, name))
    if views:
        from mtl_bench.report.wandb_views import export_view

        for kind, target in views.items():
            print(export_view(report, kind, target, out, dirs))
    return 0 if report.rows else 1


def _wandb_views(args: argparse.Namespace) -> dict[str, str]:
    """``{"workspace"|"report": "ENTITY/PROJECT"}`` asked for, checked before any run is read."""
    views = {k: v for k, v in (("workspace", args.wandb_workspace), ("report", args.wandb_report)) if v}
    if views:
        from mtl_bench.report.wandb_views import FLAGS, check_library, parse_target

        for kind, target in views.items():
            parse_target(target, FLAGS[kind])
        check_library()
    return views


def _output_folder(args: argparse.Namespace) -> Path:
    """``--out``, else ``<first dir>/report`` (``report`` for W&B runs only); checks that the inputs exist."""
    if not args.dirs and not args.wandb:
        raise ReportError("give at least one run/multirun/experiment folder (or --wandb ENTITY/PROJECT)")
    for d in args.dirs:
        if not d.exists():
            raise ReportError(f"'{d}' does not exist")
    if args.out is not None:
        return args.out
    if args.dirs:
        first = args.dirs[0].parent if args.dirs[0].is_file() else args.dirs[0]
        return first / "report"
    return Path("report")


def _load(args: argparse.Namespace, out: Path) -> list[Run]:
    """The runs under the folders (the output folder excluded), then those of ``--wandb``."""
    from mtl_bench.report.runs import load_runs

    runs = load_runs(args.dirs, exclude=[out]) if args.dirs else []
    if args.wandb:
        from mtl_bench.report.wandb_io import pull_runs

        runs += pull_runs(args.wandb)
    return runs


def _options(args: argparse.Namespace) -> ReportOptions:
    """The :class:`~mtl_bench.report.build.ReportOptions` of the command line."""
    from mtl_bench.report.build import ReportOptions
    from mtl_bench.report.claims import claims_file

    return ReportOptions(
        group_by=args.group_by, stl=args.stl, convention=args.delta_convention, allow_missing=args.allow_missing,
        splits=("test", "val") if args.val else ("test",), source=args.results, include_loss=args.include_loss,
        pareto_metrics=args.pareto_metrics, pareto_split=args.pareto_split, pareto_ref=args.pareto_ref,
        pareto_within=args.pareto_within, scatter=args.scatter, transfer_group_by=args.transfer_group_by,
        explode_factor=args.explode_factor, stl_select=args.stl_select,
        claims={} if args.no_claims else claims_file(args.claims) if args.claims else None,
    )


def _write_files(report: Report, args: argparse.Namespace, out: Path, dirs: list[Path]) -> tuple[Path, list[Path]]:
    """report.csv, runs.csv (robustness.csv), the figures (unless ``--no-plots``), verdicts.csv and report.md;
    returns report.csv and the figures."""
    from mtl_bench.report.claims.render import plot_verdicts, write_verdicts_csv
    from mtl_bench.report.curves import plot_curve
    from mtl_bench.report.outputs import render_markdown, write_csvs, write_robustness_csv

    report_csv, _ = write_csvs(report, out, dirs)
    if report.robustness is not None:
        write_robustness_csv(report.robustness, out)
    figures = []
    if not args.no_plots:
        from mtl_bench.report.plots import write_plots

        figures = write_plots(report, out)
        verdict_png = plot_verdicts(report.verdicts, out / "verdicts.png")
        figures = [verdict_png, *figures] if verdict_png else figures
        figures += [plot_curve(c, out) for c in report.curves]
    if report.verdicts:
        write_verdicts_csv(report.verdicts, out / "verdicts.csv")
    (out / "report.md").write_text(render_markdown(report, dirs, [str(f) for f in figures]))
    return report_csv, figures


def _print_summary(report: Report, options: ReportOptions, out: Path, dirs: list[Path]) -> None:
    """The results table, the Δm baselines, δ, exploded runs, the run counts and the verdicts, on stdout."""
    from mtl_bench.report.claims.render import verdict_lines
    from mtl_bench.report.outputs import exploded_lines, results_table

    print(results_table(report) if report.rows else "no completed run")
    if report.baselines is not None:
        print(f"Δm% ({options.convention}): baselines = {report.baselines.description}")
    else:
        print(f"Δm% not computed: {report.baseline_reason}")
    if report.robustness is not None:
        rob = report.robustness
        print(f"corruption transferability δ: {len(rob.groups)} MTL group(s), "
              f"{sum(len(g.tasks) for g in rob.groups)} group × task value(s); {out / 'robustness.csv'}")
    for line in exploded_lines(report, dirs):
        print(f"EXPLODED (left out of the means): {line}")
    n_stl = sum(len(row.group.runs) for row in report.rows if row.group.reference)
    jobs = [f"{n} {what}" for n, what in ((len(report.running), "running"), (len(report.stopped), "stopped (resumable)"))
            if n] + [f"{len(report.failed)} failed job(s)"]
    print(f"{len(report.table_runs)} method run(s) and {n_stl} STL run(s) in {len(report.rows)} row(s), "
          f"{len(report.exploded)} exploded; {', '.join(jobs)}; report: {out / 'report.md'}")
    if report.verdicts:
        print(f"verdicts ({len(report.verdicts)} claim(s); effect = estimate [95 % CI over seeds]):")
        for line in verdict_lines(report.verdicts):
            print("  " + line)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_report(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
