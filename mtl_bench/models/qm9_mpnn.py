"""The QM9 message-passing encoder of Nash-MTL / FAMO (``experiments/quantum_chemistry/models.py``), itself PyTorch
Geometric's ``examples/qm9_nn_conv.py`` (Gilmer et al., "Neural Message Passing for Quantum Chemistry", ICML 2017:
edge-network message passing + Set2Set readout).  Needs the optional extra ``pip install -e ".[qm9]"``.

Architecture (``dim`` = 64): ``lin0`` Linear(11 → dim) + ReLU; ``steps`` (3) rounds of the *same* ``conv`` = PyG
``NNConv(dim, dim, edge network, aggr="mean")`` whose edge network maps the 5 edge features to a dim×dim matrix
(Linear(5 → 128) → ReLU → Linear(128 → dim²)), ReLU, then one ``gru`` = GRU(dim, dim) step carrying the node state;
``set2set`` = Set2Set(dim, processing_steps=3) pooling per molecule (2·dim); ``lin1`` Linear(2·dim → dim) + ReLU = the
shared representation.  The heads (``heads=linear``: Linear(dim, 1) per task) are mtl_bench's.

Shared parameters: every encoder parameter — lin0, conv (edge network, root weight, bias), gru, set2set, lin1 — as the
reference's ``shared_parameters()``; ``last_shared_module()`` = lin1 (the reference's ``last_shared_parameters``).
Scale convention: not applicable (an encoder).  Deviations: none in the computation; the reference builds the heads
inside the same module, so its initialisation draws (and hence its random init) differ from ours for a given seed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.utils import pyg_import_quietly


def _pyg():
    try:
        with pyg_import_quietly():
            from torch_geometric.nn import NNConv, Set2Set  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise ConfigError("backbone=qm9_mpnn needs torch_geometric: pip install -e \".[qm9]\"") from None
    return NNConv, Set2Set


class MPNNEncoder(nn.Module):
    """Graph batches (``x``, ``edge_index``, ``edge_attr``, ``batch``, ``num_graphs``) → one ``dim``-vector per graph.
    ``input_shape`` = (node features, edge features), e.g. QM9's (11, 5)."""

    def __init__(self, input_shape: Sequence[int], dim: int = 64, steps: int = 3, edge_hidden: int = 128,
                 set2set_steps: int = 3, aggr: str = "mean"):
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(f"backbone MPNNEncoder needs graph inputs (node features, edge features), the dataset "
                              f"gives {tuple(input_shape)}")
        for key, value in (("dim", dim), ("steps", steps), ("edge_hidden", edge_hidden), ("set2set_steps", set2set_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"backbone.{key}={value!r} is invalid; expected an integer >= 1")
        NNConv, Set2Set = _pyg()
        node_features, edge_features = (int(s) for s in input_shape)
        self.steps, self.out_dim = steps, dim
        self.lin0 = nn.Linear(node_features, dim)
        edge_net = nn.Sequential(nn.Linear(edge_features, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, dim * dim))
        self.conv = NNConv(dim, dim, edge_net, aggr=aggr)
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=set2set_steps)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, data: Any) -> torch.Tensor:
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        for _ in range(self.steps):
            m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, data.batch, dim_size=int(data.num_graphs))
        return F.relu(self.lin1(pooled))

    def last_shared_module(self) -> nn.Module:
        return self.lin1
