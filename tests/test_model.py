"""The multi-task model's explicit shared / task-specific split."""

from __future__ import annotations

import torch

from tests.helpers import tiny_model


def test_shared_and_task_parameters_partition_the_model():
    model = tiny_model()
    shared = {id(p) for p in model.shared_parameters()}
    heads = [{id(p) for p in model.task_parameters(t)} for t in model.task_names]
    everything = {id(p) for p in model.parameters()}
    assert shared.isdisjoint(set().union(*heads))
    assert all(a.isdisjoint(b) for i, a in enumerate(heads) for b in heads[i + 1 :])
    assert shared | set().union(*heads) == everything
    counts = model.parameter_counts()
    assert counts["shared"] == sum(p.numel() for p in model.encoder.parameters())


def test_last_shared_parameters_are_the_last_encoder_layer():
    model = tiny_model()
    last = model.encoder.net[-2]  # Linear before the final activation
    assert [id(p) for p in model.last_shared_parameters()] == [id(last.weight), id(last.bias)]


def test_two_stage_forward_equals_forward_and_decodes_subsets():
    model = tiny_model()
    x = torch.randn(4, 5, dtype=torch.float64)
    rep = model.encode(x)
    out = model.decode(rep, ["b"])
    assert list(out) == ["b"]
    torch.testing.assert_close(out["b"], model(x)["b"])
    assert rep.shape == (4, model.encoder.out_dim)
