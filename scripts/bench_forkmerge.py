"""ForkMerge's wall time relative to EW with auxiliaries for the same number of epochs.

Runs the real CLI composition (``configs/train.yaml``) for each setup: ``mode=aux combiner=ew`` and
``mode=forkmerge`` (two branches: target only, target + all auxiliaries; greedy search over the default
6-point grid), alternating EW / ForkMerge for ``--rounds`` rounds so that drifts of the machine affect both,
and reports the median wall time of the whole run (training, per-epoch validation, the merge searches, the
final test evaluation).  The paper reports about 3x for two branches; the expected cost per merge period is
B branch trainings + (B + trials) validation passes, against one training + one validation pass for EW.

    python scripts/bench_forkmerge.py                       # CPU: synthetic_aux (MLP) and NYUv2-fixture (CNN)
    python scripts/bench_forkmerge.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import mtl_bench.config.schema  # noqa: F401  (registers the structured-config schemas)
from mtl_bench.data.fixtures import write_fixtures
from mtl_bench.train import build_and_train
from mtl_bench.utils import markdown_table
from bench_common import publish  # noqa: E402  (scripts/ is on sys.path when a script runs)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
METHODS = {"ew": ["mode=aux", "combiner=ew"], "forkmerge": ["mode=forkmerge"]}


def setups(data_dir: Path, device: str, epochs: int) -> dict[str, list[str]]:
    common = ["logger=none", f"trainer.device={device}", f"trainer.epochs={epochs}", "trainer.progress_bar=false"]
    return {
        "synthetic_aux (MLP [32,4], 256 train / 2048 val, batch 32)": [
            *common, "dataset=synthetic_aux", "dataset.n_train=256", "dataset.n_val=2048", "dataset.n_test=256",
            "backbone.hidden=[32,4]", "trainer.batch_size=32", "aux_targets=[target]", "aux_auxiliaries=[harmful]",
        ],
        "NYUv2 fixture (ResNet-18 OS8 + conv heads, 64x80 images, 48 train / 12 val, batch 4)": [
            *common, "dataset=nyuv2", f"paths.data_dir={data_dir}", "dataset.augment=false", "backbone=resnet18_os8",
            "heads=conv", "trainer.batch_size=4", "aux_targets=[seg]", "aux_auxiliaries=[depth,normal]",
        ],
    }


def run(overrides: list[str], out: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer.resume=never"])  # every timed run starts fresh
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return build_and_train(cfg, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.getLogger("mtl_bench").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fixtures(tmp / "data", n_train=60, n_test=4, nyuv2_size=(64, 80), cityscapes_size=(32, 64), celeba_n=4)
        for name, overrides in setups(tmp / "data", args.device, args.epochs).items():
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            branch: list[float] = []
            for r in range(args.rounds):
                for m, extra in METHODS.items():
                    summary = run([*overrides, *extra], tmp / f"{m}_{r}")
                    times[m].append(summary["wall_time_s"])
                    if m == "forkmerge":
                        branch.append(summary["forkmerge"]["branch_train_time_s"] / summary["wall_time_s"])
            ew, fm = statistics.median(times["ew"]), statistics.median(times["forkmerge"])
            rows.append([name, args.epochs, f"{ew:.2f}", f"{fm:.2f}", f"**{fm / ew:.2f}×**", f"{100 * statistics.median(branch):.0f}%"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu
    head = (f"device={device}, torch {torch.__version__}; median of {args.rounds} alternating rounds; ForkMerge = 2 branches "
            f"(target, target + all auxiliaries), merged every epoch, greedy search over 6 grid points")
    table = markdown_table(["setup", "epochs", "EW (s)", "ForkMerge (s)", "ratio", "branch training share of ForkMerge"], rows,
                           "lrrrrr")
    publish("ForkMerge vs EW (bench_forkmerge)", head, table, args.write)


if __name__ == "__main__":
    main()
