"""PipelineClient: submit runs to the cluster, follow them, cancel them.

    >>> from tasks.client import PipelineClient
    >>> handle = PipelineClient("redis://gpu-head:6379/0").submit("config/base_config.yaml")
    >>> manifest = handle.wait()          # progress bar; the final manifest when all four stages are done

The config is validated before anything is enqueued: a bad key raises ``ConfigError`` naming it
and the broker's queues are untouched. Relative paths in the config are made absolute against the
submitting directory, because workers run elsewhere (they must see the same artifact root).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import ConfigManager, Overrides, apply_overrides
from pipeline.lifecycle import STAGES
from tasks.app import app
from tasks.broker import celery_settings
from tasks.enqueue import enqueue_run
from tasks.progress import WaitProgress
from tasks.state import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    list_run_ids,
    read_run,
    redis_client,
    request_cancel,
    write_run,
)
from tasks.sweeps import (
    LOCK_KEY,
    SWEEP_KEY,
    advance_sweep,
    create_sweep,
    finish_sweep,
    list_sweep_ids,
    read_sweep,
    read_trials,
    sweep_summary,
)


class RunUnknownToBroker(KeyError):
    """The broker has no record of the run: a wrong id, or a Redis that restarted without persistence.

    ``on_disk`` is the run's manifest on the artifact root when the handle knows where the run lives (it submitted
    it, or saw its record before), else None.
    """

    def __init__(self, run_id: str, on_disk: dict[str, Any] | None):
        self.run_id = run_id
        self.on_disk = on_disk
        if on_disk is None:
            message = f"no run {run_id!r} on this broker; list runs with PipelineClient().list_runs()"
        else:
            root = Path(on_disk["config"]["general"]["artifact_root"])
            message = (
                f"the broker does not know run {run_id!r} (did its Redis restart without persistence?), but it is "
                f"on disk at {on_disk['run_dir']} ({on_disk.get('status', '?')}); dialsum recover --root {root} "
                f"resubmits it, resuming from its checkpoints"
            )
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class RunFailed(RuntimeError):
    """A run ended failed or cancelled; ``status`` says which and the message gives the reason."""

    def __init__(self, run_id: str, status: str, reason: str):
        super().__init__(f"run {run_id} {status}: {reason}")
        self.run_id = run_id
        self.status = status


class RunHandle:
    """A submitted run: its id, status, final manifest, and cancel."""

    def __init__(self, client: PipelineClient, run_id: str, run_dir: str | None = None):
        self._client = client
        self.id = run_id
        self.run_dir = run_dir
        self._warned_forgotten = False

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def _record(self) -> dict[str, Any]:
        record = read_run(self.id)
        # A record without status is what a worker's progress write leaves after Redis restarted empty.
        if record is None or not record.get("status"):
            raise RunUnknownToBroker(self.id, self._on_disk())
        self.run_dir = record.get("run_dir") or self.run_dir
        return record

    def _on_disk(self) -> dict[str, Any] | None:
        """The run's manifest on the artifact root, when this handle knows its directory and it is there."""
        if not self.run_dir:
            return None
        try:
            return json.loads((Path(self.run_dir) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        """The run's record: ``status`` (queued | running | completed | failed | cancelled), ``stage``,
        ``progress`` (step, total, loss, latest eval metrics), ``error``, and each stage task's state."""
        record = self._record()
        # A run put back by `dialsum recover` while its worker still held the lease has no task ids of its own.
        task_ids = record.get("task_ids") or []
        states = [app.AsyncResult(task_id).state for task_id in task_ids]
        record["stage_states"] = dict(zip(STAGES, states, strict=False))
        return record

    def wait(self, timeout: float | None = None, progress: bool = True, poll_seconds: float = 0.5) -> dict[str, Any]:
        """Block until the run ends and return its final manifest.

        Args:
            timeout: Seconds to wait at most (None: forever); TimeoutError after that.
            progress: Show a progress bar of the training steps.
            poll_seconds: Time between two status reads.

        Raises:
            RunFailed: The run failed or was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # A bar on a terminal; off one (a log, CI, the journal) a line per stage change and at most one per 30 s.
        with WaitProgress(f"run {self.id}", "step", enabled=progress) as shown:
            while True:
                try:
                    record = self._record()
                except RunUnknownToBroker as unknown:
                    if unknown.on_disk is None:
                        raise
                    if unknown.on_disk.get("status") == "completed":
                        return unknown.on_disk
                    if not self._warned_forgotten:  # keep waiting: the worker may still run it, recover may resubmit
                        print(f"warning: {unknown}; waiting for it", file=sys.stderr, flush=True)
                        self._warned_forgotten = True
                    self._check_deadline(deadline, timeout, "unknown to the broker")
                    time.sleep(poll_seconds)
                    continue
                step_progress = record.get("progress") or {}
                shown.update(
                    step_progress.get("step", 0) if step_progress.get("total") else 0,
                    step_progress.get("total"),
                    record.get("stage") or record["status"],
                    f"loss={step_progress['loss']}" if step_progress.get("loss") is not None else "",
                )
                if record["status"] == "completed":
                    return self._final_manifest(record)
                if record["status"] in ("failed", "cancelled", "pruned"):
                    raise RunFailed(self.id, record["status"], record.get("error", ""))
                self._check_deadline(deadline, timeout, f"{record['status']} ({record.get('stage')})")
                time.sleep(poll_seconds)

    def _check_deadline(self, deadline: float | None, timeout: float | None, state: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {self.id} still {state} after {timeout}s")

    def _final_manifest(self, record: dict[str, Any]) -> dict[str, Any]:
        """The last stage's result, or the manifest on disk when the broker lost it (or never had the task ids)."""
        task_ids = record.get("task_ids") or []
        if task_ids:
            with contextlib.suppress(Exception):  # a result forgotten by a restarted Redis: the disk has it too
                return app.AsyncResult(task_ids[-1]).get(timeout=30)
        on_disk = self._on_disk()
        if on_disk is None:
            raise RunFailed(self.id, "completed", "its final manifest is neither on the broker nor on disk")
        return on_disk

    def cancel(self) -> None:
        """Stop the run: a queued stage never starts, a running train stops at the next step boundary
        after saving a checkpoint (within seconds), and the run is marked cancelled."""
        record = self._record()
        if record["status"] in FINAL_STATUSES:
            return
        request_cancel(self.id)
        for task_id in record.get("task_ids") or []:
            if app.AsyncResult(task_id).state == "PENDING":
                app.control.revoke(task_id)
        if record["status"] == "queued":
            write_run(self.id, status="cancelled", error="cancelled before it started")


class PipelineClient:
    """Submit and follow runs on the cluster behind one broker.

    Args:
        broker_url: The broker (and result backend); ``DIALSUM_BROKER_URL`` or the local Redis when None.
    """

    def __init__(self, broker_url: str | None = None):
        if broker_url:
            app.conf.update(**celery_settings(broker_url))
        self.broker_url = app.conf.broker_url

    def submit(
        self,
        config_or_path: str | Path | dict[str, Any],
        overrides: Overrides = None,
        experiment_name: str | None = None,
        sweep: dict[str, Any] | None = None,
        on_submit=None,
    ) -> RunHandle:
        """Validate the config, then enqueue the four stages as one chain.

        A run with the same resolved config that is already queued or running is not enqueued
        twice: its handle is returned.

        Args:
            config_or_path: A config YAML path or a config dict.
            overrides: ``["training.learning_rate=3e-5", ...]`` (``--set`` style) or
                ``{"training.learning_rate": 3e-5, ...}``.
            experiment_name: The experiment (default: ``experiment.name``).
            sweep: ``{"sweep_id", "trial_id", "params"}`` when the run is a sweep trial (W&B grouping).
            on_submit: Called with the run id before anything is enqueued (sweeps link trials to runs).

        Returns:
            The run's handle.

        Raises:
            ConfigError: The config is invalid (nothing was enqueued).
        """
        manager = ConfigManager()
        if isinstance(config_or_path, (str, Path)):
            config = manager.load_config(config_or_path, overrides=overrides)
        else:
            config = manager.validate(apply_overrides(config_or_path, overrides))
        manifest = enqueue_run(config, experiment_name, sweep, on_submit)
        return RunHandle(self, manifest["run_id"], manifest["run_dir"])

    def get(self, run_id: str) -> RunHandle:
        """The handle of a submitted run (KeyError naming the id when the broker has no such run)."""
        handle = RunHandle(self, run_id)
        handle._record()
        return handle

    def submit_sweep(
        self,
        base_config: str | Path | dict[str, Any],
        sweep_config: str | Path | dict[str, Any],
        parallel: int | None = None,
        overrides: Overrides = None,
    ) -> SweepHandle:
        """Validate a W&B-format sweep against the base config, store it, and submit its first trials.

        The client may exit right after: each trial that ends advances the sweep on a worker.

        Args:
            base_config: The pipeline config (path or dict) every trial starts from.
            sweep_config: The W&B sweep config (path or dict): method, metric, parameters, early_terminate, run_cap.
            parallel: How many trials run at once; None (the default): one per worker consuming the training queue,
                counted again each time a trial ends (a user with eight GPU workers gets eight trials at once).
            overrides: Overrides of the base config: ``--set`` style strings or a mapping of dotted keys to values.

        Raises:
            SweepConfigError, ConfigError: Invalid sweep or base config; nothing was enqueued.
        """
        return _submit_sweep(self, base_config, sweep_config, parallel, overrides)

    def get_sweep(self, sweep_id: str) -> SweepHandle:
        """The handle of a stored sweep (KeyError naming the id when there is none)."""
        handle = SweepHandle(self, sweep_id)
        handle.status()
        return handle

    def list_sweeps(self) -> list[dict[str, Any]]:
        """Every sweep's status, oldest first."""
        return _list_sweeps()

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run's record (``run_id``, ``status``, ``stage``, ``experiment``, ...), oldest first."""
        records = []
        for run_id in list_run_ids():
            record = read_run(run_id)
            if record is not None:
                records.append({"run_id": run_id, **record})
        return records


class SweepHandle:
    """A submitted sweep: its id, status, leaderboard, best trial, wait and cancel."""

    def __init__(self, client: PipelineClient, sweep_id: str):
        self._client = client
        self.id = sweep_id

    def __repr__(self) -> str:
        return f"SweepHandle({self.id!r})"

    def status(self) -> dict[str, Any]:
        """``status`` (running | finished | cancelled), trial counts by status, ``best_trial``."""

        state = read_sweep(self.id)
        counts: dict[str, int] = {}
        for trial in read_trials(self.id):
            counts[trial["status"]] = counts.get(trial["status"], 0) + 1
        return {"sweep_id": self.id, "status": state["status"], "trials": counts, "best_trial": state.get("best_trial")}

    def trials(self) -> list[dict[str, Any]]:
        """Every trial: params, status, metric, curve, run id, worker."""

        return read_trials(self.id)

    def leaderboard(self) -> list[dict[str, Any]]:
        """Trials ranked by the sweep metric, best first (see ``pipeline.report.leaderboard``)."""
        from pipeline.report import leaderboard

        return leaderboard(sweep_summary(read_sweep(self.id)), read_trials(self.id))

    def best(self) -> dict[str, Any] | None:
        """The best finished trial's leaderboard row, or None (also when every finished trial collapsed)."""
        from pipeline.report import best_row

        return best_row(self.leaderboard())

    def wait(
        self, timeout: float | None = None, progress: bool = True, poll_seconds: float = 1.0
    ) -> list[dict[str, Any]]:
        """Block until the sweep ends; returns the leaderboard. TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with WaitProgress(f"sweep {self.id}", "trial", enabled=progress) as shown:
            while True:
                status = self.status()
                ended = sum(count for state, count in status["trials"].items() if state not in ("queued", "running"))
                shown.update(
                    ended, None, " ".join(f"{state}={count}" for state, count in sorted(status["trials"].items()))
                )
                if status["status"] != "running":
                    return self.leaderboard()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"sweep {self.id} still running after {timeout}s: {status['trials']}")
                time.sleep(poll_seconds)

    def cancel(self) -> None:
        """Stop the sweep: no new trials; running trials are cancelled (their checkpoints kept)."""

        with redis_client().lock(LOCK_KEY.format(self.id), timeout=120, blocking_timeout=120):
            redis_client().hset(SWEEP_KEY.format(self.id), "status", "cancelling")
        for trial in read_trials(self.id):
            if trial["status"] in ACTIVE_STATUSES and trial.get("run_id"):
                RunHandle(self._client, trial["run_id"]).cancel()
        finish_sweep(self.id, "cancelled")


def _submit_sweep(client: PipelineClient, base_config, sweep_config, parallel: int | None, overrides) -> SweepHandle:
    from pipeline.sweep import load_sweep_config, parse_sweep_config

    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1):
        raise ValueError(f"parallel must be an integer >= 1 or None (one trial per training worker), got {parallel!r}")
    manager = ConfigManager()
    if isinstance(base_config, (str, Path)):
        base = manager.load_config(base_config, overrides=overrides)
    else:
        base = manager.validate(apply_overrides(base_config, overrides))
    if isinstance(sweep_config, (str, Path)):
        spec = load_sweep_config(sweep_config, base)
    else:
        spec = parse_sweep_config(sweep_config, base)
    from pipeline.lifecycle import absolute_paths

    sweep_id = create_sweep(spec.to_dict(), absolute_paths(base), parallel)
    advance_sweep(sweep_id)  # the first trials, one per slot; every trial that ends enqueues the next
    return SweepHandle(client, sweep_id)


def _list_sweeps() -> list[dict[str, Any]]:

    return [SweepHandle(None, sweep_id).status() for sweep_id in list_sweep_ids()]
