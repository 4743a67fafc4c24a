"""Bench-only switches for two proposed changes to the worker, so that their effect can be measured.

Imported by the worker modules under ``bench/``:

* ``BENCH_GC_FREEZE=1``: ``gc.freeze()`` after the preload. Celery runs ``gc.collect()`` in the worker's parent before
  forking every pool child (celery/celery#2927); with torch and transformers preloaded that walks ~440k objects,
  ~0.2 s per fork on 2 cores. Frozen objects are skipped.
* ``BENCH_FAST_MAINTAIN=1``: check for exited pool children every 0.1 s instead of 5 s. With one task per child, a
  child's exit that the pool misses (celery/celery#9588) is otherwise only noticed by a 5 s timer, and the next
  task waits that long for its process.
"""

from __future__ import annotations

import gc
import os

from billiard.pool import RUN
from celery import signals
from celery.concurrency import asynpool


@signals.worker_init.connect
def _freeze_after_preload(**_) -> None:
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        # The preload (tasks.stages) first, whichever worker_init handler runs first: freeze what it loads.
        import pipeline.trainer  # noqa: F401

        gc.freeze()


def _maintain_while_running(pool):
    # Only while the pool runs: replacing children of a pool that is closing keeps the worker from stopping.
    def maintain() -> None:
        if pool._state == RUN:
            pool.maintain_pool()

    return maintain


if os.environ.get("BENCH_FAST_MAINTAIN") == "1":
    asynpool.AsynPool.timers = property(lambda pool: {_maintain_while_running(pool): 0.1})
