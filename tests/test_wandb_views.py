"""W&B workspace and report specifications of a study (mtl_bench/report/wandb_views.py): only logged keys, the right
grouping and filter, the library's own round trip, the verdict table in the report, the offline file and the push.

The study: four tiny real runs (combiner ew/uw × seed 0/1, AU in all, the conflict probe in one), trained once per
module.  No network: the library's ``save`` is replaced where a push is tested."""

from __future__ import annotations

import fcntl
import fnmatch
import json
import re
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb_workspaces")

from mtl_bench.report.build import ReportOptions, build_report  # noqa: E402
from mtl_bench.report.claims.render import verdict_markdown  # noqa: E402
from mtl_bench.report.cli import main as report_main  # noqa: E402
from mtl_bench.report.runs import ReportError, Run, load_runs  # noqa: E402
from mtl_bench.report import wandb_views as wv  # noqa: E402
from mtl_bench.train import build_and_train  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402

CLAIM = {"ew_vs_uw": {"kind": "difference", "quantity": "t0/mse", "a": {"where": {"combiner": "ew"}},
                      "b": {"where": {"combiner": "uw"}}, "expect": "less", "text": "EW beats UW on t0"}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Trained once per session: under xdist the workers share the session's base folder (flock: the first trains)."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = base / "wandb_views" / "toy_study" / "multiruns" / "sweep"
    with open(base / "wandb_views.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").is_file():
            _train(root)
            (root / "done").touch()
    return root


def _train(root: Path) -> None:
    for combiner in ("ew", "uw"):
        for seed in (0, 1):
            probe = "true" if (combiner, seed) == ("ew", 0) else "false"
            cfg = compose_cfg([f"combiner={combiner}", f"seed={seed}", "experiment_name=toy_study",
                               "diagnostics.au.enabled=true", "diagnostics.au.every_n_steps=2",
                               f"diagnostics.conflicts.enabled={probe}", "diagnostics.conflicts.every_n_steps=4",
                               "diagnostics.conflicts.per_layer=false", "diagnostics.conflicts.averaged=false"],
                              root / f"{combiner}_{seed}")
            build_and_train(cfg)


@pytest.fixture(scope="module")
def report(study):
    return build_report(load_runs([study]), ReportOptions(claims=CLAIM))


def _summaries(study: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(study.glob("*/summary.json"))]


def _records(study: Path) -> list[dict]:
    """Every step/epoch record of the study's metrics.jsonl files (what W&B receives), read independently."""
    out = []
    for path in sorted(study.glob("*/metrics.jsonl")):
        out += [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] in ("step", "epoch")]
    return out


def test_panels_name_only_logged_keys_and_show_every_task_metric_and_diagnostic_key(study, report):
    plan = wv.plan_view(report, "toy_study")
    records = _records(study)
    logged = {k for r in records for k in r}
    assert plan.keys and set(plan.keys) <= logged
    per_task = {k for r in records if r["type"] == "epoch" for k in r
                if k.count("/") == 2 and k.split("/")[0] in ("val", "test") and k.split("/")[1] in ("t0", "t1")}
    # the diagnostics' own panel templates ({name}: overlaid segment, *: one panel per value), matched independently
    templates = [t for s in _summaries(study) for ts in s["diagnostics"].get("panels", {}).values() for t in ts]
    regexes = [re.compile("^" + "/".join("[^/]+" if seg == "*" or seg.startswith("{") else re.escape(seg)
                                         for seg in t.split("/")) + "$") for t in templates]
    diagnostic = {k for k in logged if any(r.match(k) for r in regexes)}
    assert {"val/t0/mse", "val/t1/mse"} <= per_task and any(k.startswith("conflict/") for k in diagnostic) \
        and any(k.startswith("au/") for k in diagnostic)
    assert per_task | diagnostic <= set(plan.keys)
    declared = json.loads((study / "ew_0" / "summary.json").read_text())["diagnostics"]["metrics"]
    assert all(any(fnmatch.fnmatchcase(k, p) for p in declared) for k in diagnostic)  # templates stay inside the declared keys
    panels = {p.title: p.y for s in plan.sections for p in s.panels}
    # the conflict probe's whole-network panels compare the pair types; the AU's whole-model rAU overlays the tasks
    pairs = [f"conflict/{t}/cos/all/mean" for t in ("inter_sample", "inter_task")]
    assert set(pairs) <= logged and panels["conflict/{pair}/cos/all/mean"] == pairs
    assert panels["au/all/rau/{task}"] == ["au/all/rau/t0", "au/all/rau/t1"]
    axes = {k: p.x for s in plan.sections for p in s.panels for k in p.y}
    assert axes["val/t0/mse"] == "epoch" and axes["train/t0/loss"] == "global_step" and axes["train/weight/t1"] == "global_step"
    names = [s.name for s in plan.sections]
    # one section per declared namespace, named after the diagnostic that owns it
    assert any(n.startswith("Diagnostics: au (au: AUMonitor") for n in names)
    assert any(n.startswith("Diagnostics: conflict (conflicts: ConflictProbe") for n in names)


def test_only_step_and_epoch_records_count_as_logged(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"type": "step", "global_step": 2, "epoch": 0, "time": 0.1, "train/t0/loss": 1.0},
        {"type": "epoch", "epoch": 0, "global_step": 2, "val/t0/mse": 2.0},
        {"type": "corruption", "test/t0/mse": 3.0, "severity": 1},  # metrics.jsonl only, never sent to W&B
        {"type": "image", "key": "au_heatmap", "path": "x.png"}]) + "\nnot json\n")
    assert wv.logged_keys([Run(tmp_path, "completed", {})]) == {"train/t0/loss": "step", "val/t0/mse": "epoch"}


def test_groups_by_the_varying_config_keys_and_filters_to_the_study_group(report):
    plan = wv.plan_view(report, "toy_study")
    # the report's group keys: the combiner choice and the one override that differs (the probe); never the seed
    assert report.group_keys == ["combiner", "diagnostics.conflicts.enabled"]
    assert plan.groupby == ["hydra_choices.combiner", "diagnostics.conflicts.enabled"]
    assert plan.groups == ["toy_study"]  # logger=none: the group mtl_bench.train gives a single run
    view = wv.build_workspace(plan, "me", "mtl")
    assert [g.name for g in view.runset_settings.groupby] == plan.groupby
    assert view.runset_settings.filters == "Metric(\"Group\") == 'toy_study'"


def _run(tmp: Path, name: str, summary: dict, overrides: list[str], config: dict) -> Run:
    (tmp / name).mkdir()
    return Run(tmp / name, "completed", summary, overrides, config_data=config)


def test_config_paths_and_groups_of_recorded_and_derived_multiruns(tmp_path):
    base = {"optimizer": {"lr": 0.1}, "combiner": {"grad_source": "params"}, "experiment_name": "s",
            "loss_transforms": {"t1": {"kind": "scale", "factor": 1.0}}}
    a = _run(tmp_path, "a", {"choices": {"combiner": "mgda"}, "wandb": {"group": "s/2026-01-01"}},
             ["optimizer.lr=0.1", "+combiner.grad_source=params", "loss_transforms.t1={kind:scale,factor:1.0}"], base)
    b_cfg = {**base, "optimizer": {"lr": 0.2}, "combiner": {"grad_source": "representation"},
             "loss_transforms": {"t1": {"kind": "scale", "factor": 10.0}}}
    b = _run(tmp_path, "b", {"choices": {"combiner": "mgda"}, "hydra": {"multirun": True, "sweep_dir": "out/s/multiruns/2026-01-02"}},
             ["optimizer.lr=0.2", "+combiner.grad_source=representation", "loss_transforms.t1={kind:scale,factor:10.0}"], b_cfg)
    notes: list[str] = []
    keys = ["combiner", "optimizer.lr", "combiner.grad_source", "loss_transforms.t1", "not.there"]
    assert wv.config_paths([a, b], keys, notes) == ["hydra_choices.combiner", "optimizer.lr", "combiner.grad_source",
                                                     "loss_transforms.t1.factor"]
    assert notes == ["group key 'not.there' is not in the runs' config: W&B cannot group by it"]
    # the recorded group wins; otherwise <experiment_name>/<sweep folder> as mtl_bench.train names it
    assert [wv.wandb_group(a), wv.wandb_group(b)] == ["s/2026-01-01", "s/2026-01-02"]
    plan = wv.ViewPlan("s", ["s/2026-01-01", "s/2026-01-02"], [], [wv.Section("x", [wv.Panel("v", "epoch", ["val/t0/mse"])])])
    assert wv.build_workspace(plan, "me", "mtl").runset_settings.filters == \
        "Metric(\"Group\") == 's/2026-01-01' or Metric(\"Group\") == 's/2026-01-02'"


def _describe(view, kind: str) -> dict:
    """Sections, panels (title, x, y, aggregation), grouping and filters, with the library's Metric wrappers unwrapped."""
    def name(v):
        return getattr(v, "name", v)

    def panels(ps):
        return [(p.title, name(p.x), [name(y) for y in p.y], p.groupby_aggfunc, p.groupby_rangefunc) for p in ps]

    if kind == "workspace":
        rs = view.runset_settings
        return {"sections": [(s.name, s.is_open, panels(s.panels)) for s in view.sections],
                "groupby": [name(g) for g in rs.groupby], "filters": str(rs.filters)}
    grids = [b for b in view.blocks if type(b).__name__ == "PanelGrid"]
    return {"blocks": [type(b).__name__ for b in view.blocks],
            "markdown": [b.text for b in view.blocks if type(b).__name__ in ("MarkdownBlock", "H2")],
            "panels": [panels(g.panels) for g in grids],
            "runsets": [(r.name, list(r.groupby), str(r.filters)) for g in grids for r in g.runsets]}


@pytest.mark.parametrize("kind", ["workspace", "report"])
def test_round_trip_through_the_library_model(report, study, kind):
    plan = wv.plan_view(report, "toy_study")
    view = (wv.build_workspace(plan, "me", "mtl") if kind == "workspace"
            else wv.build_report_view(plan, "me", "mtl", wv.report_markdown(report, [study])))
    model = wv.dump_model(view)
    loaded = wv.load_view(kind, json.loads(json.dumps(model)))
    assert _describe(loaded, kind) == _describe(view, kind)
    assert wv.dump_model(loaded) == model  # serialise → load → serialise is a fixed point
    described = _describe(loaded, kind)
    y = [k for s in (described["sections"] if kind == "workspace" else [(0, 0, p) for p in described["panels"]])
         for p in s[2] for k in p[2]]
    assert sorted(set(y)) == plan.keys and all(p[3:] == ("mean", "minmax") for s in described.get("sections", [])
                                                  for p in s[2])


def test_report_variant_holds_the_verdict_table_and_report_md(report, study):
    blocks = wv.report_markdown(report, [study])
    assert report.verdicts and report.verdicts[0].claim_id == "ew_vs_uw"
    assert blocks[0] == "\n".join(verdict_markdown(report.verdicts))
    assert "| ew_vs_uw: EW beats UW on t0 |" in blocks[0] and "## Results (test)" in blocks[1]
    assert "## Verdicts" not in blocks[1]  # the verdict table once, in its own block
    view = wv.build_report_view(wv.plan_view(report, "toy_study"), "me", "mtl", blocks)
    texts = [b.text for b in view.blocks if type(b).__name__ == "MarkdownBlock"]
    assert texts == blocks and all(r.entity == "" and r.project == "" for b in view.blocks for r in getattr(b, "runsets", []))


def test_offline_cli_writes_the_specification_and_push_saves_it_to_the_spec_project(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "rep"
    claims = tmp_path / "claims.yaml"
    claims.write_text(json.dumps(CLAIM))
    assert report_main([str(study), "--out", str(out), "--no-plots", "--claims", str(claims),
                        "--wandb-workspace", "me/mtl", "--wandb-report", "team/proj"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("W&B ")]
    assert len(lines) == 2 and "wandb_workspace.json" in lines[0] and "make sync-wandb" in lines[0]
    ws_spec = json.loads((out / "wandb_workspace.json").read_text())
    rep_spec = json.loads((out / "wandb_report.json").read_text())
    assert (ws_spec["entity"], ws_spec["project"], rep_spec["entity"], rep_spec["project"]) == ("me", "mtl", "team", "proj")
    assert ws_spec["name"] == "toy_study" and ws_spec["keys"] == rep_spec["keys"] and "val/t0/mse" in ws_spec["keys"]

    saved = []
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(("ws", self.entity, self.project)) or self)
    monkeypatch.setattr(wr.Report, "save", lambda self, draft=False, clone=False: saved.append(
        ("report", self.entity, self.project, {(r.entity, r.project) for b in self.blocks for r in getattr(b, "runsets", [])}))
        or self)
    assert wv.main(["push", str(out / "wandb_workspace.json"), str(out / "wandb_report.json")]) == 0
    assert saved == [("ws", "me", "mtl"), ("report", "team", "proj", {("team", "proj")})]
    monkeypatch.setenv("WANDB_MODE", "online")  # online: the export saves at once (save replaced: no network)
    line = wv.export_view(build_report(load_runs([study]), ReportOptions(claims={})), "workspace", "me/mtl", out, [study])
    assert line.startswith("W&B workspace saved") and saved[-1] == ("ws", "me", "mtl")


def test_bad_target_and_missing_library_are_one_line_errors(study, tmp_path, capsys, monkeypatch):
    assert report_main([str(study), "--out", str(tmp_path), "--wandb-workspace", "me"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --wandb-workspace 'me' is not of the form ENTITY/PROJECT (e.g. --wandb-workspace me/mtl)"
    with pytest.raises(ReportError, match="ENTITY/PROJECT"):
        wv.parse_target("a/b/c", "--wandb-report")
    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)  # as if the extra were not installed
    with pytest.raises(ReportError, match=r'pip install -e "\.\[wandb-views\]"'):
        wv.check_library()
    with pytest.raises(ReportError, match="kind in"):
        (tmp_path / "x.json").write_text("{}")
        wv.read_spec(tmp_path / "x.json")


def test_a_panel_template_overlays_its_named_segment_and_splits_on_stars():
    keys = ["a/x/m/1", "a/y/m/1", "a/x/n/1", "b/x/m/1", "a/x/m/1/extra", "a/y/m/2"]
    assert wv.template_panels("a/{p}/*/1", keys) == {"a/{p}/m/1": ["a/x/m/1", "a/y/m/1"], "a/{p}/n/1": ["a/x/n/1"]}
    assert wv.template_panels("a/x/m/{i}", keys) == {"a/x/m/{i}": ["a/x/m/1"]}
    assert wv.template_panels("c/*", keys) == {}
