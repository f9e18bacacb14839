"""``GridSweeper``: Hydra's basic grid sweeper, checking each value of the grid once instead of every job.

Hydra's :class:`~hydra._internal.core_plugins.basic_sweeper.BasicSweeper` composes the config of every job twice:
once to check that the batch is legal, before launching it, and again when the launcher runs the job.  The check
costs as much as the job's own composition, about 0.5-2 s on 2 CPU cores for a study preset, which is more than
training the small models of a quick study.  A study grid's jobs differ only in the values of the swept keys, so
composing one job for every (key, value) pair covers what can go wrong in a value (an unknown config group option,
a type error, a bad interpolation): with a grid of 42 arms x 2 datasets x 3 seeds that is 47 compositions rather
than 252.  They are all checked before the first job starts (Hydra's basic sweeper checks one batch at a time, so
a bad value in a later batch surfaced only when that batch came).  A combination of values that is illegal only
together still fails, when its job is composed, with Hydra's own error.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


def jobs_with_new_values(jobs: Iterable[Sequence[str]]) -> list[Sequence[str]]:
    """The jobs, in order, that are the first to use one of their ``key=value`` overrides."""
    seen: set[str] = set()
    chosen = []
    for job in jobs:
        new = [o for o in job if o not in seen]
        if new:
            chosen.append(job)
            seen.update(new)
    return chosen


class GridSweeper(BasicSweeper):
    """:class:`BasicSweeper` whose legality check composes one job per swept value, all before the first launch."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if self.batch_index > 1:  # every batch was covered when the first one came (get_job_batch counts from 1)
            return
        every_job = [job for each in (self.overrides or [batch]) for job in each]
        super().validate_batch_is_legal(jobs_with_new_values(every_job))
