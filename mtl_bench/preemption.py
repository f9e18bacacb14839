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

Handlers can only be installed from the main thread; elsewhere the guard is inactive (logged once).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable, Sequence

from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)


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

    def __init__(self, signals: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2")):
        self.signals = check_signals(signals)
        self.received: signal.Signals | None = None
        self._frame: FrameType | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self.active = False

    @property
    def requested(self) -> str | None:
        """Name of the signal received, or ``None``."""
        return self.received.name if self.received is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self._frame = signal.Signals(signum), frame
            log.warning("%s received: checkpointing after the current step", signal.Signals(signum).name)

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
        (e.g. submitit's requeue); default/ignore dispositions are left alone (we exit ourselves)."""
        if self.received is None:
            return
        previous: Callable | Any = self._previous.get(self.received)
        self.restore()
        if callable(previous):
            name = getattr(previous, "__qualname__", previous)
            log.info("passing %s on to the previously installed handler %s", self.received.name, name)
            previous(int(self.received), self._frame)
