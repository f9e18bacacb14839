"""NYUv2, Cityscapes and CelebA end to end on tiny fixtures written in the community's on-disk formats:
training runs write per-task dense metrics, Δm against a matching STL multirun, and a missing dataset
fails at start with the expected layout."""

from __future__ import annotations

import math

import pytest

from mtl_bench.data.fixtures import write_fixtures
from mtl_bench.errors import DatasetError
from mtl_bench.train import build_and_train

LOCAL = ["logger=none", "trainer.device=cpu", "trainer.log_every_n_steps=1"]
SMALL_DENSE = [*LOCAL, "backbone=test_resnet", "heads=conv", "heads.default.hidden=8", "trainer.batch_size=2", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    write_fixtures(root, n_train=6, n_test=3, nyuv2_size=(48, 64), cityscapes_size=(32, 64), celeba_n=15)
    return root


def test_nyuv2_mtl_with_delta_m_against_stl_runs(make_cfg, data_dir, tmp_path):
    common = ["dataset=nyuv2", f"paths.data_dir={data_dir}", *SMALL_DENSE]
    stl = []
    for task in ("seg", "depth", "normal"):
        out = tmp_path / f"stl_{task}"
        s = build_and_train(make_cfg(*common, "mode=stl", f"mode.task={task}", tiny=False), output_dir=out)
        assert s["tasks"] == [task]
        stl.append(str(out))
    summary = build_and_train(make_cfg(*common, f"delta_m.stl_runs=[{','.join(stl)}]", tiny=False), output_dir=tmp_path / "mtl")
    sel = summary["selected"]
    expected = ["seg/miou", "seg/pix_acc", "depth/abs_err", "depth/rel_err", "normal/mean", "normal/median",
                "normal/within_11.25", "normal/within_22.5", "normal/within_30"]
    assert all(math.isfinite(sel[f"test/{k}"]) for k in expected)
    assert 0.0 <= sel["test/seg/miou"] <= 1.0 and 0.0 <= sel["test/normal/mean"] <= 180.0
    d = summary["delta_m"]
    assert d["convention"] == "per_metric" and sorted(d["selected"]["test"]["included"]) == sorted(expected)
    assert math.isfinite(sel["test/delta_m"])
    assert summary["dataset"]["validation"].startswith("holdout: 1 of 6 training samples")
    assert summary["dataset"]["sizes"] == {"train": 5, "val": 1, "test": 3}


def test_cityscapes_trains_and_reports_both_tasks(make_cfg, data_dir):
    summary = build_and_train(make_cfg("dataset=cityscapes", f"paths.data_dir={data_dir}", *SMALL_DENSE, tiny=False))
    assert summary["tasks"] == ["seg", "depth"] and summary["dataset"]["num_classes"] == 7
    assert {"test/seg/miou", "test/depth/abs_err", "test/depth/rel_err"} <= set(summary["selected"])


def test_celeba_trains_40_attribute_tasks(make_cfg, data_dir):
    summary = build_and_train(make_cfg("dataset=celeba", f"paths.data_dir={data_dir}", "backbone=test_resnet_pool", *LOCAL,
                                       "trainer.batch_size=3", "trainer.epochs=1", tiny=False))
    assert len(summary["tasks"]) == 40 and summary["tasks"][0] == "5_o_Clock_Shadow"
    assert all(0.0 <= summary["selected"][f"test/{t}/acc"] <= 1.0 for t in summary["tasks"])


def test_missing_dataset_fails_at_start_with_the_expected_layout(make_cfg, tmp_path):
    with pytest.raises(DatasetError) as info:
        build_and_train(make_cfg("dataset=nyuv2", "paths.data_dir=/nonexistent", *SMALL_DENSE, tiny=False))
    msg = str(info.value)
    assert "/nonexistent/nyuv2" in msg and "image/<i>.npy" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
