"""Gradient-conflict probe: pair metrics, per-sample gradients, BatchNorm semantics, trajectory invariance,
sampling, aggregation, configuration errors, figures and summary."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.data.synthetic import regression_task
from mtl_bench.diagnostics import gradient_stats as gs
from mtl_bench.diagnostics.conflicts import PAIR_TYPES, ConflictProbe
from mtl_bench.errors import ConfigError
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.models.backbones import MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.optim import build_optimizer
from mtl_bench.selection import ModelSelector
from mtl_bench.report.run_figures import render
from mtl_bench.trainer import Trainer, metric_directions
from mtl_bench.utils import to_jsonable
from tests.helpers import SumOfGradients, tiny_batch

TASKS = ("a", "b", "c")
F64 = torch.float64


def smooth_model(tasks=TASKS, seed=0, bn=False, dropout=0.0, in_dim=5) -> MultiTaskModel:
    """Tanh MLP (no dead units, so every gradient is non-zero), optionally with BatchNorm and dropout."""
    torch.manual_seed(seed)
    if bn or dropout:
        layers = [nn.Linear(in_dim, 7)] + ([nn.BatchNorm1d(7)] if bn else []) + [nn.Tanh()]
        layers += ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(7, 6), nn.Tanh()]
        encoder = nn.Sequential(*layers)
    else:
        encoder = MLPEncoder((in_dim,), hidden=(7, 6), activation="tanh")
    heads = {t: MLPHead(6, regression_task(t), hidden=(4,), activation="tanh") for t in tasks}
    return MultiTaskModel(encoder, heads).to(F64)


def make_probe(model, tasks=TASKS, **kw) -> ConflictProbe:
    setup = kw.pop("setup", {})
    probe = ConflictProbe(**{"every_n_steps": 1, **kw})
    probe.bind(model, {t: regression_task(t) for t in tasks}, model.shared_named_parameters(), **setup)
    return probe


def single_grad(model, x, y, task, train_bn: bool = False) -> torch.Tensor:
    """∇_shared of one task's loss on the given (sub-)batch, with BatchNorm in train or eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(train_bn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    g = torch.autograd.grad(torch.nn.functional.mse_loss(out[task], y[task]), model.shared_parameters(), allow_unused=True)
    model.load_state_dict(state)
    for m, t in modes:
        m.training = t
    return torch.cat([gi.reshape(-1) for gi in g])


# ---------------------------------------------------------------------- pair metrics
def test_metrics_on_constructed_pair_with_known_angle_and_norms():
    """cos = −0.6, norm ratio 5 → mag_sim = 2·5/26, dot = 1·5·(−0.6), one of two coordinates with opposite signs
    (the other: 0 vs positive, which does not conflict)."""
    a = torch.tensor([1.0, 0.0], dtype=F64)
    b = 5 * torch.tensor([-0.6, 0.8], dtype=F64)
    for values in (gs.pair_metrics(a, b), gs.gram_pair_metrics(torch.stack([a, b]), [2], torch.tensor([0]), torch.tensor([1]))):
        cos, mag, sign, dot = values[-1, 0].tolist()
        assert cos == pytest.approx(-0.6, abs=1e-15)
        assert mag == pytest.approx(2 * 5 / 26, abs=1e-15)
        assert sign == 0.5
        assert dot == pytest.approx(-3.0, abs=1e-14)
    # symmetric in the pair, invariant to scaling both vectors
    torch.testing.assert_close(gs.pair_metrics(b, a), gs.pair_metrics(a, b))
    assert gs.pair_metrics(3 * a, 3 * b)[-1, 0, :3].tolist() == pytest.approx(gs.pair_metrics(a, b)[-1, 0, :3].tolist())


def test_sign_conflict_fraction_by_hand_zeros_never_conflict():
    a = torch.tensor([1.0, -2.0, 0.0, 3.0, -1.0, 0.0], dtype=F64)
    b = torch.tensor([-1.0, -1.0, 2.0, 0.0, 4.0, 0.0], dtype=F64)
    # opposite signs at 0 (+/−) and 4 (−/+); 1 is same-sign, 2/3/5 involve a zero -> 2 of 6 coordinates
    assert gs.pair_metrics(a, b)[-1, 0, 2].item() == pytest.approx(2 / 6)
    x = torch.stack([a, b]).float()
    assert gs.gram_pair_metrics(x, [6], torch.tensor([0]), torch.tensor([1]))[-1, 0, 2].item() == pytest.approx(2 / 6)


def test_zero_vectors_follow_the_stated_conventions():
    z, v = torch.zeros(4, dtype=F64), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    both = gs.pair_metrics(z, z)[-1, 0].tolist()
    one = gs.pair_metrics(z, v)[-1, 0].tolist()
    assert both == [0.0, 1.0, 0.0, 0.0]  # cos 0, equal (zero) norms -> mag_sim 1
    assert one == [0.0, 0.0, 0.0, 0.0]
    x = torch.stack([z, v, z])
    values = gs.gram_pair_metrics(x, [2, 2], torch.tensor([0, 0]), torch.tensor([1, 2]))
    assert torch.isfinite(values).all()
    assert values[-1, :, 0].tolist() == [0.0, 0.0] and values[-1, :, 1].tolist() == [0.0, 1.0]


def test_per_layer_split_and_whole_vector_agree_with_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g, dtype=F64)
    x[2, :3] = 0.0  # a zero layer in one vector
    sizes = [3, 5, 2]
    first, second = gs.group_pairs(2, 3)  # pairs within (0,1,2) and (3,4,5)
    assert first.tolist() == [0, 0, 1, 3, 3, 4] and second.tolist() == [1, 2, 2, 4, 5, 5]
    fast = gs.gram_pair_metrics(x, sizes, first, second)
    direct = gs.pair_metrics(x[first], x[second], sizes)
    assert fast.shape == (4, 6, 4)
    torch.testing.assert_close(fast, direct)
    offset = 0
    for layer, size in enumerate(sizes):  # each layer row = the metrics of the layer's slices alone
        torch.testing.assert_close(direct[layer], gs.pair_metrics(x[first, offset:offset + size], x[second, offset:offset + size])[-1])
        offset += size
    torch.testing.assert_close(direct[-1], gs.pair_metrics(x[first], x[second])[-1])  # "all" = concatenated vector
    torch.testing.assert_close(gs.within_group_pair_metrics(x.reshape(2, 3, 10), sizes), fast)


def test_float32_sign_counts_and_float64_agree():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 300, generator=g)
    x[x.abs() < 0.3] = 0.0
    first, second = gs.group_pairs(1, 5)
    torch.testing.assert_close(gs.gram_pair_metrics(x, [100, 200], first, second).double(),
                               gs.pair_metrics(x.double()[first], x.double()[second], [100, 200]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- per-sample gradients
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_per_sample_gradients_equal_single_sample_backward(method):
    model = smooth_model()
    x, y = tiny_batch(n=4)
    probe = make_probe(model, per_sample=method)
    drawn = ["c", "a"]
    rows = probe._per_sample_grads(x, y, drawn, extra=True)  # (4, 3, d): tasks c, a, then the mean of all three
    assert probe.method == method and rows.shape == (4, 3, probe.dim)
    for i in range(4):
        xi, yi = x[i : i + 1], {t: v[i : i + 1] for t, v in y.items()}
        for j, t in enumerate(drawn):
            torch.testing.assert_close(rows[i, j], single_grad(model, xi, yi, t), rtol=1e-12, atol=1e-14)
        mean = sum(single_grad(model, xi, yi, t) for t in TASKS) / 3
        torch.testing.assert_close(rows[i, 2], mean, rtol=1e-12, atol=1e-14)


def test_probe_step_records_the_pairs_of_the_drawn_gradients():
    """All samples and tasks drawn: every buffered pair value equals the metrics of hand-computed gradients."""
    model = smooth_model()
    x, y = tiny_batch(n=4)
    probe = make_probe(model, max_samples=4, max_tasks=3)
    probe.observe_batch(0, x, y)
    G = torch.stack([torch.stack([single_grad(model, x[i:i + 1], {t: v[i:i + 1] for t, v in y.items()}, t) for t in TASKS])
                     for i in range(4)])  # (n, K, d)
    sizes = probe.sizes
    expect = {
        "inter_task": gs.pair_metrics(torch.stack([G[i, a] for i in range(4) for a, b in [(0, 1), (0, 2), (1, 2)]]),
                                      torch.stack([G[i, b] for i in range(4) for a, b in [(0, 1), (0, 2), (1, 2)]]), sizes),
        "inter_sample": gs.pair_metrics(torch.stack([G[i, t] for t in range(3) for i in range(4) for j in range(i + 1, 4)]),
                                        torch.stack([G[j, t] for t in range(3) for i in range(4) for j in range(i + 1, 4)]), sizes),
    }
    avg_s = G.mean(1)
    expect["inter_sample_averaged"] = gs.pair_metrics(torch.stack([avg_s[i] for i in range(4) for j in range(i + 1, 4)]),
                                                      torch.stack([avg_s[j] for i in range(4) for j in range(i + 1, 4)]), sizes)
    B = torch.stack([single_grad(model, x, y, t) for t in TASKS])  # batch-averaged per task (no BN: mode irrelevant)
    expect["inter_task_averaged"] = gs.pair_metrics(B[[0, 0, 1]], B[[1, 2, 2]], sizes)
    assert probe.averaged_source == {"engine": 0, "probe": 1}
    for ptype in PAIR_TYPES:
        (got,) = probe._buffers[ptype]
        torch.testing.assert_close(got, expect[ptype], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_bn_mode_semantics(method):
    model = smooth_model(bn=True)
    model.train()
    bn = model.encoder[1]
    with torch.no_grad():  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = tiny_batch(n=5)
    drawn = ["a", "b"]
    eval_probe = make_probe(model, bn_mode="eval", per_sample=method)
    batch_probe = make_probe(model, bn_mode="batch", per_sample=method)
    with eval_probe._isolated():
        ev = eval_probe._per_sample_grads(x, y, drawn, extra=False)
    with batch_probe._isolated():
        bt = batch_probe._per_sample_grads(x, y, drawn, extra=False)
    for i in range(5):
        xi, yi = x[i : i + 1], {t: v[i : i + 1] for t, v in y.items()}
        for j, t in enumerate(drawn):
            # eval: running statistics, the sample alone
            torch.testing.assert_close(ev[i, j], single_grad(model, xi, yi, t, train_bn=False), rtol=1e-11, atol=1e-13)
            # batch: the sample's loss under a forward of the whole sub-batch with its statistics (coupled)
            out = model(x)
            loss = torch.nn.functional.mse_loss(out[t][i : i + 1], y[t][i : i + 1])
            expect = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.shared_parameters())])
            model.load_state_dict(before)
            torch.testing.assert_close(bt[i, j], expect, rtol=1e-11, atol=1e-13)
    assert not torch.allclose(ev, bt)  # the two modes really differ
    assert batch_probe.method == method
    # running statistics and modes untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and bn.training


# ---------------------------------------------------------------------- trajectory invariance
def _trainer(tmp_path, tag, model, combiner, probe=None, grad_clip=None, names=TASKS[:2]):
    tasks = {t: regression_task(t) for t in names}
    g = torch.Generator().manual_seed(5)
    ds = TensorDictDataset(torch.randn(16, 5, generator=g, dtype=F64), {t: torch.randn(16, 1, generator=g, dtype=F64) for t in tasks})
    bench = Benchmark("toy", tasks, {"train": ds, "val": ds, "test": ds}, (5,))
    combiner.setup(list(tasks))
    opt = build_optimizer(lambda groups: torch.optim.Adam(groups, lr=1e-2), model, combiner)
    monitors = []
    if probe is not None:
        probe.bind(model, tasks, model.shared_named_parameters(), combiner=combiner)
        monitors.append(probe)
    settings = TrainerConf(epochs=1, batch_size=8, device="cpu", progress_bar=False, grad_clip_norm=grad_clip)
    return Trainer(model=model, benchmark=bench, tasks=tasks, combiner=combiner, optimizer=opt, scheduler=None,
                   settings=settings, selector=ModelSelector("last", "val/loss", "auto", 1, metric_directions(tasks)),
                   logger=RunLogger(tmp_path / tag, {}), output_dir=tmp_path / tag, device=torch.device("cpu"), seed=0,
                   diagnostics=monitors)


@pytest.mark.parametrize("combiner_factory", [EqualWeighting, SumOfGradients], ids=["ew", "aggregator"])
@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
@pytest.mark.parametrize("num_tasks", [2, 3])
def test_probe_leaves_the_training_trajectory_bit_identical(tmp_path, combiner_factory, bn_mode, num_tasks):
    """Same training with and without the probe (every step, through Trainer.train_step's hooks), with dropout
    and BatchNorm in the model: parameters, BN buffers and the RNG stream afterwards are bit-identical.  With
    3 tasks and max_tasks=2 under EW the probe runs its own full-batch forward for the batch-averaged gradients."""
    names = TASKS[:num_tasks]
    g = torch.Generator().manual_seed(9)
    batches = [(torch.randn(8, 5, generator=g, dtype=F64), {t: torch.randn(8, 1, generator=g, dtype=F64) for t in names})
               for _ in range(4)]
    finals = []
    for with_probe in (False, True):
        model = smooth_model(names, bn=True, dropout=0.3)
        probe = ConflictProbe(every_n_steps=1, max_samples=4, max_tasks=2, bn_mode=bn_mode) if with_probe else None
        trainer = _trainer(tmp_path, f"{with_probe}", model, combiner_factory(), probe, names=names)
        torch.manual_seed(123)
        model.train()
        for x, y in batches:
            trainer.train_step(x, y)
        finals.append(({k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state(), probe))
    (plain, rng0, _), (probed, rng1, probe) = finals
    assert probe.probe_steps == 4 and len(probe._buffers["inter_task"]) == 4 and probe.method == "vmap"
    own = num_tasks == 3 and combiner_factory is EqualWeighting  # 2 of 3 tasks under a loss weighting
    assert probe.averaged_source == ({"engine": 0, "probe": 4} if own else {"engine": 4, "probe": 0})
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
    assert torch.equal(rng0, rng1)


def test_probe_does_not_touch_grads_or_modes():
    model = smooth_model(bn=True, dropout=0.2)
    model.train()
    model.heads["b"].eval()  # a mixed-mode model must come back mixed
    x, y = tiny_batch(n=6)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    probe = make_probe(model, bn_mode="batch")
    probe.observe_batch(0, x, y)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert model.training and model.encoder[1].training and not model.heads["b"].training


# ---------------------------------------------------------------------- sampling
def test_sampling_limits_and_the_probe_generator():
    model = smooth_model()
    x, y = tiny_batch(n=6)
    probe = make_probe(model, max_samples=3, max_tasks=2, seed=4)
    rng = torch.get_rng_state()
    probe.observe_batch(0, x, y)
    probe.observe_batch(1, x, y)
    assert torch.equal(rng, torch.get_rng_state())  # draws come from the probe's own generator
    rec = probe.epoch_record(1)
    # per probe step: 3 samples × 1 task pair, 2 tasks × 3 sample pairs, 3 averaged sample pairs, 1 averaged task pair
    assert rec["conflict/probe_steps"] == 2
    assert [rec[f"conflict/{p}/n_pairs"] for p in PAIR_TYPES] == [6, 12, 2, 6]
    # same seed -> same draws; another seed -> other draws (with overwhelming probability over 5 steps)
    def draws(seed):
        p = make_probe(model, max_samples=3, max_tasks=2, seed=seed)
        for s in range(5):
            p.observe_batch(s, x, y)
        return torch.cat([v[-1] for v in p._buffers["inter_task"]])
    torch.testing.assert_close(draws(4), draws(4))
    assert not torch.allclose(draws(4), draws(5))


def test_cadence_and_single_task_runs():
    model = smooth_model(tasks=("a",))
    x, y = tiny_batch(n=6, tasks=("a",))
    probe = make_probe(model, tasks=("a",))
    probe.every = 3
    assert not probe.wants_grads(0)  # STL: no batch-averaged per-task pairs to ask the engine for
    for step in range(7):
        probe.observe_batch(step, x, y)
    rec = probe.epoch_record(1)
    assert rec["conflict/probe_steps"] == 3  # steps 0, 3, 6
    assert not any(k.startswith(("conflict/inter_task/", "conflict/inter_task_averaged/")) for k in rec)
    assert rec["conflict/inter_sample/n_pairs"] == 3 * 15
    assert rec["conflict/inter_sample_averaged/cos/all/mean"] == rec["conflict/inter_sample/cos/all/mean"]


def test_engine_gradients_are_used_and_transforms_force_own_computation():
    model = smooth_model()
    x, y = tiny_batch(n=6)
    agg = SumOfGradients()
    probe = make_probe(model, max_tasks=2, setup={"combiner": agg})
    assert probe.wants_grads(0) and probe.wants_grads(5)  # an aggregator computes G anyway
    plain = make_probe(model, max_tasks=2)
    assert not plain.wants_grads(0)  # 2 of 3 tasks under a loss weighting: cheaper to compute 2 rows itself
    assert make_probe(model, max_tasks=3).wants_grads(0)
    assert make_probe(model, max_tasks=2, setup={"optimizer": SimpleNamespace(task_wise=True)}).wants_grads(0)  # AdaTask
    assert not make_probe(model, max_tasks=3, setup={"transforms": {"a": torch.log}}).wants_grads(0)
    # the engine's matrix (here: hand-made, marked by its values) is what the averaged inter-task pairs use
    fake = torch.randn(3, probe.dim, dtype=F64)
    probe.observe(0, fake, list(TASKS), None, "params")
    probe.observe_batch(0, x, y)
    assert probe.averaged_source == {"engine": 1, "probe": 0}
    (got,) = probe._buffers["inter_task_averaged"]
    drawn = [t for t in TASKS if t in _drawn_tasks(probe)]
    rows = fake[[TASKS.index(t) for t in drawn]]
    torch.testing.assert_close(got, gs.pair_metrics(rows[:1], rows[1:], probe.sizes))
    # a gradient over another source (e.g. the representation) is ignored: the probe computes its own
    probe.observe(1, torch.randn(3, 6, dtype=F64), list(TASKS), None, "representation")
    probe.observe_batch(1, x, y)
    assert probe.averaged_source == {"engine": 1, "probe": 1}


def test_averaged_cadence():
    model = smooth_model()
    x, y = tiny_batch(n=6)
    probe = make_probe(model, max_tasks=3, every_n_steps=2, averaged_every_n_steps=4)
    assert [s for s in range(9) if probe.wants_grads(s)] == [0, 4, 8]
    for step in range(9):
        probe.observe_batch(step, x, y)
    rec = probe.epoch_record(1)
    assert rec["conflict/probe_steps"] == 5
    assert rec["conflict/inter_task_averaged/n_pairs"] == 3 * 3  # 3 task pairs on steps 0, 4, 8
    assert rec["conflict/inter_sample_averaged/n_pairs"] == 5 * 15  # free: every probe step


def test_conv_encoder_per_sample_gradients_vmap_equals_loop():
    """The framework's CNN (BatchNorm, in-place ReLU, max-pooling) through torch.func and the loop route."""
    from mtl_bench.models.backbones import ConvEncoder

    torch.manual_seed(0)
    enc = ConvEncoder((3, 8, 8), channels=(3, 4), fc=5)
    model = MultiTaskModel(enc, {t: MLPHead(5, regression_task(t), hidden=()) for t in TASKS}).to(F64)
    model.train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    y = {t: torch.randn(4, 1, generator=g, dtype=F64) for t in TASKS}
    rows = {}
    for bn_mode in ("eval", "batch"):
        for method in ("vmap", "loop"):
            probe = make_probe(model, per_sample=method, bn_mode=bn_mode)
            with probe._isolated():
                rows[bn_mode, method] = probe._per_sample_grads(x, y, ["a", "c"], extra=True)
            assert probe.method == method
        torch.testing.assert_close(rows[bn_mode, "vmap"], rows[bn_mode, "loop"], rtol=1e-10, atol=1e-12)
    xi, yi = x[1:2], {t: v[1:2] for t, v in y.items()}
    torch.testing.assert_close(rows["eval", "vmap"][1, 1], single_grad(model, xi, yi, "c"), rtol=1e-10, atol=1e-12)


def _drawn_tasks(probe):
    """Replay the probe's first task draw (its generator is seeded)."""
    g = torch.Generator().manual_seed(probe.seed)
    torch.randperm(6, generator=g)
    return [probe.task_names[i] for i in torch.randperm(3, generator=g)[:2].sort().values.tolist()]


# ---------------------------------------------------------------------- aggregation
def test_summarize_and_cosine_split_on_known_values():
    st = gs.summarize([1.0, 2.0, 3.0, 4.0])
    assert st["mean"] == 2.5 and st["std"] == pytest.approx(math.sqrt(1.25))
    assert st["p2.5"] == pytest.approx(1.075) and st["p97.5"] == pytest.approx(3.925)  # linear interpolation
    sp = gs.cosine_split([0.5, -0.25, 0.0, 0.7, -0.75])
    assert (sp["supporting_count"], sp["conflicting_count"]) == (2, 2)
    assert sp["supporting_fraction"] == 0.4 and sp["conflicting_fraction"] == 0.4
    assert sp["supporting_mean"] == pytest.approx(0.6) and sp["conflicting_mean"] == pytest.approx(-0.5)
    assert math.isnan(gs.summarize([])["mean"]) and math.isnan(gs.cosine_split([0.3])["conflicting_mean"])


def test_epoch_record_statistics_keys_and_reset():
    model = smooth_model(tasks=("a", "b"))
    probe = make_probe(model, tasks=("a", "b"))
    L = len(probe.layer_names)
    cos = torch.tensor([0.5, -0.25, 0.0, 0.7, -0.75], dtype=F64)
    values = torch.zeros(L + 1, 5, 4, dtype=F64)
    values[-1, :, 0] = cos
    values[-1, :, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    values[0, :, 2] = torch.tensor([0.1, 0.1, 0.2, 0.2, 0.4])
    probe._buffers["inter_task"] += [values[:, :2], values[:, 2:]]  # two probe steps
    rec = probe.epoch_record(1)
    key = "conflict/inter_task/{}/{}/{}".format
    assert rec["conflict/inter_task/n_pairs"] == 5
    assert rec[key("cos", "all", "mean")] == pytest.approx(0.04)
    assert rec[key("mag_sim", "all", "mean")] == 3.0 and rec[key("mag_sim", "all", "std")] == pytest.approx(math.sqrt(2))
    assert rec[key("mag_sim", "all", "p2.5")] == pytest.approx(1.1) and rec[key("mag_sim", "all", "p97.5")] == pytest.approx(4.9)
    assert rec[key("sign_conflict", probe.layer_names[0], "mean")] == pytest.approx(0.2)
    assert rec[key("cos", "all", "conflicting_fraction")] == 0.4 and rec[key("cos", "all", "supporting_mean")] == pytest.approx(0.6)
    assert rec[key("cos", "all", "conflicting_count")] == 2
    n_layer_keys = 4 * 4 + 6  # 4 metrics × 4 statistics + the 6 cosine-split keys
    assert len([k for k in rec if k.startswith("conflict/inter_task/")]) == 1 + n_layer_keys * (L + 1)
    assert not any(k.startswith("conflict/inter_sample/") for k in rec)
    assert probe.epoch_record(2) == {"conflict/probe_steps": 0}  # buffers were reset
    # per_layer=False keeps the "all" keys only
    probe.per_layer = False
    probe._buffers["inter_task"].append(values)
    rec3 = probe.epoch_record(3)
    assert all(k.split("/")[3] == "all" for k in rec3 if k.count("/") == 4) and key("cos", "all", "mean") in rec3
    summary = probe.summary()
    assert summary["all_epochs"]["inter_task"]["n_pairs"] == 10
    assert summary["all_epochs"]["inter_task"]["mag_sim"]["mean"] == 3.0
    assert summary["last_epoch"]["inter_task"]["cos"]["conflicting_count"] == 2


# ---------------------------------------------------------------------- configuration and fallback
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_steps": 0}, r"diagnostics\.conflicts\.every_n_steps must be an integer >= 1, got 0"),
        ({"max_samples": 1}, r"diagnostics\.conflicts\.max_samples must be an integer >= 2 .*got 1"),
        ({"max_tasks": 2.5}, r"diagnostics\.conflicts\.max_tasks must be an integer >= 2"),
        ({"bn_mode": "train"}, r"diagnostics\.conflicts\.bn_mode='train' is invalid; choose one of \['eval', 'batch'\]"),
        ({"per_sample": "jit"}, r"per_sample='jit' is invalid; choose one of \['auto', 'vmap', 'loop'\]"),
        ({"averaged": "yes"}, r"diagnostics\.conflicts\.averaged must be true or false, got 'yes'"),
        ({"seed": None}, r"diagnostics\.conflicts\.seed must be an integer"),
        ({"every_n_steps": 5, "averaged_every_n_steps": 0}, r"diagnostics\.conflicts\.averaged_every_n_steps must be an integer >= 1"),
    ],
)
def test_invalid_settings_raise_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        ConflictProbe(**kwargs)
    assert "\n" not in str(err.value)


def _branchy_loss(pred, target):
    if bool((target > 100).any()):  # data-dependent control flow: no vmap
        return pred.sum() * 0
    return torch.nn.functional.mse_loss(pred, target)


def test_vmap_fallback_is_automatic_or_a_clear_error(caplog):
    model = smooth_model(tasks=("a", "b"))
    tasks = {t: regression_task(t) for t in ("a", "b")}
    tasks = {t: type(task)(t, _branchy_loss, task.metrics, 1) for t, task in tasks.items()}
    x, y = tiny_batch(n=4, tasks=("a", "b"))
    forced = ConflictProbe(every_n_steps=1, per_sample="vmap")
    forced.bind(model, tasks, model.shared_named_parameters())
    with pytest.raises(ConfigError, match=r"per_sample='vmap' is not supported by this model or its losses .*use per_sample=auto or loop"):
        forced.observe_batch(0, x, y)
    auto = ConflictProbe(every_n_steps=1)
    auto.bind(model, tasks, model.shared_named_parameters())
    with caplog.at_level(logging.WARNING, logger="mtl_bench.diagnostics.conflicts"):
        auto.observe_batch(0, x, y)
        auto.observe_batch(1, x, y)
    assert auto.method == "loop" and auto.fallback_reason
    assert len([r for r in caplog.records if "per-sample" in r.getMessage()]) == 1  # logged once
    assert auto.summary()["per_sample_method"] == "loop"


def test_setup_errors():
    model = smooth_model()
    with pytest.raises(ConfigError, match="at least one task"):
        ConflictProbe().bind(model, {}, model.shared_named_parameters())
    with pytest.raises(ConfigError, match="no shared parameters"):
        ConflictProbe().bind(model, {"a": regression_task("a")}, [])
    with pytest.raises(ConfigError, match="not parameters of the model"):
        ConflictProbe().bind(model, {"a": regression_task("a")}, [("stray", nn.Parameter(torch.zeros(2)))])


# ---------------------------------------------------------------------- outputs
def test_summary_and_figures(tmp_path):
    model = smooth_model()
    x, y = tiny_batch(n=6)
    probe = make_probe(model, max_samples=4)
    for epoch in (1, 2):
        for step in range(2):
            probe.observe_batch(step, x, y)
        probe.epoch_record(epoch)
    summary = json.loads(json.dumps(to_jsonable(probe.summary())))
    assert summary["settings"]["bn_mode"] == "eval" and summary["per_sample_method"] == "vmap"
    assert "running statistics" in summary["bn_semantics"] and summary["probe_steps"] == 4
    assert set(summary["last_epoch"]) == set(PAIR_TYPES) == set(summary["all_epochs"])
    assert summary["all_epochs"]["inter_task"]["n_pairs"] == 2 * summary["last_epoch"]["inter_task"]["n_pairs"]
    assert set(summary["last_epoch"]["inter_sample"]["cos"]) >= {"mean", "std", "p2.5", "p97.5", "conflicting_fraction"}
    paths = render(probe.figures(summary), tmp_path)
    assert set(paths) == {"epochs", "layers"} and paths["epochs"].name == "conflicts_epochs.png"
    assert all(p.stat().st_size > 1000 for p in paths.values())
    assert ConflictProbe().figures({}) == []  # nothing probed: no figures


def test_record_values_match_numpy_on_a_real_run():
    model = smooth_model()
    x, y = tiny_batch(n=6)
    probe = make_probe(model)
    probe.observe_batch(0, x, y)
    raw = probe._buffers["inter_sample"][0][-1, :, 1].numpy()
    rec = probe.epoch_record(1)
    assert rec["conflict/inter_sample/mag_sim/all/mean"] == pytest.approx(raw.mean())
    assert rec["conflict/inter_sample/mag_sim/all/p97.5"] == pytest.approx(np.percentile(raw, 97.5))


def test_averaged_cadence_is_rounded_up_to_a_probe_step():
    assert ConflictProbe(every_n_steps=5, averaged_every_n_steps=7).averaged_every == 10
    assert ConflictProbe(every_n_steps=2, averaged_every_n_steps=25).averaged_every == 26
