"""One process per run folder: an advisory lock on ``<folder>/.mtl_bench.lock``.

Two processes training into the same folder would resume each other's in-flight checkpoints and interleave
``metrics.jsonl``.  :func:`acquire` takes an exclusive ``flock`` on the folder's lock file (the kernel drops it
when the holding process exits, however it exits, so a crashed run never leaves a stale lock; on NFS Linux maps
``flock`` to POSIX locks, which the server arbitrates) and writes the holder's pid, host and command line into it,
so that a second process fails with one line naming the holder.  Locks are re-entrant within one process (the
entry point locks a single run's folder before Hydra writes into it, and ``build_and_train`` locks it again).

:func:`holder` answers "is a live process training here?" without taking the lock for longer than a probe; the
report uses it to tell a running job from a failed one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mtl_bench.errors import MTLBenchError
from mtl_bench.preemption import stop_exit_code, stop_requested

LOCK_NAME = ".mtl_bench.lock"

# folder (resolved) -> [open file object, depth]; the open file holds the flock
_held: dict[str, list[Any]] = {}


class RunFolderBusy(MTLBenchError):
    """Another live process owns the run folder."""


def _key(folder: str | os.PathLike) -> str:
    return str(Path(folder).resolve())


def describe_holder(info: dict[str, Any] | None) -> str:
    """The holder of a lock as pid, host and start time, from its description (:func:`holder`)."""
    if not info:
        return "another process"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid')} on {info.get('host')} (since {when})"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):  # being written, or not ours
        return None
    return info if isinstance(info, dict) else None


def acquire(folder: str | os.PathLike) -> None:
    """Own ``folder`` (created if missing) for the rest of this process, or until as many :func:`release` calls as
    :func:`acquire` calls; :class:`RunFolderBusy` when another process owns it."""
    key = _key(folder)
    if key in _held:
        _held[key][1] += 1
        return
    Path(key).mkdir(parents=True, exist_ok=True)
    path = Path(key) / LOCK_NAME
    f = open(path, "a+")  # never truncates before we own it: the holder's description stays readable
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunFolderBusy(
            f"run folder {key} is in use by {describe_holder(_read(path))}: wait for it to finish, stop it, or choose another "
            f"folder (hydra.run.dir=... / hydra.sweep.dir=...)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}))
    f.flush()
    _held[key] = [f, 1]


def release(folder: str | os.PathLike) -> None:
    """Undo one :func:`acquire`; the last one drops the lock (the lock file stays: removing it would race)."""
    key = _key(folder)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        entry[0].close()  # closing the file drops the flock


@contextmanager
def owned(folder: str | os.PathLike) -> Iterator[None]:
    """``with owned(folder):`` — :func:`acquire` for the block."""
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The lock file's description of the live process that owns ``folder`` (``{}`` if it wrote none), or ``None``
    when no process does (never locked, or its owner has exited)."""
    key = _key(folder)
    if key in _held:
        return _read(Path(key) / LOCK_NAME) or {}
    path = Path(key) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        f = open(path)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path) or {}
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _rank_other_than_zero() -> bool:
    """A torchrun process other than rank 0 (rank 0 alone owns, and writes into, the run folder)."""
    return os.environ.get("RANK", "0") != "0"


def _own_or_exit(folder: str) -> None:
    try:
        acquire(folder)
    except RunFolderBusy as e:  # before Hydra writes .hydra/ or the log file into the other process's folder
        print(f"[mtl_bench][ERROR] - {e}", file=sys.stderr)
        raise SystemExit(2) from None


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core is a dependency; runlock itself does not need it
    Callback = object  # type: ignore[assignment,misc]


class RunFolderLock(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback (``configs/hydra/default.yaml``): own the run folder (single run) or the sweep folder (multirun)
    before Hydra writes anything into it, for the life of the process; a second process gets one line and exit
    code 2.  Each job of a sweep also owns its own folder while it trains (``mtl_bench.train.build_and_train``)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if not _rank_other_than_zero():
            _own_or_exit(str(config.hydra.run.dir))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not _rank_other_than_zero():
            _own_or_exit(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """A sweep whose jobs ran in worker processes (joblib) and that received a stop signal ends with its code."""
        stopped = stop_requested()
        if stopped is not None:
            print(f"[mtl_bench][WARNING] - sweep stopped by {stopped}: unfinished jobs hold a resumable checkpoint or were not "
                  f"started; run the same command with hydra.sweep.dir={config.hydra.sweep.dir} to continue", file=sys.stderr)
            raise SystemExit(stop_exit_code(stopped, int(config.trainer.preemption.exit_code)))
