"""The four stage tasks. Thin: check the delivery, skip work already done, report, call ``pipeline.lifecycle``.

Each task takes the run's manifest (a small JSON dict of ids and paths) and returns it extended;
they are chained ``prepare_data -> train -> evaluate -> generate_predictions`` by the client.
Routing (``tasks/app.py``): train and generate_predictions to queue ``gpu``, the others to ``cpu``.

Every stage is idempotent: redelivered after it completed (the worker died before acknowledging),
it returns the result stored in the run's ``manifest.json``; ``train`` redelivered mid-run resumes
from the run's latest checkpoint.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis
from celery import signals
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded

from tasks.app import app, max_deliveries, stage_soft_time_limit, stage_time_limit
from tasks.lease import Lease, clear_active, end_lease, start_reaper
from tasks.state import FINAL_STATUSES, cancel_requested, count_delivery, read_run, redis_client, write_run
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

    # Celery runs gc.collect() in this parent before forking each pool child (celery/celery#2927); with torch and
    # transformers loaded that walks ~440k objects, ~0.2 s before every task. Frozen objects are never collected,
    # which is right for a parent that only forks, and their pages are not dirtied in the children either.
    gc.freeze()


@signals.worker_ready.connect
def _register_on_host(sender: Any = None, **_: Any) -> None:
    # A worker started with plain `celery -A tasks.app worker` records itself in the host registry, so the thread
    # share of every dialsum worker on this machine counts it (`dialsum worker` registered its workers already).
    from tasks import host
    from tasks.worker import LAUNCHED_ENV

    if not os.environ.get(LAUNCHED_ENV):
        host.register(os.getpid(), [getattr(sender, "hostname", "") or "celery"])


@signals.worker_shutdown.connect
def _unregister_on_host(**_: Any) -> None:
    from tasks import host
    from tasks.worker import LAUNCHED_ENV

    if not os.environ.get(LAUNCHED_ENV):
        host.unregister(os.getpid())


@signals.worker_ready.connect
def _warn_if_redis_forgets(**_: Any) -> None:
    # A Redis without AOF or RDB loses every queued run on a restart: say so where operators look, at startup.
    from tasks.recover import persistence_warning

    try:
        warning = persistence_warning()
    except Exception as error:  # a warning must never keep a worker from starting
        warning = f"could not check whether the broker's Redis persists its data: {error}"
    if warning:
        logger.warning("%s", warning)


@signals.worker_ready.connect
def _start_lease_reaper(**_: Any) -> None:
    # In the worker's parent process: it outlives the pool children, so a run whose whole worker died elsewhere is
    # re-enqueued by whichever worker is still alive (tasks/lease.py).
    start_reaper(redis_client, republish, restore_message)


def republish(message: dict[str, Any]) -> None:
    """Send a stage message again as it was: same task, id, manifest, rest of the chain and queue."""
    app.send_task(
        message["task"],
        args=(message["manifest"],),
        task_id=message["task_id"],
        chain=message.get("chain"),
        queue=message.get("queue"),
    )


def restore_message(delivery_tag: str) -> None:
    """Return one fetched, unacknowledged message to its queue, the way kombu does after the visibility timeout."""
    with app.connection_for_write() as connection:
        connection.default_channel.qos.restore_by_tag(delivery_tag)


@signals.task_prerun.connect
def _configure_child(**_: Any) -> None:
    # Runs in the pool child, as each task starts (never in the worker's parent, which must not touch CUDA): the
    # host's thread share is decided now, counting the workers started on this host since the child was forked.
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
        # The result backend feeds the client's progress bar; events feed Flower. Progress is best effort: a broker
        # that restarts must not end hours of training.
        try:
            task.update_state(state="PROGRESS", meta=meta)
            task.send_event("task-progress", run_id=run_id, **meta)
            write_run(run_id, progress=meta)
            if "eval" in meta:
                record_evaluation(run_id, meta["step"], meta["eval"])
        except SoftTimeLimitExceeded:
            raise  # Celery's signal to end the stage, raised wherever the stage is at that moment: often here
        except Exception as error:  # noqa: BLE001 (any broker or backend error)
            logger.warning("progress of run %s not reported: %s", run_id, error)

    return report


def _stop_requested(run_id: str, lease: Lease) -> bool:
    if lease.lost.is_set():
        return True
    try:
        return cancel_requested(run_id) or prune_requested(run_id)
    except redis.RedisError:  # broker away for a moment: keep training; the lease decides if it is for too long
        return False


def stale_delivery(record: dict[str, Any] | None, stage: str, task_id: str) -> str | None:
    """Why this delivery of ``stage`` must be dropped, or None when it may run.

    A message comes back long after its first delivery (Redis restores an unacknowledged message after the
    visibility timeout; the lease reaper may have re-published it meanwhile): by then the run may have been
    resubmitted, moved on to a later stage, or ended.
    """
    from pipeline.lifecycle import STAGES

    if record is None:
        return None
    task_ids = record.get("task_ids") or []
    if task_ids and task_id not in task_ids:
        return "the run was resubmitted since; this is a message of its earlier submission"
    if record.get("status") in FINAL_STATUSES:
        return f"the run is {record['status']} already"
    current = record.get("stage")
    if current in STAGES and STAGES.index(current) > STAGES.index(stage):
        return f"the run is at {current} already"
    return None


def run_stage(task, stage: str, manifest: Any) -> dict[str, Any]:
    """Everything a stage task does around the pipeline function ``stage``."""
    manifest = check_manifest(manifest, stage)
    run_id = manifest["run_id"]
    task_id = task.request.id
    why = stale_delivery(read_run(run_id), stage, task_id)
    if why:
        logger.warning("dropping %s of run %s (task %s): %s", stage, run_id, task_id, why)
        raise Ignore()
    lease = Lease(redis_client(), run_id, stage, task_id, task.request.hostname or "")
    holder = lease.acquire()
    if holder is not None:
        logger.warning(
            "dropping %s of run %s (task %s): %s on %s (pid %s) works on that run; if it dies, the lease reaper "
            "re-enqueues it",
            stage,
            run_id,
            task_id,
            holder.get("stage"),
            holder.get("node"),
            holder.get("pid"),
        )
        raise Ignore()
    try:
        lease.record_message(
            {
                "task": task.name,
                "task_id": task_id,
                "manifest": manifest,
                "chain": task.request.chain,
                "queue": (task.request.delivery_info or {}).get("routing_key"),
            },
        )
        lease.start_renewing()
        result = _run_leased(task, stage, manifest, lease)
    except BaseException:
        lease.release()
        raise
    # The next stage is published after this returns; clear first so the reaper never re-sends a finished stage.
    clear_active(redis_client(), run_id, task_id)
    lease.release()
    return result


def _run_leased(task, stage: str, manifest: dict[str, Any], lease: Lease) -> dict[str, Any]:
    from pipeline.lifecycle import STAGE_FUNCTIONS, set_stage_context
    from pipeline.trainer import RunCancelled, StageControlCallback

    run_id = manifest["run_id"]
    deliveries = count_delivery(task.request.id)
    if deliveries > max_deliveries():
        reason = (
            f"{stage} of run {run_id} was delivered {deliveries} times and its worker died each time "
            f"(killed, or out of host memory); giving up after DIALSUM_MAX_DELIVERIES={max_deliveries()}"
        )
        _mark_ended(manifest, stage, "failed", reason)
        clear_active(redis_client(), run_id, task.request.id)
        raise RedeliveryLimitExceeded(reason)
    stored = stored_result(manifest, stage)
    if stored is not None:
        logger.info("%s of run %s already done; returning the stored result", stage, run_id)
        stored["sweep"] = manifest.get("sweep")
        _mark_done(stored, stage)
        return stored
    if cancel_requested(run_id):
        _mark_ended(manifest, stage, "cancelled", f"cancelled before {stage} started")
        clear_active(redis_client(), run_id, task.request.id)
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
                should_cancel=lambda: _stop_requested(run_id, lease),
            )
            result = function(manifest, resume="auto", callbacks=[control])
        else:
            result = function(manifest)
    except BaseException as error:
        if lease.lost.is_set() and isinstance(error, Exception):  # SystemExit (the pool ending this child) goes on
            # Another worker may own the run by now: leave its record alone; the reaper re-enqueues the stage.
            logger.error("%s of run %s stopped: lease lost (%s: %s)", stage, run_id, type(error).__name__, error)
            raise Ignore() from error
        if _caused_by(error, SoftTimeLimitExceeded):  # the trainer wraps it: RuntimeError("training failed: ...")
            _mark_ended(manifest, stage, "failed", time_limit_reason(stage, run_id, soft=True))
            clear_active(redis_client(), run_id, task.request.id)
        elif isinstance(error, RunCancelled):
            _mark_ended(manifest, stage, "pruned" if prune_requested(run_id) else "cancelled", str(error))
            clear_active(redis_client(), run_id, task.request.id)
        elif isinstance(error, Exception):
            _mark_ended(manifest, stage, "failed", f"{type(error).__name__}: {error}")
            clear_active(redis_client(), run_id, task.request.id)
        # Anything else (SystemExit when the worker shuts down): the active record stays and run_stage gives the
        # lease back, so a reaper re-enqueues the stage at its next tick and another worker resumes it.
        raise
    if lease.lost.is_set():
        logger.error("%s of run %s finished after its lease was lost; not recording it", stage, run_id)
        raise Ignore()
    _mark_done(result, stage)
    return result


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` is a ``kind``, or was raised from (or while handling) one."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _mark_done(manifest: dict[str, Any], stage: str) -> None:
    finished = stage == "generate_predictions"
    write_run(manifest["run_id"], status="completed" if finished else "running", stage=stage)
    if finished:
        on_trial_event(manifest, "finished")


def _mark_ended(manifest: dict[str, Any], stage: str, status: str, reason: str) -> None:
    """A run that will not complete: its record, and the sweep trials waiting for it."""
    write_run(manifest["run_id"], status=status, stage=stage, error=reason)
    on_trial_event(manifest, status, reason)


def time_limit_reason(stage: str, run_id: str, soft: bool) -> str:
    """Why a stage that ran out of time failed, and what to change."""
    which = f"soft time limit ({stage_soft_time_limit(stage)} s, 60 s before the hard one)" if soft else "time limit"
    fix = "Raise it there (and restart the worker), or make the stage shorter"
    if stage == "train":
        fix += " (training.max_steps); submitting the run again resumes from its last checkpoint"
    return (
        f"{stage} of run {run_id} ran past its {which}: "
        f"DIALSUM_TIME_LIMIT_{stage.upper()}={stage_time_limit(stage)} s on the worker. {fix}"
    )


@signals.task_failure.connect
def _stage_killed_at_its_time_limit(sender=None, task_id=None, exception=None, args=None, **_: Any) -> None:
    # A stage past its hard time limit (stuck in native code, deaf to the soft limit's exception) is killed with its
    # pool child, and Celery reports it here, in the worker's parent. The child could not end the run itself: without
    # this, its lease would expire and the reaper would run the stage again, up to the delivery cap.
    if not isinstance(exception, TimeLimitExceeded) or sender is None:
        return
    stage = sender.name.removeprefix("dialsum.")
    if stage not in _STAGE_OUTPUT or not args:
        return
    try:
        manifest = check_manifest(args[0], stage)
        record = read_run(manifest["run_id"])
        if record is not None and record.get("status") in FINAL_STATUSES:
            return  # Celery reports a hard time limit twice (on_failure and on_timeout): act once
        reason = time_limit_reason(stage, manifest["run_id"], soft=False)
        client = redis_client()
        end_lease(client, manifest["run_id"], task_id, reason)
        _mark_ended(manifest, stage, "failed", reason)
        clear_active(client, manifest["run_id"], task_id)
    except Exception:  # a failing signal handler must not take the worker's parent down
        logger.exception("could not record the time limit of %s (task %s)", stage, task_id)


def _stage_task(stage: str):
    @app.task(
        name=f"dialsum.{stage}",
        bind=True,
        time_limit=stage_time_limit(stage),
        soft_time_limit=stage_soft_time_limit(stage),
    )
    def stage_task(self, manifest):
        return run_stage(self, stage, manifest)

    stage_task.__doc__ = f"Celery task ``dialsum.{stage}``: runs ``pipeline.lifecycle.{stage}_stage`` on the manifest."
    return stage_task


prepare_data = _stage_task("prepare_data")
train = _stage_task("train")
evaluate = _stage_task("evaluate")
generate_predictions = _stage_task("generate_predictions")
