"""Multi-task architectures (``TaskAwareEncoder`` backbones: MMoE, CGC, PLE, DSelect-k, cross-stitch, MTAN on
ResNet): the common test every one of them gets, picked up from ``configs/backbone/*.yaml``.

For each architecture, on a tiny float64 instance:
- the declared task-specific encoder modules really belong to one task: every other task's loss has an exactly
  zero gradient on them (else the engine would drop those tasks' gradients);
- shared and task-specific parameters partition the model;
- with a fixed-weight Gramian weighting, every gradient source and per-task backward (params sequential and
  batched, representation, last_shared) writes the gradient of Σ_k c_k L_k into every parameter — encoder, gates,
  task experts and heads — to float64 rounding;
- the sharing choice is reported by ``model.sharing()`` (→ ``summary.json["sharing"]``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class, instantiate
from torch import nn

from mtl_bench.engine import GradientEngine
from mtl_bench.models.mtl_model import MultiTaskModel, TaskAwareEncoder
from tests.helpers import ScaledMean

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"
TASKS = ("a", "b", "c")
COEFFS = (0.5, 2.0, 0.25)

# the tiny instance of each architecture: config overrides and the input shape (a new architecture adds a line)
TINY: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mmoe": ({"num_experts": 3, "expert": {"hidden": [6]}}, (5,)),
    "cgc": ({"num_shared_experts": 2, "num_task_experts": 1, "expert": {"hidden": [6]}}, (5,)),
    "ple": ({"levels": 2, "num_shared_experts": 2, "num_task_experts": 1, "expert": {"hidden": [6]}}, (5,)),
    "dselect_k": ({"num_experts": 4, "num_nonzeros": 2, "expert": {"hidden": [6]}}, (5,)),
    "cross_stitch": ({"column": {"hidden": [6, 5, 4]}}, (5,)),
    "cross_stitch_resnet": ({"column": {"output_stride": 32}}, (3, 32, 32)),
    "mtan_resnet": ({"output_stride": 32}, (3, 32, 32)),
}


def architecture_configs() -> list[str]:
    names = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        target = yaml.safe_load(path.read_text()).get("_target_")
        if target and issubclass(get_class(target), TaskAwareEncoder):
            names.append(path.stem)
    return names


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class ScaleHead(nn.Module):
    """A head with one parameter per channel-free element: out = a · rep (the loss below makes it task-specific)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.3, dtype=torch.float64))

    def forward(self, rep):
        return self.a * rep


def build(name: str, **overrides) -> tuple[MultiTaskModel, torch.Tensor]:
    over, shape = TINY[name]
    cfg = merge(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), merge(over, overrides))
    torch.manual_seed(0)
    encoder = instantiate(cfg)(input_shape=shape, task_names=list(TASKS))
    model = MultiTaskModel(encoder, {t: ScaleHead() for t in TASKS}).double()
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x


def losses_of(model: MultiTaskModel, outputs: dict) -> dict:
    """L_k = mean((out_k − k-dependent target)²): distinct, non-trivial losses."""
    return {t: ((out - 0.1 * (k + 1)) ** 2).mean() for k, (t, out) in enumerate(outputs.items())}


def grads_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


@pytest.fixture(params=architecture_configs())
def name(request):
    if request.param not in TINY:
        pytest.fail(f"architecture config '{request.param}' has no tiny case in tests/test_architectures.py TINY")
    return request.param


def test_every_architecture_config_is_covered():
    assert set(architecture_configs()) == set(TINY)


def test_declared_task_modules_see_only_their_task_and_the_split_is_a_partition(name):
    model, x = build(name)
    losses = losses_of(model, model(x))
    shared = {id(p) for p in model.shared_parameters()}
    owned = {t: model.encoder_task_parameters(t) for t in TASKS}
    heads = {t: [p for p in model.heads[t].parameters()] for t in TASKS}
    everything = [id(p) for p in model.parameters()]
    split = [*shared, *(id(p) for t in TASKS for p in owned[t] + heads[t])]
    assert sorted(split) == sorted(everything)  # disjoint, and nothing left out
    for t in TASKS:
        for other in TASKS:
            if other == t or not owned[other]:
                continue
            g = torch.autograd.grad(losses[t], owned[other], retain_graph=True, allow_unused=True)
            assert all(x is None or torch.count_nonzero(x) == 0 for x in g), (t, other)


SOURCES = [("params", "sequential"), ("params", "batched"), ("representation", "sequential"), ("last_shared", "sequential")]


@pytest.mark.parametrize("source,backward", SOURCES)
def test_every_gradient_source_writes_the_gradient_of_the_weighted_sum(name, source, backward):
    ref_model, x = build(name)
    sum(c * loss for c, loss in zip(COEFFS, losses_of(ref_model, ref_model(x)).values())).backward()
    expected = grads_of(ref_model)

    model, x = build(name)
    comb = ScaledMean(COEFFS, grad_source=source)
    comb.setup(list(TASKS))
    engine = GradientEngine(model, comb, TASKS, per_task_backward=backward)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    result = engine.backward(losses_of(model, model.decode(leaves)), 0, rep=rep, leaves=leaves)
    got = grads_of(model)
    # float64 sums of O(100) products of O(1) terms: rounding ≲ 1e-13 relative to the largest entry
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
    if source == "params":
        assert result.grads.shape == (3, sum(p.numel() for p in model.shared_parameters()))


def test_the_sharing_choice_changes_what_combiners_see_and_is_reported(name):
    model, _ = build(name)
    info = model.sharing()
    n_shared = sum(p.numel() for p in model.shared_parameters())
    n_owned = sum(p.numel() for t in TASKS for p in model.encoder_task_parameters(t))
    assert n_shared + n_owned == sum(p.numel() for p in model.encoder.parameters())
    assert info["shared"] and all(s == "encoder" or s.startswith("encoder.") for s in info["shared"])
    assert sorted(info["encoder_task_specific"]) == sorted(t for t in TASKS if model.encoder_task_parameters(t))
    if "shared_gates" in info:  # gated architectures: the switch moves the gates into the shared set
        flipped, _ = build(name, shared_gates=not info["shared_gates"])
        moved = sum(p.numel() for p in flipped.shared_parameters()) - n_shared
        assert flipped.sharing()["shared_gates"] != info["shared_gates"]
        assert math.copysign(1, moved) == (1 if not info["shared_gates"] else -1) and moved != 0


def test_the_summary_names_the_highest_modules_of_each_role():
    """MMoE: the experts are shared, each gate is its task's; with shared gates the whole encoder is shared."""
    model, _ = build("mmoe")
    info = model.sharing()
    assert info["shared"] == ["encoder.experts"]
    assert info["encoder_task_specific"] == {t: [f"encoder.gates.{t}"] for t in TASKS}
    flipped, _ = build("mmoe", shared_gates=True)
    assert flipped.sharing()["shared"] == ["encoder"] and flipped.sharing()["encoder_task_specific"] == {}
