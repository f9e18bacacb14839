"""Test environment and Hydra compose helpers.

The environment block runs at import, before anything imports wandb or tqdm: W&B is disabled (one
smoke test switches to offline), no hub access, no progress bars.
"""

from __future__ import annotations

import os
import tempfile

_ENV_DIR = tempfile.mkdtemp(prefix="mtl_bench_test_env_")
os.environ.update(
    {
        "WANDB_MODE": "disabled",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB_DIR": _ENV_DIR,
        "WANDB_CACHE_DIR": _ENV_DIR,
        "WANDB_CONFIG_DIR": _ENV_DIR,
        "WANDB_DATA_DIR": _ENV_DIR,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": "1",  # runs take one intra-op thread (trainer.num_threads default): no load probe per run
    }
)

from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import mtl_bench.config.schema  # noqa: E402,F401  (registers the schemas before any compose)

import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch thread each
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Every test starts from the same global RNG states, whatever ran before it on its xdist worker.

    Tests that draw from the global generators (`torch.randn` without a generator) are then reproducible run
    to run and do not depend on test order; a test that wants a fresh draw each run uses its own generator.
    """
    from mtl_bench.preemption import clear_stop

    clear_stop()  # a stop signal another test sent this process is not this test's
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")

# Tiny but real: 2 tasks, small splits, 2 epochs of a few steps, local logging only.
TINY = [
    "logger=none",
    "trainer.device=cpu",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.log_every_n_steps=2",
    "dataset.n_train=256",
    "dataset.n_val=64",
    "dataset.n_test=64",
]


def compose_cfg(overrides: Sequence[str] = (), output_dir: Path | None = None, tiny: bool = True) -> DictConfig:
    """Compose ``configs/train.yaml`` like the CLI would (with the Hydra node available)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*(TINY if tiny else []), *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as under @hydra.main: the job config without the hydra node
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """Composes a tiny config; each call gets its own output folder (``run``, ``run_1``, ...), because a run
    started in a folder that holds a checkpoint resumes from it (``trainer.resume=auto``)."""
    calls = [0]

    def _make(*overrides: str, tiny: bool = True) -> DictConfig:
        n, calls[0] = calls[0], calls[0] + 1
        return compose_cfg(overrides, tmp_path / ("run" if n == 0 else f"run_{n}"), tiny=tiny)

    yield _make
    GlobalHydra.instance().clear()
