"""mode=transfer (Elich et al., App. A6): a finished run's frozen backbone, heads fine-tuned on randomly
corrupted images, evaluation on every corruption x severity from a cache."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtl_bench.checkpoint import load_checkpoint
from mtl_bench.data.fixtures import write_fixtures
from mtl_bench.errors import ConfigError
from mtl_bench.modes import build_mode
from mtl_bench.train import build_and_train, run_dependencies

CORR = ["mode.eval_corruptions=[gaussian_noise,fog]", "mode.eval_severities=[1,5]", "mode.train_corruptions=[noise]"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    write_fixtures(root / "data", n_train=8, n_test=4, nyuv2_size=(48, 64), cityscapes_size=(32, 64), celeba_n=15)
    return root


def overrides(env: Path, *extra: str) -> list[str]:
    return [
        "dataset=cityscapes", f"paths.data_dir={env / 'data'}", f"paths.output_root={env / 'out'}", "experiment_name=tr",
        "logger=none", "trainer.device=cpu", "backbone=test_resnet", "heads=conv", "heads.default.hidden=8",
        "trainer.batch_size=4", "trainer.epochs=2", "trainer.log_every_n_steps=1", "mode=transfer", *CORR, *extra,
    ]


def encoder_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def test_transfer_freezes_the_source_backbone_and_evaluates_every_corruption(make_cfg, env):
    summary = build_and_train(make_cfg(*overrides(env, "mode.source=mtl"), tiny=False))
    t = summary["transfer"]
    src = t["source"]
    assert src["kind"] == "mtl" and src["trained_here"] and summary["tasks"] == ["seg", "depth"] == src["tasks"]
    source_model = load_checkpoint(src["checkpoint"])["model"]
    tuned = load_checkpoint(Path(summary["output_dir"]) / "checkpoints" / "last.pt")["model"]
    enc_src, enc_tuned = encoder_state(source_model), encoder_state(tuned)
    assert enc_src.keys() == enc_tuned.keys() and any("running_mean" in k for k in enc_src)  # BatchNorm buffers too
    assert all(torch.equal(enc_src[k], enc_tuned[k]) for k in enc_src), "the frozen encoder changed"
    heads = [k for k in tuned if k.startswith("heads.") and tuned[k].is_floating_point()]
    assert any(not torch.equal(tuned[k], source_model[k]) for k in heads), "the heads were not fine-tuned"
    assert summary["parameters"]["shared"] == 0  # nothing shared is trained
    assert set(t["corrupted"]) == {"gaussian_noise", "fog"} and set(t["corrupted"]["fog"]) == {"1", "5"}
    assert set(t["corrupted"]["fog"]["5"]) == set(t["clean"]) >= {"seg/miou", "depth/abs_err"}
    assert t["clean"]["depth/abs_err"] == summary["selected"]["test/depth/abs_err"]
    assert t["corruptions"]["backend"] == "mtl_bench" and t["fine_tuning"]["train"]["indexed"]
    records = [json.loads(line) for line in (Path(summary["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    logged = {(r["corruption"], r["severity"]) for r in records if r["type"] == "corruption"}
    assert logged == {("gaussian_noise", 1), ("gaussian_noise", 5), ("fog", 1), ("fog", 5)}


def test_last_k_compares_the_corrupted_numbers_with_the_clean_numbers_of_the_same_weights(make_cfg, env):
    """rule=last_k selects an average over epochs, which no single set of weights has: the corrupted evaluation
    runs on the final weights, so δ's ratios must divide by the final clean numbers (not the average)."""
    summary = build_and_train(make_cfg(*overrides(env, "mode.source=stl:depth", "trainer.selection.rule=last_k",
                                                  "trainer.selection.k=2"), tiny=False))
    clean, final, selected = summary["transfer"]["clean"], summary["final"], summary["selected"]
    assert clean == {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("test/depth/")}
    assert clean["depth/abs_err"] != selected["test/depth/abs_err"]  # the 2-epoch average differs from the final


def test_sources_and_corrupted_sets_are_reused(make_cfg, env):
    """A second job over the same source (here a second STL-vs-MTL comparison) trains nothing and corrupts nothing."""
    first = build_and_train(make_cfg(*overrides(env, "mode.source=stl:depth"), tiny=False))
    assert first["tasks"] == ["depth"] and first["transfer"]["source"]["trained_here"]
    cache = sorted((env / "out" / "corruption_cache").glob("*.npy"))
    stamps = {p: p.stat().st_mtime_ns for p in cache}
    again = build_and_train(make_cfg(*overrides(env, "mode.source=stl:depth"), tiny=False))
    assert not again["transfer"]["source"]["trained_here"]
    assert sorted((env / "out" / "corruption_cache").glob("*.npy")) == cache and {p: p.stat().st_mtime_ns for p in cache} == stamps
    assert again["transfer"]["corrupted"] == first["transfer"]["corrupted"]  # same seed: same numbers
    # another optimizer setting is another source: never the backbone trained for a different method
    other = build_and_train(make_cfg(*overrides(env, "mode.source=stl:depth", "optimizer.lr=0.01"), tiny=False))
    assert other["transfer"]["source"]["trained_here"] and other["transfer"]["source"]["dir"] != first["transfer"]["source"]["dir"]


def test_fresh_heads_start_from_a_new_initialisation(make_cfg, env):
    from mtl_bench import transfer
    from mtl_bench.models.mtl_model import MultiTaskModel

    src = build_and_train(make_cfg(*overrides(env, "mode.source=mtl", "mode.heads=fresh"), tiny=False))["transfer"]["source"]
    source = transfer.load_source(Path(src["dir"]), "best", "mtl")
    state = load_checkpoint(source.checkpoint)["model"]
    enc = torch.nn.Linear(2, 2)
    model = MultiTaskModel(enc, {"seg": torch.nn.Linear(2, 2)})
    with pytest.raises(ConfigError, match="lacks .* entries"):
        transfer.load_source_weights(model, source, "fresh")
    with pytest.raises(ConfigError, match=r"mode.heads='new' is invalid"):
        transfer.load_source_weights(model, source, "new")
    assert any(k.startswith("heads.seg") for k in state)


def test_explicit_source_folder_must_match_the_architecture(make_cfg, env, tmp_path):
    run = tmp_path / "src"
    plain = [o for o in overrides(env) if o != "mode=transfer" and not o.startswith("mode.")]
    build_and_train(make_cfg(*plain, tiny=False), output_dir=run)
    ok = build_and_train(make_cfg(*overrides(env, f"mode.source={run}", "mode.tasks=[seg]"), tiny=False))
    assert ok["tasks"] == ["seg"] and ok["transfer"]["source"]["kind"] == "path"
    with pytest.raises(ConfigError, match=r"trained with a different heads.default.hidden; .* heads=conv"):
        build_and_train(make_cfg(*overrides(env, f"mode.source={run}", "heads.default.hidden=4"), tiny=False))
    with pytest.raises(ConfigError, match="no head for"):
        build_and_train(make_cfg(*overrides(env, f"mode.source={run}", "mode.tasks=[normal]"), tiny=False))


def test_bad_transfer_settings_are_clear_errors(make_cfg, env):
    with pytest.raises(ConfigError, match="neither a corruption nor a subset"):
        build_and_train(make_cfg(*overrides(env, "mode.source=mtl", "mode.eval_corruptions=[rain]"), tiny=False))
    with pytest.raises(ConfigError, match="is neither mtl, stl:<task>, a run folder nor a checkpoint"):
        build_and_train(make_cfg(*overrides(env, "mode.source=/nonexistent/run"), tiny=False))
    with pytest.raises(ConfigError, match="task 'normal' is not one of the dataset's tasks"):
        build_and_train(make_cfg(*overrides(env, "mode.source=stl:normal"), tiny=False))
    from mtl_bench import transfer

    untrained = make_cfg(*overrides(env, "mode.source=stl:seg", "optimizer.lr=0.02"), tiny=False)
    with pytest.raises(ConfigError, match=r"mode.source: .*summary.json is missing"):  # its dependency run has not run
        transfer.find_source(untrained, ["seg", "depth"])
    with pytest.raises(ConfigError, match="cannot be trained inside a torchrun job"):  # no nested process groups
        run_dependencies(untrained, build_mode(untrained), SimpleNamespace(enabled=True))
    with pytest.raises(ConfigError, match="needs an image dataset"):
        build_and_train(make_cfg("mode=transfer", "mode.source=mtl", f"paths.output_root={env / 'syn'}"))


def test_a_source_s_identity_ignores_implementation_paths_only(make_cfg, env):
    from omegaconf import open_dict

    from mtl_bench import transfer

    def identity(*extra: str) -> str:
        cfg = make_cfg(*overrides(env, "mode.source=mtl", *extra), tiny=False)
        with open_dict(cfg):
            cfg.paths.output_dir = str(env / "unused")
        return transfer.source_identity(transfer.source_config(cfg, "mtl", None))

    base = identity()
    # where the diagnostics' classes live changes nothing a source learns: its sources stay reusable
    assert identity("diagnostics.au._target_=elsewhere.AU", "diagnostics.conflicts._target_=elsewhere.Probe") == base
    assert identity("optimizer.lr=0.5") != base and identity("diagnostics.au.decay=0.5") != base
