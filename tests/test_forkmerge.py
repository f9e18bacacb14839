"""ForkMerge (merge, the two weight searches, branch independence, behaviour on the synthetic negative-transfer
benchmark) and the auxiliary-task mode it builds on (roles, selection on the targets, post-training)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mtl_bench.errors import ConfigError
from mtl_bench.forkmerge import ForkMerge, greedy_merge_search, lambda_merge_search, merge_states
from mtl_bench.train import build_and_train

# the synthetic auxiliary benchmark at test size: a narrow shared bottleneck, few target samples
AUX = [
    "dataset=synthetic_aux", "dataset.n_train=128", "dataset.n_val=256", "dataset.n_test=256",
    "backbone.hidden=[32,4]", "trainer.batch_size=32", "aux_targets=[target]",
]


def bn_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    net.train()
    for _ in range(seed + 1):  # move the BatchNorm running statistics and the step counter
        net(torch.randn(8, 3))
    return net


# ---------------------------------------------------------------------------------------------- merging
def test_merge_with_weight_one_reproduces_a_branch_exactly_buffers_included():
    a, b = bn_net(0).state_dict(), bn_net(1).state_dict()
    for w, ref in (([1.0, 0.0], a), ([0.0, 1.0], b)):
        merged = merge_states([a, b], w)
        assert merged.keys() == ref.keys()
        for k in ref:
            assert merged[k].dtype == ref[k].dtype
            assert torch.equal(merged[k], ref[k]), k
    assert int(b["1.num_batches_tracked"]) == 2 and int(a["1.num_batches_tracked"]) == 1


def test_merge_is_the_convex_combination_of_floats_and_takes_integers_from_the_heaviest_branch():
    a, b = bn_net(0).state_dict(), bn_net(1).state_dict()
    merged = merge_states([a, b], [0.25, 0.75])
    for k in a:
        if torch.is_floating_point(a[k]):
            torch.testing.assert_close(merged[k], 0.25 * a[k] + 0.75 * b[k])
    for key in ("1.running_mean", "1.running_var"):  # BatchNorm statistics are merged, not copied
        assert not torch.equal(merged[key], a[key]) and not torch.equal(merged[key], b[key])
    assert torch.equal(merged["1.num_batches_tracked"], b["1.num_batches_tracked"])
    net = bn_net(2)
    net.load_state_dict(merged)  # a loadable state dict
    with pytest.raises(ValueError, match="one weight per state"):
        merge_states([a, b], [1.0])


# ---------------------------------------------------------------------------------------------- searches
def test_lambda_grid_picks_the_best_grid_point():
    grid = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    calls = []

    def val_loss(w):  # minimum at λ = 0.55: the nearest grid point is 0.6
        calls.append(w)
        return (w[1] - 0.55) ** 2

    weights, trials = lambda_merge_search(val_loss, grid, higher_is_better=False)
    assert weights == pytest.approx([0.4, 0.6])
    assert [t["lambda"] for t in trials] == grid and len(calls) == len(grid)
    assert all(sum(w) == pytest.approx(1.0) for w in calls)
    # a score to maximise: the best grid point is the argmax
    weights, _ = lambda_merge_search(lambda w: -abs(w[1] - 0.15), grid, higher_is_better=True)
    assert weights == pytest.approx([0.8, 0.2])
    # ties keep the smallest λ (the target-only side)
    weights, _ = lambda_merge_search(lambda w: 1.0, grid, higher_is_better=False)
    assert weights == [1.0, 0.0]


def test_greedy_search_follows_the_official_normalised_scheme():
    grid = [0.0, 0.5, 1.0]
    # branch 1 has the better own score, so it leads with Λ = 1; branch 0 is tried at a · mean(Λ) for a in grid
    def val_loss(w):
        return (w[0] - 1 / 3) ** 2  # best when branch 0 gets 1/3 = 0.5 / (1 + 0.5)

    weights, trials = greedy_merge_search([2.0, 1.0], val_loss, grid, higher_is_better=False)
    assert weights == pytest.approx([1 / 3, 2 / 3])
    assert [t["a"] for t in trials] == [0.5, 1.0] and all(t["branch"] == 0 for t in trials)
    # a trial is kept only if it beats the leader's own score: a harmful branch keeps weight 0
    weights, _ = greedy_merge_search([1.0, 2.0], lambda w: 1.0 + w[1], grid, higher_is_better=False)
    assert weights == [1.0, 0.0]
    # three branches: the third is tried against the mean of the (unnormalised) weights so far
    seen = []
    weights, _ = greedy_merge_search([1.0, 2.0, 3.0], lambda w: seen.append(w) or -w[2], [1.0], higher_is_better=False)
    assert seen[-1] == pytest.approx([1 / 3, 1 / 3, 1 / 3])  # Λ = (1, 1, 1 · mean(1, 1)) normalised
    assert weights == pytest.approx([1 / 3, 1 / 3, 1 / 3])


# ---------------------------------------------------------------------------------------------- runs
def _capture_forkmerge(monkeypatch, cfg, tmp_path):
    """Build a ForkMerge run up to ``fit`` and hand back the ForkMerge object (main trainer, real make_branch)."""
    captured = {}

    class Stop(Exception):
        pass

    def capture(self):
        captured["fm"] = self
        raise Stop

    monkeypatch.setattr(ForkMerge, "fit", capture)
    with pytest.raises(Stop):
        build_and_train(cfg, tmp_path / "fm")
    return captured["fm"]


def test_branches_are_independent_copies(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg(*AUX, "aux_auxiliaries=[harmful]", "mode=forkmerge", "optimizer=adam")
    fm = _capture_forkmerge(monkeypatch, cfg, tmp_path)
    main_before = copy.deepcopy(fm.main.model.state_dict())
    target, joint = fm.make_branch("target", []), fm.make_branch("all", ["harmful"])
    # the target-only branch trains (and runs) the target alone; the joint branch both tasks with equal weights
    assert target.task_names == ["target"] and target.combiner.weights(torch.ones(1)).tolist() == [1.0]
    assert joint.task_names == ["target", "harmful"] and joint.combiner.weights(torch.ones(2)).tolist() == [1.0, 1.0]
    models = [fm.main.model, target.model, joint.model]
    ptrs = [{p.data_ptr() for p in m.parameters()} for m in models]
    assert not (ptrs[0] & ptrs[1]) and not (ptrs[0] & ptrs[2]) and not (ptrs[1] & ptrs[2])
    assert target.optimizer is not joint.optimizer

    joint.epoch = 1
    joint.train_epoch()
    joint_state = copy.deepcopy(joint.model.state_dict())
    joint_opt = copy.deepcopy(joint.optimizer.state_dict())
    for k, v in target.model.state_dict().items():  # the other branch and the main model are untouched
        assert torch.equal(v, main_before[k]), k
    assert not target.optimizer.state_dict()["state"]
    target.epoch = 1
    target.train_epoch()
    for k, v in joint.model.state_dict().items():
        assert torch.equal(v, joint_state[k]), k
    for pid, st in joint.optimizer.state_dict()["state"].items():
        for name, val in st.items():
            assert torch.equal(torch.as_tensor(val), torch.as_tensor(joint_opt["state"][pid][name])), (pid, name)
    for k, v in fm.main.model.state_dict().items():
        assert torch.equal(v, main_before[k]), k
    # the target-only branch never updates the auxiliary head; the joint branch does
    head = [k for k in main_before if "harmful" in k and k.endswith("weight")][0]
    assert torch.equal(target.model.state_dict()[head], main_before[head])
    assert not torch.equal(joint_state[head], main_before[head])


def _joint_weights(summary):
    return [m["weights"]["all"] for m in summary["forkmerge"]["merges"]]


def test_forkmerge_gives_a_harmful_auxiliary_weight_zero_and_reproduces_stl(make_cfg, tmp_path):
    epochs = "trainer.epochs=20"
    fm = build_and_train(make_cfg(*AUX, epochs, "aux_auxiliaries=[harmful]", "mode=forkmerge"), tmp_path / "fm")
    weights = _joint_weights(fm)
    assert len(weights) == 20 and weights == [0.0] * 20, weights
    assert fm["forkmerge"]["branches"] == {"target": [], "all": ["harmful"]}
    # with every merge on the target-only branch (same seed, same batches) the run *is* STL on the target
    stl = build_and_train(make_cfg(*AUX, epochs, "mode=stl", "mode.task=target"), tmp_path / "stl")
    assert fm["selected"]["test/target/mse"] == pytest.approx(stl["selected"]["test/target/mse"], rel=1e-6)
    # ... and EW with the harmful auxiliary is far worse on the target
    ew = build_and_train(make_cfg(*AUX, epochs, "aux_auxiliaries=[harmful]", "mode=aux", "combiner=ew"), tmp_path / "ew")
    assert ew["selected"]["test/target/mse"] > 1.3 * fm["selected"]["test/target/mse"]
    # merge weights are logged per merge, in metrics.jsonl as well
    rows = [json.loads(line) for line in (tmp_path / "fm" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["forkmerge/weight/all"] for r in rows if "forkmerge/weight/all" in r]
    assert logged == weights
    assert sum(r.get("type") == "merge" for r in rows) == 20
    # the search is not stuck at 0: a helpful auxiliary's joint branch is taken once it scores better
    helped = build_and_train(make_cfg(*AUX, epochs, "aux_auxiliaries=[helpful]", "mode=forkmerge"), tmp_path / "help")
    assert max(_joint_weights(helped)) > 0.5


def test_forkmerge_search_variants_and_bad_settings(make_cfg, tmp_path):
    base = [*AUX, "trainer.epochs=4", "aux_auxiliaries=[helpful,harmful]", "mode=forkmerge"]
    lam = build_and_train(make_cfg(*base, "mode.search=lambda", "mode.merge_every=2"), tmp_path / "lam")
    assert lam["forkmerge"]["periods"] == 2 and len(lam["forkmerge"]["merges"]) == 2
    assert all(sum(m["weights"].values()) == pytest.approx(1.0) for m in lam["forkmerge"]["merges"])
    three = build_and_train(
        make_cfg(*base, "mode.branches=[[],[helpful],all]", "mode.prune_to=2", "mode.merge_unit=steps", "mode.merge_every=3"),
        tmp_path / "three",
    )
    merges = three["forkmerge"]["merges"]
    assert set(merges[0]["weights"]) == {"target", "helpful", "all"}
    assert len(merges[1]["weights"]) == 2  # pruned after the first merge
    assert three["forkmerge"]["periods"] == len(merges) == -(-4 * 4 // 3)  # 4 steps per epoch, Δt = 3 steps
    for bad, match in (
        ("mode.search=median", "mode.search='median' is invalid"),
        ("mode.branches=[[],[depth]]", "not auxiliaries"),
        ("mode.grid=[0.5,2.0]", "mode.grid must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_and_train(make_cfg(*base, bad), tmp_path / "bad")


def test_the_chosen_merge_is_not_validated_again(make_cfg, monkeypatch, tmp_path):
    """The λ search always picks one of its trials: their validation metrics serve the selection after the merge."""
    from mtl_bench.trainer import Trainer

    calls = []
    evaluate = Trainer.evaluate

    def counting(self, split, loader=None):
        calls.append(split)
        return evaluate(self, split, loader)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    cfg = make_cfg(*AUX, "trainer.epochs=4", "aux_auxiliaries=[harmful]", "mode=forkmerge", "mode.search=lambda",
                   "mode.merge_every=2", "mode.grid=[0.0,0.5,1.0]")
    fm = build_and_train(cfg, tmp_path / "fm")["forkmerge"]
    periods, branches, trials = fm["periods"], len(fm["branches"]), len(fm["grid"])
    assert all(m["trials"] == trials for m in fm["merges"])
    # per period: each branch's score and each trial; then the final validation of _final_results
    assert calls.count("val") == periods * (branches + trials) + 1


def test_topk_ranking_phase_builds_branches_from_ranked_auxiliaries(make_cfg, tmp_path):
    out = build_and_train(
        make_cfg(*AUX, "trainer.epochs=2", "aux_auxiliaries=[harmful,helpful]", "mode=forkmerge", "mode.topk=[0,1,2]",
                 "mode.ranking_epochs=2"),
        tmp_path / "topk",
    )
    branches = out["forkmerge"]["branches"]
    assert branches["top0"] == [] and branches["top2"] in (["helpful", "harmful"], ["harmful", "helpful"])
    assert branches["top1"] == ["helpful"]  # the helpful auxiliary ranks above the harmful one
    rows = [json.loads(line) for line in (tmp_path / "topk" / "metrics.jsonl").read_text().splitlines()]
    ranking = [r for r in rows if r.get("type") == "forkmerge_ranking"]
    assert ranking and ranking[0]["ranking"] == ["helpful", "harmful"]


# ---------------------------------------------------------------------------------------------- aux mode
def test_aux_mode_selects_and_reports_on_the_targets(make_cfg, tmp_path):
    out = build_and_train(make_cfg(*AUX, "trainer.epochs=4", "aux_auxiliaries=[harmful]", "mode=aux"), tmp_path / "aux")
    assert out["targets"] == ["target"] and out["auxiliaries"] == ["harmful"]
    assert out["selected"]["val/loss"] == pytest.approx(out["selected"]["val/target/loss"])
    rows = [json.loads(line) for line in (tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "val/harmful/mse" in r]  # auxiliary metrics are still logged
    assert len(epochs) == 4 and all(r["val/aux_loss"] == pytest.approx(r["val/harmful/loss"]) for r in epochs)
    # the selected epoch is the best on the target's validation loss, whatever the auxiliary does
    best = min(epochs, key=lambda r: r["val/target/loss"])["epoch"]
    assert out["selection"]["selected_epoch"] == best
    assert out["selection"]["best_value"] == pytest.approx(min(r["val/target/loss"] for r in epochs))
    with pytest.raises(ConfigError, match="both targets and auxiliaries"):
        build_and_train(make_cfg(*AUX, "aux_auxiliaries=[target]", "mode=aux"), tmp_path / "bad")
    with pytest.raises(ConfigError, match="needs mode.targets"):
        build_and_train(make_cfg(*AUX[:-1], "mode=aux"), tmp_path / "bad2")


def test_aux_mode_delta_m_uses_the_targets_only(make_cfg, tmp_path):
    stl = build_and_train(make_cfg(*AUX, "trainer.epochs=1", "mode=stl", "mode.task=target"), tmp_path / "stl")
    out = build_and_train(
        make_cfg(*AUX, "trainer.epochs=1", "aux_auxiliaries=[harmful]", "mode=aux", f"delta_m.stl_runs=[{tmp_path / 'stl'}]"),
        tmp_path / "dm",
    )
    # Δm (per-metric convention) over the target's metrics only: the auxiliary has no STL baseline and needs none
    signs = {"mse": 1, "mae": 1, "r2": -1}
    expected = 100 / 3 * sum(
        s * (out["selected"][f"test/target/{m}"] - stl["selected"][f"test/target/{m}"]) / abs(stl["selected"][f"test/target/{m}"])
        for m, s in signs.items()
    )
    assert out["selected"]["test/delta_m"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("combiner", [[], ["combiner=mgda", "+combiner.grad_source=representation"]])
def test_post_training_updates_only_the_targets(make_cfg, tmp_path, combiner):
    """The post-training epoch trains the encoder and the targets' heads on Σ_targets L_t, also when the combiner
    of the joint epochs reads the representation through detached copies (their losses would not reach the encoder)."""
    base = [*AUX, "aux_auxiliaries=[harmful]", "mode=aux", "optimizer=adam", "trainer.selection.rule=last", *combiner]
    build_and_train(make_cfg(*base, "trainer.epochs=1"), tmp_path / "one")
    two = build_and_train(make_cfg(*base, "trainer.epochs=2", "mode.post_train_epochs=1"), tmp_path / "two")
    assert two["post_train_epochs"] == 1
    s1 = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)["model"]
    s2 = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)["model"]
    aux_head = [k for k in s1 if "harmful" in k]
    assert aux_head and all(torch.equal(s1[k], s2[k]) for k in aux_head)  # frozen in the post-training epoch
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if "target" in k)
    assert all(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("encoder.") and k.endswith("weight"))
    if combiner:
        return
    with pytest.raises(ConfigError, match="post_train_epochs=2 must lie in"):
        build_and_train(make_cfg(*base, "trainer.epochs=2", "mode.post_train_epochs=2"), tmp_path / "bad")
