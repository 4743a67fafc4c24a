"""Enqueue one run: its manifest, its record on the broker, and the chain of its four stages.

The client (``PipelineClient.submit``) and the sweep engine (each trial) both submit runs; this is the one place
that does it, so neither imports the other.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import chain

from pipeline.lifecycle import MANIFEST_FILE, STAGES, new_manifest, write_manifest
from tasks.app import app
from tasks.state import ACTIVE_STATUSES, clear_cancel, read_run, write_run

logger = logging.getLogger(__name__)


def enqueue_run(
    config: dict[str, Any],
    experiment_name: str | None = None,
    sweep: dict[str, Any] | None = None,
    on_submit: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Enqueue the four stages of a run of ``config`` (already validated) as one chain; returns its first manifest.

    The manifest holds ``run_id`` and ``run_dir``. A run with the same resolved config that is already queued or
    running is not enqueued twice: its manifest is returned.

    Args:
        config: A validated config (``ConfigManager.validate``).
        experiment_name: The experiment (default: ``experiment.name``).
        sweep: ``{"sweep_id", "trial_id", "params"}`` when the run is a sweep trial (W&B grouping).
        on_submit: Called with the run id before anything is enqueued (sweeps link trials to runs).
    """
    manifest = new_manifest(config, experiment_name)
    if sweep:
        manifest["sweep"] = sweep
    run_id = manifest["run_id"]
    if on_submit is not None:
        on_submit(run_id)
    existing = read_run(run_id)
    # A record without status is what a worker's progress write leaves after Redis restarted empty: not a queued run.
    if existing is not None and existing.get("status") in ACTIVE_STATUSES:
        return manifest

    _write_first_manifest(manifest)
    task_ids = [str(uuid.uuid4()) for _ in STAGES]
    clear_cancel(run_id)
    write_run(
        run_id,
        status="queued",
        stage="",
        task_ids=task_ids,
        run_dir=manifest["run_dir"],
        experiment=manifest["experiment"],
        submitted_at=time.time(),
        error="",
        progress={},
    )
    first, *rest = [
        app.signature(f"dialsum.{stage}", task_id=task_id) for stage, task_id in zip(STAGES, task_ids, strict=True)
    ]
    chain(first.clone(args=(manifest,)), *rest).apply_async()
    return manifest


def _write_first_manifest(manifest: dict[str, Any]) -> None:
    """Put the run on the artifact root before it is queued, so a Redis that forgets the queue cannot lose it.

    ``dialsum recover --root`` finds runs by their manifests; without this, a run still waiting in the queue when
    Redis restarted empty left no trace anywhere. Only a run directory without a manifest gets one (a resubmitted
    run's manifest holds its finished stages); a submitter that cannot write there (not on the shared filesystem)
    leaves it to the first stage, as before.
    """
    path = Path(manifest["run_dir"]) / MANIFEST_FILE
    if path.exists():
        return
    try:
        write_manifest({**manifest, "status": "queued"})
    except OSError as error:
        logger.warning(
            "run %s: could not write %s before queueing it (%s); its first stage will", manifest["run_id"], path, error
        )
