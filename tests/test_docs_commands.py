"""scripts/check_docs_commands.py: command extraction, docs-check markers, and every documented command marked.

Parsing only (no command runs); the check itself is ``make check-docs``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs_commands", REPO / "scripts" / "check_docs_commands.py")
cdc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cdc  # dataclasses resolve their module by name
_spec.loader.exec_module(cdc)


def commands(md: str) -> list[str]:
    return [c.text for c in cdc.extract(md, "x.md")]


def plans(md: str) -> list[tuple[str, str, str]]:
    found, unused = cdc.plan_all(cdc.extract(md, "x.md"))
    assert unused == []
    return [(p.status, p.detail, p.run_text) for p in found]


# ---------------------------------------------------------------- the repository's documents


def test_readme_commands_are_found_including_multi_line_ones():
    found = {c.text: c for c in cdc.extract((REPO / "README.md").read_text(encoding="utf-8"), "README.md")}
    assert "make train" in found and "make test" in found
    assert "python -m mtl_bench.train -m mode=stl mode.task=t0,t1" in found  # trailing comment dropped
    joined = ("python -m mtl_bench.train experiment=nyuv2_deeplab 'delta_m.stl_runs=[outputs/nyuv2_deeplab/"
              "multiruns/<stamp>]' trainer.selection.metric=val/delta_m")
    assert joined in found  # the `\` continuation is one command
    assert "make report" in found  # an inline command


def test_readme_example_is_not_the_diverging_lr():
    texts = [c.text for c in cdc.extract((REPO / "README.md").read_text(encoding="utf-8"), "README.md")]
    sgd = [t for t in texts if "optimizer=sgd_momentum" in t and t.startswith("make train")]
    assert sgd and all("optimizer.lr=0.05" not in t for t in sgd)


def test_every_documented_command_runs_or_carries_a_known_skip_reason():
    found, unused = cdc.plan_all(cdc.extract_all(REPO))
    assert unused == []
    problems = [f"{p.command.source}: {p.detail}" for p in found if p.status == "error"]
    assert problems == []
    assert {p.detail for p in found if p.status == "skip"} <= set(cdc.REASONS)
    assert sum(p.status == "run" for p in found) >= 30  # most of what the docs show does run


def test_sandbox_links_exist_in_the_repository():
    for name in cdc.SANDBOX_LINKS:
        if name != ".venv":
            assert (REPO / name).exists(), name


# ---------------------------------------------------------------- extraction


def test_fenced_shell_blocks_join_continuations_and_drop_comments():
    md = """
```bash
# a comment line
make train   # trailing comment
python -m mtl_bench.train a=1 \\
    b=2   # after a continuation
echo "# not a comment" x#y
```
"""
    assert commands(md) == ["make train", "python -m mtl_bench.train a=1 b=2", 'echo "# not a comment" x#y']


def test_console_blocks_take_prompted_lines_only_and_python_blocks_nothing():
    md = """
```console
$ make report
output line
```

```python
make = 1
```

```
make quick-studies
not a command
```
"""
    assert commands(md) == ["make report", "make quick-studies"]


def test_indented_fence_inside_a_list_item():
    md = "- item:\n\n  ```bash\n  python -m mtl_bench.train x=1\n  ```\n"
    assert commands(md) == ["python -m mtl_bench.train x=1"]


def test_inline_commands_including_a_span_wrapped_over_two_lines():
    md = "Run `make report` or `python -m mtl_bench.train\nexperiment=x` but not `trainer.epochs=1` or `make`.\n"
    found = cdc.extract(md, "x.md")
    assert [c.text for c in found] == ["make report", "python -m mtl_bench.train experiment=x", "make"]
    assert [c.source for c in found] == ["x.md:1", "x.md:1", "x.md:2"]


def test_html_comments_are_not_commands():
    assert commands("<!-- see `make check-docs` -->\ntext\n") == []


# ---------------------------------------------------------------- markers


def test_block_marker_applies_to_the_next_block_only():
    md = """<!-- docs-check: skip needs-data -->

```bash
python -m mtl_bench.train dataset=nyuv2
```

```bash
python -m mtl_bench.train
```
"""
    assert plans(md) == [("skip", "needs-data", ""), ("run", "", "python -m mtl_bench.train")]


def test_when_and_unless_select_commands_by_whole_tokens():
    md = """<!-- docs-check: skip long when "make test" -->
<!-- docs-check: skip needs-slurm when "submitit_slurm" unless "--cfg" -->
```bash
make test
make test-all
python -m mtl_bench.train hydra/launcher=submitit_slurm
python -m mtl_bench.train hydra/launcher=submitit_slurm --cfg hydra
```
"""
    assert [p[:2] for p in plans(md)] == [("skip", "long"), ("run", ""), ("skip", "needs-slurm"), ("run", "")]


def test_short_append_goes_into_make_args_and_after_python_overrides():
    md = """<!-- docs-check: short append "trainer.epochs=1" -->
```bash
make study-x ARGS="seed=0"
make study-x ARGS=seed=0
make quick-studies
python -m mtl_bench.train experiment=x
```
"""
    assert [p[2] for p in plans(md)] == [
        'make study-x ARGS="seed=0 trainer.epochs=1"',
        'make study-x ARGS="seed=0 trainer.epochs=1"',
        'make quick-studies ARGS="trainer.epochs=1"',
        "python -m mtl_bench.train experiment=x trainer.epochs=1",
    ]


def test_sub_applies_only_where_its_text_occurs_and_fills_placeholders():
    md = """<!-- docs-check: sub "SWEEP" "outputs/s/multiruns/<stamp>" -->
<!-- docs-check: sub "/tmp/out" "tmp/out" -->
```bash
python -m mtl_bench.report SWEEP --out /tmp/out
python -m mtl_bench.report SWEEPS
```
"""
    got = plans(md)
    assert got[0] == ("run", "", "python -m mtl_bench.report outputs/s/multiruns/<stamp> --out tmp/out")
    assert got[1][0] == "run" and got[1][2] == "python -m mtl_bench.report SWEEPS"


def test_inline_marker_applies_to_the_span_it_follows_on_its_line():
    md = ("Use `make sync-wandb` <!-- docs-check: skip needs-network --> later.\n"
          "And `make report` here.\n")
    assert [p[:2] for p in plans(md)] == [("skip", "needs-network"), ("run", "")]


def test_file_wide_marker_applies_anywhere_in_the_file():
    md = "Intro `pip install -e .`.\n\n<!-- docs-check-all: skip needs-network when \"pip install\" -->\n\n" \
         "Later `pip install x` and `make train`.\n"
    assert [p[:2] for p in plans(md)] == [("skip", "needs-network"), ("skip", "needs-network"), ("run", "")]


def test_unmarked_placeholders_and_ellipses_are_not_runnable():
    md = """```bash
python -m mtl_bench.train experiment=<study>
python -m mtl_bench.train mode=transfer ...
python -m mtl_bench.report outputs/x/multiruns/<stamp>
```
"""
    got = plans(md)
    assert got[0][0] == "error" and "<study>" in got[0][1]
    assert got[1][0] == "error" and "..." in got[1][1]
    assert got[2][0] == "run"  # a path placeholder is resolved when the command runs


def test_marker_matching_nothing_is_reported():
    md = '<!-- docs-check: skip needs-gpu when "cuda" -->\n```bash\nmake train\n```\n'
    _, unused = cdc.plan_all(cdc.extract(md, "x.md"))
    assert unused == ["x.md:1: docs-check marker matches no command"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("skip needs-dat", "unknown skip reason 'needs-dat'"),
        ("skip", "unknown skip reason None"),
        ("run now", "must start with skip, short or sub"),
        ("short when \"x\"", "'short' needs append"),
        ("skip long append \"x\"", "unexpected 'append'"),
        ("sub \"a\"", "'sub' needs 2 quoted value(s)"),
        ("skip long when \"x", "No closing quotation"),
        ("sub \"a\" \"b\" append \"c\"", "write 'short append"),
    ],
)
def test_bad_markers_raise_one_line_naming_the_place(body, message):
    md = f"<!-- docs-check: {body} -->\n```bash\nmake train\n```\n"
    with pytest.raises(cdc.MarkerError) as err:
        cdc.extract(md, "x.md")
    assert str(err.value).startswith("x.md:1: ") and message in str(err.value) and "\n" not in str(err.value)


def test_file_wide_marker_needs_when_unless_a_pure_sub():
    with pytest.raises(cdc.MarkerError, match="needs when"):
        cdc.extract("<!-- docs-check-all: skip long -->\n", "x.md")
    rules = cdc.extract('<!-- docs-check-all: sub "a" "b" -->\n`make a`\n', "x.md")[0].rules
    assert rules[0].subs == [("a", "b")]


# ---------------------------------------------------------------- run-time helpers


def test_path_placeholder_resolves_to_the_newest_match(tmp_path):
    old, new = tmp_path / "outputs/s/multiruns/a", tmp_path / "outputs/s/multiruns/b"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    os.utime(old, (1, 1))
    text, error = cdc.resolve_paths("make report DIRS=outputs/s/multiruns/<stamp>", tmp_path)
    assert (text, error) == ("make report DIRS=outputs/s/multiruns/b", None)
    _, error = cdc.resolve_paths("x outputs/none/<stamp>", tmp_path)
    assert error is not None and "outputs/none/*" in error


def test_selection_by_text_or_place():
    found, _ = cdc.plan_all(cdc.extract("```bash\nmake train\nmake report\n```\n", "x.md"))
    assert [p.command.text for p in cdc.selected(found, ["report"])] == ["make report"]
    assert [p.command.text for p in cdc.selected(found, ["x.md:2"])] == ["make train"]
    assert len(cdc.selected(found, [])) == 2
