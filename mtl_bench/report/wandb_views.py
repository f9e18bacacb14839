"""W&B dashboards for a study: a saved workspace view and a report, built with the ``wandb-workspaces`` library.

``python -m mtl_bench.report <study> --wandb-workspace ENTITY/PROJECT`` (``--wandb-report``) turns the report's runs
into one view specification; no paper or official code describes such a dashboard (LibMTL, TorchJD, Nash-MTL and the
studies' own code ship none), so the layout is ours:

* **runs**: the study's W&B group(s), ``summary.json["wandb"]["group"]`` of each run, or, for a run that never reached
  W&B (``WANDB_MODE=disabled``), the group ``mtl_bench.train`` gives it (``<experiment_name>/<sweep folder>`` in a
  multirun, ``<experiment_name>`` otherwise, ``logger.group`` when set): filter ``Group == g1 or Group == g2 ...``;
* **grouping**: the report's group keys (:attr:`Report.group_keys`, by default the varying overrides and choices,
  never the seed) as W&B config paths (:func:`config_paths`): a group choice ``combiner`` is
  ``hydra_choices.combiner`` (the run config holds the resolved config plus ``hydra_choices``), an override
  ``optimizer.lr`` / ``+combiner.grad_source`` its dotted path (a mapping value: its leaves that differ).  The seeds of
  one group are W&B's aggregated dimension: every line plot shows the mean with a min/max band
  (``groupby_aggfunc="mean"``, ``groupby_rangefunc="minmax"``);
* **sections**: per-task validation and test metrics and Δm (x = ``epoch``), training losses and task weights
  (x = ``global_step``), then one section per metric namespace that the runs' diagnostics (or the mode) declared in
  ``summary.json["diagnostics"]["metrics"]`` (keys and glob patterns, from ``Diagnostic.metric_directions()``): the
  logged keys matching those patterns, one panel per parent key (``au/<layer>/rau/*``: rAU per task of one layer).
  No diagnostic key is named here;
* **only logged keys**: every panel names keys that at least one run wrote to a ``step`` or ``epoch`` record of its
  ``metrics.jsonl`` (exactly the records W&B receives);
* **report variant**: the verdict table and the rest of ``report.md`` (:func:`~mtl_bench.report.outputs.render_markdown`,
  without the local figures) as Markdown blocks above one panel grid per section.

Offline (``WANDB_MODE`` offline/disabled, which is the default here, or a failed save) the specification is written to
``<report folder>/wandb_workspace.json`` / ``wandb_report.json``: entity, project, the library's serialised model
(``model_dump_json(by_alias=True)`` of ``Workspace._to_model()`` / ``Report._to_model()``) and the referenced keys;
``python -m mtl_bench.report.wandb_views push FILE.json`` (run by ``make sync-wandb``) loads and saves it.  Deviation
from the library's usual use: the report's runsets are built without entity/project (otherwise ``_to_model`` asks the
W&B API for the project id) and get them only when pushed.
"""

from __future__ import annotations

import fnmatch
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mtl_bench.report.grouping import canonical
from mtl_bench.loggers.run_logger import default_group
from mtl_bench.report.runs import ReportError, Run, dotted, metric_records

if TYPE_CHECKING:
    from mtl_bench.report.build import Report

INSTALL = 'pip install -e ".[wandb-views]"'
SPEC_FILES = {"workspace": "wandb_workspace.json", "report": "wandb_report.json"}
FLAGS = {"workspace": "--wandb-workspace", "report": "--wandb-report"}
AGGREGATE = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}  # over the seeds of a group
METRIC_RECORDS = ("step", "epoch")  # the metrics.jsonl records that also go to W&B
RECORD_FIELDS = frozenset({"type", "time", "epoch", "global_step"})


@dataclass
class Panel:
    title: str
    x: str
    y: list[str]


@dataclass
class Section:
    name: str
    panels: list[Panel]


@dataclass
class ViewPlan:
    """What a workspace or report shows, independent of the library: runs, grouping and panels."""

    name: str
    groups: list[str]
    groupby: list[str]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """Every metric key a panel names, sorted."""
        return sorted({k for s in self.sections for p in s.panels for k in p.y})


def parse_target(text: str, flag: str) -> tuple[str, str]:
    """``ENTITY/PROJECT`` → ``(entity, project)``; anything else is a one-line :class:`ReportError`."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p and p.strip() == p and " " not in p for p in parts):
        raise ReportError(f"{flag} '{text}' is not of the form ENTITY/PROJECT (e.g. {flag} me/mtl)")
    return parts[0], parts[1]


def logged_keys(runs: Iterable[Run]) -> dict[str, str]:
    """Metric key → record type (``step``/``epoch``) over the runs' ``metrics.jsonl`` step and epoch records."""
    out: dict[str, str] = {}
    for run in runs:
        for record in metric_records(run, METRIC_RECORDS):
            for key, value in record.items():
                if key not in RECORD_FIELDS and isinstance(value, (int, float)):
                    out.setdefault(key, record["type"])
    return out


def wandb_group(run: Run) -> str | None:
    """The run's W&B group: the one it recorded, else the one ``mtl_bench.train`` gives it (see the module docstring)."""
    recorded = run.summary.get("wandb")
    if isinstance(recorded, Mapping) and recorded.get("group"):
        return str(recorded["group"])
    config = run.config()
    found, group = dotted(config, "logger.group")
    if found and group:
        return str(group)
    name = config.get("experiment_name")
    if not name:
        return None
    hydra = run.summary.get("hydra") if isinstance(run.summary.get("hydra"), Mapping) else {}
    return default_group(str(name), str(hydra["sweep_dir"]) if hydra.get("multirun") and hydra.get("sweep_dir") else None)


def config_paths(runs: Sequence[Run], keys: Sequence[str], notes: list[str]) -> list[str]:
    """The W&B config paths of the report's group keys (see the module docstring); keys with no config value are noted."""
    out: list[str] = []
    for key in keys:
        key = key.lstrip("+~")
        if any(isinstance(r.summary.get("choices"), Mapping) and key in r.summary["choices"] for r in runs):
            out.append(f"hydra_choices.{key}")
            continue
        values = [v for v in (dotted(r.config(), key) for r in runs) if v[0]]
        if not values:
            notes.append(f"group key '{key}' is not in the runs' config: W&B cannot group by it")
        elif any(isinstance(v, Mapping) for _, v in values):
            out += _varying_leaves(runs, key)
        else:
            out.append(key)
    return list(dict.fromkeys(out))


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    return {k: v for name, child in node.items() for k, v in _leaves(child, f"{prefix}.{name}").items()}


def _varying_leaves(runs: Sequence[Run], key: str) -> list[str]:
    """The leaf paths under ``key`` whose values differ between the runs (all of them if none differs)."""
    per_run = [_leaves(dotted(r.config(), key)[1], key) for r in runs]
    paths = list(dict.fromkeys(p for leaves in per_run for p in leaves))
    varying = [p for p in paths if len({canonical(leaves.get(p)) for leaves in per_run}) > 1]
    return varying or paths


def _tasks(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(t for r in runs for t in r.tasks))


def _task_sections(runs: Sequence[Run], logged: Mapping[str, str]) -> list[Section]:
    """Validation / test metrics per task, Δm (x = epoch), training losses and task weights (x = global_step)."""
    tasks = set(_tasks(runs))
    epoch = [k for k, kind in logged.items() if kind == "epoch"]
    step = [k for k, kind in logged.items() if kind == "step"]
    per_task = {split: [k for k in epoch if k.count("/") == 2 and k.split("/")[0] == split and k.split("/")[1] in tasks]
                for split in ("val", "test")}
    delta = [k for k in ("val/delta_m", "test/delta_m") if logged.get(k) == "epoch"]
    losses = [k for k in step if (k.count("/") == 2 and k.startswith("train/") and k.endswith("/loss")
                                  and k.split("/")[1] in tasks) or k in ("train/objective", "train/regularizer")]
    weights = [k for k in step if k.startswith("train/weight/") and k.split("/", 2)[2] in tasks]
    sections = [("Validation metrics per task", per_task["val"], "epoch"), ("Test metrics per task", per_task["test"], "epoch"),
                ("Δm (%)", delta, "epoch"), ("Training losses", losses, "global_step"), ("Task weights", weights, "global_step")]
    return [Section(name, [Panel(k, x, [k]) for k in sorted(keys, key=_natural)]) for name, keys, x in sections if keys]


def _natural(key: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in key.replace("/", " / ").split()]


def declared_patterns(runs: Sequence[Run]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Namespace → the keys / glob patterns the runs' diagnostics and modes declared (``summary["diagnostics"]
    ["metrics"]``), and namespace → the built diagnostics that own it (``key: class``, from ``["built"]``)."""
    patterns: dict[str, list[str]] = {}
    built: dict[str, str] = {}
    for run in runs:
        info = run.summary.get("diagnostics")
        if not isinstance(info, Mapping):
            continue
        for pattern in info.get("metrics") or {}:
            patterns.setdefault(str(pattern).split("/", 1)[0], [])
            if pattern not in patterns[str(pattern).split("/", 1)[0]]:
                patterns[str(pattern).split("/", 1)[0]].append(str(pattern))
        built.update({str(k): str(v) for k, v in (info.get("built") or {}).items()})
    owners = {ns: ", ".join(f"{k}: {cls.rpartition('.')[2]}" for k, cls in built.items()
                            if k.startswith(ns) or ns.startswith(k)) for ns in patterns}
    return patterns, owners


def declared_panels(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Diagnostic key → its panel templates (``summary["diagnostics"]["panels"]``, from ``Diagnostic.panels()``)."""
    out: dict[str, list[str]] = {}
    for run in runs:
        info = run.summary.get("diagnostics")
        panels = info.get("panels") if isinstance(info, Mapping) else None
        for key, templates in (panels if isinstance(panels, Mapping) else {}).items():
            out.setdefault(str(key), [])
            out[str(key)] += [str(t) for t in templates if str(t) not in out[str(key)]]
    return out


def template_panels(template: str, keys: Iterable[str]) -> dict[str, list[str]]:
    """Panel title → keys for one template: a ``{name}`` segment is overlaid in the panel, each value of a ``*``
    segment gets its own panel (segments match whole path components)."""
    parts = template.split("/")
    panels: dict[str, list[str]] = {}
    for key in keys:
        segs = key.split("/")
        if len(segs) != len(parts):
            continue
        if not all(p == "*" or (p.startswith("{") and p.endswith("}")) or p == s for p, s in zip(parts, segs)):
            continue
        title = "/".join(s if p == "*" else p for p, s in zip(parts, segs))
        panels.setdefault(title, []).append(key)
    return {t: sorted(ys, key=_natural) for t, ys in panels.items()}


def _parent_panels(keys: Sequence[str]) -> dict[str, list[str]]:
    """Without declared templates: one panel per parent key."""
    panels: dict[str, list[str]] = {}
    for key in sorted(keys, key=_natural):
        parent = key.rpartition("/")[0] if key.count("/") >= 2 else key
        panels.setdefault(parent, []).append(key)
    return {(p + "/*" if ys != [p] else p): ys for p, ys in panels.items()}


def _diagnostic_sections(runs: Sequence[Run], logged: Mapping[str, str]) -> list[Section]:
    """One section per declared namespace: its logged keys, in the panels its diagnostics declared
    (:meth:`~mtl_bench.diagnostics.base.Diagnostic.panels`), else one panel per parent key (x = the key's own axis)."""
    patterns, owners = declared_patterns(runs)
    templates = declared_panels(runs)
    sections = []
    for ns, pats in patterns.items():
        keys = [k for k in logged if any(fnmatch.fnmatchcase(k, p) for p in pats)]
        own = [t for key, ts in templates.items() if key.startswith(ns) or ns.startswith(key) for t in ts]
        panels: dict[str, list[str]] = {}
        for template in own:
            panels.update(template_panels(template, keys))
        if not own:
            panels = _parent_panels(keys)
        if panels:
            name = f"Diagnostics: {ns}" + (f" ({owners[ns]})" if owners.get(ns) else "")
            sections.append(Section(name, [Panel(t, _axis(ys, logged), ys) for t, ys in panels.items()]))
    return sections


def _axis(keys: Sequence[str], logged: Mapping[str, str]) -> str:
    return "global_step" if all(logged[k] == "step" for k in keys) else "epoch"


def plan_view(report: Report, name: str) -> ViewPlan:
    """The :class:`ViewPlan` of a built report (its runs, group keys and logged keys)."""
    runs = list(report.runs)
    if not runs:
        raise ReportError("no runs to show on W&B")
    notes: list[str] = []
    groups = list(dict.fromkeys(g for g in (wandb_group(r) for r in runs) if g))
    if not groups:
        raise ReportError("no run recorded or implies a W&B group (summary.json 'wandb', config experiment_name)")
    logged = logged_keys(runs)
    sections = [*_task_sections(runs, logged), *_diagnostic_sections(runs, logged)]
    if not sections:
        raise ReportError("the runs' metrics.jsonl hold no step or epoch records: nothing to plot")
    return ViewPlan(name, groups, config_paths(runs, report.group_keys, notes), sections, notes)


def _library() -> tuple[Any, Any, Any]:
    """``(workspaces, reports.v2, expr)`` of ``wandb-workspaces``, or the one-line install hint."""
    try:
        with warnings.catch_warnings():  # the library's pydantic-v1-style validators warn at import
            warnings.simplefilter("ignore", DeprecationWarning)
            import wandb_workspaces.expr as expr
            import wandb_workspaces.reports.v2 as wr
            import wandb_workspaces.workspaces as ws
    except ImportError as e:
        raise ReportError(f"W&B views need the wandb-workspaces library ({e.name or e}): {INSTALL}") from e
    return ws, wr, expr


def check_library() -> None:
    """A one-line :class:`ReportError` naming the extra when ``wandb-workspaces`` is not installed."""
    _library()


def _line_plots(section: Section) -> list[Any]:
    _, wr, _ = _library()
    return [wr.LinePlot(title=p.title, x=p.x, y=list(p.y), **AGGREGATE) for p in section.panels]


def _group_filter(plan: ViewPlan) -> Any:
    _, _, expr = _library()
    return expr.Or(*(expr.Metric("Group") == g for g in plan.groups))  # the library's explicit form (no plain list)


def build_workspace(plan: ViewPlan, entity: str, project: str) -> Any:
    """The ``wandb_workspaces.workspaces.Workspace`` of ``plan``."""
    ws, _, expr = _library()
    sections = [ws.Section(name=s.name, panels=_line_plots(s), is_open=True) for s in plan.sections]
    runset = ws.RunsetSettings(filters=_group_filter(plan), groupby=[expr.Config(k) for k in plan.groupby])
    return ws.Workspace(entity=entity, project=project, name=plan.name, sections=sections, runset_settings=runset)


def report_markdown(report: Report, dirs: Sequence[Path]) -> list[str]:
    """The verdict table, then the rest of ``report.md`` (the same renderer, no local figures)."""
    from mtl_bench.report.claims.render import verdict_markdown
    from mtl_bench.report.outputs import render_markdown

    verdicts = "\n".join(verdict_markdown(report.verdicts))
    text = render_markdown(report, dirs)
    return [b for b in (verdicts, text.replace(verdicts, "", 1) if verdicts else text) if b.strip()]


def build_report_view(plan: ViewPlan, entity: str, project: str, markdown: Sequence[str]) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` of ``plan``: the Markdown blocks, then a panel grid per section
    (runsets without entity/project: set by :func:`push_spec`)."""
    _, wr, _ = _library()
    blocks: list[Any] = [wr.MarkdownBlock(text=m) for m in markdown]
    for section in plan.sections:
        runset = wr.Runset(name=plan.name, filters=_group_filter(plan), groupby=list(plan.groupby))
        blocks += [wr.H2(text=section.name), wr.PanelGrid(runsets=[runset], panels=_line_plots(section))]
    return wr.Report(project=project, entity=entity, title=plan.name, blocks=blocks,
                     description=f"mtl_bench study {plan.name}: W&B group(s) {', '.join(plan.groups)}")


def dump_model(view: Any) -> dict[str, Any]:
    """The library's own serialised model of a workspace or report (a JSON object)."""
    return json.loads(view._to_model().model_dump_json(by_alias=True))


def load_view(kind: str, model: Mapping[str, Any]) -> Any:
    """A ``Workspace`` / ``Report`` from :func:`dump_model`'s output (validated by the library's model class)."""
    ws, wr, _ = _library()
    from wandb_workspaces.reports.v2 import internal as report_internal
    from wandb_workspaces.workspaces import internal as ws_internal

    text = json.dumps(model)
    with warnings.catch_warnings():  # the library warns about an optional inline-comment field it reads back as None
        warnings.simplefilter("ignore", UserWarning)
        if kind == "workspace":
            return ws.Workspace._from_model(ws_internal.View.model_validate_json(text))
        return wr.Report._from_model(report_internal.ReportViewspec.model_validate_json(text))


def spec_of(kind: str, view: Any, plan: ViewPlan, entity: str, project: str) -> dict[str, Any]:
    """The JSON specification written offline."""
    return {"kind": kind, "entity": entity, "project": project, "name": plan.name, "groups": plan.groups,
            "groupby": plan.groupby, "keys": plan.keys, "notes": plan.notes, "library": "wandb-workspaces",
            "model": dump_model(view)}


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not a readable W&B view specification ({e})") from e
    if not isinstance(spec, dict) or spec.get("kind") not in SPEC_FILES or not isinstance(spec.get("model"), dict):
        raise ReportError(f"{path}: expected a JSON object with kind in {list(SPEC_FILES)}, entity, project and model "
                          "(written by python -m mtl_bench.report --wandb-workspace/--wandb-report)")
    return spec


def push_spec(path: Path) -> str:
    """Load a written specification and save it to W&B (needs network and a logged-in W&B); returns its URL."""
    spec = read_spec(path)
    view = load_view(spec["kind"], spec["model"])
    view.entity, view.project = spec["entity"], spec["project"]
    if spec["kind"] == "report":
        for block in view.blocks:
            for runset in getattr(block, "runsets", None) or []:
                runset.entity, runset.project = spec["entity"], spec["project"]
    saved = view.save()
    return str(getattr(saved, "url", None) or getattr(view, "url", "") or f"{spec['entity']}/{spec['project']}")


def export_view(report: Report, kind: str, target: str, out: Path, dirs: Sequence[Path]) -> str:
    """Build the workspace / report of ``report``, write its specification to ``out`` and, with ``WANDB_MODE=online``,
    save it; returns the one line to print."""
    entity, project = parse_target(target, FLAGS[kind])
    check_library()
    name = _study_name(dirs, out)
    plan = plan_view(report, name)
    view = build_workspace(plan, entity, project) if kind == "workspace" else \
        build_report_view(plan, entity, project, report_markdown(report, dirs))
    path = out / SPEC_FILES[kind]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec_of(kind, view, plan, entity, project), indent=1) + "\n")
    return _push_or_defer(kind, path, len(plan.keys))


def _study_name(dirs: Sequence[Path], out: Path) -> str:
    """The study folder's name (``<study>/multiruns/<time>`` → ``<study>``), else the output folder's parent's."""
    first = Path(dirs[0]).resolve() if dirs else out.resolve().parent
    return first.parent.parent.name if first.parent.name in ("multiruns", "runs") else first.name


def _push_or_defer(kind: str, path: Path, n_keys: int) -> str:
    from mtl_bench.loggers.run_logger import resolve_wandb_mode

    later = f"push it later with `python -m mtl_bench.report.wandb_views push {path}` or `make sync-wandb`"
    try:
        mode = resolve_wandb_mode(None)
    except ValueError as e:
        return f"W&B {kind} specification ({n_keys} keys) written to {path} ({e}); {later}"
    if mode != "online":
        return f"W&B {kind} specification ({n_keys} keys) written to {path} (WANDB_MODE={mode}); {later}"
    try:
        url = push_spec(path)
    except Exception as e:  # noqa: BLE001 - no network, no API key or a refused save: the written file is the result
        return f"W&B {kind} not saved ({type(e).__name__}: {str(e)[:200]}); specification written to {path}; {later}"
    return f"W&B {kind} saved: {url} (specification: {path})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtl_bench.report.wandb_views push FILE.json [...]``: save written specifications to W&B."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "push":
        print("usage: python -m mtl_bench.report.wandb_views push FILE.json [FILE.json ...]", file=sys.stderr)
        return 2
    code = 0
    for item in args[1:]:
        try:
            print(f"{item}: saved {push_spec(Path(item))}")
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except Exception as e:  # noqa: BLE001 - one line per file that W&B refused; the others are still pushed
            print(f"error: {item}: W&B refused the save ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
