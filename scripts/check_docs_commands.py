#!/usr/bin/env python
"""Run every shell command that README.md and docs/*.md show (``make check-docs``).

**What counts as a command.**  Every line of a fenced ``bash``/``sh``/``shell``/``console`` block (``$ ``-prompted
lines only in ``console``; ``\\`` continuations joined, ``#`` comments dropped); in other non-Python fences, lines
that start like a command (``make``, ``python -m``, ``python scripts/``, ``torchrun``, ``pip install``); and inline
code spans that start that way (``make report``, ``python scripts/bench_data.py --threads 1``).

**Markers** are HTML comments, invisible on GitHub.  Each command either runs as printed or is matched by a marker
that says why not, or how it runs here instead::

    <!-- docs-check: skip needs-data -->                        every command of the next block / paragraph
    <!-- docs-check: skip needs-slurm when "submitit_slurm" -->  ... only those containing submitit_slurm
    <!-- docs-check: short append "seed=0 trainer.epochs=1" when "experiment=dibs_transforms" -->
    <!-- docs-check: short sub "hydra.sweeper.n_trials=30" "hydra.sweeper.n_trials=2" -->
    <!-- docs-check: sub "SWEEP" "outputs/elich_optimizers_quick/multiruns/<stamp>" -->
    <!-- docs-check-all: skip needs-network when "pip install" -->   every matching command of the file

* ``skip REASON``: not run; REASON is one of :data:`REASONS`.
* ``short``: the command is long (a full study grid, a benchmark); the check runs it with shorter settings:
  ``append "ARGS"`` adds Hydra overrides (into ``ARGS="..."`` for ``make``) or script options, ``sub "OLD" "NEW"``
  replaces text.  ``sub`` alone gives a placeholder or an example path its value; the rest runs as printed.
* ``when "TEXT"`` / ``unless "TEXT"``: only commands that contain / do not contain TEXT, matched whole (not
  followed or preceded by a letter, digit, ``_``, ``-``, ``.`` or ``/``: ``make test`` does not match
  ``make test-all``).  A ``sub`` without ``append`` applies only where its OLD text occurs, by the same rule.
  A matching ``skip`` wins; the ``short``/``sub`` rules that match apply in order.
* Scope: a marker on its own line applies to the next fenced block or paragraph; a marker inside a line of text
  to the inline commands that end on that line; ``docs-check-all`` to the whole file (with ``when``, or a pure
  ``sub``).  A
  marker that matches no command is an error.

**How they run.**  In order (README.md, then docs/*.md by name), each in a fresh ``bash -c`` whose working
directory is a temporary sandbox holding links to the repository's ``Makefile``, ``pyproject.toml``, ``.venv``,
``configs``, ``scripts`` and ``tests``: every relative output (``outputs/...``, Hydra run and sweep folders,
caches) lands in the sandbox and later commands find what earlier ones wrote.  The virtualenv's ``bin`` leads
``PATH`` (as after ``source .venv/bin/activate``); ``MTL_BENCH_OUTPUTS``/``MTL_BENCH_ROOT`` and the calling make's
variables are removed.  A path placeholder such as ``outputs/x/multiruns/<stamp>`` becomes the newest matching
folder; any other ``<placeholder>`` or a ``...`` argument needs a marker.  A command identical to one already run
is not run again.  ``make`` commands need an installed virtualenv (``make install``): the check refuses to run
them otherwise, so the sandbox's links never trigger a reinstall.

Prints one line per command (ok / FAILED rc / skipped: reason), the tail of a failed command's log, and exits 0
when every runnable command ran ok, 1 when one failed or a command is neither runnable nor marked, 2 for a bad
marker or a stale virtualenv.  ``--list`` shows the plan without running; ``-k TEXT`` keeps the commands whose
text or ``file:line`` contains TEXT.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
REASONS = {
    "needs-data": "the real NYUv2 / Cityscapes / CelebA under paths.data_dir",
    "needs-slurm": "a SLURM cluster",
    "needs-network": "network access (pip, W&B sync)",
    "needs-gpu": "a CUDA device",
    "needs-torchrun": "several nodes or processes started by torchrun",
    "long": "a full study grid or benchmark (hours); `short` runs it with shorter settings",
    "template": "the form or the name of a command (placeholders, `...`, a bare module name), not one to run",
}
SHELL_LANGS = {"bash", "sh", "shell", "zsh", "console", "shell-session"}
NON_SHELL_LANGS = {"python", "py", "yaml", "yml", "json", "toml", "text", "txt", "csv", "ini", "md", "markdown"}
COMMAND_START = re.compile(r"(make(\s|$)|python3? (-m |scripts/)|torchrun\s|pip install\s|source\s)")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"<!--\s*docs-check(?P<all>-all)?:(?P<body>.*?)-->")
HTML_COMMENT = re.compile(r"<!--.*?-->")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PLACEHOLDER = re.compile(r"<[^<>\s=][^<>=]*>")
PATH_PLACEHOLDER = re.compile(r"(?P<head>[\w./-]*/)<(?P<name>[^<>\s=][^<>=]*)>(?P<tail>[\w./-]*)")
ELLIPSIS = re.compile(r"(?<!\S)\.\.\.(?!\S)")
TOKEN_EDGE = r"\w./-"
SANDBOX_LINKS = ("Makefile", "pyproject.toml", ".venv", "configs", "scripts", "tests")
DROPPED_ENV = ("MTL_BENCH_OUTPUTS", "MTL_BENCH_ROOT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
TAIL_LINES = 15


class MarkerError(ValueError):
    """A docs-check marker that cannot be parsed; the message names the file and line."""


def contains_token(text: str, part: str) -> bool:
    return re.search(token_pattern(part), text) is not None


def token_pattern(part: str) -> str:
    return rf"(?<![{TOKEN_EDGE}]){re.escape(part)}(?![{TOKEN_EDGE}])"


@dataclass
class Rule:
    """One marker: ``skip REASON`` / ``short`` / ``sub``, with optional ``when``, ``append`` and ``sub`` parts."""

    action: str  # skip | short | sub
    origin: str  # file:line of the marker
    reason: str | None = None
    when: str | None = None
    unless: str | None = None
    append: str | None = None
    subs: list[tuple[str, str]] = field(default_factory=list)
    used: bool = False

    def matches(self, text: str) -> bool:
        if self.when is not None and not contains_token(text, self.when):
            return False
        if self.unless is not None and contains_token(text, self.unless):
            return False
        if self.subs and not self.append:  # a pure substitution applies where its text occurs
            return any(contains_token(text, old) for old, _ in self.subs)
        return True

    def apply(self, text: str) -> str:
        for old, new in self.subs:
            text = re.sub(token_pattern(old), lambda _m, new=new: new, text)
        return append_args(text, self.append) if self.append else text


def append_args(text: str, extra: str) -> str:
    """Append Hydra overrides / options; for ``make`` into its ``ARGS`` variable."""
    if not text.startswith("make"):
        return f"{text} {extra}"
    quoted = re.search(r'ARGS="([^"]*)"', text)
    if quoted:
        return f'{text[:quoted.start()]}ARGS="{quoted.group(1)} {extra}"{text[quoted.end():]}'
    bare = re.search(r"(?<!\S)ARGS=(\S+)", text)
    if bare:
        return f'{text[:bare.start()]}ARGS="{bare.group(1)} {extra}"{text[bare.end():]}'
    return f'{text} ARGS="{extra}"'


def parse_marker(body: str, origin: str, file_wide: bool) -> Rule:
    """Parse the text between ``docs-check:`` and ``-->``; one-line :class:`MarkerError` on any mistake."""
    try:
        words = shlex.split(body)
    except ValueError as exc:
        raise MarkerError(f"{origin}: docs-check marker: {exc} in {body.strip()!r}") from None
    if not words or words[0] not in ("skip", "short", "sub"):
        raise MarkerError(f"{origin}: docs-check marker must start with skip, short or sub, got {body.strip()!r}")
    rule = Rule(action=words[0], origin=origin)
    rest = words[1:]
    if rule.action == "skip":
        rule.reason, rest = (rest[0] if rest else None), rest[1:]
        if rule.reason not in REASONS:
            raise MarkerError(f"{origin}: unknown skip reason {rule.reason!r}; known: {', '.join(REASONS)}")
    elif rule.action == "short":
        rule.reason = "long"
    else:
        rest = words  # `sub "OLD" "NEW"` parts start at the first word
    parse_parts(rule, rest, origin)
    check_rule(rule, origin, file_wide)
    return rule


def parse_parts(rule: Rule, words: list[str], origin: str) -> None:
    arity = {"when": 1, "unless": 1, "append": 1, "sub": 2}
    i = 0
    while i < len(words):
        key = words[i]
        if key not in arity or (key in ("append", "sub") and rule.action == "skip"):
            raise MarkerError(f"{origin}: unexpected {key!r} in docs-check marker")
        values = words[i + 1 : i + 1 + arity[key]]
        if len(values) != arity[key] or not all(values[:1]):
            raise MarkerError(f"{origin}: {key!r} needs {arity[key]} quoted value(s) in docs-check marker")
        if key in ("when", "unless"):
            setattr(rule, key, values[0])
        elif key == "append":
            rule.append = values[0]
        else:
            rule.subs.append((values[0], values[1]))
        i += 1 + arity[key]


def check_rule(rule: Rule, origin: str, file_wide: bool) -> None:
    if rule.action == "short" and not (rule.append or rule.subs):
        raise MarkerError(f"{origin}: 'short' needs append \"ARGS\" or sub \"OLD\" \"NEW\" (or use 'skip long')")
    if rule.action == "sub" and rule.append:
        raise MarkerError(f"{origin}: 'append' shortens a command: write 'short append ...'")
    if file_wide and rule.when is None and (rule.append or not rule.subs):
        raise MarkerError(f"{origin}: a docs-check-all marker needs when \"TEXT\" (or be a pure sub)")


@dataclass
class Command:
    source: str  # file:line where the command starts
    text: str  # as printed: continuations joined, comment removed
    rules: list[Rule]


@dataclass
class Plan:
    command: Command
    status: str  # run | skip | error
    detail: str = ""  # skip reason or error
    run_text: str = ""
    short: bool = False


# ---------------------------------------------------------------- extraction


def strip_comment(line: str) -> str:
    """Drop a shell comment: ``#`` at the start of a word, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def block_commands(lines: Sequence[tuple[int, str]], lang: str) -> list[tuple[int, str]]:
    """(line number, command) for the lines of one fenced block."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        line = raw.strip()
        if pending is None:
            line = command_line(line, lang)
            if line is None:
                continue
        code = strip_comment(line)
        cont = code.endswith("\\")
        code = code[:-1].rstrip() if cont else code
        pending = (pending[0], f"{pending[1]} {code}") if pending else (number, code)
        if not cont:
            if pending[1]:
                out.append(pending)
            pending = None
    if pending and pending[1]:
        out.append(pending)
    return out


def command_line(line: str, lang: str) -> str | None:
    """The command on a line that starts one, else None."""
    if lang == "console":
        return line[2:] if line.startswith("$ ") else None
    if lang in SHELL_LANGS:
        return line if line and not line.startswith("#") else None
    return line if COMMAND_START.match(line) else None


def inline_commands(text: str) -> list[tuple[int, int, str]]:
    """(start, end, command) of the inline code spans of ``text`` that start like a command."""
    spans = ((m.start(), m.end(), m.group(1).strip()) for m in INLINE_CODE.finditer(text))
    return [(at, end, " ".join(code.split())) for at, end, code in spans if COMMAND_START.match(code)]


def markers_in(line: str, origin: str) -> tuple[list[Rule], list[Rule]]:
    """(block/line rules, file-wide rules) of the markers on one line."""
    local: list[Rule] = []
    file_wide: list[Rule] = []
    for m in MARKER.finditer(line):
        rule = parse_marker(m.group("body"), origin, bool(m.group("all")))
        (file_wide if m.group("all") else local).append(rule)
    return local, file_wide


def extract(text: str, name: str) -> list[Command]:
    """Every command of one Markdown file, with the rules that apply to it (see the module docstring)."""
    return _Extractor(name).run(text.splitlines())


class _Extractor:
    """One pass over a file: fenced blocks, paragraphs (inline spans may wrap lines) and the markers before them."""

    def __init__(self, name: str):
        self.name = name
        self.commands: list[Command] = []
        self.file_rules: list[Rule] = []
        self.pending: list[Rule] = []  # markers on their own lines, for the next block or paragraph
        self.paragraph: list[tuple[int, str, list[Rule]]] = []  # (line number, text, that line's markers)

    def run(self, lines: list[str]) -> list[Command]:
        numbered = list(enumerate(lines, start=1))
        i = 0
        while i < len(numbered):
            fence = FENCE.match(numbered[i][1])
            if fence:
                self.end_paragraph()
                i = self.fenced(numbered, i, fence)
                continue
            self.text_line(*numbered[i])
            i += 1
        self.end_paragraph()
        for cmd in self.commands:
            cmd.rules = self.file_rules + cmd.rules
        return self.commands

    def fenced(self, numbered: list[tuple[int, str]], start: int, fence: re.Match) -> int:
        mark, lang = fence.group("fence"), fence.group("info").lower()
        closing = re.compile(rf"^\s*{re.escape(mark[0])}{{{len(mark)},}}\s*$")
        end = start + 1
        while end < len(numbered) and not closing.match(numbered[end][1]):
            end += 1
        rules, self.pending = self.pending, []
        if lang not in NON_SHELL_LANGS:
            for number, cmd in block_commands(numbered[start + 1 : end], lang):
                self.commands.append(Command(f"{self.name}:{number}", " ".join(cmd.split()), list(rules)))
        return end + 1

    def text_line(self, number: int, line: str) -> None:
        local, file_wide = markers_in(line, f"{self.name}:{number}")
        self.file_rules += file_wide
        rest = HTML_COMMENT.sub("", line).strip()
        if rest:
            self.paragraph.append((number, rest, local))
        elif local:  # a marker on its own line: for what follows
            self.end_paragraph()
            self.pending += local
        elif not file_wide:  # a blank line
            self.end_paragraph()

    def end_paragraph(self) -> None:
        if not self.paragraph:
            return
        rules, self.pending = self.pending, []
        text, starts = "", []
        for _number, line, _ in self.paragraph:
            starts.append(len(text))
            text += line + " "
        for at, end, cmd in inline_commands(text):
            number = self.paragraph[row_of(starts, at)][0]
            local = self.paragraph[row_of(starts, end - 1)][2]  # markers follow the span: its last line's
            self.commands.append(Command(f"{self.name}:{number}", cmd, rules + local))
        self.paragraph = []


def row_of(starts: Sequence[int], offset: int) -> int:
    return max(i for i, s in enumerate(starts) if s <= offset)


def doc_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md"] + sorted((repo / "docs").glob("*.md"))


def extract_all(repo: Path = REPO) -> list[Command]:
    commands: list[Command] = []
    for path in doc_files(repo):
        commands += extract(path.read_text(encoding="utf-8"), str(path.relative_to(repo)))
    return commands


# ---------------------------------------------------------------- planning


def not_runnable(text: str) -> str | None:
    """Why ``text`` cannot run as it stands, or None.  Path placeholders are resolved when the command runs."""
    if ELLIPSIS.search(text):
        return "elided arguments '...'"
    bare = [p for p in PLACEHOLDER.findall(PATH_PLACEHOLDER.sub("", text))]
    if bare:
        return f"placeholder {bare[0]} has no value"
    return None


def plan(cmd: Command) -> Plan:
    rules = [r for r in cmd.rules if r.matches(cmd.text)]
    for r in rules:
        r.used = True
    skip = next((r for r in rules if r.action == "skip"), None)
    if skip is not None:
        return Plan(cmd, "skip", skip.reason or "")
    text = cmd.text
    for r in rules:
        text = r.apply(text)
    problem = not_runnable(text)
    if problem:
        return Plan(cmd, "error", f"not runnable and not marked: {problem}", text)
    return Plan(cmd, "run", "", text, short=any(r.action == "short" for r in rules))


def plan_all(commands: Sequence[Command]) -> tuple[list[Plan], list[str]]:
    """Plans in order, and one error line per marker that matched no command."""
    plans = [plan(c) for c in commands]
    rules = {id(r): r for c in commands for r in c.rules}.values()
    unused = [f"{r.origin}: docs-check marker matches no command" for r in rules if not r.used]
    return plans, sorted(set(unused))


def selected(plans: Iterable[Plan], keys: Sequence[str]) -> list[Plan]:
    if not keys:
        return list(plans)
    return [p for p in plans if any(k in p.command.text or k in p.command.source for k in keys)]


# ---------------------------------------------------------------- running


def make_sandbox(root: Path) -> Path:
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in SANDBOX_LINKS:
        target = venv_dir() if name == ".venv" else REPO / name
        if target.exists() and not (work / name).exists():
            (work / name).symlink_to(target)
    return work


def venv_dir() -> Path:
    return REPO / ".venv" if (REPO / ".venv").is_dir() else Path(sys.prefix)


def command_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["PATH"] = f"{venv_dir() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_dir())
    return env


STALE_VENV = "the virtualenv is missing or older than Makefile/pyproject.toml: run `make install` first"


def install_is_stale() -> bool:
    """True when ``make install`` would reinstall (a make command in the sandbox must never do that: the
    editable install would then point into the sandbox)."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return subprocess.run(["make", "-q", "install"], cwd=REPO, env=env, capture_output=True).returncode != 0


def check_installed(plans: Sequence[Plan]) -> str | None:
    """An error line when a make command would reinstall the virtualenv (stale or missing .venv/.installed)."""
    if any(p.status == "run" and p.run_text.startswith("make") for p in plans) and install_is_stale():
        return STALE_VENV
    return None


def resolve_paths(text: str, cwd: Path) -> tuple[str, str | None]:
    """Replace each ``dir/<placeholder>`` by the newest match under ``cwd``; (text, error)."""
    for m in PATH_PLACEHOLDER.finditer(text):
        pattern = f"{m.group('head')}*{m.group('tail')}"
        found = sorted(cwd.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            return text, f"<{m.group('name')}>: nothing matches {pattern} (did the command that writes it run?)"
        text = text.replace(m.group(0), str(found[-1].relative_to(cwd)), 1)
    return text, None


def run_one(text: str, cwd: Path, log: Path, timeout: float) -> int:
    """Run ``text`` in bash; the whole process group is killed after ``timeout`` s (returns 124)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=command_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124


def tail(log: Path, n: int = TAIL_LINES) -> list[str]:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line[:300] for line in lines[-n:]]


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    repeated: int = 0
    failures: list[str] = field(default_factory=list)


def line_for(index: int, p: Plan, status: str, text: str | None = None) -> str:
    return f"[{index:2d}] {p.command.source:<24} {status:<30} {text if text is not None else p.command.text}"


def execute(plans: Sequence[Plan], work: Path, timeout: float) -> Outcome:
    outcome = Outcome()
    done: dict[str, tuple[int, int]] = {}  # run text -> (index, rc)
    (work / "logs").mkdir(exist_ok=True)
    for index, p in enumerate(plans, start=1):
        if p.status != "run":
            report_static(index, p, outcome)
            continue
        text, problem = resolve_paths(p.run_text, work)
        if text.startswith("make") and install_is_stale():  # Makefile edited while the check runs
            problem = STALE_VENV
        if problem:
            outcome.errors += 1
            outcome.failures.append(f"{p.command.source}: {problem}")
            print(line_for(index, p, "NOT RUNNABLE", f"{p.command.text}  ({problem})"), flush=True)
            continue
        if text in done:
            first, rc = done[text]
            outcome.repeated += 1
            print(line_for(index, p, f"same command as [{first}]: rc {rc}"), flush=True)
            continue
        rc = run_and_report(index, p, text, work, timeout, outcome)
        done[text] = (index, rc)
    return outcome


def report_static(index: int, p: Plan, outcome: Outcome) -> None:
    if p.status == "skip":
        outcome.skipped += 1
        print(line_for(index, p, f"skipped: {p.detail}"), flush=True)
    else:
        outcome.errors += 1
        outcome.failures.append(f"{p.command.source}: {p.detail}")
        print(line_for(index, p, "NOT RUNNABLE", f"{p.command.text}  ({p.detail})"), flush=True)


def run_and_report(index: int, p: Plan, text: str, work: Path, timeout: float, outcome: Outcome) -> int:
    log = work / "logs" / f"{index:02d}.log"
    start = time.monotonic()
    rc = run_one(text, work, log, timeout)
    took = f"{time.monotonic() - start:6.1f} s"
    label = "ok" + (" (short)" if p.short else "") if rc == 0 else f"FAILED rc {rc}" + (" (timeout)" if rc == 124 else "")
    print(line_for(index, p, f"{label:<18} {took}", text), flush=True)
    if rc == 0:
        outcome.ok += 1
    else:
        outcome.failed += 1
        outcome.failures.append(f"{p.command.source}: rc {rc}: {text}")
        for line in tail(log):
            print(f"       | {line}", flush=True)
    return rc


def list_plans(plans: Sequence[Plan]) -> int:
    errors = 0
    for index, p in enumerate(plans, start=1):
        if p.status == "run":
            label = "run (short)" if p.short else "run"
            print(line_for(index, p, label, p.run_text))
        else:
            errors += p.status == "error"
            print(line_for(index, p, f"skip: {p.detail}" if p.status == "skip" else "NOT RUNNABLE",
                           p.command.text if p.status == "skip" else f"{p.command.text}  ({p.detail})"))
    return 1 if errors else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="show every command and what the check would do; run nothing")
    ap.add_argument("-k", action="append", default=[], metavar="TEXT",
                    help="only commands whose text or file:line contains TEXT (repeatable)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per command (default 1200)")
    ap.add_argument("--workdir", type=Path, default=None, help="sandbox folder, kept afterwards (default: a temporary one)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        commands = extract_all()
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plans, unused = plan_all(commands)
    for line in unused:
        print(f"error: {line}", file=sys.stderr)
    plans = selected(plans, args.k)
    if args.list:
        return max(list_plans(plans), 1 if unused else 0)
    stale = check_installed(plans)
    if stale:
        print(f"error: {stale}", file=sys.stderr)
        return 2
    return run_all(plans, args, bool(unused))


def run_all(plans: Sequence[Plan], args: argparse.Namespace, marker_errors: bool) -> int:
    start = time.monotonic()
    if args.workdir is not None:
        outcome = execute(plans, make_sandbox(args.workdir.resolve()), args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="mtl_bench_docs_") as tmp:
            outcome = execute(plans, make_sandbox(Path(tmp)), args.timeout)
    total = time.monotonic() - start
    print(f"\n{outcome.ok} ran ok, {outcome.failed} failed, {outcome.skipped} skipped, "
          f"{outcome.errors} not runnable, {outcome.repeated} identical to an earlier command; {total:.0f} s")
    for line in outcome.failures:
        print(f"  {line}")
    return 1 if outcome.failed or outcome.errors or marker_errors else 0


if __name__ == "__main__":
    sys.exit(main())
