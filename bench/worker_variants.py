"""The two workers the orchestration benchmarks compare: ``dialsum worker`` as it is, and stock Celery prefork.

``dialsum worker`` carries two changes to how Celery's prefork pool serves one task per child (tasks/stages.py,
tasks/pool.py). To show what they are worth, the benchmarks also run a worker with both undone, from ``bench/`` only:

* ``--pool prefork`` instead of ``--pool custom`` (``tasks.pool:TaskPool``): Celery's own pool, which looks for an
  exited child only every 5 s when it misses the exit (celery/celery#9588). ``bench/cluster.py`` rewrites the command
  line that ``tasks.worker.plan_workers`` makes.
* ``gc.unfreeze()`` after the preload (``BENCH_GC_UNFREEZE=1``, set by ``bench/cluster.py`` and read by the
  ``worker_init`` handler below): Celery then collects the parent's ~440k objects (torch, transformers) before
  forking every child (celery/celery#2927).

Every bench worker module (``-A worker_variants``, ``-A empty_stages``, ``-A standin_stages``) imports this module
after ``tasks.stages``; nothing in ``tasks/`` knows these switches.
"""

from __future__ import annotations

import gc
import os

from celery import signals

import tasks.stages  # noqa: F401  (the worker's signal handlers, connected before ours: preload, then unfreeze)
from tasks.app import app  # noqa: F401  (``-A worker_variants`` finds the real app here)


@signals.worker_init.connect
def _unfreeze_after_preload(**_) -> None:
    if os.environ.get("BENCH_GC_UNFREEZE") != "1":
        return
    # tasks.stages connected its preload first, so it has run and frozen the preloaded objects by now; a count of 0
    # would mean the handler order changed and this worker would not be the stock one it claims to be.
    if gc.get_freeze_count() == 0:
        raise RuntimeError("BENCH_GC_UNFREEZE: nothing frozen; tasks.stages' preload did not run before this handler")
    gc.unfreeze()
