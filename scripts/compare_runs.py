"""Compare two output trees run by run: a refactoring must not change any result.

``python scripts/compare_runs.py BEFORE AFTER [--allow-new-keys]``

Every run folder (one holding ``summary.json``) under ``BEFORE`` is matched with the folder at the same relative
path under ``AFTER``, the timestamped folder names (``runs/<time>``, ``multiruns/<time>``) aside; a study run twice
into one tree is ambiguous and reported as such.  For each pair the script compares

* ``summary.json``: every value, exactly (floats with ``==``), after two normalisations: the tree's own root and
  every timestamp inside strings are replaced by placeholders (run folders, STL-baseline paths), and
  measurements of time are left out (keys ending in ``_time_s`` or ``_s`` under ``time/``, ``time``,
  ``wall_time_s``), and so are the records of the run's surroundings rather than its results
  (:data:`SURROUNDINGS`: the thread count chosen from the machine's load, the sibling runs of a parallel sweep that
  existed when the job looked for STL baselines; ``--ignore a.b.c`` adds more);
* ``metrics.jsonl``: the same number of records, each equal to its counterpart with the same normalisations.

It prints one line per difference (at most ``--max-lines``) and a final count; exit status 1 when anything
differs or a run is missing on either side.  Keys present only in ``AFTER`` are differences too, unless
``--allow-new-keys`` (a refactoring that adds information but changes none).  Kept for future refactors: run every
``_quick`` study and the default run from the old and the new tree, then compare (docs in DEVELOPERS.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(?:-\d+)?")
TIME_KEY = re.compile(r"(^|/)time/|_time_s$|^time$|^wall_time_s$")
# summary entries that describe the run's surroundings, not its results: the intra-op threads chosen from the load
# of the machine at start (trainer.num_threads unset), and the runs of a parallel sweep's folder that were present,
# and skipped as not STL, when the job collected its Δm baselines (which siblings had finished depends on timing)
SURROUNDINGS = ("threads", "delta_m.source.skipped")


def run_key(root: Path, run_dir: Path) -> str:
    """The run's path relative to its tree with the timestamped folder names replaced by ``<time>``."""
    return TIMESTAMP.sub("<time>", str(run_dir.relative_to(root)))


def find_runs(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Run folders of a tree by key, and the keys that name more than one folder."""
    runs: dict[str, Path] = {}
    clashes = []
    for summary in sorted(root.rglob("summary.json")):
        key = run_key(root, summary.parent)
        if key in runs:
            clashes.append(key)
        runs[key] = summary.parent
    return runs, clashes


def normalise(value: Any, root: str) -> Any:
    """Strings without the tree's root and timestamps; containers recursively, time measurements dropped."""
    if isinstance(value, str):
        return TIMESTAMP.sub("<time>", value.replace(root, "<root>"))
    if isinstance(value, dict):
        return {k: normalise(v, root) for k, v in value.items() if not TIME_KEY.search(str(k))}
    if isinstance(value, list):
        return [normalise(v, root) for v in value]
    return value


def drop(summary: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """``summary`` without the entries at the dotted ``paths`` (where present)."""
    for path in paths:
        *parents, last = path.split(".")
        node: Any = summary
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return summary


def differences(a: Any, b: Any, where: str, allow_new: bool) -> Iterator[str]:
    """One line per leaf that differs between ``a`` (before) and ``b`` (after)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b:
                yield f"{where}.{k}: only before"
            else:
                yield from differences(a[k], b[k], f"{where}.{k}", allow_new)
        if not allow_new:
            yield from (f"{where}.{k}: only after" for k in b if k not in a)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]", allow_new)
    elif not same(a, b):
        yield f"{where}: {short(a)} -> {short(b)}"


def same(a: Any, b: Any) -> bool:
    """Exact equality, NaN equal to NaN (a diverged run logs NaN on both sides)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_records(path: Path) -> list[Any]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_run(key: str, before: Path, after: Path, roots: tuple[str, str], allow_new: bool,
                ignore: tuple[str, ...] = SURROUNDINGS) -> Iterator[str]:
    """Differences of one run: its summary, then its metrics records."""
    sa = drop(normalise(json.loads((before / "summary.json").read_text()), roots[0]), ignore)
    sb = drop(normalise(json.loads((after / "summary.json").read_text()), roots[1]), ignore)
    yield from differences(sa, sb, f"{key}: summary", allow_new)
    ra = normalise(read_records(before / "metrics.jsonl"), roots[0])
    rb = normalise(read_records(after / "metrics.jsonl"), roots[1])
    if len(ra) != len(rb):
        yield f"{key}: metrics.jsonl has {len(ra)} records before, {len(rb)} after"
    for i, (x, y) in enumerate(zip(ra, rb)):
        yield from differences(x, y, f"{key}: metrics.jsonl[{i}]", allow_new)


def compare_trees(before: Path, after: Path, allow_new: bool = False, ignore: tuple[str, ...] = SURROUNDINGS
                  ) -> tuple[list[str], int]:
    """Every difference between the two trees and the number of runs compared."""
    runs_a, clash_a = find_runs(before)
    runs_b, clash_b = find_runs(after)
    lines = [f"{k}: more than one run folder in {root}" for root, ks in ((before, clash_a), (after, clash_b)) for k in ks]
    lines += [f"{k}: only before" for k in runs_a if k not in runs_b]
    lines += [f"{k}: only after" for k in runs_b if k not in runs_a]
    roots = (str(before.resolve()), str(after.resolve()))
    common = [k for k in runs_a if k in runs_b]
    for key in common:
        lines.extend(compare_run(key, runs_a[key], runs_b[key], roots, allow_new, ignore))
    return lines, len(common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--allow-new-keys", action="store_true", help="keys only in AFTER are not differences")
    parser.add_argument("--ignore", action="append", default=[], metavar="A.B.C",
                        help=f"a summary entry to leave out too (always left out: {', '.join(SURROUNDINGS)})")
    parser.add_argument("--max-lines", type=int, default=50)
    args = parser.parse_args(argv)
    for root in (args.before, args.after):
        if not root.is_dir():
            print(f"compare_runs: {root} is not a folder", file=sys.stderr)
            return 2
    lines, n = compare_trees(args.before, args.after, args.allow_new_keys, (*SURROUNDINGS, *args.ignore))
    for line in lines[: args.max_lines]:
        print(line)
    if len(lines) > args.max_lines:
        print(f"... and {len(lines) - args.max_lines} more")
    print(f"{n} run(s) compared, {len(lines)} difference(s)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
