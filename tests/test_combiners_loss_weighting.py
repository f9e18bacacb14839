"""Loss-weighting combiners (fixed, ls, uw, uw_o, gls, dwa, rlw, imtl_l, famo): defining properties,
hand-derived values, invariances they claim (and that EW lacks), configuration errors and state round trips.

Invariance tests differentiate each objective w.r.t. a small float64 parameter vector θ through positive
quadratic losses L_k(θ), with and without per-task loss scales c_k."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from mtl_bench.combiners import COMBINERS, LossWeighting
from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.combiners.famo import FAMO
from mtl_bench.combiners.ls import simplex_grid, simplex_grid_counts, simplex_grid_size
from mtl_bench.errors import ConfigError
from mtl_bench.optim import param_groups
from tests.combiner_utils import TASKS3, engine_update, losses_for
from tests.helpers import tiny_model

NAMES = ["fixed", "ls", "uw", "uw_o", "gls", "dwa", "rlw", "imtl_l", "famo"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "combiner"
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])]


def built(name: str, tasks=TASKS3, **kwargs) -> LossWeighting:
    combiner = COMBINERS[name](**kwargs)
    combiner.setup(list(tasks))
    return combiner


def toy_losses(theta: torch.Tensor, k: int = 3, seed: int = 0) -> torch.Tensor:
    """K positive, non-trivially coupled losses L_k(θ) = 0.2 + mean((A_k θ − b_k)²) of a θ ∈ ℝ^4."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, 6, theta.numel(), generator=g, dtype=torch.float64)
    b = torch.randn(k, 6, generator=g, dtype=torch.float64)
    return 0.2 + ((a @ theta - b) ** 2).mean(dim=1)


def theta0() -> torch.Tensor:
    return torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def objective_grad(combiner: LossWeighting, scales=(1.0, 1.0, 1.0)) -> torch.Tensor:
    theta = theta0().requires_grad_(True)
    losses = toy_losses(theta) * torch.tensor(scales, dtype=torch.float64)
    objective, _ = combiner.combine(losses)
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


SCALES = (1e-3, 1.0, 50.0)


# ====================================================================== common to every method
@pytest.mark.parametrize("name", NAMES)
def test_config_builds_the_class_with_no_gradient_source(name):
    node = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert (CONFIGS / f"{name}.yaml").read_text().startswith("# ")
    assert node["grad_source"] is None
    combiner = instantiate(node)
    assert type(combiner) is COMBINERS[name] and isinstance(combiner, LossWeighting)
    assert combiner.needs_grads is False and combiner.supported_sources == ()
    assert combiner.scale != "n/a" and combiner.describe()["scale"] == combiner.scale
    with pytest.raises(ConfigError, match="does not support grad_source='params'"):
        COMBINERS[name](grad_source="params")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_any_k_dtype_and_device(name, k, dtype, device):
    tasks = [f"t{i}" for i in range(k)]
    combiner = built(name, tasks).to(device)
    if name == "dwa":
        for epoch, scale in enumerate((1.0, 0.7), start=1):
            combiner.on_epoch_end(epoch, {t: scale * (i + 1) for i, t in enumerate(tasks)})
    losses = (losses_for(k, dtype=dtype)).to(device).requires_grad_(True)
    objective, w = combiner.combine(losses)
    assert objective.shape == () and objective.dtype == dtype and objective.device.type == device
    assert w.shape == (k,) and w.dtype == dtype and w.device.type == device and not w.requires_grad
    assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(objective))
    objective.backward()
    assert bool(torch.isfinite(losses.grad).all())
    # the logged weights are the effective weights ∂objective/∂L_k
    torch.testing.assert_close(losses.grad, w)
    if name == "famo":
        combiner.after_step(losses.detach() * 0.9)
        assert bool(torch.isfinite(combiner.logits).all())
    fresh = combiner.weights(losses.detach())
    assert fresh.shape == (k,) and fresh.dtype == dtype and fresh.device.type == device


@pytest.mark.parametrize("name", NAMES)
def test_trains_through_the_engine_without_touching_the_global_rng(name):
    before = torch.get_rng_state()
    combiner = COMBINERS[name]()
    with torch.random.fork_rng():  # engine_update seeds the model with torch.manual_seed; that is not the combiner's doing
        flat = engine_update(combiner, steps=3)
    assert bool(torch.isfinite(flat).all())
    assert torch.equal(torch.get_rng_state(), before)
    combiner.combine(losses_for(3))  # a step of the combiner alone leaves the global RNG where it was
    assert torch.equal(torch.get_rng_state(), before)


def _advance(name: str, combiner: LossWeighting) -> None:
    """Drive a combiner's state away from its initial value."""
    engine_update(combiner, steps=3)
    if name == "dwa":
        for epoch, values in enumerate(([1.0, 2.0, 3.0], [0.5, 1.9, 2.0], [0.4, 1.0, 1.9]), start=1):
            combiner.on_epoch_end(epoch, dict(zip(TASKS3, values)))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_a_checkpoint_gives_the_same_next_output(name):
    with torch.random.fork_rng():
        original = COMBINERS[name]()
        _advance(name, original)
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        fresh = built(name)
        fresh.load_state_dict(state)
        for step in range(2):
            losses = losses_for(3, seed=step)
            obj_a, w_a = original.combine(losses)
            obj_b, w_b = fresh.combine(losses)
            torch.testing.assert_close(w_a, w_b, rtol=0, atol=0)
            torch.testing.assert_close(obj_a, obj_b, rtol=0, atol=0)
            if original.needs_post_step_losses:
                original.after_step(losses * 0.8)
                fresh.after_step(losses * 0.8)
        # and a repeated setup (as engine_update and the trainer do) does not reset the loaded state
        fresh.setup(list(TASKS3))
        torch.testing.assert_close(original.combine(losses_for(3))[1], fresh.combine(losses_for(3))[1], rtol=0, atol=0)


# ====================================================================== fixed
def test_fixed_weights_from_list_mapping_or_null():
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    by_list = built("fixed", weights=[0.5, 0.0, 2.0])
    by_map = built("fixed", weights={"c": 2.0, "a": 0.5, "b": 0.0})  # order of the mapping is irrelevant
    objective, w = by_list.combine(losses)
    assert objective.item() == pytest.approx(0.5 * 1 + 2.0 * 3)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(by_map.weights(losses), w)
    torch.testing.assert_close(built("fixed").weights(losses), torch.ones(3, dtype=torch.float64))
    # YAML lists/mappings arrive as OmegaConf containers
    node = {"_target_": "mtl_bench.combiners.fixed.FixedWeighting", "weights": {"a": 1, "b": 2, "c": 3}}
    from_yaml = instantiate(node)
    from_yaml.setup(list(TASKS3))
    torch.testing.assert_close(from_yaml.weights(losses), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1.0, float("nan"), 1.0], r"combiner.weights\[1\]=nan must be a finite number"),
        ([1.0, "x", 1.0], r"combiner.weights\[1\]='x' must be a finite number"),
        ([1.0, True, 1.0], r"combiner.weights\[1\]=True must be a finite number"),
        (2.0, r"must be a list of numbers in task order or a mapping"),
    ],
)
def test_fixed_rejects_bad_weights_at_construction(weights, match):
    with pytest.raises(ConfigError, match=match):
        COMBINERS["fixed"](weights=weights)


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1.0, 2.0], r"has 2 values but there are 3 tasks \['a', 'b', 'c'\]"),
        ({"a": 1.0, "b": 1.0}, r"exactly the tasks \['a', 'b', 'c'\]; missing \['c'\], unknown \[\]"),
        ({"a": 1.0, "b": 1.0, "c": 1.0, "z": 1.0}, r"missing \[\], unknown \['z'\]"),
        ([1.0, -0.5, 1.0], r"must be non-negative; negative for tasks \{'b': -0.5\}"),
        ({"a": -1.0, "b": 1.0, "c": -2.0}, r"negative for tasks \{'a': -1.0, 'c': -2.0\}"),
        ([0.0, 0.0, 0.0], r"at least one positive weight; got \{'a': 0.0, 'b': 0.0, 'c': 0.0\}"),
    ],
)
def test_fixed_checks_the_tasks_at_setup(weights, match):
    combiner = COMBINERS["fixed"](weights=weights)
    with pytest.raises(ConfigError, match=match):
        combiner.setup(list(TASKS3))


# ====================================================================== ls
@pytest.mark.parametrize("k,n", [(1, 5), (2, 10), (3, 4), (4, 3), (5, 1)])
def test_simplex_grid_is_the_uniform_grid_in_lexicographic_order(k, n):
    grid = simplex_grid(k, n)
    assert len(grid) == simplex_grid_size(k, n) == math.comb(n + k - 1, k - 1)
    counts = [simplex_grid_counts(k, n, i) for i in range(len(grid))]
    assert len(set(counts)) == len(counts)  # unique
    assert counts == sorted(counts)  # ascending lexicographic order of n·w
    for c, w in zip(counts, grid):
        assert sum(c) == n and min(c) >= 0  # n·w ∈ ℕ^K and Σ w = 1 exactly
        assert w == tuple(ci / n for ci in c)
    # every integer vector with Σ = n appears (brute force over {0..n}^K)
    everything = [c for c in torch.cartesian_prod(*[torch.arange(n + 1)] * k).reshape(-1, k).tolist() if sum(c) == n]
    assert sorted(map(tuple, everything)) == counts
    with pytest.raises(IndexError):
        simplex_grid_counts(k, n, len(grid))


def test_ls_point_sweep_for_two_tasks():
    losses = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    seen = []
    for point in range(11):  # -m combiner=ls combiner.point='range(0,11)'
        combiner = built("ls", ["a", "b"], resolution=10, point=point)
        objective, w = combiner.combine(losses)
        torch.testing.assert_close(w, torch.tensor([point / 10, 1 - point / 10], dtype=torch.float64))
        assert objective.item() == pytest.approx(3.0 * point / 10 + 5.0 * (1 - point / 10))
        seen.append(tuple(w.tolist()))
    assert len(set(seen)) == 11
    # K = 3, n = 2: 6 points; point 4 is counts (1, 1, 0) in lexicographic order
    # (0,0,2) (0,1,1) (0,2,0) (1,0,1) (1,1,0) (2,0,0)
    torch.testing.assert_close(built("ls", TASKS3, resolution=2, point=4).weights(losses_for(3)),
                               torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_ls_errors():
    with pytest.raises(ConfigError, match=r"point=11 is out of range: the grid for K=2 tasks and resolution=10 has 11 points"):
        built("ls", ["a", "b"], resolution=10, point=11)
    for kwargs, match in [
        ({"resolution": 0}, r"combiner.resolution=0 must be an integer >= 1"),
        ({"resolution": 2.5}, r"combiner.resolution=2.5 must be an integer >= 1"),
        ({"point": -1}, r"combiner.point=-1 must be an integer >= 0"),
        ({"point": True}, r"combiner.point=True must be an integer >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            COMBINERS["ls"](**kwargs)


# ====================================================================== uw
def test_uw_objective_and_effective_weights_by_hand():
    # L = (1, 2), s = (0, log 2): ½(e⁰·1 + 0) + ½(e^{−log 2}·2 + log 2) = ½ + ½ + ½ log 2 = 1.34657359…
    uw = built("uw", ["a", "b"]).double()
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    objective, w = uw.combine(losses)
    assert objective.item() == pytest.approx(1.3465735902799727, abs=1e-14)
    objective.backward()
    torch.testing.assert_close(w, torch.tensor([0.5, 0.25], dtype=torch.float64))
    torch.testing.assert_close(losses.grad, w)
    torch.testing.assert_close(uw.log_var.grad, torch.tensor([0.0, 0.0], dtype=torch.float64))  # already stationary


def test_uw_log_variances_converge_to_the_losses():
    # for fixed L, ∂/∂s_k ½(e^{−s_k} L_k + s_k) = ½(1 − e^{−s_k} L_k) = 0  ⇔  e^{s_k} = L_k, i.e. weights ∝ 1/L_k
    uw = built("uw").double()
    losses = losses_for(3)
    opt = torch.optim.SGD(uw.parameters(), lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        uw.combine(losses)[0].backward()
        opt.step()
    torch.testing.assert_close(uw.log_var.detach(), losses.log(), rtol=0, atol=1e-10)
    w = uw.weights(losses)
    torch.testing.assert_close(w * losses, torch.full((3,), 0.5, dtype=torch.float64))
    # at that optimum the update is half the UW-O update (same direction, Gaussian ½ factor)
    with torch.no_grad():
        uw.log_var.copy_(toy_losses(theta0()).log())
    torch.testing.assert_close(objective_grad(uw), 0.5 * objective_grad(built("uw_o")))


def test_uw_is_not_loss_scale_invariant():
    uw = built("uw").double()
    assert cosine(objective_grad(uw), objective_grad(uw, SCALES)) < 0.99


def test_uw_parameters_reach_the_optimizer_with_their_overrides():
    assert built("uw").optimizer_overrides() == {"weight_decay": 0.0}
    uw = built("uw", init_log_var=-0.5, lr=0.025)
    torch.testing.assert_close(uw.log_var.detach(), torch.full((3,), -0.5))
    groups = {g["name"]: g for g in param_groups(tiny_model(), uw)}
    assert groups["combiner"]["params"] == [uw.log_var]
    assert groups["combiner"]["lr"] == 0.025 and groups["combiner"]["weight_decay"] == 0.0
    assert uw.describe()["lr"] == 0.025


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"init_log_var": float("inf")}, r"combiner.init_log_var=inf must be a finite number"),
        ({"lr": 0.0}, r"combiner.lr=0.0 must be a positive number, or null"),
        ({"lr": "fast"}, r"combiner.lr='fast' must be a positive number"),
    ],
)
def test_uw_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        COMBINERS["uw"](**kwargs)


# ====================================================================== imtl_l
def test_imtl_l_balances_the_scaled_losses():
    # ∂/∂s_k (e^{s_k} L_k − s_k) = e^{s_k} L_k − 1 = 0  ⇔  e^{s_k} L_k = 1: the scaled losses are equal
    imtl = built("imtl_l").double()
    losses = losses_for(3)
    torch.testing.assert_close(imtl.weights(losses), torch.ones(3, dtype=torch.float64))  # starts as EW(sum)
    opt = torch.optim.SGD(imtl.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        imtl.combine(losses)[0].backward()
        opt.step()
    scaled = imtl.weights(losses) * losses
    torch.testing.assert_close(scaled, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-10)
    # the same balance holds for losses of wildly different scales
    with torch.no_grad():
        imtl.log_scale.copy_(-(losses * torch.tensor(SCALES, dtype=torch.float64)).log())
    obj = imtl.combine(losses * torch.tensor(SCALES, dtype=torch.float64))[0]
    (grad_s,) = torch.autograd.grad(obj, imtl.log_scale)
    torch.testing.assert_close(grad_s, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_imtl_l_is_twice_uw_at_negated_parameters():
    s = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    losses = losses_for(3)
    imtl, uw = built("imtl_l").double(), built("uw").double()
    with torch.no_grad():
        imtl.log_scale.copy_(s)
        uw.log_var.copy_(-s)
    obj_imtl, w_imtl = imtl.combine(losses)
    obj_uw, w_uw = uw.combine(losses)
    torch.testing.assert_close(obj_imtl, 2 * obj_uw)
    torch.testing.assert_close(w_imtl, 2 * w_uw)
    torch.testing.assert_close(w_imtl, s.exp())
    assert imtl.optimizer_overrides() == {"weight_decay": 0.0}
    assert COMBINERS["imtl_l"](lr=0.1).optimizer_overrides() == {"weight_decay": 0.0, "lr": 0.1}
    with pytest.raises(ConfigError, match=r"combiner.lr=-1 must be a positive number"):
        COMBINERS["imtl_l"](lr=-1)


# ====================================================================== uw_o, gls: log-type objectives
def test_uw_o_is_exactly_invariant_to_loss_scales_and_ew_is_not():
    uw_o = built("uw_o")
    torch.testing.assert_close(objective_grad(uw_o, SCALES), objective_grad(uw_o), rtol=1e-12, atol=0)
    ew = EqualWeighting()
    ew.setup(list(TASKS3))
    assert cosine(objective_grad(ew), objective_grad(ew, SCALES)) < 0.99
    # weights 1/L_k by hand; the objective's value is K
    objective, w = uw_o.combine(torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))
    assert objective.item() == 3.0


def test_uw_o_update_is_the_gradient_of_the_sum_of_log_losses():
    """UW-O is also Nash-MTL's scale-invariant baseline Σ_k log L_k (``scaleinvls``): same gradient."""
    theta = theta0().requires_grad_(True)
    (log_grad,) = torch.autograd.grad(torch.log(toy_losses(theta)).sum(), theta)
    torch.testing.assert_close(objective_grad(built("uw_o")), log_grad, rtol=1e-12, atol=0)


def test_gls_value_weights_and_direction_invariance():
    # L = (1, 4, 16): G = (1·4·16)^{1/3} = 4; ∂G/∂L_k = G/(K L_k) = (4/3, 1/3, 1/12)
    gls = built("gls")
    losses = torch.tensor([1.0, 4.0, 16.0], dtype=torch.float64, requires_grad=True)
    objective, w = gls.combine(losses)
    assert objective.item() == pytest.approx(4.0, abs=1e-13)
    torch.testing.assert_close(w, torch.tensor([4 / 3, 1 / 3, 1 / 12], dtype=torch.float64))
    # scaling the losses by c multiplies the gradient by (Π c)^{1/K}: same direction, different length
    factor = math.prod(SCALES) ** (1 / 3)
    torch.testing.assert_close(objective_grad(gls, SCALES), factor * objective_grad(gls), rtol=1e-12, atol=0)
    assert factor != pytest.approx(1.0)
    # and the direction is that of Σ ∇L_k / L_k (uw_o)
    assert cosine(objective_grad(gls), objective_grad(built("uw_o"))) == pytest.approx(1.0, abs=1e-12)
    # computed in log space: 70 losses of 1e-6 (product 1e-420 underflows float64) still give G = 1e-6
    many = built("gls", [f"t{i}" for i in range(70)])
    assert many.combine(torch.full((70,), 1e-6, dtype=torch.float64))[0].item() == pytest.approx(1e-6, rel=1e-12)


@pytest.mark.parametrize("name", ["uw_o", "gls"])
def test_log_type_methods_guard_zero_and_negative_losses(name):
    combiner = built(name)
    losses = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    objective, w = combiner.combine(losses)
    objective.backward()
    assert bool(torch.isfinite(objective)) and bool(torch.isfinite(w).all()) and bool(torch.isfinite(losses.grad).all())
    with pytest.raises(ConfigError, match=rf"combiner '{name}' needs non-negative task losses.*task 'b' has loss -0.5"):
        combiner.combine(torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))
    for eps in (0.0, 1.0, "small"):
        with pytest.raises(ConfigError, match=r"combiner.eps=.* must be a number in \(0, 1\)"):
            COMBINERS[name](eps=eps)


# ====================================================================== dwa
def test_dwa_weights_by_hand():
    dwa = built("dwa", ["a", "b"])
    losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2, dtype=torch.float64))  # epoch 1
    dwa.on_epoch_end(1, {"a": 1.0, "b": 2.0})
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2, dtype=torch.float64))  # epoch 2
    dwa.on_epoch_end(2, {"a": 0.5, "b": 2.0})
    # r = (0.5/1, 2/2) = (0.5, 1); w = 2·softmax(r/2) = (2/(1+e^{0.25}), 2e^{0.25}/(1+e^{0.25}))
    expected = torch.tensor([0.8756469982284039, 1.1243530017715961], dtype=torch.float64)
    torch.testing.assert_close(dwa.weights(losses), expected, rtol=0, atol=1e-15)
    # the step's own losses play no part (epoch-level method)
    torch.testing.assert_close(dwa.weights(torch.tensor([9.0, 0.1], dtype=torch.float64)), expected, rtol=0, atol=1e-15)
    # only the last two epochs count: (2.0, 2.0) -> (0.5, 1.0) gives r = (0.25, 0.5)
    dwa.on_epoch_end(3, {"a": 0.125, "b": 1.0})
    r = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(dwa.weights(losses), 2 * torch.softmax(r / 2, dim=0))


def test_dwa_sums_to_k_and_favours_slow_tasks():
    dwa = built("dwa", temperature=0.5)
    dwa.on_epoch_end(1, {"a": 1.0, "b": 1.0, "c": 1.0})
    dwa.on_epoch_end(2, {"a": 0.9, "b": 0.5, "c": 0.7})
    w = dwa.weights(losses_for(3))
    assert w.sum().item() == pytest.approx(3.0, abs=1e-14)
    assert w[0] > w[2] > w[1]  # the task whose loss fell least gets most weight
    hot = built("dwa", temperature=1e6)
    hot.on_epoch_end(1, {"a": 1.0, "b": 1.0, "c": 1.0})
    hot.on_epoch_end(2, {"a": 0.9, "b": 0.5, "c": 0.7})
    torch.testing.assert_close(hot.weights(losses_for(3)), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-6)


def test_dwa_errors():
    for temperature in (0.0, -1.0, float("inf"), "warm"):
        with pytest.raises(ConfigError, match=r"combiner.temperature=.* must be a positive finite number"):
            COMBINERS["dwa"](temperature=temperature)
    with pytest.raises(ConfigError, match=r"task 'b' has loss -1"):
        built("dwa").on_epoch_end(1, {"a": 1.0, "b": -1.0, "c": 1.0})


# ====================================================================== rlw
def _draws(combiner: LossWeighting, n: int, k: int = 3) -> torch.Tensor:
    return torch.stack([combiner.weights(torch.ones(k, dtype=torch.float64)) for _ in range(n)])


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_weights_are_fresh_points_of_the_simplex_reproducible_by_seed(distribution):
    w = _draws(built("rlw", distribution=distribution, seed=3), 50)
    assert bool((w > 0).all())
    torch.testing.assert_close(w.sum(1), torch.ones(50, dtype=torch.float64))
    assert len({tuple(row.tolist()) for row in w}) == 50  # a new vector every step
    torch.testing.assert_close(_draws(built("rlw", distribution=distribution, seed=3), 50), w, rtol=0, atol=0)
    assert not torch.equal(_draws(built("rlw", distribution=distribution, seed=4), 50), w)


def test_rlw_laws():
    n, k = 4000, 3
    # normal: log w_0 − log w_1 = x_0 − x_1 ~ N(0, 2) (unbounded)
    d = _draws(built("rlw", seed=0), n).log()
    diff = d[:, 0] - d[:, 1]
    assert abs(diff.mean().item()) < 0.1 and diff.var().item() == pytest.approx(2.0, rel=0.1)
    assert diff.abs().max().item() > 2.0
    # uniform: x_0 − x_1 is triangular on (−1, 1) with variance 1/6
    d = _draws(built("rlw", distribution="uniform", seed=0), n).log()
    diff = d[:, 0] - d[:, 1]
    assert diff.abs().max().item() < 1.0 and diff.var().item() == pytest.approx(1 / 6, rel=0.1)
    # dirichlet: x = log w − mean(log w) + 1/K recovers the Dir(1,1,1) draw: on the simplex, x_0 ~ Beta(1, 2)
    d = _draws(built("rlw", distribution="dirichlet", seed=0), n).log()
    x = d - d.mean(1, keepdim=True) + 1 / k
    assert x.min().item() > -1e-12
    torch.testing.assert_close(x.sum(1), torch.ones(n, dtype=torch.float64))
    assert x[:, 0].mean().item() == pytest.approx(1 / 3, abs=0.02)
    assert x[:, 0].var().item() == pytest.approx((k - 1) / (k * k * (k + 1)), rel=0.1)  # 1/18


def test_rlw_errors():
    choices = r"choose one of \['normal', 'uniform', 'dirichlet'\]"
    with pytest.raises(ConfigError, match=rf"combiner.distribution='bernoulli' is unknown; {choices}"):
        COMBINERS["rlw"](distribution="bernoulli")
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=r"combiner.seed=.* must be a non-negative integer"):
            COMBINERS["rlw"](seed=seed)


# ====================================================================== famo
def _official_famo_logits(pairs, k: int, w_lr: float, gamma: float, min_losses: torch.Tensor, eps: float = 1e-8):
    """The paper's logit update with torch's own Adam on a leaf tensor and autograd through the softmax."""
    xi = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=w_lr, weight_decay=gamma)
    for before, after in pairs:
        delta = (before - min_losses + eps).log() - (after - min_losses + eps).log()
        (grad,) = torch.autograd.grad(torch.softmax(xi, -1), xi, grad_outputs=delta)
        opt.zero_grad()
        xi.grad = grad
        opt.step()
    return xi.detach()


def test_famo_logit_updates_match_the_reference_algorithm():
    g = torch.Generator().manual_seed(0)
    min_losses = torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    famo = built("famo", w_lr=0.05, gamma=0.1, min_losses=[0.1, 0.0, 0.2])
    pairs = []
    for _ in range(20):
        before = 0.3 + torch.rand(3, generator=g, dtype=torch.float64)
        after = before * (0.7 + 0.4 * torch.rand(3, generator=g, dtype=torch.float64))
        pairs.append((before, after))
        famo.combine(before)
        famo.after_step(after)
    torch.testing.assert_close(famo.logits, _official_famo_logits(pairs, 3, 0.05, 0.1, min_losses), rtol=0, atol=1e-12)
    assert int(famo.adam_steps) == 20


def test_famo_moves_weight_to_the_task_whose_log_loss_fell_least():
    famo = built("famo")
    before = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    famo.combine(before)
    famo.after_step(torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))  # δ = (log 2, −log 0.9, −log 0.99)
    z = torch.softmax(famo.logits, 0)
    assert z[2] > z[1] > 1 / 3 > z[0]
    # the effective weights of the next step follow z (equal losses: weights = z)
    torch.testing.assert_close(famo.weights(before), z)


def test_famo_objective_by_hand():
    # z = (½, ½) (ξ = 0), L = (1, 3), L^min = 0: D ≈ (1, 3), c = ½ + ⅙ = ⅔;
    # objective = (½ log 1 + ½ log 3)/c = ¾ log 3; ∂/∂L_k = z_k/(c D_k) = (¾, ¼)
    famo = built("famo", ["a", "b"], eps=1e-12)
    losses = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    objective, w = famo.combine(losses)
    assert objective.item() == pytest.approx(0.75 * math.log(3.0), abs=1e-10)
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25], dtype=torch.float64), rtol=0, atol=1e-10)
    objective.backward()
    torch.testing.assert_close(losses.grad, w)


def test_famo_state_is_buffers_not_parameters():
    famo = COMBINERS["famo"]()
    engine_update(famo, steps=3)
    assert list(famo.parameters()) == []
    assert set(famo.state_dict()) == {"logits", "exp_avg", "exp_avg_sq", "adam_steps"}
    assert int(famo.adam_steps) == 3 and bool((famo.logits != 0).any())


def test_famo_min_losses_and_errors():
    famo = built("famo", min_losses={"a": 0.1, "b": 0.2, "c": 0.3})
    torch.testing.assert_close(famo.min_losses, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"task 'b' has loss 0.1 before the step, min_losses 0.2"):
        famo.combine(torch.tensor([1.0, 0.1, 1.0], dtype=torch.float64))
    famo.combine(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"task 'c' has loss 0.25 after the step"):
        famo.after_step(torch.tensor([1.0, 1.0, 0.25], dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"without a preceding combine"):
        famo.after_step(torch.ones(3, dtype=torch.float64))
    famo.combine(torch.ones(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"needs the losses recomputed after the optimizer step"):
        famo.after_step(None)
    with pytest.raises(ConfigError, match=r"has 2 values but there are 3 tasks"):
        built("famo", min_losses=[0.0, 0.0])
    for kwargs, match in [
        ({"w_lr": 0.0}, r"combiner.w_lr=0.0 must be a finite number > 0"),
        ({"gamma": -1e-3}, r"combiner.gamma=-0.001 must be a finite number >= 0"),
        ({"eps": 0.0}, r"combiner.eps=0.0 must be a number in \(0, 1\)"),
        ({"min_losses": "zero"}, r"combiner.min_losses='zero' must be a finite number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            FAMO(**kwargs)
