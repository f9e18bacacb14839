"""AU / rAU task dominance: attribution of optimizer updates to tasks, statistics, and the run output."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.diagnostics.au import AUMonitor
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from mtl_bench.train import build_and_train
from tests.helpers import tiny_batch, tiny_model

TASKS = ("a", "b")


@pytest.mark.parametrize(
    "factory",
    [
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=1e-2),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
        lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
    ],
    ids=["adam", "sgd_momentum", "sgd", "rmsprop", "adagrad"],
)
def test_per_task_updates_add_up_to_the_applied_update(factory):
    """The first moment (and SGD) are linear in the gradient: with per-step probes the attributed per-task
    updates sum exactly to the step the optimizer took (up to its sign)."""
    model = tiny_model(TASKS)
    comb = EqualWeighting()
    comb.setup(list(TASKS))
    opt = factory(model.parameters())
    au = AUMonitor(every_n_steps=1)
    au.bind(opt, model.shared_named_parameters(), TASKS)
    engine = GradientEngine(model, comb, TASKS, [au])
    for step in range(5):
        x, y = tiny_batch(tasks=TASKS, seed=step)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}, step)
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.shared_parameters()])
        au.before_step(step)
        opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in model.shared_parameters()])
        au.after_step(step)
        torch.testing.assert_close(-au.last_updates.sum(0), after - before, rtol=1e-9, atol=1e-12)


def test_au_is_the_decayed_average_of_squared_attributed_updates():
    model = tiny_model(TASKS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    au = AUMonitor(every_n_steps=1, decay=0.5)
    au.bind(opt, model.shared_named_parameters(), TASKS)
    g1 = torch.randn(2, sum(p.numel() for p in model.shared_parameters()), dtype=torch.float64)
    g2 = torch.randn_like(g1)
    for step, g in enumerate((g1, g2)):
        au.observe(step, g, TASKS, None, "params")
        au.after_step(step)
    expected = 0.5 * (0.5 * (0.1 * g1) ** 2) + 0.5 * (0.1 * g2) ** 2
    torch.testing.assert_close(au.au, expected)


def test_statistics_on_constructed_au():
    au = AUMonitor(threshold=0.9)
    au.task_names = list(TASKS)
    # 4 parameters: two dominated by b (rAU 0.99), one balanced, one dominated by a (0.95)
    a = torch.tensor([0.01, 0.01, 1.0, 0.95], dtype=torch.float64)
    b = torch.tensor([0.99, 0.99, 1.0, 0.05], dtype=torch.float64)
    st = au._stats(torch.stack([a, b]))
    assert st["dominated"] == pytest.approx(0.75)
    assert st["mean_rau"] == pytest.approx([(0.01 + 0.01 + 0.5 + 0.95) / 4, (0.99 + 0.99 + 0.5 + 0.05) / 4])
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)  # noqa: E731
    assert st["entropy"] == pytest.approx((h(0.01) + h(0.01) + 1.0 + h(0.05)) / 4)


def test_sign_based_optimizers_are_refused():
    class SignSGD(torch.optim.SGD):
        pass

    model = tiny_model(TASKS)
    with pytest.raises(ConfigError, match=r"cannot attribute updates of optimizer SignSGD"):
        AUMonitor().bind(SignSGD(model.parameters(), lr=0.1), model.shared_named_parameters(), TASKS)


def test_run_with_au_writes_statistics_heatmap_and_summary(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("diagnostics.au.enabled=true", "diagnostics.au.every_n_steps=2",
                                       "dataset.label_scales=[1.0,10.0]"), output_dir=tmp_path / "r")
    au = summary["au"]
    assert au["every_n_steps"] == 2 and "held constant over 2 steps" in au["approximation"]
    assert au["mean_rau"]["t1"] > au["mean_rau"]["t0"]  # the ×10-label task (×100 loss) dominates under Adam
    assert 0.0 <= au["dominated_fraction"] <= 1.0
    assert list(au["layers"]) == ["encoder.net.0", "encoder.net.2"]  # one entry per shared module (weight + bias)
    assert au["layer_max_share"] == {k: v["max_share"] for k, v in au["layers"].items()}
    assert [h["epoch"] for h in au["history"]] == [1, 2] and au["history"][-1]["mean_rau"] == au["mean_rau"]
    assert (tmp_path / "r" / "au_heatmap.png").stat().st_size > 1000
    epochs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in epochs if r["type"] == "epoch"][-1]
    assert {"au/all/dominated", "au/all/entropy", "au/all/rau/t0", "au/encoder.net.0/rau/t1", "au/encoder.net.2/max_share"} <= set(rec)
