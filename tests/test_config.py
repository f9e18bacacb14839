"""Config composition: every option and preset composes and resolves; schemas and checks reject mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from mtl_bench.config.validate import validate_config
from mtl_bench.errors import ConfigError, check_choice
from tests.conftest import CONFIG_DIR, compose_cfg

GROUPS = ["dataset", "backbone", "heads", "optimizer", "scheduler", "combiner", "mode", "logger", "trainer", "loss_transforms"]


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path, tiny=group != "dataset")
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container[group] is not None or option == "none"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    """Every preset, the study presets and their `_quick` variants included (their grids: tests/test_sweeps.py)."""
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path, tiny=False)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.experiment_name == experiment  # outputs/<experiment>/...
    validate_config(cfg)


@pytest.mark.parametrize("arm", options("elich_arm"))
def test_every_elich_arm_composes_with_its_quick_preset(arm, tmp_path):
    cfg = compose_cfg(["experiment=elich_optimizers_quick", f"elich_arm={arm}"], tmp_path, tiny=False)
    OmegaConf.to_container(cfg, resolve=True)
    validate_config(cfg)
    assert cfg.mode.name == ("stl" if arm.startswith("stl_") else "mtl")


@pytest.mark.parametrize("search", options("hparams_search"))
def test_every_hparams_search_composes(search, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_cfg([f"hparams_search={search}"], tmp_path, tiny=False)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.optimized_metric.startswith("val/")  # sweepers tune on validation, never on test


def test_experiment_values_win_over_primary_defaults(tmp_path):
    cfg = compose_cfg(["experiment=synthetic_imbalance"], tmp_path, tiny=False)
    assert list(cfg.dataset.label_scales) == [1.0, 10.0]
    assert cfg.experiment_name == "synthetic_imbalance"


def test_defaults_are_synthetic_mtl_ew_adam(tmp_path):
    cfg = compose_cfg([], tmp_path, tiny=False)
    choices = HydraConfig.get().runtime.choices
    assert (choices.dataset, choices.mode, choices.combiner, choices.optimizer) == ("synthetic", "mtl", "ew", "adam")
    assert cfg.logger.name == "wandb" and cfg.logger.mode is None  # W&B mode from WANDB_MODE, else offline


def test_schema_rejects_misspelled_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["trainer.epoch=3"], tmp_path)
    assert "Key 'epoch' not in 'TrainerConf'" in str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["trainer.epochs=abc"], tmp_path)
    assert isinstance(info.value.__cause__, ValidationError)


def test_unknown_choice_lists_the_available_options(tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'optimizer/nonexistent'.*adam.*sgd"):
        compose_cfg(["optimizer=nonexistent"], tmp_path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.epochs=0", "trainer.epochs must be a positive integer, got 0"),
        ("trainer.batch_size=-4", "trainer.batch_size must be a positive integer, got -4"),
        ("optimizer.lr=0", "optimizer.lr must be positive, got 0.0"),
        ("trainer.num_workers=-1", "trainer.num_workers must be an integer >= 0, got -1"),
        ("trainer.grad_clip_norm=0", "trainer.grad_clip_norm must be positive or null, got 0.0"),
        ("seed=-1", "seed must be an integer >= 0, got -1"),
    ],
)
def test_invalid_values_fail_validation_with_one_line(override, message, tmp_path):
    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value) == message


def test_check_choice_returns_the_value_or_names_every_valid_choice():
    assert check_choice("combiner.mode", "weighted", ("unweighted", "weighted")) == "weighted"
    assert check_choice("backbone.output_stride", 16, (8, 16, 32)) == 16
    with pytest.raises(ConfigError, match=r"^backbone\.norm='layer' is invalid; choose one of \['batch', 'group', 'none'\]$"):
        check_choice("backbone.norm", "layer", ("batch", "group", "none"))
    with pytest.raises(ConfigError, match=r"^combiner\.rescale=True is invalid; choose one of \[0, 1, 2\]$"):
        check_choice("combiner.rescale", True, (0, 1, 2))  # True == 1, but a bool is not a choice here
    assert check_choice("flag", False, (True, False)) is False
