"""QM9 read from PyTorch Geometric's on-disk files (``dataset=qm9``, ``backbone=qm9_mpnn``): both layouts, the complete
graph + distance edge features against a per-molecule reference and PyG's ``Distance``, splits and normalisation, the
MAE in original units, the encoder's architecture and invariances, errors for missing or malformed files, and a
one-epoch run on a fixture with Δm against the published STL values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="QM9 needs the optional extra: pip install -e '.[qm9]'")

from torch_geometric.data import Data  # noqa: E402
from torch_geometric.transforms import Distance  # noqa: E402

from mtl_bench.baselines import load_published  # noqa: E402
from mtl_bench.data.fixtures import write_qm9_fixture  # noqa: E402
from mtl_bench.data.qm9 import (  # noqa: E402
    MEV_TASKS, TARGET_COLUMNS, TASKS, ScaledMAE, build_qm9, load_qm9_storage,
)
from mtl_bench.errors import ConfigError, DatasetError  # noqa: E402
from mtl_bench.models.qm9_mpnn import MPNNEncoder  # noqa: E402
from mtl_bench.train import build_and_train  # noqa: E402

N = 40


@pytest.fixture(scope="module")
def qm9_root(tmp_path_factory):
    return write_qm9_fixture(tmp_path_factory.mktemp("qm9"), n=N, seed=0)


def _reference_complete(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """Per molecule, by loops: every ordered pair (i, j), i != j, row-major; bond one-hot or zeros; then PyG's
    Distance(norm=False) appends the distance."""
    n = data.num_nodes
    bonds = {(int(a), int(b)): data.edge_attr[k] for k, (a, b) in enumerate(data.edge_index.t())}
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    attr = torch.stack([bonds.get(p, torch.zeros(4)) for p in pairs])
    out = Distance(norm=False)(Data(edge_index=torch.tensor(pairs).t(), edge_attr=attr, pos=data.pos))
    return out.edge_index, out.edge_attr


def test_both_layouts_read_the_same_molecules_and_batches_match_a_per_molecule_reference(qm9_root, tmp_path):
    store, path = load_qm9_storage(qm9_root)
    assert path == qm9_root / "processed" / "data_v3.pt" and len(store["node_ptr"]) == N + 1
    raw_store, raw_path = load_qm9_storage(write_qm9_fixture(tmp_path, n=N, seed=0, layout="raw"))
    assert raw_path.name == "qm9_v3.pt" and all(torch.equal(store[k], raw_store[k]) for k in store)
    bench = build_qm9(qm9_root, n_val=8, n_test=8)
    ds = bench.splits["val"]
    x, _ = ds[[0, 3, 5]]
    assert x.num_graphs == 3 and bench.input_shape == (11, 5)
    offset = 0
    edges_seen = 0
    for g, mol in enumerate(ds.index[[0, 3, 5]].tolist()):
        lo, hi = int(store["node_ptr"][mol]), int(store["node_ptr"][mol + 1])
        elo, ehi = int(store["edge_ptr"][mol]), int(store["edge_ptr"][mol + 1])
        data = Data(x=store["x"][lo:hi], pos=store["pos"][lo:hi], edge_index=store["edge_index"][:, elo:ehi],
                    edge_attr=store["edge_attr"][elo:ehi])
        ref_index, ref_attr = _reference_complete(data)
        n_edges = ref_index.shape[1]
        assert n_edges == (hi - lo) * (hi - lo - 1)
        assert torch.equal(x.edge_index[:, edges_seen:edges_seen + n_edges], ref_index + offset)
        assert torch.allclose(x.edge_attr[edges_seen:edges_seen + n_edges], ref_attr, atol=1e-6)
        assert torch.equal(x.x[offset:offset + hi - lo], data.x) and bool((x.batch[offset:offset + hi - lo] == g).all())
        offset, edges_seen = offset + hi - lo, edges_seen + n_edges
    assert offset == len(x.x) and edges_seen == x.edge_index.shape[1]
    # bonded pairs keep their one-hot, so each molecule's 2 x (atoms - 1) tree bonds are exactly the rows with a 1
    assert int(x.edge_attr[:, :4].sum()) == sum(2 * int(store["node_ptr"][m + 1] - store["node_ptr"][m]) - 2
                                                for m in ds.index[[0, 3, 5]].tolist())


def test_splits_normalisation_and_targets(qm9_root):
    y = load_qm9_storage(qm9_root)[0]["y"][:, list(TARGET_COLUMNS)].double()
    bench = build_qm9(qm9_root, n_val=8, n_test=6, split_seed=42)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(42))
    assert torch.equal(bench.splits["test"].index, perm[:6]) and torch.equal(bench.splits["val"].index, perm[6:14])
    assert torch.equal(bench.splits["train"].index, perm[14:]) and bench.info["sizes"] == {"train": 26, "val": 8, "test": 6}
    _, targets = bench.splits["train"][list(range(26))]
    mol = bench.splits["train"].index
    for k, t in enumerate(TASKS):  # full-dataset statistics (the reference's train_dataset.data.y), unbiased std
        expect = (y[mol, k] - y[:, k].mean()) / y[:, k].std()
        assert torch.allclose(targets[t].double(), expect, atol=1e-5)
    assert math.isclose(bench.info["target_std"]["mu"], float(y[:, 0].std()), rel_tol=1e-6)
    train = build_qm9(qm9_root, n_val=8, n_test=6, normalize="train")
    _, t2 = train.splits["train"][list(range(26))]
    assert abs(float(t2["cv"].double().mean())) < 1e-5 and math.isclose(float(t2["cv"].double().std()), 1.0, rel_tol=1e-5)
    other = build_qm9(qm9_root, n_val=8, n_test=6, split_seed=43)
    assert not torch.equal(other.splits["test"].index, bench.splits["test"].index)
    assert other.info["fingerprint"] != bench.info["fingerprint"]
    assert list(build_qm9(qm9_root, n_val=8, n_test=6, tasks=["cv", "mu"]).tasks) == ["cv", "mu"]


def test_mae_is_in_original_units_with_mev_for_the_energies(qm9_root):
    bench = build_qm9(qm9_root, n_val=8, n_test=6)
    std = bench.info["target_std"]
    pred, target = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([0.0, 0.0, 1.0])  # |e| = 0.5, 1, 1 -> mean 5/6
    for t in TASKS:
        m = bench.tasks[t].metrics()
        m.update(pred[:2], target[:2])
        m.update(pred[2:], target[2:])  # pooled over batches
        unit = 1000.0 if t in MEV_TASKS else 1.0
        assert math.isclose(m.compute()["mae"], 5 / 6 * std[t] * unit, rel_tol=1e-6), t
    assert set(MEV_TASKS) == {"homo", "lumo", "zpve", "u0", "u", "h", "g"}
    assert math.isnan(ScaledMAE(2.0).compute()["mae"]) and bench.tasks["mu"].higher_is_better == {"mae": False}
    assert torch.isclose(bench.tasks["mu"].loss(pred, target), torch.tensor((0.25 + 1 + 1) / 3))


def test_encoder_is_the_reference_architecture_and_permutation_invariant(qm9_root):
    torch.manual_seed(0)
    enc = MPNNEncoder((11, 5))
    sizes = {n: sum(p.numel() for p in m.parameters()) for n, m in enc.named_children()}
    # lin0 11*64+64; edge net 5*128+128 + 128*4096+4096, NNConv root 64*64 + bias 64; GRU 3*(2*64*64 + 2*64);
    # Set2Set LSTM(128 -> 64) 4*64*(128+64) + 2*4*64; lin1 128*64+64
    assert sizes == {"lin0": 768, "conv": 768 + 528384 + 4096 + 64, "gru": 24960, "set2set": 49664, "lin1": 8256}
    bench = build_qm9(qm9_root, n_val=8, n_test=6)
    ds = bench.splits["train"]
    together, _ = ds[[0, 1, 2, 3]]
    reversed_, _ = ds[[3, 2, 1, 0]]
    with torch.no_grad():
        a, b = enc(together), enc(reversed_)
        alone = torch.cat([enc(ds[[i]][0]) for i in range(4)])
    assert a.shape == (4, 64)
    assert torch.allclose(a, b.flip(0), atol=1e-5) and torch.allclose(a, alone, atol=1e-5)  # no cross-talk in a batch
    g = ds[[0]][0]
    perm = torch.randperm(len(g.x))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    g2 = type(g)(g.x[perm], inv[g.edge_index], g.edge_attr, g.batch, 1)  # relabelled atoms, same molecule
    with torch.no_grad():
        assert torch.allclose(enc(g), enc(g2), atol=1e-5)
    assert enc.last_shared_module() is enc.lin1
    with pytest.raises(ConfigError, match=r"graph inputs \(node features, edge features\)"):
        MPNNEncoder((1, 28, 28))


def _damage(root, how):
    path = root / "processed" / "data_v3.pt"
    if how == "garbage":
        path.write_bytes(b"not a torch file")
        return "data_v3.pt (not a PyTorch file that PyG wrote: damaged or another format)"
    if how == "not_tuple":
        torch.save({"x": torch.zeros(1)}, path)
        return "holds a dict, not PyG's (attributes, slices[, class]) tuple"
    attrs, slices, cls = torch.load(path, weights_only=False)
    if how == "width":
        attrs["x"] = attrs["x"][:, :10]
        torch.save((attrs, slices, cls), path)
        return "'x' has shape"
    if how == "missing_key":
        del attrs["pos"]
        torch.save((attrs, slices, cls), path)
        return "lacks attribute(s) ['pos']"
    attrs["edge_index"] = attrs["edge_index"] + 50
    torch.save((attrs, slices, cls), path)
    return "outside its molecule's atoms"


@pytest.mark.parametrize("how", ["garbage", "not_tuple", "width", "missing_key", "edge_range"])
def test_malformed_files_name_the_file_and_the_layout(tmp_path, how):
    root = write_qm9_fixture(tmp_path, n=6)
    needle = _damage(root, how)
    with pytest.raises(DatasetError) as info:
        build_qm9(root, n_val=1, n_test=1)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and str(root / "processed" / "data_v3.pt") in msg, msg
    assert f"{root}/processed/data_v3.pt (written by torch_geometric.datasets.QM9(root)) or {root}/raw/qm9_v3.pt" in msg


def test_a_missing_folder_and_bad_values(tmp_path, qm9_root):
    with pytest.raises(DatasetError, match=r"QM9 files not found: neither .*/nowhere/processed/data_v3.pt nor "
                                           r".*/nowhere/raw/qm9_v3.pt exists; expected .*qm9_v3.zip"):
        build_qm9(tmp_path / "nowhere")
    (tmp_path / "rd" / "raw").mkdir(parents=True)
    (tmp_path / "rd" / "raw" / "gdb9.sdf").write_text("")
    with pytest.raises(DatasetError, match=r"holds raw/gdb9.sdf but not .*process it once with torch_geometric"):
        build_qm9(tmp_path / "rd")
    with pytest.raises(ConfigError, match=r"dataset.n_val=20 \+ dataset.n_test=20 is invalid; the QM9 files hold 40"):
        build_qm9(qm9_root, n_val=20, n_test=20)
    with pytest.raises(ConfigError, match=r"dataset.normalize='std' is invalid; choose one of \['full', 'train', 'none'\]"):
        build_qm9(qm9_root, normalize="std")
    with pytest.raises(ConfigError, match=r"dataset.tasks=\['mu', 'gap'\] is invalid"):
        build_qm9(qm9_root, tasks=["mu", "gap"])


def test_one_epoch_on_the_fixture_with_delta_m_against_the_published_baseline(make_cfg, tmp_path):
    write_qm9_fixture(tmp_path / "data" / "qm9", n=N)
    # the paper preset (Adam, plateau scheduler on val/delta_m, selection on val/delta_m), shrunk to the fixture
    cfg = make_cfg("experiment=qm9_mpnn", f"paths.data_dir={tmp_path / 'data'}", "dataset.n_train=null", "dataset.n_val=8",
                   "dataset.n_test=8", "trainer.epochs=1", "trainer.batch_size=12", "backbone.dim=8",
                   "backbone.edge_hidden=8", "trainer.checkpoint_every=0")
    assert cfg.backbone._target_.endswith("MPNNEncoder") and cfg.heads.default.hidden == []
    assert cfg.scheduler.monitor == "val/delta_m" and cfg.delta_m.published == "nashmtl_qm9_mpnn_stl"
    summary = build_and_train(cfg)
    assert summary["status"] == "completed" and summary["tasks"] == list(TASKS)
    assert summary["dataset"]["sizes"] == {"train": 24, "val": 8, "test": 8}
    final = summary["final"]
    base = load_published("nashmtl_qm9_mpnn_stl")["metrics"]
    maes = np.array([final[f"test/{t}/mae"] for t in TASKS])
    assert np.all(np.isfinite(maes)) and np.all(maes > 0)
    expect = float(np.mean([(final[f"test/{t}/mae"] - base[f"{t}/mae"]) / base[f"{t}/mae"] for t in TASKS]) * 100)
    assert math.isclose(final["test/delta_m"], expect, rel_tol=1e-9, abs_tol=1e-9)
