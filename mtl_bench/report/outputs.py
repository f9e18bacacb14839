"""Writing a :class:`~mtl_bench.report.build.Report`: ``report.md``, ``report.csv`` (one row per group) and ``runs.csv``
(one row per job, unfinished ones included).

CSV columns: ``group``, the group keys, ``role`` (``method`` or ``stl_reference``), ``n`` (runs in the statistics),
``n_exploded`` (runs of the group left out as exploded), ``seeds`` (of the ``n`` runs, ``;``-separated), ``selection``,
then ``<split>/<task>/<metric>/mean`` and ``.../std`` per metric (std empty for n = 1), ``<split>/delta_m/mean|std`` when
Δm was computed, ``pareto_optimal`` / ``pareto_n`` and, with a reference, ``ref_not_dominated`` / ``ref_dominating``
(empty for STL reference rows).  Labels are plain text everywhere; only :func:`markdown_table` escapes them, for
``report.md`` and the table printed on the console.
Floats are written with full precision.  With transfer runs, ``robustness.csv`` (:func:`write_robustness_csv`) holds the
corruption transferability δ per group × task × metric × corruption × severity and report.md a δ section.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from mtl_bench.report.claims.render import verdict_markdown
from mtl_bench.report.curves import curve_markdown
from mtl_bench.report.build import CONFLICT_METRICS, GroupRow, Report, arrowed, metric_label, relpath
from mtl_bench.report.grouping import Stat, lookup, matches, sorted_seeds
from mtl_bench.report.robustness import Robustness
from mtl_bench.utils import markdown_table

CONVENTION_TEXT = {
    "per_metric": "per_metric (mean of the signed relative changes over all metrics; Nash-MTL/FAMO)",
    "per_task": "per_task (mean over tasks of each task's mean relative change; LibMTL)",
}


def _num(x: float | None, fmt: str = ".4g") -> str:
    if x is None:
        return ""
    return "nan" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def _stat(s: Stat | None, fmt: str = ".4g") -> str:
    if s is None or s.n == 0:
        return ""
    return _num(s.mean, fmt) if s.std is None else f"{_num(s.mean, fmt)} ± {_num(s.std, fmt.lstrip('+'))}"


def results_table(report: Report) -> str:
    """The main Markdown table: one row per group."""
    splits = report.options.splits
    headers = ["group", "n", "seeds"]
    if len(report.selection_rules) > 1:
        headers.append("selection")
    headers += [metric_label(k, report.directions) for k in report.metric_keys]
    if report.baselines is not None:
        headers += [f"Δm% {s} ↓" for s in splits]
    if report.pareto_metrics:
        headers.append("Pareto-optimal")
        if report.pareto_ref is not None:
            headers += ["not dominated by ref", "dominates ref"]
    rows = []
    for row in report.rows:
        ref = row.group.reference
        cells: list[Any] = [row.group.label + (" (reference)" if ref else ""), *_counts(row)]
        if len(report.selection_rules) > 1:
            cells.append("; ".join(row.selection))
        cells += [_stat(row.stats.get(k)) for k in report.metric_keys]
        if report.baselines is not None:
            cells += ["baseline" if ref else _stat(row.delta.get(s), "+.2f") for s in splits]
        if report.pareto_metrics:
            cells.append("-" if ref else f"{row.pareto_optimal}/{row.pareto_n}")
            if report.pareto_ref is not None:
                cells += ["-", "-"] if ref else [f"{row.ref_not_dominated}/{row.pareto_n}", f"{row.ref_dominating}/{row.pareto_n}"]
        rows.append(cells)
    return markdown_table(headers, rows)


def _counts(row: GroupRow) -> tuple[str, str]:
    """The ``n`` and ``seeds`` cells: ``2 of 3, 1 exploded`` and ``0,1 (exploded: 2)`` when runs were left out."""
    seeds = ",".join(map(str, sorted_seeds(row.used)))
    if not row.n_exploded:
        return str(len(row.used)), seeds
    return (f"{len(row.used)} of {len(row.group.runs)}, {row.n_exploded} exploded",
            f"{seeds} (exploded: {','.join(map(str, row.exploded_seeds))})")


def metadata_lines(report: Report, dirs: Sequence[Path]) -> list[str]:
    o = report.options
    n_stl = sum(1 for r in report.stl_runs if r.completed)
    lines = [
        f"- **folders**: {', '.join(f'`{d}`' for d in dirs)}",
        f"- **runs**: {len(report.runs)} job folder(s): {len(report.table_runs)} completed method run(s)"
        + (f", {n_stl} completed STL run(s) (the reference rows `STL <task>`)" if n_stl else "")
        + (f", {len(report.running)} running" if report.running else "")
        + (f", {len(report.stopped)} stopped (resumable)" if report.stopped else "") + f", {len(report.failed)} failed"
        + (f"; {len(report.exploded)} exploded, left out of the statistics" if report.exploded else ""),
        f"- **groups**: {len(report.rows)}, by "
        + (", ".join(f"`{k}`" for k in report.group_keys) or "nothing (every run differs only in the seed)")
        + (" (from --group-by)" if o.group_by is not None else " (the overrides that vary, seed excluded"
           + ("; for transfer runs also the `transfer.*` summary fields that vary, source paths excluded)"
              if report.robustness is not None else ")"))
        + "; cells are mean ± sample std (ddof=1) over the group's runs",
        f"- **results**: the `{o.source}` metrics of each run's summary.json; model selection: "
        + (", ".join(f"`{r}`" for r in report.selection_rules) or "unknown")
        + (" — **the runs used different selection rules**" if len(report.selection_rules) > 1 else ""),
    ]
    aux = sorted({t for r in report.table_runs for t in r.tasks if t not in r.targets})
    if aux:
        targets = sorted({t for r in report.table_runs for t in r.targets})
        lines.append(f"- **targets**: {', '.join(targets)}; auxiliary task(s) in some runs: {', '.join(aux)} "
                     "(their metrics are shown; Δm and the default Pareto metrics use each run's targets only)")
    if report.baselines is not None:
        b = report.baselines
        per_task = ", ".join(f"{t}: {n} run(s), seeds {b.seeds.get(t, [])}" for t, n in b.runs_per_task.items())
        lines.append(f"- **Δm%**: convention {CONVENTION_TEXT[o.convention]}; baselines: {b.description}"
                     + (f" ({per_task})" if per_task else "")
                     + "; r = (−1)^higher_is_better · (M − B)/|B|, lower is better; computed on each run's targets, "
                     "task losses excluded; a group's Δm is the mean ± std of its runs' Δm")
    else:
        lines.append(f"- **Δm%**: not computed ({report.baseline_reason})")
    lines.append(f"- **exploded**: a completed run whose target task's test or val loss is not finite or exceeds "
                 f"{o.explode_factor:g} × the median first-epoch val loss of that task over the completed runs on the same "
                 "dataset (`--explode-factor`; docs/report.md); such runs stay listed but out of means, stds, Δm means, "
                 "Pareto counts and plots")
    if report.pareto_metrics:
        pool = "runs sharing " + ", ".join(f"`{k}`" for k in o.pareto_within) if o.pareto_within else "all runs of the table"
        text = (f"- **Pareto**: on {', '.join(metric_label(o.pareto_split + '/' + m, report.directions) for m in report.pareto_metrics)}; "
                f"a run is Pareto-optimal if no run of its pool ({pool}) is at least as good on every metric and strictly "
                "better on one; `k/n` = k of the group's n runs")
        if report.pareto_ref is not None:
            spec = ",".join(f"{k}={v}" for k, v in report.pareto_ref.items())
            n_ref = sum(1 for r in report.table_runs if matches(r, report.pareto_ref))
            text += (f"; reference `{spec}` ({n_ref} runs): *not dominated by ref* = runs no reference run dominates, "
                     "*dominates ref* = runs that dominate at least one reference run")
        lines.append(text)
    else:
        lines.append("- **Pareto**: not computed (no metric common to all runs)")
    return lines


def render_markdown(report: Report, dirs: Sequence[Path], figures: Sequence[str] = ()) -> str:
    parts = ["# mtl_bench report", "", *metadata_lines(report, dirs), ""]
    parts += verdict_markdown(report.verdicts)
    parts += curve_markdown(report.curves)
    splits = "/".join(report.options.splits)
    parts += [f"## Results ({splits})", "", results_table(report) if report.rows else "_no completed run_", ""]
    if report.baselines is not None and report.baselines.values:
        b = report.baselines
        keys = list(dict.fromkeys([*b.values.get("test", {}), *b.values.get("val", {})]))
        rows = [[arrowed(k, report.directions.get(k)), _num(b.values.get("val", {}).get(k)), _num(b.values.get("test", {}).get(k))]
                for k in keys]
        parts += ["## Δm baselines", "", markdown_table(["task/metric", "val", "test"], rows), ""]
    if report.robustness is not None:
        parts += robustness_section(report.robustness, dirs)
    if report.au:
        tasks = list(dict.fromkeys(t for a in report.au.values() for t in a["mean_rau"]))
        rows = [[g, *[_stat(a["mean_rau"].get(t)) for t in tasks], _stat(a["dominated"])] for g, a in report.au.items()]
        parts += ["## AU task dominance (AdaTask)", "",
                  "Mean rAU per task over the shared parameters and the fraction of shared parameters dominated by one task "
                  "(from each run's summary `au`; mean ± std over runs).", "",
                  markdown_table(["group", *[f"rAU {t}" for t in tasks], "dominated fraction"], rows), ""]
    if report.conflicts:
        rows = [[g, pair, *[_stat(stats.get(m)) for m in CONFLICT_METRICS]]
                for g, pairs in report.conflicts.items() for pair, stats in pairs.items()]
        parts += ["## Gradient conflicts", "",
                  "Mean over the run of the per-pair cosine, magnitude similarity and opposite-sign fraction (whole shared "
                  "vector; summary `conflicts.all_epochs`), mean ± std over runs.", "",
                  markdown_table(["group", "pairs", *CONFLICT_METRICS], rows), ""]
    if report.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in dict.fromkeys(report.notes)], ""]
    parts += unfinished_sections(report, dirs)
    if figures:
        parts += ["## Figures", "", *[f"![{Path(f).stem}]({Path(f).name})" for f in figures], ""]
    return "\n".join(parts)


def exploded_lines(report: Report, dirs: Sequence[Path]) -> list[str]:
    """One line per exploded run: where, its group and why."""
    return [f"{relpath(r.path, dirs)} [{report.group_of(r)}]: {report.exploded[str(r.path)]}"
            for row in report.rows for r in row.group.runs if str(r.path) in report.exploded]


def unfinished_sections(report: Report, dirs: Sequence[Path]) -> list[str]:
    """The exploded, running, stopped (resumable) and failed jobs of report.md (the failed section always)."""
    parts: list[str] = []
    if report.exploded:
        parts += [f"## Exploded runs ({len(report.exploded)})", "",
                  "Completed, but a target loss blew up: left out of their group's statistics, Δm mean, Pareto counts and "
                  "plots.", "", *[f"- {line}" for line in exploded_lines(report, dirs)], ""]
    if report.running:
        rows = [[relpath(r.path, dirs), r.error or "", " ".join(r.override_list)] for r in report.running]
        parts += [f"## Running jobs ({len(report.running)})", "", markdown_table(["job", "owner", "overrides"], rows), ""]
    if report.stopped:
        rows = [[relpath(r.path, dirs), r.status, r.error or "", " ".join(r.override_list)] for r in report.stopped]
        parts += [f"## Stopped jobs, resumable ({len(report.stopped)})", "",
                  "Stopped by a signal after a checkpoint: rerunning the same command resumes them.", "",
                  markdown_table(["job", "status", "error", "overrides"], rows), ""]
    parts += [f"## Failed jobs ({len(report.failed)})", ""]
    if report.failed:
        rows = [[relpath(r.path, dirs), r.status, r.error or "", " ".join(r.override_list)] for r in report.failed]
        return parts + [markdown_table(["job", "status", "error", "overrides"], rows), ""]
    return parts + ["none", ""]


DELTA_TEXT = ("δ_{t,m,c,s} = (−1)^hib · (r̄_MTL − r̄_STL) with r = M_corrupted / M_clean of each run (its own clean value), "
              "r̄ = mean over the runs (seeds) of each side, hib = 1 if higher is better, else 0. "
              "**δ < 0: the MTL backbone degrades less than the STL backbone** (δ > 0: more). "
              "A metric's δ is the mean over the corruption × severity cells both sides evaluated; a task's δ_t is the mean over "
              "its metrics; the group's δ is the mean over its tasks that have an STL baseline. δ is linear in the ratios, so it "
              "equals the mean of seed-paired differences when the seeds pair up; ± is the sample std (ddof=1) over the MTL runs "
              "of each run's own δ against the STL mean ratios (none for n = 1).")


def robustness_section(rob: Robustness, dirs: Sequence[Path]) -> list[str]:
    """The "Corruption transferability (δ)" section of report.md (Elich et al., App. A6)."""
    parts = ["## Corruption transferability (δ)", "", DELTA_TEXT, ""]
    sev = ", ".join(map(str, rob.severities))
    parts += [
        f"- **transfer runs**: {len(rob.mtl_runs)} with an MTL-source backbone, {len(rob.stl_runs)} with an STL-source backbone"
        + (f", {len(rob.ignored)} unusable (listed below)" if rob.ignored else ""),
        f"- **corruptions**: {', '.join(rob.backends) or 'unknown'}; {len(rob.corruptions)} corruption(s) × severities {sev or '-'}; "
        f"split {', '.join(rob.splits) or 'unknown'}; heads {', '.join(rob.heads) or 'unknown'}",
        "- **MTL groups** by " + (", ".join(f"`{k}`" for k in rob.group_keys) or "nothing") + "; STL baselines: the STL-source "
        "transfer runs of the task with the same dataset, heads and split (averaged over their seeds)",
        "- per corruption × severity values: `robustness.csv`, heatmaps `delta_heatmap_<group>.png`",
        "",
    ]
    ignored = [f"- {relpath(r.path, dirs)}: {why}" for r, why in rob.ignored]
    ignored = ["**Unusable transfer runs**:", "", *ignored, ""] if ignored else []
    if not rob.groups:
        return parts + ["_no MTL-source transfer run: no δ_", "", *ignored, *[f"- {n}" for n in dict.fromkeys(rob.notes)], ""]
    tasks = list(dict.fromkeys(t for g in rob.groups for t in [*(x.task for x in g.tasks), *g.missing]))
    rows = []
    for g in rob.groups:
        cells: list[Any] = [g.group.label, len(g.group.runs), ",".join(map(str, g.group.seeds))]
        for t in tasks:
            td = g.task(t)
            cells.append(_stat(td.delta, "+.4f") if td else ("missing" if t in g.missing else ""))
        cells.append(_stat(g.delta, "+.4f") if g.tasks else "")
        rows.append(cells)
    parts += ["δ_t per task (mean over the task's metrics) and the mean over tasks; lower is better for the MTL backbone.", "",
              markdown_table(["group", "n", "seeds", *[f"δ {t}" for t in tasks], "δ mean over tasks"], rows), ""]
    rows = []
    for g in rob.groups:
        for td in g.tasks:
            stl = f"{len(td.stl_runs)} (seeds {','.join(sorted(map(str, (r.seed for r in td.stl_runs))))})"
            for m in td.metrics:
                rows.append([g.group.label, td.task, arrowed(m.metric, m.higher_is_better), _stat(m.delta, "+.4f"), len(m.cells), stl])
    parts += ["Per metric (↑/↓: the metric's direction; δ is already signed so that δ < 0 favours MTL):", "",
              markdown_table(["group", "task", "metric", "δ", "cells", "STL runs"], rows), ""]
    missing = [f"- `{g.group.label}`: {t}: {why}" for g in rob.groups for t, why in g.missing.items()]
    if missing:
        parts += ["**Tasks without δ** (not in the group's mean over tasks):", "", *missing, ""]
    left = [f"- `{g.group.label}`: {key}: {why}" for g in rob.groups for key, why in g.left_out]
    if left:
        parts += ["**Metrics left out**:", "", *left, ""]
    parts += ignored
    notes = list(dict.fromkeys([*rob.notes, *[f"`{g.group.label}`: {n}" for g in rob.groups for n in g.notes]]))
    if notes:
        parts += ["**Notes**:", "", *[f"- {n}" for n in notes], ""]
    return parts


ROBUSTNESS_COLUMNS = ["group", "task", "metric", "corruption", "severity", "delta", "delta_raw", "ratio_mtl", "ratio_stl",
                      "n_mtl", "n_stl", "higher_is_better"]


def write_robustness_csv(rob: Robustness, out: Path) -> Path:
    """``robustness.csv``: one row per group × task × metric × corruption × severity (long format); ``delta`` is the
    signed δ (< 0: MTL degrades less), ``delta_raw`` = ratio_mtl − ratio_stl (ratios = corrupted / clean, seed means)."""
    path = out / "robustness.csv"
    order = {c: i for i, c in enumerate(rob.corruptions)}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ROBUSTNESS_COLUMNS)
        for g in rob.groups:
            for td in g.tasks:
                for m in td.metrics:
                    for (c, sv), cell in sorted(m.cells.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])):
                        w.writerow([_csv_value(x) for x in (g.group.label, td.task, m.metric, c, sv, cell.delta, cell.raw,
                                                           cell.ratio_mtl, cell.ratio_stl, cell.n_mtl, cell.n_stl, m.higher_is_better)])
    return path


def _csv_value(x: Any) -> Any:
    if x is None:
        return ""
    return repr(x) if isinstance(x, float) else x


def write_csvs(report: Report, out: Path, dirs: Sequence[Path]) -> tuple[Path, Path]:
    splits = report.options.splits
    has_delta = report.baselines is not None
    has_ref = report.pareto_ref is not None
    headers = ["group", *report.group_keys, "role", "n", "n_exploded", "seeds", "selection"]
    for k in report.metric_keys:
        headers += [f"{k}/mean", f"{k}/std"]
    if has_delta:
        for s in splits:
            headers += [f"{s}/delta_m/mean", f"{s}/delta_m/std"]
    headers += ["pareto_optimal", "pareto_n"] + (["ref_not_dominated", "ref_dominating"] if has_ref else [])
    group_file = out / "report.csv"
    with group_file.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        for row in report.rows:
            ref = row.group.reference
            cells: list[Any] = [row.group.label, *[row.group.values[k] for k in report.group_keys],
                                "stl_reference" if ref else "method", len(row.used), row.n_exploded,
                                ";".join(map(str, sorted_seeds(row.used))), "; ".join(row.selection)]
            for k in report.metric_keys:
                s = row.stats.get(k)
                cells += [s.mean, s.std] if s else [None, None]
            if has_delta:
                for s in splits:
                    d = row.delta.get(s)
                    cells += [d.mean, d.std] if d else [None, None]
            cells += [None, None] if ref else [row.pareto_optimal, row.pareto_n]
            if has_ref:
                cells += [None, None] if ref else [row.ref_not_dominated, row.ref_dominating]
            w.writerow([_csv_value(c) for c in cells])
    return group_file, _write_runs_csv(report, out, dirs)


def _write_runs_csv(report: Report, out: Path, dirs: Sequence[Path]) -> Path:
    """``runs.csv``: the runs of the table's rows (STL reference rows first), then every other job."""
    splits = report.options.splits
    has_delta = report.baselines is not None
    headers = ["run", "status", "group", "seed", *report.group_keys, "selection", "error", "exploded", "exploded_reason",
               *report.metric_keys]
    headers += [f"{s}/delta_m" for s in splits] if has_delta else []
    headers.append("pareto_optimal")
    path = out / "runs.csv"
    in_rows = [r for row in report.rows for r in row.group.runs]
    listed = {id(r) for r in in_rows}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        for run in [*in_rows, *[r for r in report.runs if id(r) not in listed]]:
            key = str(run.path)
            metrics = report.run_metrics.get(key, {})
            cells = [relpath(run.path, dirs), run.status, report.group_of(run), run.seed,
                     *[lookup(run, k) for k in report.group_keys], run.selection_rule() if run.summary else "", run.error,
                     key in report.exploded if run.completed else None, report.exploded.get(key),
                     *[metrics.get(k) for k in report.metric_keys]]
            if has_delta:
                cells += [report.run_delta.get(key, {}).get(s) for s in splits]
            cells.append(report.pareto_flags.get(key))
            w.writerow([_csv_value(c) for c in cells])
    return path
