"""Exception types that carry user-facing, one-line messages.

``ConfigError`` and ``DatasetError`` describe bad input: the entry point prints them as a single line
(no traceback) and exits non-zero before training starts.  ``NonFiniteLossError`` stops a run that
diverged and names the step and the task whose loss went NaN/inf.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


class MTLBenchError(Exception):
    """Base class of the errors mtl_bench reports to the user without a traceback."""


class ConfigError(MTLBenchError, ValueError):
    """A configuration value is invalid (wrong choice, out of range, inconsistent with the dataset)."""


class NotApplicableError(ConfigError):
    """A valid method that is not defined for this problem (e.g. Krum or TrimmedMean with too few tasks).  A single
    run ends with the one-line reason (exit code 2); in a sweep the job is recorded as ``not_applicable`` with the
    reason in its summary.json and the sweep goes on, so ``combiner=glob(*)`` covers every method that applies."""


def check_choice(name: str, value: T, choices: Iterable[Any]) -> T:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` ``<name>=<value!r> is invalid; choose one of
    [...]`` — the one message for a wrong config choice.  A bool is not taken for the 1 or 0 it equals unless the
    choices hold bools."""
    choices = list(choices)
    if value not in choices or (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
        raise ConfigError(f"{name}={value!r} is invalid; choose one of {choices}")
    return value


class DatasetError(MTLBenchError, FileNotFoundError):
    """A dataset root is missing or malformed; the message names the file and the expected layout.  Stays one line
    when raised in a DataLoader worker (:func:`worker_message`)."""

    def __init__(self, message: str):
        super().__init__(worker_message(message, type(self)))


def worker_message(message: str, cls: type) -> str:
    """The one-line original of a message that torch built around a DataLoader worker's traceback (it re-raises a
    worker's exception in the main process as ``cls("Caught <cls> in DataLoader worker process N.\nOriginal
    Traceback ...\n<module>.<cls>: <original message>")``), followed by where it was raised; others unchanged."""
    first, _, rest = message.partition("\n")
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if not (first.startswith(f"Caught {cls.__name__} ") and rest.startswith("Original Traceback") and marker in rest):
        return message
    original = rest[rest.rindex(marker) + len(marker):]
    where = first[len(f"Caught {cls.__name__} "):].rstrip(".")
    return f"{' '.join(original.split())} ({where})"


class CheckpointError(MTLBenchError):
    """A checkpoint cannot be used: missing digest, digest mismatch (truncated or modified), or unreadable."""


class StorageError(MTLBenchError, OSError):
    """A run's file could not be written (full disk, quota, permissions); temporary files were removed."""


def storage_error(path: Any, e: OSError) -> StorageError:
    """One line for a failed write: the file, its folder, and "no space left" for a full disk or quota."""
    path = Path(path)
    cause = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return StorageError(f"cannot write {path}: {cause} (folder {path.parent}); earlier files there are intact")


class NonFiniteLossError(MTLBenchError, FloatingPointError):
    """A task loss became NaN or infinite during training."""

    def __init__(self, step: int, epoch: int, task: str, value: float, checkpoint: str | None):
        self.step, self.epoch, self.task, self.value, self.checkpoint = step, epoch, task, value, checkpoint
        kept = f"last good checkpoint kept at {checkpoint}" if checkpoint else "no checkpoint had been written yet"
        super().__init__(
            f"non-finite loss {value} for task '{task}' at global step {step} (epoch {epoch}); "
            f"training stopped, {kept}"
        )


class PreemptedError(MTLBenchError):
    """The run received a stop signal (preemption, Ctrl-C); a resumable checkpoint was written before stopping.
    ``status``: ``interrupted`` for SIGINT, ``preempted`` otherwise."""

    def __init__(self, signal_name: str, step: int, epoch: int, checkpoint: str, exit_code: int, status: str = "preempted"):
        self.signal_name, self.step, self.epoch, self.checkpoint, self.exit_code = signal_name, step, epoch, checkpoint, exit_code
        self.status = status
        super().__init__(
            f"{signal_name} received: {status} after global step {step} (epoch {epoch}) with a resumable checkpoint at "
            f"{checkpoint}; exit code {exit_code} (run the same command again, in the same output folder, to resume)"
        )
