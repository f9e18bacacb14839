"""Preemption handling: a signal turns into "checkpoint after this step, then exit for requeue".

Clusters announce the end of a job with a signal: SLURM sends SIGTERM on preemption (and before the
``KillWait`` SIGKILL) and, with ``--signal=USR1@<s>``, SIGUSR1 some seconds before the time limit; submitit
asks SLURM for SIGUSR2 (``signal_delay_s`` before the limit) and installs its own requeue handler for it.
:class:`PreemptionGuard` installs handlers for the configured signals that only record the signal; the trainer
polls :attr:`PreemptionGuard.requested` after every optimizer step, writes a resumable checkpoint (including
the data-loader position) and raises :class:`~mtl_bench.errors.PreemptedError`, which the entry point turns
into the requeue exit code. A Python handler that was installed before ours (submitit's USR2 handler, which
resubmits the Hydra job into the same output folder) is called afterwards through
:meth:`PreemptionGuard.chain`, once the checkpoint is on disk.

**Stopping a process, not only a job.**  The first stop signal a process receives is also remembered for the whole
process (:func:`stop_requested`): the command-line entry point installs :func:`install_process_handlers` for
SIGINT and SIGTERM, so a signal that arrives between the jobs of a sweep (or while one is being set up) is not
lost, and no further job of the sweep starts (``mtl_bench.train.main``).  SIGINT (Ctrl-C) stops with status
``interrupted`` (exit code 130), the other signals with ``preempted`` (``trainer.preemption.exit_code``).  A second
SIGINT aborts at once (``KeyboardInterrupt``; checkpoint writes are atomic, so the last checkpoint stays whole).

Handlers can only be installed from the main thread; elsewhere the guard is inactive (logged once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Sequence

from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)

INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_process_stop: list[signal.Signals] = []  # the first stop signal this process received (at most one entry)
_entry_process: list[int] = []  # pid of the process whose command line started the run or sweep (set by the entry point)
_recording: list[bool] = [False]  # whether this process remembers stop signals beyond a guard (install_process_handlers)


def stop_requested() -> str | None:
    """Name of the first stop signal this process received (by a guard or the process handlers), or ``None``."""
    return _process_stop[0].name if _process_stop else None


def clear_stop() -> None:
    """Forget a received stop signal (tests; a process that deliberately carries on)."""
    _process_stop.clear()


def status_for(signal_name: str) -> str:
    """``interrupted`` for Ctrl-C (SIGINT), ``preempted`` for the cluster's signals."""
    return "interrupted" if signal_name == "SIGINT" else "preempted"


def _record(signum: int) -> bool:
    """Remember ``signum`` as this process's stop signal (where :func:`install_process_handlers` ran: elsewhere — a
    notebook, a test — a signal stops the running fit only); False when one had already been received."""
    if not _recording[0]:
        return True
    if _process_stop:
        if signum == signal.SIGINT:  # Ctrl-C twice: abort now
            raise KeyboardInterrupt
        return False
    _process_stop.append(signal.Signals(signum))
    return True


def _again(signum: int) -> str:
    return " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""


def _process_handler(signum: int, frame: FrameType | None) -> None:
    if _record(signum):
        log.warning("%s received: the current job stops at its next checkpoint and no further job starts%s",
                    signal.Signals(signum).name, _again(signum))


def in_entry_process() -> bool:
    """True in the process the command line started (its jobs run in it under the basic launcher); False in a
    launcher's worker process (joblib) and wherever the entry point did not run (tests, notebooks)."""
    return os.getpid() in _entry_process


def stop_exit_code(signal_name: str, preempted_code: int) -> int:
    """130 for Ctrl-C (SIGINT), ``preempted_code`` (``trainer.preemption.exit_code``) for the other stop signals."""
    return INTERRUPT_EXIT_CODE if signal_name == "SIGINT" else preempted_code


def install_process_handlers(signals: Sequence[str] = ("SIGINT", "SIGTERM"), entry: bool = False) -> None:
    """Record (instead of dying on) the stop signals for the whole process: the command-line entry point calls this
    (``entry=True``) before Hydra runs its jobs, a launcher's worker process when its first job starts.  No-op
    outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if entry:
        _entry_process[:] = [os.getpid()]
    _recording[0] = True
    for sig in check_signals(signals):
        signal.signal(sig, _process_handler)


def check_signals(names: Sequence[str]) -> list[signal.Signals]:
    """The signals named in ``trainer.preemption.signals`` (an unknown name lists the valid ones)."""
    valid = sorted(s.name for s in signal.Signals if s.name not in ("SIGKILL", "SIGSTOP"))
    out = []
    for name in names:
        if name not in valid:
            raise ConfigError(f"trainer.preemption.signals: '{name}' is not a catchable signal here; choose from {valid}")
        out.append(signal.Signals[name])
    return out


class PreemptionGuard:
    """Context manager: record the first configured signal received while active."""

    def __init__(self, signals: Sequence[str] = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")):
        self.signals = check_signals(signals)
        self.received: signal.Signals | None = None
        self._frame: FrameType | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self.active = False

    @property
    def requested(self) -> str | None:
        """Name of the signal received while active — or before, by the process (e.g. during the job's set-up) — or
        ``None``."""
        return self.received.name if self.received is not None else stop_requested()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:  # Ctrl-C twice: abort now
            raise KeyboardInterrupt
        first = _record(signum)
        if self.received is None:
            self.received, self._frame = signal.Signals(signum), frame
            if first:
                log.warning("%s received: checkpointing after the current step%s", signal.Signals(signum).name, _again(signum))

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            log.info("preemption signals are not handled: training runs outside the main thread")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        if not self.active:
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self.active = False

    def chain(self) -> None:
        """Hand the signal to the handler that was installed before ours, if that is a Python function
        (e.g. submitit's requeue); default/ignore dispositions, Python's KeyboardInterrupt handler and our own process
        handler are left alone (we exit ourselves)."""
        if self.received is None:
            return
        previous: Callable | Any = self._previous.get(self.received)
        self.restore()
        if callable(previous) and previous not in (_process_handler, signal.default_int_handler):
            name = getattr(previous, "__qualname__", previous)
            log.info("passing %s on to the previously installed handler %s", self.received.name, name)
            previous(int(self.received), self._frame)
