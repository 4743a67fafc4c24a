"""Worker app for the fault tests: the real app and stage tasks, plus one injected fault.

A worker started with ``-A tests.fault_stages`` runs exactly what ``-A tasks.app`` runs, except that the train stage
of a run whose experiment is named ``kills-its-worker`` kills its own process (SIGKILL), as a task that brings its
worker down every time would (a native crash, the host's out-of-memory killer).
"""

from __future__ import annotations

import os
import signal

import tasks.stages  # noqa: F401  (the stage tasks and the worker's signal handlers)
from pipeline import lifecycle
from tasks.app import app  # noqa: F401  (``-A tests.fault_stages`` finds the app here)

KILLER_EXPERIMENT = "kills-its-worker"
_real_train = lifecycle.STAGE_FUNCTIONS["train"]


def train(manifest: dict, resume: str | None = "auto", callbacks: list | None = None) -> dict:
    if manifest["experiment"] == KILLER_EXPERIMENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_train(manifest, resume=resume, callbacks=callbacks)


lifecycle.STAGE_FUNCTIONS["train"] = train
