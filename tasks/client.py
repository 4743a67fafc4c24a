"""PipelineClient: submit runs to the cluster, follow them, cancel them.

    >>> from tasks.client import PipelineClient
    >>> handle = PipelineClient("redis://gpu-head:6379/0").submit("config/base_config.yaml")
    >>> manifest = handle.wait()          # progress bar; the final manifest when all four stages are done

The config is validated before anything is enqueued: a bad key raises ``ConfigError`` naming it
and the broker's queues are untouched. Relative paths in the config are made absolute against the
submitting directory, because workers run elsewhere (they must see the same artifact root).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from celery import chain

from pipeline.config import ConfigManager, apply_overrides
from pipeline.lifecycle import STAGES, new_manifest
from tasks.app import app
from tasks.broker import celery_settings
from tasks.state import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    clear_cancel,
    list_run_ids,
    read_run,
    request_cancel,
    write_run,
)


class RunFailed(RuntimeError):
    """A run ended failed or cancelled; ``status`` says which and the message gives the reason."""

    def __init__(self, run_id: str, status: str, reason: str):
        super().__init__(f"run {run_id} {status}: {reason}")
        self.run_id = run_id
        self.status = status


class RunHandle:
    """A submitted run: its id, status, final manifest, and cancel."""

    def __init__(self, client: PipelineClient, run_id: str):
        self._client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def _record(self) -> dict[str, Any]:
        record = read_run(self.id)
        if record is None:
            raise KeyError(f"no run {self.id!r} on this broker; list runs with PipelineClient().list_runs()")
        return record

    def status(self) -> dict[str, Any]:
        """The run's record: ``status`` (queued | running | completed | failed | cancelled), ``stage``,
        ``progress`` (step, total, loss, latest eval metrics), ``error``, and each stage task's state."""
        record = self._record()
        record["stage_states"] = {
            stage: app.AsyncResult(task_id).state for stage, task_id in zip(STAGES, record["task_ids"], strict=True)
        }
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
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(desc=f"run {self.id}", unit="step", disable=not progress)
        try:
            while True:
                record = self._record()
                step_progress = record.get("progress") or {}
                if step_progress.get("total"):
                    bar.total = step_progress["total"]
                    bar.n = step_progress.get("step", 0)
                    bar.set_postfix_str(f"{record.get('stage', '')} loss={step_progress.get('loss', '-')}")
                    bar.refresh()
                if record["status"] == "completed":
                    return app.AsyncResult(record["task_ids"][-1]).get(timeout=30)
                if record["status"] in ("failed", "cancelled", "pruned"):
                    raise RunFailed(self.id, record["status"], record.get("error", ""))
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run {self.id} still {record['status']} ({record.get('stage')}) after {timeout}s"
                    )
                time.sleep(poll_seconds)
        finally:
            bar.close()

    def cancel(self) -> None:
        """Stop the run: a queued stage never starts, a running train stops at the next step boundary
        after saving a checkpoint (within seconds), and the run is marked cancelled."""
        record = self._record()
        if record["status"] in FINAL_STATUSES:
            return
        request_cancel(self.id)
        for task_id in record["task_ids"]:
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
        overrides: list[str] | None = None,
        experiment_name: str | None = None,
        sweep: dict[str, Any] | None = None,
        on_submit=None,
    ) -> RunHandle:
        """Validate the config, then enqueue the four stages as one chain.

        A run with the same resolved config that is already queued or running is not enqueued
        twice: its handle is returned.

        Args:
            config_or_path: A config YAML path or a config dict.
            overrides: ``["training.learning_rate=3e-5", ...]``.
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
            config = manager.validate(apply_overrides(config_or_path, overrides or []))
        manifest = new_manifest(config, experiment_name)
        if sweep:
            manifest["sweep"] = sweep
        run_id = manifest["run_id"]
        if on_submit is not None:
            on_submit(run_id)
        existing = read_run(run_id)
        if existing is not None and existing["status"] in ACTIVE_STATUSES:
            return RunHandle(self, run_id)

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
        return RunHandle(self, run_id)

    def get(self, run_id: str) -> RunHandle:
        """The handle of a submitted run (KeyError naming the id when the broker has no such run)."""
        handle = RunHandle(self, run_id)
        handle._record()
        return handle

    def submit_sweep(
        self,
        base_config: str | Path | dict[str, Any],
        sweep_config: str | Path | dict[str, Any],
        parallel: int = 1,
        overrides: list[str] | None = None,
    ) -> SweepHandle:
        """Validate a W&B-format sweep against the base config, store it, and submit its first trials.

        The client may exit right after: each trial that ends advances the sweep on a worker.

        Args:
            base_config: The pipeline config (path or dict) every trial starts from.
            sweep_config: The W&B sweep config (path or dict): method, metric, parameters, early_terminate, run_cap.
            parallel: How many trials run at once.
            overrides: ``--set`` style overrides of the base config.

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
        from tasks.sweeps import read_sweep, read_trials

        state = read_sweep(self.id)
        counts: dict[str, int] = {}
        for trial in read_trials(self.id):
            counts[trial["status"]] = counts.get(trial["status"], 0) + 1
        return {"sweep_id": self.id, "status": state["status"], "trials": counts, "best_trial": state.get("best_trial")}

    def trials(self) -> list[dict[str, Any]]:
        """Every trial: params, status, metric, curve, run id, worker."""
        from tasks.sweeps import read_trials

        return read_trials(self.id)

    def leaderboard(self) -> list[dict[str, Any]]:
        """Trials ranked by the sweep metric, best first (see ``pipeline.report.leaderboard``)."""
        from pipeline.report import leaderboard
        from tasks.sweeps import read_sweep, read_trials, sweep_summary

        return leaderboard(sweep_summary(read_sweep(self.id)), read_trials(self.id))

    def best(self) -> dict[str, Any] | None:
        """The best finished trial's leaderboard row, or None (also when every finished trial collapsed)."""
        from pipeline.report import best_row

        return best_row(self.leaderboard())

    def wait(
        self, timeout: float | None = None, progress: bool = True, poll_seconds: float = 1.0
    ) -> list[dict[str, Any]]:
        """Block until the sweep ends; returns the leaderboard. TimeoutError after ``timeout`` seconds."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(desc=f"sweep {self.id}", unit="trial", disable=not progress) as bar:
            while True:
                status = self.status()
                bar.n = sum(count for state, count in status["trials"].items() if state not in ("queued", "running"))
                bar.set_postfix(status["trials"])
                if status["status"] != "running":
                    return self.leaderboard()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"sweep {self.id} still running after {timeout}s: {status['trials']}")
                time.sleep(poll_seconds)

    def cancel(self) -> None:
        """Stop the sweep: no new trials; running trials are cancelled (their checkpoints kept)."""
        from tasks.state import redis_client
        from tasks.sweeps import LOCK_KEY, SWEEP_KEY, finish_sweep, read_trials

        with redis_client().lock(LOCK_KEY.format(self.id), timeout=120, blocking_timeout=120):
            redis_client().hset(SWEEP_KEY.format(self.id), "status", "cancelling")
        for trial in read_trials(self.id):
            if trial["status"] in ACTIVE_STATUSES and trial.get("run_id"):
                RunHandle(self._client, trial["run_id"]).cancel()
        finish_sweep(self.id, "cancelled")


def _submit_sweep(client: PipelineClient, base_config, sweep_config, parallel: int, overrides) -> SweepHandle:
    from pipeline.sweep import load_sweep_config, parse_sweep_config
    from tasks.sweeps import advance_sweep, create_sweep

    if not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be an integer >= 1, got {parallel!r}")
    manager = ConfigManager()
    if isinstance(base_config, (str, Path)):
        base = manager.load_config(base_config, overrides=overrides)
    else:
        base = manager.validate(apply_overrides(base_config, overrides or []))
    if isinstance(sweep_config, (str, Path)):
        spec = load_sweep_config(sweep_config, base)
    else:
        spec = parse_sweep_config(sweep_config, base)
    from pipeline.lifecycle import absolute_paths

    sweep_id = create_sweep(spec.to_dict(), absolute_paths(base), parallel)
    advance_sweep(sweep_id)  # the first `parallel` trials; every trial that ends enqueues the next
    return SweepHandle(client, sweep_id)


def _list_sweeps() -> list[dict[str, Any]]:
    from tasks.sweeps import list_sweep_ids

    return [SweepHandle(None, sweep_id).status() for sweep_id in list_sweep_ids()]
