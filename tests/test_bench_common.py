"""The Markdown layout every benchmark script writes into docs/benchmarks.md."""

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench_common import markdown_table  # noqa: E402


def test_markdown_table_layout_alignment_and_empty_cells():
    table = markdown_table(["K", "optimizer", "× plain"], [[2, "Adam", ""], [3, "AdaTask-Adam", "1.16 (vs Adam)"]], "rlr")
    assert table == ("| K | optimizer | × plain |\n"
                     "|---:|---|---:|\n"
                     "| 2 | Adam |  |\n"
                     "| 3 | AdaTask-Adam | 1.16 (vs Adam) |")


def test_markdown_table_refuses_a_wrong_alignment_or_row_length():
    with pytest.raises(ValueError, match="one of 'l'/'r' per column"):
        markdown_table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="one of 'l'/'r' per column"):
        markdown_table(["a", "b"], [], "lc")
    with pytest.raises(ValueError, match="a row has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["x"]], "lr")
