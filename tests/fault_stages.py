"""Worker app for the fault tests: the real app and stage tasks, plus one injected fault.

A worker started with ``-A tests.fault_stages`` runs exactly what ``-A tasks.app`` runs, except that the train stage
of a run whose experiment is named ``kills-its-worker`` kills its own process (SIGKILL), as a task that brings its
worker down every time would (a native crash, the host's out-of-memory killer), and the train stage of a run named
``deaf-to-its-time-limit`` hangs without running any signal handler, as a stage stuck in native code would: the soft
time limit's exception (raised from a SIGUSR1 handler) and the pool's polite signals never reach it; only SIGKILL does.
"""

from __future__ import annotations

import ctypes
import os
import signal

import tasks.stages  # noqa: F401  (the stage tasks and the worker's signal handlers)
from pipeline import lifecycle
from tasks.app import app  # noqa: F401  (``-A tests.fault_stages`` finds the app here)

KILLER_EXPERIMENT = "kills-its-worker"
DEAF_EXPERIMENT = "deaf-to-its-time-limit"
_real_train = lifecycle.STAGE_FUNCTIONS["train"]


def train(manifest: dict, resume: str | None = "auto", callbacks: list | None = None) -> dict:
    if manifest["experiment"] == KILLER_EXPERIMENT:
        os.kill(os.getpid(), signal.SIGKILL)
    if manifest["experiment"] == DEAF_EXPERIMENT:
        # Blocked in this (the main) thread, the signals go to another thread, and Python runs their handlers here
        # only once the C call below returns (time.sleep would return early to run them).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        ctypes.CDLL(None).sleep(3600)
    return _real_train(manifest, resume=resume, callbacks=callbacks)


lifecycle.STAGE_FUNCTIONS["train"] = train
