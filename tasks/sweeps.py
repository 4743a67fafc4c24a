"""Sweeps on the cluster: state in Redis, trials as pipeline runs, advanced by whoever ends a trial.

There is no controller process to babysit. The client stores the sweep (its parsed W&B config and
the base config) and submits the first ``parallel`` trials; every trial that ends (finished,
failed, pruned, cancelled) enqueues ``dialsum.sweep_advance``, which, under a Redis lock, asks the
search for the next points (``pipeline.sweep.suggest``, stateless given the trial history) and
submits them, until ``run_cap`` or the grid is exhausted. Then it promotes the best trial's model in
the registry and writes the leaderboard and the HTML report under ``<root>/sweeps/<sweep_id>/``.

Redis keys: ``dialsum:sweep:<id>`` (hash: spec, base_config, parallel, status, next_index, ...),
``dialsum:sweep:<id>:trials`` (hash: trial_id -> trial JSON), ``dialsum:sweeps`` (index),
``dialsum:prune:<run_id>`` (hyperband's stop request for a running trial).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.config import ConfigManager, merge_sweep_params
from tasks.app import app
from tasks.enqueue import enqueue_run
from tasks.state import PRUNE_KEY, redis_client

logger = logging.getLogger(__name__)

SWEEP_KEY = "dialsum:sweep:{}"
TRIALS_KEY = "dialsum:sweep:{}:trials"
LOCK_KEY = "dialsum:sweep:{}:lock"
RUN_TRIALS_KEY = "dialsum:run:{}:trials"
SWEEPS_INDEX = "dialsum:sweeps"
ACTIVE_TRIAL_STATUSES = ("queued", "running")
_TTL = 30 * 24 * 3600


# ---------------------------------------------------------------- stored state
def create_sweep(spec_dict: dict[str, Any], base_config: dict[str, Any], parallel: int | None) -> str:
    """Store a new sweep and return its id (``parallel`` None: one trial per training worker, see advance_sweep)."""
    sweep_id = "sweep-" + uuid.uuid4().hex[:10]
    client = redis_client()
    client.hset(
        SWEEP_KEY.format(sweep_id),
        mapping={
            "spec": json.dumps(spec_dict),
            "base_config": json.dumps(base_config),
            "parallel": str(parallel or 0),  # 0: as many as there are training workers
            "status": "running",
            "next_index": "0",
            "created_at": str(time.time()),
        },
    )
    client.expire(SWEEP_KEY.format(sweep_id), _TTL)
    client.zadd(SWEEPS_INDEX, {sweep_id: time.time()})
    return sweep_id


def read_sweep(sweep_id: str) -> dict[str, Any]:
    """The sweep's stored state (KeyError naming the id when there is none)."""
    raw = redis_client().hgetall(SWEEP_KEY.format(sweep_id))
    if not raw:
        raise KeyError(f"no sweep {sweep_id!r} on this broker; list sweeps with PipelineClient().list_sweeps()")
    state = dict(raw)
    state["spec"] = json.loads(state["spec"])
    state["base_config"] = json.loads(state["base_config"])
    state["parallel"] = int(state["parallel"])
    state["next_index"] = int(state["next_index"])
    state["created_at"] = float(state["created_at"])
    state["sweep_id"] = sweep_id
    return state


def read_trials(sweep_id: str) -> list[dict[str, Any]]:
    """All trials of the sweep, in index order."""
    raw = redis_client().hgetall(TRIALS_KEY.format(sweep_id))
    return sorted((json.loads(value) for value in raw.values()), key=lambda trial: trial["index"])


def update_trial(sweep_id: str, trial_key: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a stored trial and return it.

    Only the process that owns the trial's current stage writes it, so no lock is needed here.
    """
    key = TRIALS_KEY.format(sweep_id)
    client = redis_client()
    trial = json.loads(client.hget(key, trial_key) or "{}")
    trial.update(fields)
    client.hset(key, trial_key, json.dumps(trial))
    client.expire(key, _TTL)
    return trial


def list_sweep_ids() -> list[str]:
    """All sweep ids, oldest first."""
    return list(redis_client().zrange(SWEEPS_INDEX, 0, -1))


# ------------------------------------------------------------------- advancing
def _history(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status_map = {"finished": "finished", "pruned": "pruned", "failed": "failed", "cancelled": "failed"}
    return [
        {"params": trial["params"], "metric": trial.get("metric"), "status": status_map.get(trial["status"], "running")}
        for trial in trials
    ]


def _submit_trial(state: dict[str, Any], index: int, params: dict[str, Any]) -> dict[str, Any]:
    sweep_id = state["sweep_id"]
    trial_id = f"{sweep_id}-t{index}"
    config = merge_sweep_params(state["base_config"], params)
    sweep_info = {"sweep_id": sweep_id, "trial_id": trial_id, "params": params}
    trial = {
        "trial_id": trial_id,
        "index": index,
        "params": params,
        "status": "queued",
        "metric": None,
        "curve": [],
        "run_id": None,
        "worker": "",
        "seconds": None,
        "error": "",
    }
    update_trial(sweep_id, trial_id, **trial)
    # A trial whose config equals an earlier trial's is the same run (same run id): it is linked to
    # that run and gets its result, finished or not, instead of training it again.
    manifest = enqueue_run(
        ConfigManager().validate(config),
        sweep=sweep_info,
        on_submit=lambda run_id: link_trial(run_id, sweep_id, trial_id),
    )
    return update_trial(sweep_id, trial_id, run_id=manifest["run_id"])


def link_trial(run_id: str, sweep_id: str, trial_id: str) -> None:
    """Record that ``trial_id`` of ``sweep_id`` waits for the outcome of run ``run_id``."""
    key = RUN_TRIALS_KEY.format(run_id)
    redis_client().sadd(key, json.dumps([sweep_id, trial_id]))
    redis_client().expire(key, _TTL)


def trials_of_run(run_id: str) -> list[tuple[str, str]]:
    """The ``(sweep_id, trial_id)`` pairs waiting for run ``run_id``."""
    return [tuple(json.loads(member)) for member in redis_client().smembers(RUN_TRIALS_KEY.format(run_id))]


def training_worker_count(timeout: float = 1.0) -> int:
    """Workers consuming the training stage's queue right now (``celery inspect active_queues``); at least 1.

    At least 1 so that a sweep started before its workers still queues a trial for the first one to come up.
    """
    from tasks.app import STAGE_QUEUES

    queue = STAGE_QUEUES["dialsum.train"]
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return max(1, sum(any(item.get("name") == queue for item in queues or []) for queues in replies.values()))


def trial_slots(state: dict[str, Any]) -> int:
    """How many trials may be active: the sweep's ``parallel``, or (0, the default) one per training worker."""
    return state["parallel"] or training_worker_count()


def advance_sweep(sweep_id: str) -> list[str]:
    """Submit trials until all slots are active or the search is exhausted; finish the sweep when done.

    The slots are the sweep's ``parallel``, or by default the number of workers consuming the training queue, read
    again at every advance: workers that join or leave change how many trials the next advance keeps running.

    Safe to call from any number of processes at once (a Redis lock serializes them) and any
    number of times (it only ever fills free slots).

    Returns:
        The ids of the trials it submitted.
    """
    from pipeline.sweep import SweepSpec, suggest

    client = redis_client()
    submitted = []
    with client.lock(LOCK_KEY.format(sweep_id), timeout=120, blocking_timeout=120):
        state = read_sweep(sweep_id)
        if state["status"] != "running":
            return []
        spec = SweepSpec.from_dict(state["spec"])
        trials = read_trials(sweep_id)
        active = sum(trial["status"] in ACTIVE_TRIAL_STATUSES for trial in trials)
        index = state["next_index"]
        params = suggest(spec, index, _history(trials))
        slots = trial_slots(state) if params is not None else 0
        while active < slots and params is not None:
            trial = _submit_trial(state, index, params)
            trials.append(trial)
            submitted.append(trial["trial_id"])
            index += 1
            active += 1
            client.hset(SWEEP_KEY.format(sweep_id), "next_index", str(index))
            params = suggest(spec, index, _history(trials))
        if active == 0 and params is None:
            finish_sweep(sweep_id, "finished")
    return submitted


def finish_sweep(sweep_id: str, status: str) -> dict[str, Any] | None:
    """Mark the sweep ended, promote the best trial's model, write leaderboard and report.

    Only a healthy finished rank-1 trial is promoted: when every finished trial collapsed, none is.

    Returns:
        The best trial's leaderboard row, or None when no healthy finished trial has the metric.
    """
    from pipeline.artifacts import atomic_write_json, sweeps_dir
    from pipeline.registry import ModelRegistry
    from pipeline.report import best_row, leaderboard, write_leaderboard, write_report

    state = read_sweep(sweep_id)
    trials = read_trials(sweep_id)
    summary = sweep_summary(state, status)
    rows = leaderboard(summary, trials)
    best = best_row(rows)
    directory = sweeps_dir(state["base_config"]["general"]["artifact_root"]) / sweep_id
    if best is not None:
        best_trial = next(trial for trial in trials if trial["trial_id"] == best["trial_id"])
        registry = ModelRegistry(state["base_config"]["general"]["artifact_root"])
        entry = _registry_entry(registry, best_trial)
        if entry is not None:
            registry.promote(entry["id"], "production")
            summary["best_model_id"] = entry["id"]
        summary["best_trial"] = best["trial_id"]
    atomic_write_json(directory / "sweep.json", {**summary, "spec": state["spec"]})
    write_leaderboard(rows, directory)
    write_report(summary, trials, directory / "report.html")
    redis_client().hset(
        SWEEP_KEY.format(sweep_id),
        mapping={"status": status, "best_trial": summary.get("best_trial", ""), "finished_at": str(time.time())},
    )
    return best


def _registry_entry(registry, trial: dict[str, Any]) -> dict[str, Any] | None:
    """The registry entry of the model a trial trained (the newest, if it was registered more than once)."""
    from tasks.state import read_run

    record = read_run(trial["run_id"]) or {}
    model_dir = str((Path(record.get("run_dir", "")) / "model").resolve())
    entries = [entry for entry in registry.list() if entry["model_path"] == model_dir]
    return entries[-1] if entries else None


def sweep_summary(state: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """The JSON-safe header of a sweep for reports: id, method, metric, status, creation time."""
    spec = state["spec"]
    return {
        "sweep_id": state["sweep_id"],
        "method": spec["method"],
        "metric": {"name": spec["metric_name"], "goal": spec["goal"]},
        "status": status or state["status"],
        "created_at": state["created_at"],
    }


# ------------------------------------------------------------ trial life cycle
def on_trial_event(manifest: dict[str, Any], status: str, error: str = "") -> None:
    """Record a run's outcome (or its start) on every sweep trial linked to it; ended trials advance their sweep.

    Called by the stage tasks for every run; runs that belong to no sweep return at once.
    """
    from pipeline.sweep import SweepSpec, metric_value

    links = trials_of_run(manifest["run_id"])
    if not links:
        return
    fields: dict[str, Any] = {"status": status, "run_id": manifest["run_id"]}
    if error:
        fields["error"] = error
    stages = manifest.get("stages", {})
    if "train" in stages:
        fields["worker"] = stages["train"]["worker"]
        fields["seconds"] = round(sum(stage["seconds"] for stage in stages.values()), 3)
    if status == "finished":
        fields.update(evaluation_fields(stages["evaluate"]["metrics"]["validation"]))
    for sweep_id, trial_id in links:
        if status == "finished":
            spec = SweepSpec.from_dict(read_sweep(sweep_id)["spec"])
            fields["metric"] = metric_value(spec, stages["evaluate"]["metrics"]["validation"])
        update_trial(sweep_id, trial_id, **fields)
        if status not in ACTIVE_TRIAL_STATUSES:
            advance.apply_async(args=(sweep_id,))


def evaluation_fields(validation: dict[str, Any]) -> dict[str, Any]:
    """What a finished trial records from its validation metrics (``metrics.json``) beside the sweep metric.

    Returns:
        ``collapsed`` (a collapsed trial is ranked after every healthy one and never promoted, see
        ``pipeline.report.best_row``), ``collapse_reason`` ("" when healthy), and ``lead3_rouge2`` and
        ``rouge2_margin_over_lead3`` where the evaluation reported them.
    """
    from pipeline.report import BASELINE_FIELDS

    fields: dict[str, Any] = {
        "collapsed": bool(validation.get("collapsed", False)),
        "collapse_reason": validation.get("collapse_reason") or "",
    }
    fields.update({key: validation[f"eval_{key}"] for key in BASELINE_FIELDS if f"eval_{key}" in validation})
    return fields


def record_evaluation(run_id: str, step: int, metrics: dict[str, float]) -> None:
    """Add an evaluation to the curves of the run's trials and, if hyperband says so, ask its train to stop."""
    from pipeline.sweep import SweepSpec, metric_value, should_stop

    for sweep_id, trial_id in trials_of_run(run_id):
        spec = SweepSpec.from_dict(read_sweep(sweep_id)["spec"])
        value = metric_value(spec, metrics)
        if value is None:
            continue
        trials = read_trials(sweep_id)
        mine = next(trial for trial in trials if trial["trial_id"] == trial_id)
        curve = [*mine.get("curve", []), [step, value]]
        update_trial(sweep_id, trial_id, curve=curve)
        others = [[point[1] for point in trial.get("curve", [])] for trial in trials if trial["trial_id"] != trial_id]
        if should_stop(spec, [point[1] for point in curve], others):
            logger.info("hyperband stops run %s (trial %s) at evaluation %d", run_id, trial_id, len(curve))
            redis_client().set(PRUNE_KEY.format(run_id), "1", ex=_TTL)


def prune_requested(run_id: str) -> bool:
    """Whether hyperband asked this run's training to stop."""
    return redis_client().exists(PRUNE_KEY.format(run_id)) == 1


@app.task(name="dialsum.sweep_advance")
def advance(sweep_id: str) -> list[str]:
    """Celery task ``dialsum.sweep_advance``: :func:`advance_sweep` on a worker."""
    return advance_sweep(sweep_id)
