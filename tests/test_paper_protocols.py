"""The real-data paper presets follow their papers' protocols (docs/paper_protocols.md).

``PROTOCOLS`` below is an independent statement of each paper's protocol, one entry per preset, every value with
its source in a comment.  Sources (the reference notes in ../shared/reference/ and their tags):

* Elich, Kirchdorfer, Köhler, Schott, "Examining Common Paradigms in Multi-Task Learning", GCPR 2024,
  arXiv 2311.04698v5 — seeds-elich-adatask.md Part 1; [P] = read in the paper's full text.
* Yang et al., "AdaTask", AAAI 2023, arXiv 2211.15055v2 — seeds-elich-adatask.md Part 2; [3P] = third-party notes
  quoting the paper (Appendix B, Table 1), [C] = the official code EnnengYang/AdaTask@84853de.
* Jiang et al., "ForkMerge", NeurIPS 2023, arXiv 2301.12618v3 — seeds-forkmerge-dibs.md Part A; [code] =
  thuml/ForkMerge@develop (the paper's tables were not retrieved).
* Murthy et al., "DiBS-MTL", arXiv 2509.23948v2 — seeds-forkmerge-dibs.md Part B; [code] = suryakmurthy/dibs-mtl.
* "ours" marks a value the paper does not state: the preset's choice, checked so that it does not drift silently.

Each preset is composed once with Hydra's compose API (``paths.data_dir`` = a temporary folder) and validated;
nothing is trained.  Keys of a protocol entry: a config group (``dataset``, ``backbone``, ...) is checked against
the group choice, a dotted key against the composed value, ``grid`` against the preset's sweeper grid (every axis,
values in order) and ``jobs`` against its size, ``commands`` (extra overrides of a study's later commands, with
their job counts), ``expected`` against ``paper.expected`` and the quantities of those ids in
mtl_bench/baselines/published.yaml.  ``MAKE_TARGETS`` states the commands of each ``make study-<name>``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from mtl_bench.baselines import load_published
from mtl_bench.config.validate import validate_config
from tests.conftest import CONFIG_DIR, REPO

GROUPS = ("dataset", "backbone", "heads", "optimizer", "combiner", "scheduler", "mode", "aux_method", "loss_transforms")
ELICH_LRS = [0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001]  # Elich 2024 §1.3 [P]
ELICH_OPTIMIZERS = ["adam", "sgd_momentum", "signsgd"]  # Elich §1.3 [P]: Adam, SGD+momentum, signSGD (momentum)
ELICH_METHODS = ["ew", "uw", "rlw", "pcgrad", "cagrad", "imtl_g", "aligned_mtl"]  # Elich §1.3 [P] (IMTL -> imtl_g: ours)
ELICH_CORRUPTION_METHODS = ["uw", "rlw", "imtl_g", "pcgrad", "cagrad"]  # Elich Tables A8/A9 [P], besides EW
DIBS_METHODS = [  # DiBS-MTL v2 code's GRADIENT_METHODS + LOSS_METHODS that mtl_bench implements [code]; cagrad: own command
    "dibs_mtl", "dibs_mtl_multi", "ew", "nash_mtl", "famo", "fairgrad", "mgda", "pcgrad", "imtl_g", "gradnorm",
    "uw", "rlw", "dwa", "uw_o",
]
SEEDS = ["0", "1", "2"]  # 3 seeds in every paper (Elich [P], AdaTask [3P]); which seeds: ours

# ------------------------------------------------------------------------------------------- protocol fragments

ELICH_NYUV2 = {
    "dataset": "nyuv2",                    # Elich 2024 §1.3 [P]: NYUv2, 13-class seg + depth + normals, 288x384
    "dataset.validation": "holdout",       # Elich 2024 §1.3 [P]: 159 of the 795 training images held out (LibMTL split)
    "dataset.val_size": 0.2,               # 0.2 x 795 = 159 [P]; drawn with split_seed 0: ours
    "dataset.augment": True,               # Elich 2024 §1.3 [P]: CAGrad's random scale + crop
    "dataset.paper_compatible": False,     # pooled LibMTL metrics: ours (not stated)
    "optimizer.weight_decay": 1e-5,        # Elich 2024 §1.3 [P]: fixed weight decay 1e-5 in all runs
    "scheduler": "step",                   # Elich 2024 §1.3 [P]: lr x0.5 every 100 epochs
    "scheduler.step_size": 100,            # [P]
    "scheduler.gamma": 0.5,                # [P]
    "trainer.epochs": 200,                 # Elich 2024 §1.3 [P]: NYUv2 200 epochs
    "trainer.batch_size": 8,               # Elich 2024 §1.3 [P]: batch 8
    "delta_m.convention": "per_metric",    # Elich 2024 §1.2.1 [P]: Δm averaged over metrics (9 on NYUv2)
}
ELICH_CITYSCAPES = {
    "dataset": "cityscapes",               # Elich 2024 §1.3 [P]: 7-class seg + inverse depth, 128x256 (mtan/CAGrad files)
    "dataset.label_set": "7",              # [P]: 7 classes
    "dataset.validation": "holdout",       # Elich 2024 §1.3 [P]: 595 random training images held out (as Xin et al.)
    "dataset.val_size": 0.2,               # 0.2 x 2975 = 595 [P]
    "dataset.augment": True,               # Elich 2024 §1.3 [P]: CAGrad's augmentation
    "dataset.paper_compatible": False,     # pooled metrics: ours
    "optimizer.weight_decay": 1e-5,        # Elich 2024 §1.3 [P]
    "scheduler": "step",                   # Elich 2024 §1.3 [P]: x0.5 every 100 epochs
    "scheduler.step_size": 100,
    "scheduler.gamma": 0.5,
    "trainer.epochs": 300,                 # Elich 2024 §1.3 [P]: Cityscapes 300 epochs
    "trainer.batch_size": 64,              # Elich 2024 §1.3 [P]: batch 64
    "delta_m.convention": "per_metric",    # Elich 2024 §1.2.1 [P]
}
ELICH_CELEBA = {
    "dataset": "celeba",                   # Elich 2024 §1.3 [P]: 40 binary attributes, official partition
    "dataset.size": 64,                    # [P]: 64x64
    "backbone": "resnet18",                # Elich 2024 §1.3 [P] (text: ResNet-18; captions: ResNet50, inconsistent)
    "heads": "linear",                     # [P]: one linear layer per attribute
    "optimizer.weight_decay": 1e-5,        # [P]
    "scheduler": "step",                   # Elich 2024 §1.3 [P]: x0.5 every 30 epochs
    "scheduler.step_size": 30,
    "scheduler.gamma": 0.5,
    "trainer.batch_size": 512,             # Elich 2024 §1.3 [P]: batch 512
}
SEGNET = {"backbone": "segnet", "heads": "segnet"}  # Elich 2024 §1.3 [P]: SegNet (LibMTL-based)
DEEPLAB = {"backbone": "resnet50_os8", "heads": "aspp"}  # Elich 2024 §1.3 [P]: "DeepLabV3"; ResNet-50 = LibMTL's: [R]
ELICH_OPT_GRID = {  # Elich 2024 §1.3, Tables A4-A7 [P]
    "optimizer": ELICH_OPTIMIZERS, "combiner": ELICH_METHODS, "optimizer.lr": ELICH_LRS, "seed": SEEDS,
}
ELICH_OPT_SELECTION = {
    "trainer.selection.rule": "best",              # Elich 2024 §1.2.1 [P]: early stopping ...
    "trainer.selection.metric": "val/delta_m",     # ... on validation Δm
    "delta_m.missing_runs": "error",               # ours: never fall back to val/loss in the study
}
ELICH_STL = {
    "mode": "stl",                                 # Elich 2024 §1.3 [P]: STL baselines, one network per task
    "optimizer": "adam",                           # [P]: trained with Adam
    "optimizer.lr": 1e-4,                          # ours (the paper picks it from {0.01..5e-5} on validation [P])
    "trainer.selection.rule": "best",              # [P]: early stopping on the validation loss
    "trainer.selection.metric": "val/loss",
}
ELICH_CONFLICTS = {
    "diagnostics.conflicts.enabled": True,
    "diagnostics.conflicts.every_n_steps": 5,      # Elich 2024 App. A3.2 [P]: every 5 iterations
    "diagnostics.conflicts.max_samples": 8,        # [P]: 8 samples drawn when the batch is large
    "diagnostics.conflicts.max_tasks": 8,          # [P]: 8 tasks drawn when there are many (CelebA)
    "diagnostics.conflicts.averaged": True,        # [P]: the averaged-gradient appendix variant
    "diagnostics.conflicts.bn_mode": "eval",       # ours (not stated)
    "optimizer": "adam",                           # [P]: the best EW configuration (Adam in every EW row)
    "combiner": "ew",                              # [P]: EW
    "grid": {"seed": SEEDS},                       # 3 seeds [P]
    "jobs": 3,
}
ELICH_CORRUPTIONS = {
    "mode": "transfer",                            # Elich 2024 App. A6 [P]: frozen backbone, heads fine-tuned
    "mode.train_corruptions": ["common"],          # [P]: the 15 ImageNet-C corruptions, drawn per sample
    "mode.train_severities": [1, 2, 3, 4, 5],      # [P]: 5 severities
    "mode.eval_corruptions": ["common"],           # [P]: a corrupted test copy per corruption x severity
    "mode.eval_severities": [1, 2, 3, 4, 5],
    "mode.clean_prob": 0.0,                        # [P]: every training sample corrupted
    "mode.heads": "loaded",                        # ours
    "optimizer": "adam",                           # ours (one lr for the sources and the fine-tuning)
    "combiner": "ew",                              # [P]: EW (the other methods: the second command)
    "trainer.epochs": 20,                          # ours: the fine-tuning length is not stated
    "trainer.selection.rule": "best",              # ours
    "trainer.selection.metric": "val/loss",
}
CAGRAD_PROTOCOL = {  # the CAGrad / Nash-MTL / FAMO / AdaTask / DiBS lineage
    "optimizer": "adam",                           # AdaTask App. B [3P, C]; DiBS [code]
    "optimizer.lr": 1e-4,                          # AdaTask App. B [3P, C]; DiBS [code]
    "optimizer.weight_decay": 0.0,                 # AdaTask [C] (ignored by the code); DiBS [code]
    "scheduler": "step",                           # StepLR(100, 0.5): AdaTask App. B [3P, C]; DiBS [code]
    "scheduler.step_size": 100,
    "scheduler.gamma": 0.5,
    "trainer.epochs": 200,                         # AdaTask App. B [3P]; DiBS NYUv2 [code v1 / results parser]
    "dataset.validation": "test",                  # no validation split: the official val/ folder is the test set
    "dataset.augment": True,                       # on by default in AdaTask's [C] and DiBS's [code] trainers
    "dataset.paper_compatible": True,              # per-batch depth / normal statistics as those codes
    "trainer.selection.rule": "last_k",            # test metrics averaged over the last 10 epochs
    "trainer.selection.k": 10,                     # AdaTask [3P]; DiBS results_parser [code]
    "delta_m.convention": "per_metric",            # Nash-MTL/FAMO delta_fn, over all metrics
}
FORKMERGE_NYUV2 = {
    "dataset": "nyuv2",                            # ForkMerge [code]: NYUv2 288x384
    "dataset.validation": "holdout",               # [code]: LibMTL data_split.json, 636 / 159
    "dataset.val_size": 0.2,                       # 159 images; random draw instead of the json: ours
    "dataset.augment": False,                      # [code]: --aug off by default
    "backbone": "resnet50_os8",                    # [code]: dilated ResNet-50 (ImageNet weights: a local file)
    "heads": "aspp",                               # [code]: DeepLabV3+ ASPP head per task
    "heads.default.rates": [12, 24, 36],           # [code]: atrous rates 12/24/36
    "heads.default.channels": 256,                 # [code]: 256 channels
    "optimizer": "adam",                           # [code]: Adam
    "optimizer.lr": 1e-4,                          # [code]
    "optimizer.weight_decay": 1e-5,                # [code]
    "scheduler": "step",                           # [code]: StepLR(100, 0.5)
    "scheduler.step_size": 100,
    "scheduler.gamma": 0.5,
    "trainer.epochs": 200,                         # [code]
    "trainer.batch_size": 8,                       # [code]
    "trainer.selection.rule": "best",              # ours: target validation loss (the code: Δ% over its STL numbers)
    "trainer.selection.metric": "val/loss",
    "aux_auxiliaries": None,                       # [code]: the other two tasks are the auxiliaries
}

# --------------------------------------------------------------------------------------------------- the table

PROTOCOLS: dict[str, dict] = {
    # ---- Elich et al. 2024: the training protocols (one EW run each) --------------------------------------------
    "elich_nyuv2_segnet": {
        **ELICH_NYUV2, **SEGNET,
        "optimizer": "adam", "combiner": "ew", "optimizer.lr": 1e-4,   # ours for the single run
        "trainer.selection.rule": "best", "trainer.selection.metric": "val/delta_m",   # Elich §1.2.1 [P]
        "expected": {"elich2024_nyuv2_segnet_mtl": ["delta_m", "pareto_optimal", "metrics"],
                     "elich2024_nyuv2_segnet_stl": []},
    },
    "elich_nyuv2_deeplab": {
        **ELICH_NYUV2, **DEEPLAB,
        "heads.default.rates": [12, 24, 36],       # LibMTL's DeepLabHead: [R]
        "optimizer": "adam", "combiner": "ew", "optimizer.lr": 1e-4,   # ours
        "expected": {"elich2024_nyuv2_deeplabv3_mtl": ["delta_m", "pareto_optimal", "metrics"],
                     "elich2024_nyuv2_deeplabv3_stl": []},
    },
    "elich_cityscapes_segnet": {
        **ELICH_CITYSCAPES, **SEGNET,
        "optimizer": "adam", "combiner": "ew", "optimizer.lr": 1e-4,   # ours
        "trainer.selection.rule": "best", "trainer.selection.metric": "val/delta_m",   # [P]
        "expected": {"elich2024_cityscapes7_segnet_mtl": ["delta_m", "pareto_optimal", "metrics"],
                     "elich2024_cityscapes7_segnet_stl": []},
    },
    "elich_cityscapes_deeplab": {
        **ELICH_CITYSCAPES, **DEEPLAB,
        "optimizer": "adam", "combiner": "ew", "optimizer.lr": 1e-4,   # ours
        "expected": {"elich2024_cityscapes7_deeplabv3_mtl": ["delta_m", "pareto_optimal", "metrics"],
                     "elich2024_cityscapes7_deeplabv3_stl": []},
    },
    "elich_celeba": {
        **ELICH_CELEBA,
        "trainer.epochs": 100,                     # Elich 2024 §1.3 [P]: CelebA 100 epochs
        "optimizer": "adam", "combiner": "ew", "optimizer.lr": 1e-3,   # ours (not stated for CelebA)
        "trainer.selection.metric": "val/loss",    # ours (no CelebA Δm reported)
        "expected": {},
    },
    # ---- Elich et al. 2024: the optimizer study (Table 2, Tables A4-A7) ----------------------------------------
    "elich_optimizers_nyuv2_segnet": {
        **ELICH_NYUV2, **SEGNET, **ELICH_OPT_SELECTION,
        "delta_m.stl_runs": ["${paths.output_root}/elich_optimizers_nyuv2_segnet_stl/stl"],
        "grid": ELICH_OPT_GRID, "jobs": 630,
        "commands": [(("optimizer=adatask_adam", "combiner=ew"), 30)],   # AdaTask row, Adam only [P]
        "expected": {"elich2024_nyuv2_segnet_mtl": ["delta_m", "pareto_optimal"], "elich2024_nyuv2_segnet_stl": []},
    },
    "elich_optimizers_nyuv2_deeplab": {
        **ELICH_NYUV2, **DEEPLAB, **ELICH_OPT_SELECTION,
        "delta_m.stl_runs": ["${paths.output_root}/elich_optimizers_nyuv2_deeplab_stl/stl"],
        "grid": ELICH_OPT_GRID, "jobs": 630,
        "commands": [(("optimizer=adatask_adam", "combiner=ew"), 30)],
        "expected": {"elich2024_nyuv2_deeplabv3_mtl": ["delta_m", "pareto_optimal"], "elich2024_nyuv2_deeplabv3_stl": []},
    },
    "elich_optimizers_cityscapes_segnet": {
        **ELICH_CITYSCAPES, **SEGNET, **ELICH_OPT_SELECTION,
        "delta_m.stl_runs": ["${paths.output_root}/elich_optimizers_cityscapes_segnet_stl/stl"],
        "grid": ELICH_OPT_GRID, "jobs": 630,
        "commands": [(("optimizer=adatask_adam", "combiner=ew"), 30)],
        "expected": {"elich2024_cityscapes7_segnet_mtl": ["delta_m", "pareto_optimal"],
                     "elich2024_cityscapes7_segnet_stl": []},
    },
    "elich_optimizers_cityscapes_deeplab": {
        **ELICH_CITYSCAPES, **DEEPLAB, **ELICH_OPT_SELECTION,
        "delta_m.stl_runs": ["${paths.output_root}/elich_optimizers_cityscapes_deeplab_stl/stl"],
        "grid": ELICH_OPT_GRID, "jobs": 630,
        "commands": [(("optimizer=adatask_adam", "combiner=ew"), 30)],
        "expected": {"elich2024_cityscapes7_deeplabv3_mtl": ["delta_m", "pareto_optimal"],
                     "elich2024_cityscapes7_deeplabv3_stl": []},
    },
    "elich_optimizers_nyuv2_segnet_stl": {
        **ELICH_NYUV2, **SEGNET, **ELICH_STL,
        "hydra.sweep.dir": "${paths.output_root}/elich_optimizers_nyuv2_segnet_stl/stl",
        "grid": {"mode.task": ["seg", "depth", "normal"], "seed": SEEDS}, "jobs": 9,
        "expected": {"elich2024_nyuv2_segnet_stl": []},
    },
    "elich_optimizers_nyuv2_deeplab_stl": {
        **ELICH_NYUV2, **DEEPLAB, **ELICH_STL,
        "hydra.sweep.dir": "${paths.output_root}/elich_optimizers_nyuv2_deeplab_stl/stl",
        "grid": {"mode.task": ["seg", "depth", "normal"], "seed": SEEDS}, "jobs": 9,
        "expected": {"elich2024_nyuv2_deeplabv3_stl": []},
    },
    "elich_optimizers_cityscapes_segnet_stl": {
        **ELICH_CITYSCAPES, **SEGNET, **ELICH_STL,
        "hydra.sweep.dir": "${paths.output_root}/elich_optimizers_cityscapes_segnet_stl/stl",
        "grid": {"mode.task": ["seg", "depth"], "seed": SEEDS}, "jobs": 6,
        "expected": {"elich2024_cityscapes7_segnet_stl": []},
    },
    "elich_optimizers_cityscapes_deeplab_stl": {
        **ELICH_CITYSCAPES, **DEEPLAB, **ELICH_STL,
        "hydra.sweep.dir": "${paths.output_root}/elich_optimizers_cityscapes_deeplab_stl/stl",
        "grid": {"mode.task": ["seg", "depth"], "seed": SEEDS}, "jobs": 6,
        "expected": {"elich2024_cityscapes7_deeplabv3_stl": []},
    },
    # ---- Elich et al. 2024: gradient conflicts (Fig. 4, App. A3.2) ---------------------------------------------
    "elich_conflicts_nyuv2_segnet": {
        **ELICH_NYUV2, **SEGNET, **ELICH_CONFLICTS,
        "optimizer.lr": 1e-4,                      # [P]: the NYUv2 SegNet EW-Adam row's lr
        "expected": {},
    },
    "elich_conflicts_nyuv2_deeplab": {
        **ELICH_NYUV2, **DEEPLAB, **ELICH_CONFLICTS,
        "optimizer.lr": 1e-4,                      # ours: no best EW lr given for NYUv2 DeepLabV3
        "expected": {},
    },
    "elich_conflicts_cityscapes_segnet": {
        **ELICH_CITYSCAPES, **SEGNET, **ELICH_CONFLICTS,
        "optimizer.lr": 5e-3,                      # [P]: the Cityscapes SegNet EW-Adam row's lr
        "expected": {},
    },
    "elich_conflicts_cityscapes_deeplab": {
        **ELICH_CITYSCAPES, **DEEPLAB, **ELICH_CONFLICTS,
        "optimizer.lr": 1e-4,                      # ours
        "expected": {},
    },
    "elich_conflicts_celeba": {
        **ELICH_CELEBA, **ELICH_CONFLICTS,
        "trainer.epochs": 100,                     # Elich 2024 §1.3 [P]
        "optimizer.lr": 1e-3,                      # ours
        "expected": {},
    },
    # ---- Elich et al. 2024: corruption transferability (App. A6, Tables A8/A9) ---------------------------------
    "elich_corruptions_nyuv2": {
        **{k: v for k, v in ELICH_NYUV2.items() if k != "trainer.epochs" and not k.startswith("delta_m")},
        **SEGNET, **ELICH_CORRUPTIONS,
        "mode.source_epochs": 200,                 # [P]: the clean NYUv2 backbones, 200 epochs
        "optimizer.lr": 1e-4,                      # ours
        "grid": {"mode.source": ["mtl", "stl:seg", "stl:depth", "stl:normal"], "seed": SEEDS}, "jobs": 12,
        "commands": [(("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)), 15)],
        "expected": {"elich2024_nyuv2_segnet_mtl": ["corruption_delta"]},
    },
    "elich_corruptions_nyuv2_deeplab": {
        **{k: v for k, v in ELICH_NYUV2.items() if k != "trainer.epochs" and not k.startswith("delta_m")},
        **DEEPLAB, **ELICH_CORRUPTIONS,
        "mode.source_epochs": 200,
        "optimizer.lr": 1e-4,                      # ours
        "grid": {"mode.source": ["mtl", "stl:seg", "stl:depth", "stl:normal"], "seed": SEEDS}, "jobs": 12,
        "commands": [(("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)), 15)],
        "expected": {"elich2024_nyuv2_deeplabv3_mtl": ["corruption_delta"]},
    },
    "elich_corruptions_cityscapes": {
        **{k: v for k, v in ELICH_CITYSCAPES.items() if k != "trainer.epochs" and not k.startswith("delta_m")},
        **SEGNET, **ELICH_CORRUPTIONS,
        "mode.source_epochs": 300,                 # [P]: the clean Cityscapes backbones, 300 epochs
        "optimizer.lr": 1e-4,                      # ours (the paper's EW-Adam SegNet source: 5e-3 [P])
        "grid": {"mode.source": ["mtl", "stl:seg", "stl:depth"], "seed": SEEDS}, "jobs": 9,
        "commands": [(("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)), 15)],
        "expected": {"elich2024_cityscapes7_segnet_mtl": ["corruption_delta"]},
    },
    "elich_corruptions_cityscapes_deeplab": {
        **{k: v for k, v in ELICH_CITYSCAPES.items() if k != "trainer.epochs" and not k.startswith("delta_m")},
        **DEEPLAB, **ELICH_CORRUPTIONS,
        "mode.source_epochs": 300,
        "optimizer.lr": 1e-4,                      # ours
        "grid": {"mode.source": ["mtl", "stl:seg", "stl:depth"], "seed": SEEDS}, "jobs": 9,
        "commands": [(("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)), 15)],
        "expected": {"elich2024_cityscapes7_deeplabv3_mtl": ["corruption_delta"]},
    },
    "elich_corruptions_celeba": {
        **ELICH_CELEBA, **ELICH_CORRUPTIONS,
        "mode.source_epochs": 100,                 # [P]: the CelebA protocol's 100 epochs
        "optimizer.lr": 1e-3,                      # ours
        "jobs": 123,                               # MTL + 40 STL sources x 3 seeds (the study on CelebA: [R])
        "commands": [(("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)), 15)],
        "expected": {},
    },
    # ---- AdaTask (Yang et al., AAAI 2023): CityScapes, Table 1 / Appendix B ------------------------------------
    "adatask_cityscapes": {
        **CAGRAD_PROTOCOL,
        "dataset": "cityscapes",                   # AdaTask [3P, C]: CityScapes is its vision benchmark
        "dataset.label_set": "7",                  # [3P, C]: 7-class segmentation + depth
        "backbone": "mtan", "heads": "mtan",       # [3P, C]: SegNet-MTAN
        "combiner": "ew",                          # [C]: EqualWeight, the only weighting in the release
        "trainer.batch_size": 8,                   # App. B [3P, C]: batch 8
        "trainer.eval_batch_size": 8,              # [C]: test batch = training batch (per-batch depth errors)
        "delta_m.published": "cagrad_cityscapes7_segnet_stl",   # [C]: the code's Δm uses CAGrad's STL numbers
        "grid": {"optimizer": ["adam", "adatask_adam"], "seed": SEEDS}, "jobs": 6,   # Table 1 [3P]
        "commands": [(("optimizer=adam", "combiner=gradnorm"), 3)],   # Table 1's GradNorm row [3P]
        "expected": {"adatask2023_cityscapes7_mtan_mtl": ["metrics"]},
    },
    # ---- ForkMerge (Jiang et al., NeurIPS 2023): NYUv2 ---------------------------------------------------------
    "forkmerge_nyuv2": {
        **FORKMERGE_NYUV2,
        "aux_method": "forkmerge",
        "mode.topk": [0, 1, 2],                    # forkmerge.sh [code]: topk 0 1 2
        "mode.ranking_epochs": 10,                 # [code]: --pruning_epochs 10 (ranking phase per auxiliary)
        "mode.merge_every": 30,                    # [code]: --epoch_step 30
        "mode.merge_unit": "epochs",
        "mode.search": "greedy",                   # [code]: greedy normalised search
        "mode.grid": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],   # [code]: --alphas
        "grid": {"aux_targets": ["[seg]", "[depth]", "[normal]"], "seed": SEEDS},   # [code]: each task the target
        "jobs": 9,
        "expected": {"forkmerge2023_nyuv2_deeplabv3plus_stl_reference": ["metrics"]},
    },
    "forkmerge_nyuv2_baselines": {
        **FORKMERGE_NYUV2,
        "aux_post_train_epochs": 50,               # ours: the NYUv2 post-training length was not retrieved
        "grid": {"aux_targets": ["[seg]", "[depth]", "[normal]"],
                 "aux_method": ["stl", "ew", "gcs", "ol_aux", "post_train"],   # the code's baselines [code] in mtl_bench
                 "seed": SEEDS},
        "jobs": 45,
        "expected": {"forkmerge2023_nyuv2_deeplabv3plus_stl_reference": ["metrics"]},
    },
    # ---- DiBS-MTL (Murthy et al., arXiv 2509.23948) ------------------------------------------------------------
    "dibs_nyuv2": {
        **CAGRAD_PROTOCOL,
        "dataset": "nyuv2",                        # DiBS [code]: NYUv2 (mtan files)
        "backbone": "mtan", "heads": "mtan",       # [code v1 default]; which one the paper used: [R]
        "trainer.batch_size": 2,                   # [code]: batch 2
        "trainer.eval_batch_size": 2,
        "delta_m.published": "cagrad_nyuv2_segnet_stl",   # ours: the DiBS code's own STL numbers are not an entry
        "grid": {"combiner": DIBS_METHODS, "seed": SEEDS}, "jobs": 42,
        "commands": [(("combiner=cagrad", "combiner.c=0.4"), 3)],   # [code]: CAGrad c = 0.4
        "expected": {"dibs2025_nyuv2_stl_reference": ["metrics"]},
    },
    "dibs_cityscapes": {
        **CAGRAD_PROTOCOL,
        "dataset": "cityscapes",                   # DiBS [code]: 7-class seg + depth
        "dataset.label_set": "7",
        "backbone": "mtan", "heads": "mtan",       # [code]: SegNet/MTAN; which one: [R]
        "trainer.batch_size": 2,                   # [code]: argparse default batch 2
        "trainer.eval_batch_size": 2,
        "delta_m.published": "cagrad_cityscapes7_segnet_stl",   # [code]: CAGrad's Cityscapes STL numbers
        "grid": {"combiner": DIBS_METHODS, "seed": SEEDS}, "jobs": 42,
        "commands": [(("combiner=cagrad", "combiner.c=0.4"), 3)],
        "expected": {},
    },
}

# Presets of the seed papers that are not real-data paper presets (synthetic or CPU `_quick` studies, reworked by
# others) and the NYUv2 corruption base preset that elich_corruptions_nyuv2 pins.
NOT_PAPER_PRESETS = {"elich_optimizers", "elich_conflicts", "elich_corruptions", "adatask_dominance", "dibs_transforms"}

# `make study-<target>`: the commands it runs, in order: (preset, extra overrides).
MAKE_TARGETS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    **{name: [(f"{name}_stl", ()), (name, ()), (name, ("optimizer=adatask_adam", "combiner=ew"))]
       for name in ("elich_optimizers_nyuv2_segnet", "elich_optimizers_nyuv2_deeplab",
                    "elich_optimizers_cityscapes_segnet", "elich_optimizers_cityscapes_deeplab")},
    **{name: [(name, ()), (name, ("mode.source=mtl", "combiner=" + ",".join(ELICH_CORRUPTION_METHODS)))]
       for name in ("elich_corruptions_nyuv2", "elich_corruptions_nyuv2_deeplab", "elich_corruptions_cityscapes",
                    "elich_corruptions_cityscapes_deeplab", "elich_corruptions_celeba")},
    **{name: [(name, ())] for name in ("elich_conflicts_nyuv2_segnet", "elich_conflicts_nyuv2_deeplab",
                                       "elich_conflicts_cityscapes_segnet", "elich_conflicts_cityscapes_deeplab",
                                       "elich_conflicts_celeba")},
    "adatask_cityscapes": [("adatask_cityscapes", ()), ("adatask_cityscapes", ("optimizer=adam", "combiner=gradnorm"))],
    "forkmerge_nyuv2": [("forkmerge_nyuv2", ()), ("forkmerge_nyuv2_baselines", ())],
    "dibs_nyuv2": [("dibs_nyuv2", ()), ("dibs_nyuv2", ("combiner=cagrad", "combiner.c=0.4"))],
    "dibs_cityscapes": [("dibs_cityscapes", ()), ("dibs_cityscapes", ("combiner=cagrad", "combiner.c=0.4"))],
}
ARXIV = {"elich": "2311.04698", "adatask": "2211.15055", "forkmerge": "2301.12618", "dibs": "2509.23948"}
DATASET_TASKS = {"nyuv2": {"seg", "depth", "normal"}, "cityscapes": {"seg", "depth"}}

# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def composed(data_dir):
    """``composed(preset)``: the preset composed like the CLI does (with the Hydra node), once per preset."""
    cache: dict = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        def get(name: str):
            if name not in cache:
                cache[name] = compose("train", overrides=[f"experiment={name}", f"paths.data_dir={data_dir}"],
                                      return_hydra_config=True)
            HydraConfig.instance().set_config(cache[name])
            return cache[name]

        yield get
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def published() -> dict:
    return yaml.safe_load(files("mtl_bench.baselines").joinpath("published.yaml").read_text(encoding="utf-8"))


def grid_jobs(cfg, extra: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The jobs of the preset's grid (+ a later command's overrides, which replace the axes they name)."""
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *extra])
    batches = BasicSweeper.split_arguments(overrides, None)
    return [dict(o.split("=", 1) for o in job) for batch in batches for job in batch]


def grid_axes(cfg) -> dict[str, list[str]]:
    parser = OverridesParser.create()
    return {k: [e.replace("\\", "") for e in parser.parse_override(f"{k}={v}").sweep_string_iterator()]
            if "," in str(v) else [str(v)] for k, v in (cfg.hydra.sweeper.params or {}).items()}


def raw_value(cfg, key: str):
    """The value at ``key`` as the preset writes it (interpolations unresolved, containers as plain lists/dicts)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    node = parent._get_node(leaf) if OmegaConf.is_config(parent) else None
    if node is None:
        return "<missing>"
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node._value()


def is_real_data_preset(name: str) -> bool:
    """A preset that selects NYUv2, Cityscapes or CelebA itself or through the preset it extends."""
    text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text(encoding="utf-8")
    if re.search(r"override /dataset: (nyuv2|cityscapes|celeba)\b", text):
        return True
    base = re.search(r"^defaults:\n  - (\w+)\s*$", text, re.M)
    return bool(base) and (Path(CONFIG_DIR) / "experiment" / f"{base.group(1)}.yaml").is_file() and is_real_data_preset(base.group(1))


def paper_presets() -> list[str]:
    """The real-data presets of the four papers (named <paper>_...): each must have a row in PROTOCOLS."""
    names = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    return [n for n in names if n.split("_")[0] in ARXIV and n not in NOT_PAPER_PRESETS and not n.endswith("_quick")
            and is_real_data_preset(n)]


def dataset_of(cfg) -> str:
    return cfg.hydra.runtime.choices.dataset


def group_option_exists(group: str, option: str) -> bool:
    return (Path(CONFIG_DIR) / group / f"{option}.yaml").is_file()


# -------------------------------------------------------------------------------------------------------- tests


def test_every_paper_preset_is_in_the_table():
    assert sorted(PROTOCOLS) == paper_presets()


@pytest.mark.parametrize("preset", sorted(PROTOCOLS))
def test_preset_follows_the_papers_protocol(preset, composed, data_dir):
    cfg = composed(preset)
    protocol = PROTOCOLS[preset]
    choices = cfg.hydra.runtime.choices
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert job.experiment_name == preset
    assert str(job.dataset.root).startswith(str(data_dir))      # paths.data_dir reaches the dataset
    validate_config(job)
    problems = []
    for key, want in protocol.items():
        if key in ("grid", "jobs", "commands", "expected"):
            continue
        got = choices.get(key) if key in GROUPS else raw_value(cfg, key)
        if got != want:
            problems.append(f"{key}: preset {got!r}, paper {want!r}")
    assert not problems, f"{preset} drifted from the protocol:\n  " + "\n  ".join(problems)

    axes = grid_axes(cfg)
    want_axes = protocol.get("grid", axes if "jobs" in protocol else {})
    numeric = {k for k, v in want_axes.items() if all(isinstance(e, float) for e in v)}  # lr grids: compare numbers
    assert {k: [float(e) for e in v] if k in numeric else v for k, v in axes.items()} == want_axes, f"{preset}: {axes}"
    if "jobs" in protocol:
        assert cfg.hydra.mode == RunMode.MULTIRUN
        assert len(grid_jobs(cfg)) == protocol["jobs"]
    else:
        assert not axes
    for axis, values in axes.items():                # every swept group option exists
        if axis in GROUPS:
            assert all(group_option_exists(axis, v) for v in values), (axis, values)
    for extra, n_jobs in protocol.get("commands", []):
        assert len(grid_jobs(cfg, extra)) == n_jobs, (preset, extra)
        for override in extra:
            key, value = override.split("=", 1)
            if key in GROUPS:
                assert all(group_option_exists(key, v) for v in value.split(",")), override
            elif key.startswith("combiner."):        # a combiner key the chosen combiner has
                combiner = dict(o.split("=", 1) for o in extra)["combiner"]
                node = yaml.safe_load((Path(CONFIG_DIR) / "combiner" / f"{combiner}.yaml").read_text())
                assert key.split(".", 1)[1] in node, override


@pytest.mark.parametrize("preset", sorted(PROTOCOLS))
def test_expected_values_exist_in_published_yaml(preset, composed, published):
    cfg = composed(preset)
    expected = PROTOCOLS[preset]["expected"]
    assert sorted(cfg.paper.expected) == sorted(expected)
    assert str(cfg.paper.cite) and ARXIV[preset.split("_")[0]] in cfg.paper.cite
    entries, results = published["entries"], published["results"]
    for pid, quantities in expected.items():
        assert pid in entries or pid in results, f"{preset}: '{pid}' is not in published.yaml"
        if pid in entries:
            assert load_published(pid)["dataset"] == dataset_of(cfg)
        for quantity in quantities:
            assert quantity in results[pid], f"{preset}: results.{pid} has no '{quantity}'"
    if cfg.delta_m.published:
        entry = load_published(cfg.delta_m.published)
        assert entry["dataset"] == dataset_of(cfg)


def method_exists(row: str) -> bool:
    """A published row names a combiner, ``<combiner>+<loss_transforms option>`` (e.g. SI = ew+log_all), or mtl_io."""
    combiner, _, transform = row.partition("+")
    return row == "mtl_io" or (group_option_exists("combiner", combiner)
                               and (not transform or group_option_exists("loss_transforms", transform)))


def test_published_results_are_well_formed(published):
    for pid, result in published["results"].items():
        assert {"paper", "confidence", "dataset", "backbone", "protocol"} <= set(result), pid
        assert result["confidence"] in ("P", "3P", "code"), pid
        assert {"metrics", "delta_m", "pareto_optimal", "corruption_delta"} & set(result), pid
        for setting, metrics in result.get("metrics", {}).items():
            for key, value in metrics.items():
                task, _, metric = key.partition("/")
                assert task in DATASET_TASKS[result["dataset"]] and metric, (pid, setting, key)
                assert isinstance(value, (int, float)), (pid, key)
        for optimizer, rows in result.get("delta_m", {}).items():
            if optimizer != "convention":
                assert group_option_exists("optimizer", optimizer), (pid, optimizer)
                assert all(method_exists(c) for c in rows), (pid, rows)
        assert all(group_option_exists("combiner", c) for c in result.get("corruption_delta", {})), pid
    # the entries themselves still load (their schema is mtl_bench.baselines' own)
    for pid in published["entries"]:
        load_published(pid)


@pytest.mark.parametrize("preset", [p for p in sorted(PROTOCOLS) if p.startswith(("elich_optimizers", "elich_corruptions"))
                                    and not p.endswith("_stl")])
def test_the_study_covers_every_published_row(preset, composed, published):
    """Every optimizer x method row of Tables A4-A7 and every method of Tables A8/A9 that mtl_bench implements is a
    job of the study (the grid or a later command of its make target)."""
    cfg = composed(preset)
    jobs = grid_jobs(cfg) + [j for extra, _ in PROTOCOLS[preset].get("commands", []) for j in grid_jobs(cfg, extra)]
    for pid, quantities in PROTOCOLS[preset]["expected"].items():
        result = published["results"].get(pid, {})
        if "delta_m" in quantities:
            ran = {(j.get("optimizer", "adam"), j.get("combiner", "ew")) for j in jobs}
            rows = {(o, c) for o, r in result["delta_m"].items() if o != "convention" for c in r if c != "mtl_io"}
            assert rows <= ran, sorted(rows - ran)
        if "corruption_delta" in quantities:
            ran = {j.get("combiner", "ew") for j in jobs if j.get("mode.source", "mtl") == "mtl"}
            assert set(result["corruption_delta"]) <= ran, sorted(set(result["corruption_delta"]) - ran)


def test_headers_cite_the_paper_and_mark_our_choices():
    for preset in PROTOCOLS:
        text = (Path(CONFIG_DIR) / "experiment" / f"{preset}.yaml").read_text(encoding="utf-8")
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert ARXIV[preset.split("_")[0]] in header, f"{preset}: the header does not cite the arXiv id"
        # the values the paper does not state are marked, here or in the header of the preset it extends
        assert "our choice" in header.lower() or "whose header cites every value" in header, preset


def test_make_study_targets_run_the_studies_and_pass_dotted_overrides_to_hydra(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    spaced = "hydra.job.env_set.NOTE=a b"   # a value with a space stays one word
    for target, expected in MAKE_TARGETS.items():
        r = subprocess.run(["make", "-n", f"study-{target}", f"paths.data_dir={tmp_path}", spaced, "LAUNCHER=joblib_local",
                            "ARGS=seed=0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        commands = [shlex.split(line) for line in r.stdout.splitlines() if "-m mtl_bench.train" in line]
        assert len(commands) == len(expected), (target, r.stdout)
        for words, (preset, extra) in zip(commands, expected):
            args = words[words.index("mtl_bench.train") + 1:]
            assert args[0] == f"experiment={preset}", (target, args)
            assert f"paths.data_dir={tmp_path}" in args and spaced in args, (target, args)
            assert "hydra/launcher=joblib_local" in args and "seed=0" in args, (target, args)
            assert list(extra) == [a for a in args[1:] if a in extra], (target, args)
    # a plain make variable is not forwarded, and nothing is added without dotted words
    r = subprocess.run(["make", "-n", "study-dibs_nyuv2", "LAUNCHER="], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    lines = [shlex.split(line) for line in r.stdout.splitlines() if "-m mtl_bench.train" in line]
    assert [words[words.index("mtl_bench.train") + 1:] for words in lines] == [
        ["experiment=dibs_nyuv2"], ["experiment=dibs_nyuv2", "combiner=cagrad", "combiner.c=0.4"]]


def test_docs_name_every_paper_preset_and_its_command():
    text = (REPO / "docs" / "paper_protocols.md").read_text(encoding="utf-8")
    for preset in PROTOCOLS:
        assert f"`{preset}`" in text, f"docs/paper_protocols.md does not name `{preset}`"
    for target in MAKE_TARGETS:
        assert f"make study-{target} paths.data_dir=/data" in text, target
