"""The gradient engine: exact per-task gradients, gradient writing, observers, separate-scalar backward."""

from __future__ import annotations

import pytest
import torch

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.engine import GradientEngine
from tests.helpers import ScaledMean, SumOfGradients, task_losses, tiny_batch, tiny_model

TASKS = ("a", "b", "c")


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def reference_grads(weights=(1.0, 1.0, 1.0)):
    model = tiny_model()
    x, y = tiny_batch()
    losses = task_losses(model, x, y)
    sum(w * losses[t] for w, t in zip(weights, TASKS)).backward()
    return grads_of(model)


def run_engine(combiner, observers=()):
    model = tiny_model()
    combiner.setup(list(TASKS))
    engine = GradientEngine(model, combiner, TASKS, observers)
    x, y = tiny_batch()
    result = engine.backward(task_losses(model, x, y), step=0)
    return model, engine, result


def test_loss_weighting_path_equals_autograd_of_the_weighted_sum():
    model, _, result = run_engine(EqualWeighting("sum"))
    ref = reference_grads()
    for name, g in grads_of(model).items():
        torch.testing.assert_close(g, ref[name], rtol=0, atol=1e-14)
    assert result.grads is None  # EW never asks for per-task gradients


def test_gradient_matrix_rows_are_the_per_task_gradients():
    model, engine, result = run_engine(SumOfGradients())
    fresh = tiny_model()
    x, y = tiny_batch()
    losses = task_losses(fresh, x, y)
    for k, t in enumerate(TASKS):
        g = torch.autograd.grad(losses[t], fresh.shared_parameters(), retain_graph=True)
        torch.testing.assert_close(result.grads[k], torch.cat([v.reshape(-1) for v in g]), rtol=0, atol=1e-14)
    assert result.grads.shape == (3, sum(p.numel() for p in model.shared_parameters()))


def test_aggregated_direction_and_weighted_heads_are_written_into_grad():
    coeffs = (0.5, 2.0, 0.25)
    model, _, result = run_engine(ScaledMean(coeffs))
    ref = reference_grads(coeffs)  # Σ a_k ∇L_k on shared params, a_k ∇L_k on head k
    for name, g in grads_of(model).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(result.weights, torch.tensor(coeffs, dtype=torch.float64))


def test_each_head_is_traversed_exactly_once_per_step():
    """Separate loss scalars: the K per-task backward passes never walk another task's head."""
    model = tiny_model()
    calls = {t: 0 for t in TASKS}
    for t in TASKS:
        model.heads[t].net[0].register_full_backward_hook(lambda m, gi, go, t=t: calls.__setitem__(t, calls[t] + 1))
    combiner = SumOfGradients()
    combiner.setup(list(TASKS))
    x, y = tiny_batch()
    GradientEngine(model, combiner, TASKS).backward(task_losses(model, x, y), step=0)
    assert calls == {t: 1 for t in TASKS}


class Recorder:
    def __init__(self, every):
        self.every, self.seen = every, []

    def wants_grads(self, step):
        return step % self.every == 0

    def observe(self, step, grads, task_names, losses, source):
        self.seen.append((step, grads.clone(), list(task_names), losses.clone()))


def test_observers_get_gradients_without_changing_the_trajectory():
    def train(observers):
        model = tiny_model()
        comb = EqualWeighting("sum")
        comb.setup(list(TASKS))
        engine = GradientEngine(model, comb, TASKS, observers)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(6):
            x, y = tiny_batch(seed=step)
            opt.zero_grad(set_to_none=True)
            engine.backward(task_losses(model, x, y), step)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    rec = Recorder(every=2)
    with_probe, without = train([rec]), train([])
    assert all(torch.equal(a, b) for a, b in zip(with_probe, without))
    assert [s for s, *_ in rec.seen] == [0, 2, 4]
    step, grads, names, losses = rec.seen[0]
    assert names == list(TASKS) and grads.shape[0] == 3 and torch.all(losses > 0)
    model = tiny_model()
    x, y = tiny_batch(seed=0)
    ref = torch.autograd.grad(task_losses(model, x, y)["b"], model.shared_parameters())
    torch.testing.assert_close(grads[1], torch.cat([g.reshape(-1) for g in ref]), rtol=0, atol=1e-14)


def engine_step(combiner, per_task_backward="sequential"):
    model = tiny_model()
    combiner.setup(list(TASKS))
    engine = GradientEngine(model, combiner, TASKS, per_task_backward=per_task_backward)
    x, y = tiny_batch()
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}
    return model, engine.backward(losses, step=0, rep=rep, leaves=leaves), engine


def test_representation_source_sums_to_the_exact_ew_gradient():
    """Σ_k ∂L_k/∂rep pushed through the encoder is ∇ Σ_k L_k: the MGDA-UB machinery is exact for EW."""
    model, result, _ = engine_step(SumOfGradients(grad_source="representation"))
    ref = reference_grads()
    for name, g in grads_of(model).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-12, atol=1e-14)
    assert result.source == "representation" and result.grads.shape == (3, 6 * 6)  # batch 6 × width 6


def test_last_shared_source_computes_weights_there_and_applies_them_everywhere():
    coeffs = (0.5, 2.0, 0.25)
    model, result, engine = engine_step(ScaledMean(coeffs, grad_source="last_shared"))
    ref = reference_grads(coeffs)
    for name, g in grads_of(model).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-12, atol=1e-14)
    assert result.grads.shape == (3, sum(p.numel() for p in engine.last_shared))


def test_batched_per_task_backward_equals_sequential():
    m_seq, r_seq, _ = engine_step(SumOfGradients())
    m_bat, r_bat, engine = engine_step(SumOfGradients(), per_task_backward="batched")
    assert engine.batched  # the MLP supports vmap: no fallback happened
    torch.testing.assert_close(r_bat.grads, r_seq.grads, rtol=1e-12, atol=1e-14)
    for (name, a), b in zip(grads_of(m_bat).items(), grads_of(m_seq).values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


def test_invalid_per_task_backward_is_a_config_error():
    from mtl_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"choose one of \['sequential', 'batched'\]"):
        GradientEngine(tiny_model(), EqualWeighting(), TASKS, per_task_backward="parallel")


def test_batched_backward_falls_back_to_sequential_where_vmap_fails(monkeypatch, caplog):
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::some_op")
        return real_grad(*args, **kwargs)

    _, ref, _ = engine_step(SumOfGradients())
    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    with caplog.at_level("WARNING"):
        _, got, engine = engine_step(SumOfGradients(), per_task_backward="batched")
    assert not engine.batched and "using sequential passes" in caplog.text
    torch.testing.assert_close(got.grads, ref.grads, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make,source",
    [
        (lambda: EqualWeighting("mean"), None),
        (lambda: SumOfGradients(), "params"),
        (lambda: SumOfGradients(grad_source="representation"), "representation"),
        (lambda: ScaledMean((0.5, 2.0, 0.25), grad_source="last_shared"), "last_shared"),
        (lambda: __import__("mtl_bench.combiners.nash_mtl", fromlist=["x"]).NashMTL(max_norm=0.0), "params"),
    ],
)
def test_fp16_loss_scaling_gives_scaled_grads_and_unscaled_combiner_inputs(make, source):
    """With loss_scale s the written .grad is s × the unscaled one (what GradScaler.step expects), and
    scale-sensitive aggregators (Nash-MTL: α ∝ 1/s) see the true gradients."""
    def run(scale):
        model = tiny_model()
        comb = make()
        comb.setup(list(TASKS))
        engine = GradientEngine(model, comb, TASKS)
        x, y = tiny_batch()
        rep = model.encode(x)
        leaves = engine.leaves(rep)
        out = model.decode(leaves)
        engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}, 0, rep=rep, loss_scale=scale, leaves=leaves)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    torch.testing.assert_close(run(1024.0), 1024.0 * run(None), rtol=1e-10, atol=1e-12)


def test_fp16_overflow_marks_the_step_for_skipping():
    model = tiny_model()
    comb = SumOfGradients()
    comb.setup(list(TASKS))
    engine = GradientEngine(model, comb, TASKS)
    x, y = tiny_batch()
    rep = model.encode(x)
    out = model.decode(rep)
    res = engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}, 0, rep=rep, loss_scale=float("inf"), leaves=rep)
    assert all(torch.isnan(p.grad).all() for p in model.shared_parameters())
    assert torch.isnan(res.weights).all()


def _dense_model(kind):
    from mtl_bench.models.dense_heads import ConvHead
    from mtl_bench.models.mtl_model import build_model
    from mtl_bench.models.segnet import MTANHead, SegNetMTANEncoder
    from mtl_bench.models.timm_encoder import TimmEncoder
    from mtl_bench.task_library import depth_task, segmentation_task

    torch.manual_seed(0)
    tasks = {"seg": segmentation_task("seg", 4), "depth": depth_task("depth")}
    if kind == "multilevel":  # a tuple of maps computed from one another
        enc = lambda input_shape: TimmEncoder(input_shape, "test_resnet", output_stride=8, out_indices=(1, 4))  # noqa: E731
        head = lambda in_dim, task: ConvHead(in_dim, task, hidden=8)  # noqa: E731
    else:  # SegNet-MTAN: shared attention convolutions are applied inside the heads, after the representation
        enc = lambda input_shape: SegNetMTANEncoder(input_shape, channels=(4, 8, 8, 16, 16))  # noqa: E731
        head = MTANHead
    model = build_model(enc, {t: head for t in tasks}, tasks, (3, 32, 32)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = {"seg": torch.randint(-1, 4, (2, 32, 32), generator=g), "depth": torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)}
    return model, tasks, x, y


@pytest.mark.parametrize("kind", ["multilevel", "mtan"])
def test_leaves_make_batched_and_representation_exact_for_structured_representations(kind):
    """Dependent multi-level maps and shared modules inside heads: batched G equals sequential G, and the
    representation route with unit weights reproduces the exact EW gradient."""
    def step(comb, per_task_backward="sequential"):
        model, tasks, x, y = _dense_model(kind)
        model.train()
        comb.setup(list(tasks))
        engine = GradientEngine(model, comb, list(tasks), per_task_backward=per_task_backward)
        rep = model.encode(x)
        leaves = engine.leaves(rep)
        out = model.decode(leaves)
        res = engine.backward({t: tasks[t].loss(out[t], y[t]) for t in tasks}, 0, rep=rep, leaves=leaves)
        return res, torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    seq, seq_grad = step(SumOfGradients())
    bat, bat_grad = step(SumOfGradients(), "batched")
    torch.testing.assert_close(bat.grads, seq.grads, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bat_grad, seq_grad, rtol=1e-9, atol=1e-12)
    _, ew_grad = step(EqualWeighting("sum"))
    _, rep_grad = step(SumOfGradients(grad_source="representation"))
    torch.testing.assert_close(rep_grad, ew_grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(seq_grad, ew_grad, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- step strategies and declared capabilities
class DeclaredSum(SumOfGradients):
    """Σ_k g_k with unit weights: exactly wᵀG, and it says so."""

    provides_task_weights = True


class UndeclaredScaled(ScaledMean):
    """A Gramian weighting that does not declare per-task weights (as if its aggregate clipped the direction)."""

    provides_task_weights = False


class Sink:
    def __init__(self):
        self.calls = []

    def __call__(self, grads, present):
        self.calls.append((grads.clone(), present.clone()))


COEFFS = (0.5, 2.0, 0.25)


@pytest.mark.parametrize(
    "make,sink,expected",
    [
        (lambda: EqualWeighting("sum"), False, "LossWeightingStep"),
        (lambda: EqualWeighting("sum"), True, "TaskWiseLossWeightingStep"),
        (lambda: SumOfGradients(), False, "ParamsAggregationStep"),
        (lambda: ScaledMean(COEFFS), True, "TaskWiseAggregationStep"),
        (lambda: SumOfGradients(grad_source="representation"), False, "RepresentationAggregationStep"),
        (lambda: ScaledMean(COEFFS, grad_source="representation"), False, "RepresentationAggregationStep"),
        (lambda: ScaledMean(COEFFS, grad_source="last_shared"), False, "LastSharedAggregationStep"),
    ],
)
def test_the_engine_chooses_its_step_strategy_once_from_family_source_and_sink(make, sink, expected):
    comb = make()
    comb.setup(list(TASKS))
    engine = GradientEngine(tiny_model(), comb, TASKS, task_sink=Sink() if sink else None)
    strategy = engine.strategy
    assert type(strategy).__name__ == expected
    assert strategy.source == ({"LossWeightingStep": None}.get(expected, comb.grad_source or "params"))
    engine.batched = True  # a later change of the engine's settings does not re-choose the strategy
    assert engine.strategy is strategy


def sink_step(comb):
    model = tiny_model()
    comb.setup(list(TASKS))
    sink = Sink()
    engine = GradientEngine(model, comb, TASKS, task_sink=sink)
    x, y = tiny_batch()
    return model, engine.backward(task_losses(model, x, y), step=0), sink


@pytest.mark.parametrize("make", [DeclaredSum, lambda: ScaledMean(COEFFS), lambda: EqualWeighting("sum")])
def test_a_declared_combiner_feeds_the_task_sink_the_weighted_per_task_gradients(make):
    model, result, sink = sink_step(make())
    ((sent, present),) = sink.calls
    torch.testing.assert_close(sent, result.grads * result.weights.unsqueeze(1), rtol=0, atol=0)
    assert present.tolist() == [True, True, True]
    assert all(p.grad is None for p in model.shared_parameters())  # the optimizer takes G, not its sum
    ref = reference_grads(COEFFS if isinstance(make(), ScaledMean) else (1.0, 1.0, 1.0))
    for name, p in model.named_parameters():  # heads: their own gradient times their task's weight
        if name.startswith("heads."):
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "make",
    [SumOfGradients, lambda: UndeclaredScaled(COEFFS), lambda: DeclaredSum(grad_source="representation"),
     lambda: ScaledMean(COEFFS, grad_source="last_shared")],
)
def test_the_task_sink_is_refused_unless_declared_over_all_shared_parameters(make):
    """The refusal follows ``provides_task_weights`` (and ``grad_source=params``), not the class family or name:
    a plain aggregator declaring it is accepted above, a Gramian weighting not declaring it is refused here."""
    from mtl_bench.errors import ConfigError

    comb = make()
    comb.setup(list(TASKS))
    with pytest.raises(ConfigError, match=r"does not provide them: use a loss weighting or .*\(.*mgda.*upgrad\) with grad_source=params"):
        GradientEngine(tiny_model(), comb, TASKS, task_sink=Sink())
    GradientEngine(tiny_model(), comb, TASKS)  # fine without a task-wise optimizer


def test_registered_aggregators_declare_task_weights_exactly_where_the_direction_is_wtg():
    """``provides_task_weights`` promises direction = wᵀG with w in ``Aggregation.weights``: check it on an
    imbalanced random G for every registered aggregator that declares it; those that override ``aggregate``
    with something else (Aligned-MTL's head weights, Nash-MTL's and DiBS-MTL's norm clipping) do not."""
    from mtl_bench.combiners import COMBINERS, GradientAggregator, LossWeighting
    from tests.combiner_utils import losses_for, random_grads

    # a loss weighting's update is Σ_k w_k ∇L_k of the step's batch (MoDo, which also descends on an extra batch, is not)
    assert all(c.provides_task_weights for c in COMBINERS.values() if issubclass(c, LossWeighting) and c.extra_batches == 0)
    assert not COMBINERS["modo"].provides_task_weights and COMBINERS["auto_lambda"].provides_task_weights
    declared = sorted(n for n, c in COMBINERS.items() if issubclass(c, GradientAggregator) and c.provides_task_weights)
    # these declare it (a new aggregator is checked by the loop below, whatever it declares)
    assert {"cagrad", "fairgrad", "gcs", "gradnorm", "imtl_g", "mgda", "mgda_ub", "ol_aux", "upgrad"} <= set(declared)
    counterexamples = {"aligned_mtl": {}, "nash_mtl": {}, "dibs_mtl": {"max_norm": 1e-9}, "dibs_mtl_multi": {"max_norm": 1e-9}}
    for name, cls in COMBINERS.items():
        if not issubclass(cls, GradientAggregator) or not (cls.provides_task_weights or name in counterexamples):
            continue
        comb = cls(**counterexamples.get(name, {}))
        if hasattr(comb, "set_roles"):
            comb.set_roles(["a"])
        comb.setup(["a", "b", "c"])
        comb.double()
        grads = random_grads(3, 50, seed=1, scales=(1.0, 10.0, 0.1))
        agg = comb.aggregate(grads, losses_for(3))
        exact = agg.weights is not None and torch.allclose(agg.direction, agg.weights.to(grads) @ grads, rtol=1e-10, atol=1e-12)
        assert exact == cls.provides_task_weights, name
