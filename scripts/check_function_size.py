#!/usr/bin/env python
"""Report every function longer than 60 lines (``make lint``).

    python scripts/check_function_size.py [PATH]      # PATH: a folder (walked for *.py) or a file; default mtl_bench

A function's length runs from its ``def`` line to its last line (decorators excluded, docstring included); nested
functions and methods are measured on their own too.  Each one over the limit prints one line,
``path:line name N lines (limit 60)``, and the exit status is 1 if any.  A function is exempt when its ``def``
line, or the line directly above it, carries a comment ``# size: <reason>`` with a non-empty reason.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from pathlib import Path
from typing import Iterator

LIMIT = 60
_EXEMPT = re.compile(r"#\s*size:\s*\S")


def _exempt_lines(source: str) -> set[int]:
    """Line numbers that carry a ``# size: <reason>`` comment (comments only, not strings)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT and _EXEMPT.match(tok.string)}


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method of ``tree`` with its dotted name (``Class.method``, ``outer.inner``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, name + ".")
        else:
            yield from _functions(node, prefix)


def check_file(path: Path) -> list[str]:
    """The report lines of one file's functions over the limit."""
    source = path.read_text(encoding="utf-8")
    exempt = _exempt_lines(source)
    problems = []
    for name, node in _functions(ast.parse(source, filename=str(path))):
        length = node.end_lineno - node.lineno + 1
        if length > LIMIT and node.lineno not in exempt and node.lineno - 1 not in exempt:
            problems.append(f"{path}:{node.lineno} {name} {length} lines (limit {LIMIT})")
    return problems


def python_files(root: Path) -> list[Path]:
    """``root`` itself if it is a file, else every ``*.py`` under it, sorted."""
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="mtl_bench", type=Path, help="folder or file (default mtl_bench)")
    args = parser.parse_args(argv)
    problems = [line for path in python_files(args.path) for line in check_file(path)]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
