"""The one Markdown table layout: the report's tables and the benchmark scripts' docs/benchmarks.md sections."""

import pytest

from mtl_bench.utils import markdown_table


def test_markdown_table_layout_alignment_and_empty_cells():
    table = markdown_table(["K", "optimizer", "× plain"], [[2, "Adam", ""], [3, "AdaTask-Adam", "1.16 (vs Adam)"]], "rlr")
    assert table == ("| K | optimizer | × plain |\n"
                     "|---:|---|---:|\n"
                     "| 2 | Adam |  |\n"
                     "| 3 | AdaTask-Adam | 1.16 (vs Adam) |")


def test_markdown_table_defaults_to_left_and_escapes_pipes_and_newlines():
    assert markdown_table(["a|b", "c"], [["x\ny", 1.5]]) == "| a\\|b | c |\n|---|---|\n| x y | 1.5 |"


def test_markdown_table_refuses_a_wrong_alignment_or_row_length():
    with pytest.raises(ValueError, match="one of 'l'/'r' per column"):
        markdown_table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="one of 'l'/'r' per column"):
        markdown_table(["a", "b"], [], "lc")
    with pytest.raises(ValueError, match="a row has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["x"]], "lr")
