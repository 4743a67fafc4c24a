"""The four stage tasks. Thin: check the delivery, skip work already done, report, call ``pipeline.lifecycle``.

Each task takes the run's manifest (a small JSON dict of ids and paths) and returns it extended;
they are chained ``prepare_data -> train -> evaluate -> generate_predictions`` by the client.
Routing (``tasks/app.py``): train and generate_predictions to queue ``gpu``, the others to ``cpu``.

Every stage is idempotent: redelivered after it completed (the worker died before acknowledging),
it returns the result stored in the run's ``manifest.json``; ``train`` redelivered mid-run resumes
from the run's latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from celery import signals

from tasks.app import app, max_deliveries, stage_time_limit
from tasks.state import cancel_requested, count_delivery, write_run
from tasks.sweeps import on_trial_event, prune_requested, record_evaluation

logger = logging.getLogger(__name__)

# The output each stage must have left for its stored result to count as done.
_STAGE_OUTPUT = {
    "prepare_data": "dataset_dir",
    "train": "model_dir",
    "evaluate": "metrics_path",
    "generate_predictions": "predictions_csv",
}


class RedeliveryLimitExceeded(RuntimeError):
    """The task was delivered more often than ``DIALSUM_MAX_DELIVERIES``: its worker died each time."""


@signals.worker_init.connect
def _preload_libraries(**_: Any) -> None:
    # Every task gets a fresh pool child (max_tasks_per_child=1), and importing torch + transformers
    # costs 8-11 s. Importing them once in the worker's parent lets each forked child start with them
    # loaded. Importing does not initialize CUDA (only using a device does), so the parent stays CUDA-free.
    import pipeline.trainer  # noqa: F401


@signals.worker_process_init.connect
def _configure_child(**_: Any) -> None:
    # Runs in each fresh pool child (never in the worker's parent, which must not touch CUDA).
    from tasks.worker import configure_worker_process

    configure_worker_process()


def check_manifest(manifest: Any, stage: str) -> dict[str, Any]:
    """The manifest, if it is safe to act on (``pipeline.lifecycle.validate_manifest``), else ValueError.

    ``DIALSUM_ALLOWED_ROOTS`` (paths separated by ``:``) confines every file a task may touch to
    those directories: set it on workers that a broker reachable from a network feeds.
    """
    from pipeline.lifecycle import validate_manifest

    roots = [root for root in os.environ.get("DIALSUM_ALLOWED_ROOTS", "").split(":") if root]
    return validate_manifest(manifest, stage, roots or None)


def stored_result(manifest: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """The manifest stored in the run directory if ``stage`` already completed there, else None."""
    path = Path(manifest["run_dir"]) / "manifest.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    done = stored.get("stages", {}).get(stage)
    if stored.get("run_id") != manifest["run_id"] or not done or not Path(done[_STAGE_OUTPUT[stage]]).exists():
        return None
    return stored


def _progress_reporter(task, run_id: str):
    def report(meta: dict[str, Any]) -> None:
        # The result backend feeds the client's progress bar; events feed Flower.
        task.update_state(state="PROGRESS", meta=meta)
        task.send_event("task-progress", run_id=run_id, **meta)
        write_run(run_id, progress=meta)
        if "eval" in meta:
            record_evaluation(run_id, meta["step"], meta["eval"])

    return report


def run_stage(task, stage: str, manifest: Any) -> dict[str, Any]:
    """Everything a stage task does around the pipeline function ``stage``."""
    from pipeline.lifecycle import STAGE_FUNCTIONS, set_stage_context
    from pipeline.trainer import RunCancelled, StageControlCallback

    manifest = check_manifest(manifest, stage)
    run_id = manifest["run_id"]
    deliveries = count_delivery(task.request.id)
    if deliveries > max_deliveries():
        reason = (
            f"{stage} of run {run_id} was delivered {deliveries} times and its worker died each time "
            f"(killed, or out of host memory); giving up after DIALSUM_MAX_DELIVERIES={max_deliveries()}"
        )
        _mark_ended(manifest, stage, "failed", reason)
        raise RedeliveryLimitExceeded(reason)
    stored = stored_result(manifest, stage)
    if stored is not None:
        logger.info("%s of run %s already done; returning the stored result", stage, run_id)
        stored["sweep"] = manifest.get("sweep")
        _mark_done(stored, stage)
        return stored
    if cancel_requested(run_id):
        _mark_ended(manifest, stage, "cancelled", f"cancelled before {stage} started")
        raise RunCancelled(f"run {run_id} was cancelled before {stage} started")

    queue = (task.request.delivery_info or {}).get("routing_key")
    set_stage_context(worker=task.request.hostname, queue=queue)
    write_run(run_id, status="running", stage=stage, worker=task.request.hostname or "")
    function = STAGE_FUNCTIONS[stage]
    if stage == "train":
        on_trial_event(manifest, "running")
    try:
        if stage == "train":
            control = StageControlCallback(
                report=_progress_reporter(task, run_id),
                should_cancel=lambda: cancel_requested(run_id) or prune_requested(run_id),
            )
            result = function(manifest, resume="auto", callbacks=[control])
        else:
            result = function(manifest)
    except RunCancelled as error:
        _mark_ended(manifest, stage, "pruned" if prune_requested(run_id) else "cancelled", str(error))
        raise
    except Exception as error:
        _mark_ended(manifest, stage, "failed", f"{type(error).__name__}: {error}")
        raise
    _mark_done(result, stage)
    return result


def _mark_done(manifest: dict[str, Any], stage: str) -> None:
    finished = stage == "generate_predictions"
    write_run(manifest["run_id"], status="completed" if finished else "running", stage=stage)
    if finished:
        on_trial_event(manifest, "finished")


def _mark_ended(manifest: dict[str, Any], stage: str, status: str, reason: str) -> None:
    """A run that will not complete: its record, and the sweep trials waiting for it."""
    write_run(manifest["run_id"], status=status, stage=stage, error=reason)
    on_trial_event(manifest, status, reason)


def _stage_task(stage: str):
    limit = stage_time_limit(stage)

    @app.task(name=f"dialsum.{stage}", bind=True, time_limit=limit, soft_time_limit=max(limit - 60, 1))
    def stage_task(self, manifest):
        return run_stage(self, stage, manifest)

    stage_task.__doc__ = f"Celery task ``dialsum.{stage}``: runs ``pipeline.lifecycle.{stage}_stage`` on the manifest."
    return stage_task


prepare_data = _stage_task("prepare_data")
train = _stage_task("train")
evaluate = _stage_task("evaluate")
generate_predictions = _stage_task("generate_predictions")
