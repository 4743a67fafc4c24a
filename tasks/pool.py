"""The prefork pool of ``dialsum worker``: Celery's own, replacing an exited child within 0.1 s instead of 5 s.

With one task per child (``worker_max_tasks_per_child=1``, tasks/app.py) the pool must start a new child after every
task. It does so when it notices the old child's exit, but it sometimes handles that exit before the process is gone,
finds nothing to replace, and only its 5 s maintenance timer starts the next child (celery/celery#9588): the next
stage of a run then waits ~5 s for a process. Checking every 0.1 s bounds that wait (measured in BENCHMARKS.md:
hand-off between stages p99 from ~5 s to ~0.25 s). Selected with ``--pool tasks.pool:TaskPool``.
"""

from __future__ import annotations

from billiard.pool import RUN
from celery.concurrency import prefork
from celery.concurrency.asynpool import AsynPool

MAINTAIN_SECONDS = 0.1


class _QuickReplacingPool(AsynPool):
    @property
    def timers(self):
        return {self._maintain_while_running: MAINTAIN_SECONDS}

    def _maintain_while_running(self) -> None:
        # Only while the pool runs: replacing the children of a closing pool would keep the worker from stopping.
        if self._state == RUN:
            self.maintain_pool()


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool with the 0.1 s child check."""

    Pool = _QuickReplacingPool
