"""``python -m mtl_bench.report``: see :mod:`mtl_bench.report.cli`."""

import sys

from mtl_bench.report.cli import main

sys.exit(main())
