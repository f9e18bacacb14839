"""Write tiny NYUv2 / Cityscapes (mtan ``.npy`` layout) and CelebA (official release layout) datasets.

    python scripts/make_fixture_datasets.py --root /tmp/mtl_fixtures
    python scripts/make_fixture_datasets.py --root DIR --n-train 8 --n-test 4 --nyuv2-size 72 96 --celeba-n 30

Writes ``DIR/nyuv2``, ``DIR/cityscapes`` and ``DIR/celeba`` (read with ``CelebADataset(root=DIR/celeba)``);
see :mod:`mtl_bench.data.fixtures` for the content.  Defaults: the real resolutions, few samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl_bench.data.fixtures import write_fixtures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="output folder")
    ap.add_argument("--n-train", type=int, default=4, help="samples in train/ (NYUv2, Cityscapes)")
    ap.add_argument("--n-test", type=int, default=2, help="samples in val/, the official test folder")
    ap.add_argument("--nyuv2-size", type=int, nargs=2, default=(288, 384), metavar=("H", "W"))
    ap.add_argument("--cityscapes-size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    ap.add_argument("--celeba-n", type=int, default=12, help="CelebA images (60/20/20 %% train/val/test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of the .npy arrays")
    args = ap.parse_args()
    roots = write_fixtures(
        args.root, args.n_train, args.n_test, args.nyuv2_size, args.cityscapes_size, args.celeba_n, args.seed, args.dtype
    )
    for name, path in roots.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
