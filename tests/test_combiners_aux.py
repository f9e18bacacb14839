"""Auxiliary-task combiners: fixed auxiliary weight, GCS and OL-AUX (hand-checked on constructed gradients)."""

from __future__ import annotations

import pytest
import torch

from mtl_bench.combiners.aux_weight import AuxiliaryWeight
from mtl_bench.combiners.gcs import GradientCosineSimilarity
from mtl_bench.combiners.ol_aux import OnlineAuxiliaryWeighting
from mtl_bench.errors import ConfigError

TASKS = ["tgt", "aux1", "aux2"]
# target along e0; aux1 at +60° (cos 0.5), aux2 at 120° (cos −0.5), with different norms
G = torch.tensor([[2.0, 0.0], [0.5, 0.5 * 3**0.5], [-1.5, 1.5 * 3**0.5]], dtype=torch.float64)


def ready(comb):
    comb.setup(TASKS)
    comb.set_roles(["tgt"])
    return comb


def test_aux_weight_scales_only_the_auxiliaries():
    w = ready(AuxiliaryWeight(weight=0.25)).weights(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 0.25], dtype=torch.float64))
    with pytest.raises(ConfigError, match="needs target and auxiliary tasks"):
        comb = AuxiliaryWeight()
        comb.setup(TASKS)
        comb.weights(torch.ones(3))
    with pytest.raises(ConfigError, match="combiner.weight must be a non-negative number"):
        AuxiliaryWeight(weight=-1)


def test_gcs_drops_auxiliary_gradients_that_conflict_with_the_target():
    agg = ready(GradientCosineSimilarity()).aggregate(G, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(agg.weights, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(agg.direction, G[0] + G[1])
    weighted = ready(GradientCosineSimilarity(mode="weighted")).aggregate(G, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(weighted.weights, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))


def test_ol_aux_accumulates_cosines_and_updates_every_n_steps():
    comb = ready(OnlineAuxiliaryWeighting(beta=0.1, update_every=2))
    gram = G @ G.T
    seen = [comb.weights_from_gramian(gram, torch.ones(3)).tolist() for _ in range(3)]
    # steps 1-2 use w = 1; after step 2 each auxiliary gains 2 · 0.1 · cos: aux1 +0.1, aux2 −0.1
    assert seen[0] == seen[1] == [1.0, 1.0, 1.0]
    assert seen[2] == pytest.approx([1.0, 1.1, 0.9])
    dot = ready(OnlineAuxiliaryWeighting(beta=0.1, update_every=1, similarity="dot"))
    dot.weights_from_gramian(gram, torch.ones(3))
    # g_aux · g_tgt: aux1 = 1.0, aux2 = −3.0
    assert dot.aux_weights.tolist() == pytest.approx([1.0, 1.1, 0.7])
    with pytest.raises(ConfigError, match="similarity='sin' is invalid"):
        OnlineAuxiliaryWeighting(similarity="sin")
