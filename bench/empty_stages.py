"""Four empty stage tasks on the real Celery app, for measuring what the orchestration alone costs.

A worker started with ``-A empty_stages`` is the real worker (``tasks.app`` settings: late acks, prefetch 1, a fresh
pool child per task; ``tasks.stages`` signal handlers: torch preloaded in the parent, threads set in each child),
running stages that only note when they started and ended. Benchmark-only: nothing in ``tasks/`` knows these tasks.

Started as ``dialsum worker`` starts it, or as stock Celery prefork (``bench/worker_variants.py``).
"""

from __future__ import annotations

import os
import time

import worker_variants  # noqa: F401  (the stock-worker switch, after tasks.stages' handlers)

import tasks.stages  # noqa: F401  (the worker's signal handlers: preload, threads)
from pipeline.lifecycle import STAGES
from tasks.app import STAGE_QUEUES, app

EMPTY_TASKS = {stage: f"bench.empty.{stage}" for stage in STAGES}
# The queue each empty stage goes to: the queue of the real stage it stands in for.
EMPTY_QUEUES = {stage: STAGE_QUEUES[f"dialsum.{stage}"] for stage in STAGES}


def _empty_task(stage: str):
    @app.task(name=EMPTY_TASKS[stage], bind=True)
    def empty(self, manifest: dict) -> dict:
        started = time.time()
        record = {"stage": stage, "started": started, "worker": self.request.hostname, "pid": os.getpid()}
        manifest["stages"].append({**record, "finished": time.time()})
        return manifest

    return empty


empty_tasks = [_empty_task(stage) for stage in STAGES]
