"""AU / rAU per shared layer and over training (Yang et al., AdaTask, AAAI 2023): hand-built cases with values
derived by hand, the first-step property that separates Adam from AdaTask, and a run's summary / metrics.jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from mtl_bench.diagnostics.au import AUMonitor, layer_index, layer_of
from mtl_bench.optimizers import AdaTaskAdam
from mtl_bench.train import build_and_train

TASKS = ("a", "b")
# three shared "layers" of 2 weights + 1 bias each: 9 scalars, layer l at positions 3l .. 3l+2
NAMES = ["enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias", "enc.2.weight", "enc.2.bias"]
SHAPES = [(2,), (1,), (2,), (1,), (2,), (1,)]


def shared_params():
    return [(n, torch.nn.Parameter(torch.zeros(s, dtype=torch.float64))) for n, s in zip(NAMES, SHAPES)]


def per_layer(values_a, values_b):
    """K×9 per-task gradients, constant within each layer."""
    return torch.tensor([[v for v in values_a for _ in range(3)], [v for v in values_b for _ in range(3)]], dtype=torch.float64)


def test_layer_of_and_layer_index_group_a_module_s_tensors_wherever_they_are():
    assert layer_of("encoder.net.0.weight") == "encoder.net.0" and layer_of("w") == "w"
    idx = layer_index(["a.weight", "b.weight", "a.bias"], [2, 3, 1])
    assert list(idx) == ["a", "b"]
    assert idx["a"].tolist() == [0, 1, 5] and idx["b"].tolist() == [2, 3, 4]


def test_per_layer_rau_and_its_history_on_a_hand_built_sgd_run():
    """SGD without momentum: Δθ_k = lr·g_k.  Step 0: layer 0 gets task gradients (3, 1) → rAU (0.9, 0.1);
    layer 1 (1, 1) → (0.5, 0.5); layer 2 (0, 2) → (0, 1).  Step 1: layer 2 gets (2, 0); with ρ = 0.5,
    AU_a = (1−ρ)·4lr², AU_b = ρ(1−ρ)·4lr² → rAU (2/3, 1/3); the other layers keep their ratios."""
    named = shared_params()
    au = AUMonitor(every_n_steps=1, decay=0.5, threshold=0.85)
    au.bind(torch.optim.SGD([p for _, p in named], lr=0.5), named, TASKS)
    steps = [per_layer((3, 1, 0), (1, 1, 2)), per_layer((3, 1, 2), (1, 1, 0))]
    records = []
    for step, grads in enumerate(steps):
        au.observe(step, grads, TASKS, None, "params")
        au.after_step(step)
        records.append(au.epoch_record(step + 1))
    s = au.summary()
    assert list(s["layers"]) == ["enc.0", "enc.1", "enc.2"]
    assert s["layer_max_share"] == pytest.approx({"enc.0": 0.9, "enc.1": 0.5, "enc.2": 2 / 3})
    assert s["layers"]["enc.0"]["mean_rau"] == pytest.approx({"a": 0.9, "b": 0.1})
    assert s["layers"]["enc.0"]["dominated"] == 1.0 and s["layers"]["enc.0"]["dominant_task"] == "a"
    assert s["layers"]["enc.2"]["mean_rau"] == pytest.approx({"a": 2 / 3, "b": 1 / 3}) and s["layers"]["enc.2"]["dominated"] == 0.0
    assert s["mean_rau"] == pytest.approx({"a": (0.9 + 0.5 + 2 / 3) / 3, "b": (0.1 + 0.5 + 1 / 3) / 3})
    assert s["dominated_fraction"] == pytest.approx(1 / 3)
    first, second = s["history"]
    assert (first["epoch"], first["step"], second["epoch"], second["step"]) == (1, 0, 2, 1)
    assert first["layers"]["enc.2"]["mean_rau"] == pytest.approx({"a": 0.0, "b": 1.0})
    assert first["layers"]["enc.2"]["dominated"] == 1.0 and first["dominated"] == pytest.approx(2 / 3)
    assert first["mean_rau"] == pytest.approx({"a": (0.9 + 0.5) / 3, "b": (0.1 + 0.5 + 1.0) / 3})
    assert records[0]["au/enc.2/rau/b"] == pytest.approx(1.0) and records[1]["au/enc.2/rau/b"] == pytest.approx(1 / 3)
    assert records[1]["au/enc.0/max_share"] == pytest.approx(0.9) and records[1]["au/all/dominated"] == pytest.approx(1 / 3)


def test_history_survives_a_checkpoint():
    named = shared_params()
    au = AUMonitor(every_n_steps=1)
    au.bind(torch.optim.SGD([p for _, p in named], lr=0.1), named, TASKS)
    au.observe(0, per_layer((1, 2, 3), (3, 2, 1)), TASKS, None, "params")
    au.after_step(0)
    au.epoch_record(1)
    other = AUMonitor(every_n_steps=1)
    other.bind(torch.optim.SGD([p for _, p in named], lr=0.1), named, TASKS)
    other.load_state_dict(au.state_dict())
    assert other.summary() == au.summary() and other.summary()["history"][0]["step"] == 0


def first_step_rau(kind: str, grads: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per-layer mean rAU after one optimizer step with per-task gradients ``grads`` (K×9)."""
    named = shared_params()
    params = [p for _, p in named]
    if kind == "adatask":
        opt = AdaTaskAdam([{"params": params, "name": "shared"}], lr=1e-2, eps=1e-14)
        opt.set_task_gradients(grads)
    else:
        opt = torch.optim.Adam(params, lr=1e-2, eps=1e-14)
        total, offset = grads.sum(0), 0
        for p in params:
            p.grad = total[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    au = AUMonitor(every_n_steps=1)
    au.bind(opt, named, TASKS)
    au.observe(0, grads, TASKS, None, "params")
    au.before_step(0)
    opt.step()
    au.after_step(0)
    return {layer: st["mean_rau"] for layer, st in au.summary()["layers"].items()}


def test_first_step_adam_shares_follow_squared_gradients_adatask_shares_are_equal():
    """Adam's first step: m̂_k = g_k, v̂ = (g_a + g_b)², so Δθ_k ∝ g_k and rAU_k = g_k² / (g_a² + g_b²) — task b,
    with gradients ×10 in layer 0 (its loss ×100), takes 100/101 there.  AdaTask: Δθ_k = lr·g_k/|g_k| = ±lr for
    each task, so rAU = 1/2 everywhere, whatever the scales."""
    grads = per_layer((1.0, -2.0, 0.5), (10.0, 5.0, -1.0))
    adam = first_step_rau("adam", grads)
    expected = {"enc.0": 1 / 101, "enc.1": 4 / 29, "enc.2": 0.25 / 1.25}
    for layer, share_a in expected.items():
        assert adam[layer] == pytest.approx({"a": share_a, "b": 1 - share_a}, rel=1e-9)
    ada = first_step_rau("adatask", grads)
    for layer in expected:
        assert ada[layer] == pytest.approx({"a": 0.5, "b": 0.5}, rel=1e-9)


def test_run_with_three_shared_layers_writes_per_layer_rau_over_training(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("diagnostics.au.enabled=true", "diagnostics.au.every_n_steps=2", "trainer.epochs=3",
                                       "backbone.hidden=[8,8,8]", "dataset.label_scales=[1.0,10.0]"), output_dir=tmp_path / "r")
    au = summary["au"]
    layers = ["encoder.net.0", "encoder.net.2", "encoder.net.4"]
    assert list(au["layers"]) == layers and list(au["layer_max_share"]) == layers
    for layer in layers:
        st = au["layers"][layer]
        assert sum(st["mean_rau"].values()) == pytest.approx(1.0)
        assert st["max_share"] == max(st["mean_rau"].values()) and st["dominant_task"] == "t1"  # the x100-loss task
    assert [h["epoch"] for h in au["history"]] == [1, 2, 3]
    assert [h["step"] for h in au["history"]] == [6, 14, 22]  # 8 steps per epoch (256 samples, batch 32), probes on even steps
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    for h, rec in zip(au["history"], epochs):
        for layer in layers:
            assert rec[f"au/{layer}/rau/t0"] == pytest.approx(h["layers"][layer]["mean_rau"]["t0"])
            assert rec[f"au/{layer}/dominated"] == pytest.approx(h["layers"][layer]["dominated"])
        assert rec["au/all/rau/t1"] == pytest.approx(h["mean_rau"]["t1"])


# ------------------------------------------------------------------------------- report figures (au_plots.py)

LAYERS = ["enc.0", "enc.1"]


def fake_run(tmp_path, name: str, optimizer: str, lr: float, seed: int, share: float, val_t0: float, epochs=(1, 2),
             spec: dict | None = None, layers_names=tuple(LAYERS)):
    """A completed run whose summary["au"] gives task t1 the mean rAU ``share`` in every layer (dominated fraction
    = share − 0.5) and, over training, ``share`` at the last epoch and 0.5 before."""
    from mtl_bench.report.runs import Run

    layers = {layer: {"mean_rau": {"t0": 1 - share, "t1": share}, "dominated": share - 0.5} for layer in layers_names}
    history = [{"epoch": e, "step": 10 * e, "mean_rau": {"t0": 1 - s, "t1": s}, "dominated": s - 0.5, "layers": {}}
               for e in epochs for s in [share if e == epochs[-1] else 0.5]]
    summary = {"status": "completed", "seed": seed, "mode": "mtl", "tasks": ["t0", "t1"],
               "choices": {"optimizer": optimizer, "dataset": "synthetic_imbalanced"},
               "metric_directions": {"t0/mse": False, "t1/mse": False},
               "selected": {"val/t0/mse": val_t0, "test/t0/mse": val_t0, "val/t1/mse": 1.0, "test/t1/mse": 1.0},
               "dataset": {"name": "synthetic"},
               "au": {"mean_rau": {"t0": 1 - share, "t1": share}, "dominated_fraction": share - 0.5, "layers": layers,
                      "layer_max_share": {layer: max(share, 1 - share) for layer in layers}, "history": history}}
    path = tmp_path / name
    path.mkdir(parents=True)
    return Run(path, "completed", summary, [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"seed={seed}"],
               config_data={"study": {"au_plots": spec}} if spec else {})


SPEC = {"by": "optimizer", "tune": ["optimizer.lr"], "select_on": "t0/mse", "select_mode": "min"}


def study_runs(tmp_path, spec=SPEC):
    """Adam: lr 0.01 has the lower val t0 MSE (chosen) with t1 shares 0.8 / 0.9 / 1.0 over seeds 0-2; lr 0.001 has
    shares 0.6.  AdaTask: one lr, shares 0.5, 0.5, 0.5; its seed 2 stopped after epoch 1."""
    runs = []
    for seed, share in enumerate((0.8, 0.9, 1.0)):
        runs.append(fake_run(tmp_path, f"adam_hi_{seed}", "adam", 0.01, seed, share, 1.0, spec=spec))
        runs.append(fake_run(tmp_path, f"adam_lo_{seed}", "adam", 0.001, seed, 0.6, 2.0, spec=spec))
        runs.append(fake_run(tmp_path, f"ada_{seed}", "adatask_adam", 0.01, seed, 0.5, 0.5, spec=spec,
                             epochs=(1, 2) if seed < 2 else (1,)))
    return runs


def test_au_plot_cells_follow_the_spec_and_tune_on_validation(tmp_path):
    from mtl_bench.report.au_plots import cells, history_table, layer_table
    from mtl_bench.report.build import ReportOptions, build_report

    report = build_report(study_runs(tmp_path), ReportOptions(claims={}))
    found = cells(report)
    assert [(c.column, c.chosen, len(c.runs)) for c in found] == [
        ("optimizer=adam", "optimizer.lr=0.01", 3), ("optimizer=adatask_adam", "optimizer.lr=0.01", 3)]
    adam = layer_table(found[0].runs)
    assert list(adam) == LAYERS
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t_{0.975, 2} · s / √n with s = std(0.8, 0.9, 1.0) = 0.1
    iv = adam["enc.1"]["t1"]
    assert iv.estimate == pytest.approx(0.9) and iv.hi - iv.estimate == pytest.approx(half)
    assert adam["enc.0"]["dominated"].estimate == pytest.approx(0.4)
    hist = history_table(found[1].runs)  # AdaTask: epoch 2 only from seeds 0 and 1
    assert [(x, iv.n) for x, iv in hist["t1"]] == [(1.0, 3), (2.0, 2)]
    assert hist["dominated"][-1][1].estimate == pytest.approx(0.0)
    assert [iv.estimate for _, iv in history_table(found[0].runs)["t1"]] == pytest.approx([0.5, 0.9])


def test_au_figures_are_written_and_a_bad_spec_is_one_line(tmp_path):
    from mtl_bench.report.au_plots import au_figures, cells
    from mtl_bench.report.build import ReportOptions, build_report
    from mtl_bench.report.runs import ReportError

    out = tmp_path / "out"
    out.mkdir()
    files = au_figures(build_report(study_runs(tmp_path / "a"), ReportOptions(claims={})), out)
    assert [f.name for f in files] == ["au_layers.png", "au_training.png"] and all(f.stat().st_size > 5000 for f in files)
    old = study_runs(tmp_path / "old")  # a previous version's summary: per-tensor layers, shares as lists
    for run in old:
        run.summary["au"] = {"mean_rau": {"t0": 0.5, "t1": 0.5}, "dominated_fraction": 0.0,
                             "layers": {"enc.0.weight": {"mean_rau": [0.5, 0.5], "dominated": 0.0}}}
    assert au_figures(build_report(old, ReportOptions(claims={})), out) == []
    plain = build_report(study_runs(tmp_path / "b", spec=None), ReportOptions(claims={}))
    assert {c.column for c in cells(plain)} == {row.group.short for row in plain.rows}  # without a spec: the table's groups
    with pytest.raises(ReportError, match=r"study.au_plots: unknown field\(s\) \['colour'\]"):
        cells(build_report(study_runs(tmp_path / "c", spec={**SPEC, "colour": "red"}), ReportOptions(claims={})))


def test_short_layer_names_and_a_deep_encoder_s_panels_stacked(tmp_path):
    from PIL import Image

    from mtl_bench.report.au_plots import au_figures, short_layers
    from mtl_bench.report.build import ReportOptions, build_report

    assert short_layers(["encoder.net.0", "encoder.net.2"]) == ["0", "2"]
    assert short_layers(["encoder.body.conv1.0", "encoder.body.layer4.0.conv2"]) == ["conv1.0", "layer4.0.conv2"]
    assert short_layers(["encoder.net.0"]) == ["encoder.net.0"]
    deep = [f"encoder.block{i}" for i in range(12)]
    runs = [fake_run(tmp_path, f"{opt}_{seed}", opt, 0.01, seed, 0.7, 1.0, spec={"by": "optimizer"}, layers_names=deep)
            for opt in ("adam", "adatask_adam") for seed in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    layers_png = au_figures(build_report(runs, ReportOptions(claims={})), out)[0]
    width, height = Image.open(layers_png).size
    # two panels one below the other (7.1 x 6.5 in at 110 dpi), not 2 x 12 layers side by side (24 in wide)
    assert (width, height) == (781, 715)
