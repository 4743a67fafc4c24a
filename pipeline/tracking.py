"""Experiment tracking: a local record of every experiment, mirrored to W&B when enabled.

Each experiment always leaves a local record, whatever the W&B mode::

    <root>/experiments/<experiment_id>/experiment.json   id, name, config, tags, group, status, notes,
                                                          started_at, ended_at, duration_s, wandb_run_id
    <root>/experiments/<experiment_id>/metrics.jsonl     one {"step", "timestamp", "metrics"} object per log call

W&B runs ``online``, ``offline`` (files under ``<root>/wandb/``, ``wandb sync`` later) or
``disabled``. ``wandb`` is imported only when a W&B run is actually started: it costs about a
second of import time that notebooks, CPU workers and disabled runs should not pay.

Secrets (passwords, tokens, API keys, passwords inside URLs such as the Redis broker URL) are
redacted with :func:`redact_secrets` before a config reaches W&B or a local record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, file_lock, safe_name

__all__ = ["ExperimentTracker", "redact_secrets", "END_STATUSES", "WANDB_MODES"]

logger = logging.getLogger(__name__)

REDACTED = "***"
WANDB_MODES = ("disabled", "offline", "online")  # ordered from least to most networked
END_STATUSES = ("completed", "failed", "cancelled", "pruned")

# "token" alone would also hit hyperparameters such as max_new_tokens, tokenizer or pad_token,
# so token keys are matched only as a trailing word and vocabulary tokens are exempt.
_SECRET_KEY_RE = re.compile(r"password|passwd|secret|api[_-]?key|private[_-]?key|credential", re.IGNORECASE)
_TOKEN_KEY_RE = re.compile(r"token$", re.IGNORECASE)
_VOCAB_TOKEN_KEY_RE = re.compile(r"^(pad|bos|eos|unk|sep|cls|mask|decoder_start|start|end)_token$", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host. RFC 3986 forbids a raw '/' or '@' in userinfo.
_URL_PASSWORD_RE = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact_secrets(obj: Any) -> Any:
    """Return a copy of ``obj`` with secrets replaced by ``"***"``.

    Dicts, lists and tuples are walked recursively. A value is replaced when its key contains
    ``password``, ``secret``, ``api_key`` (also ``apikey``, ``api-key``), ``private_key`` or
    ``credential``, or ends with ``token`` (``token``, ``hf_token``, ``GITHUB_TOKEN``), case-insensitive.
    Unlike a plain substring test, ``token`` does not hit tokenizer settings such as
    ``max_new_tokens``, ``tokenizer`` or ``pad_token``, which are hyperparameters worth tracking.
    ``None`` values are kept, since they reveal only that no secret is set. In every string,
    passwords in URLs are removed: ``redis://:pw@host:6379/0`` -> ``redis://:***@host:6379/0``.

    Args:
        obj: Any JSON-like object (config dict, notes string, ...). It is not modified.

    Returns:
        The redacted copy.
    """
    if isinstance(obj, dict):
        return {key: _redact_item(key, value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_secrets(item) for item in obj)
    if isinstance(obj, str):
        return _URL_PASSWORD_RE.sub(rf"\g<prefix>:{REDACTED}@", obj)
    return obj


def _redact_item(key: Any, value: Any) -> Any:
    if value is not None and _is_secret_key(str(key)):
        return REDACTED
    return redact_secrets(value)


def _is_secret_key(key: str) -> bool:
    if _SECRET_KEY_RE.search(key):
        return True
    return bool(_TOKEN_KEY_RE.search(key)) and not _VOCAB_TOKEN_KEY_RE.match(key)


class ExperimentTracker:
    """Track experiments locally under ``<root>/experiments/`` and, if enabled, in W&B.

    Args:
        root: The artifact root.
        wandb_config: The ``wandb`` section of the pipeline config: ``mode`` (online | offline |
            disabled, default disabled), ``project``, ``entity``, ``tags``, ``name`` (run name;
            defaults to the experiment name). None means disabled. The environment variable
            ``WANDB_MODE`` may lower the mode (``offline`` turns ``online`` into offline,
            ``disabled`` turns everything off) but never raises it, so a machine without network
            or a CI job can switch W&B off without editing configs.

    Only one W&B run is live per process (``reinit="finish_previous"``): ``wandb.run`` and
    ``wandb.log`` then reach the current experiment, as the trainer's callbacks and user code
    expect. Starting a second experiment before ending the first finishes the first W&B run; the
    first experiment keeps logging to its local record.

    Raises:
        ValueError: ``wandb_config["mode"]`` is not one of online, offline, disabled.
    """

    def __init__(self, root: str | Path, wandb_config: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.experiments_dir = self.root / "experiments"
        self.wandb_dir = self.root / "wandb"
        self.wandb_config = dict(wandb_config or {})
        self.mode = _effective_mode(self.wandb_config.get("mode", "disabled"), os.environ.get("WANDB_MODE"))
        self._runs: dict[str, Any] = {}  # experiment id -> live wandb Run
        self._current: str | None = None

    def start_experiment(
        self,
        name: str,
        config: dict[str, Any],
        tags: list[str] | None = None,
        group: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start (or restart) an experiment and return its id.

        Args:
            name: Experiment name; must be usable as a directory name (letters, digits, ``_-.``).
            config: Resolved config; stored and sent to W&B with secrets redacted.
            tags: Extra tags, added to ``wandb_config["tags"]``.
            group: W&B group (e.g. the sweep id), also stored locally.
            run_id: Use this as the experiment id (and W&B run id, resumed if it exists) instead of
                ``"<name>-<UTC timestamp>-<random>"``. Starting an existing id again (a redelivered
                task) keeps its ``started_at`` and metrics history and sets it back to running.

        Returns:
            The experiment id.

        Raises:
            ValueError: ``name`` or ``run_id`` is not usable as a directory name.
            RuntimeError: W&B could not start a run.
        """
        experiment_id = safe_name(run_id) if run_id else _new_experiment_id(name)
        clean_config = redact_secrets(config or {})
        all_tags = _merge_tags(self.wandb_config.get("tags"), tags)
        wandb_run_id = None
        if self.mode != "disabled":
            run = self._init_wandb(experiment_id, name, clean_config, all_tags, group, resume_id=run_id)
            self._runs[experiment_id] = run
            wandb_run_id = run.id
        record = {
            "id": experiment_id,
            "name": name,
            "config": clean_config,
            "tags": all_tags,
            "group": group,
            "status": "running",
            "notes": "",
            "started_at": _utc_now(),
            "ended_at": None,
            "duration_s": None,
            "wandb_mode": self.mode,
            "wandb_run_id": wandb_run_id,
        }
        with file_lock(self._dir(experiment_id) / ".lock"):
            previous = self._read_record(experiment_id, missing_ok=True)
            if previous:
                record["started_at"] = previous["started_at"]
            atomic_write_json(self._record_path(experiment_id), record)
        self._current = experiment_id
        return experiment_id

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, experiment_id: str | None = None) -> None:
        """Append ``metrics`` to the experiment's ``metrics.jsonl`` and log them to W&B if active.

        Args:
            metrics: Metric name -> value. Values that are not JSON are written locally as strings.
            step: Training step; recorded as given (``null`` when None) and passed to ``wandb.log``.
            experiment_id: Defaults to the experiment this tracker started last.

        Raises:
            RuntimeError: No ``experiment_id`` given and no experiment started by this tracker.
            KeyError: ``experiment_id`` does not exist.
        """
        experiment_id = self._resolve_id(experiment_id)
        line = {"step": step, "timestamp": _utc_now(), "metrics": metrics}
        # One write() of a whole line in append mode: concurrent appenders never interleave lines.
        with open(self._dir(experiment_id) / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        run = self._runs.get(experiment_id)
        if run is not None:
            run.log(dict(metrics), step=step)

    def end_experiment(self, experiment_id: str, status: str = "completed", notes: str = "") -> dict[str, Any]:
        """Mark an experiment finished and finish its W&B run.

        The local record is written before W&B is finished, so it is right even when W&B fails.

        Args:
            experiment_id: The experiment to end.
            status: ``completed``, ``failed``, ``cancelled`` or ``pruned``. The W&B run exits with
                code 1 only for ``failed``; a pruned trial is a normal outcome of a sweep.
            notes: Free text (e.g. the exception message); URL passwords are redacted.

        Returns:
            The updated record.

        Raises:
            ValueError: ``status`` is not one of the above.
            KeyError: ``experiment_id`` does not exist.
        """
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, got {status!r}")
        with file_lock(self._dir(experiment_id) / ".lock"):
            record = self._read_record(experiment_id)
            record.update(status=status, notes=redact_secrets(notes or ""), ended_at=_utc_now())
            record["duration_s"] = _seconds_between(record["started_at"], record["ended_at"])
            atomic_write_json(self._record_path(experiment_id), record)
        if self._current == experiment_id:
            self._current = None
        run = self._runs.pop(experiment_id, None)
        if run is not None:
            run.summary["experiment_status"] = status
            run.finish(exit_code=1 if status == "failed" else 0)
        return record

    def wandb_run_id(self, experiment_id: str) -> str | None:
        """The W&B run id of the experiment, or None when W&B was disabled."""
        return self.get(experiment_id).get("wandb_run_id")

    def get(self, experiment_id: str) -> dict[str, Any]:
        """The local record (``experiment.json``) of the experiment.

        Raises:
            KeyError: No such experiment under this root.
        """
        return self._read_record(experiment_id)

    def get_metrics(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every ``log_metrics`` call of the experiment, oldest first, as ``{step, timestamp, metrics}``."""
        self._read_record(experiment_id)  # KeyError for an unknown id rather than an empty list
        path = self._dir(experiment_id) / "metrics.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def list(self) -> list[dict[str, Any]]:
        """The records of all experiments under this root, oldest first."""
        if not self.experiments_dir.is_dir():
            return []
        records = [
            self._read_record(child.name)
            for child in self.experiments_dir.iterdir()
            if (child / "experiment.json").is_file()
        ]
        return sorted(records, key=lambda record: (record["started_at"], record["id"]))

    def _init_wandb(
        self,
        experiment_id: str,
        name: str,
        config: dict[str, Any],
        tags: list[str],
        group: str | None,
        resume_id: str | None,
    ) -> Any:
        import wandb  # lazy: only runs that actually use W&B pay its import time

        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": self.wandb_config.get("project"),
            "entity": self.wandb_config.get("entity"),
            "name": self.wandb_config.get("name") or name,
            "config": config,
            "tags": tags or None,
            "group": group,
            "mode": self.mode,
            "dir": str(self.wandb_dir),
            "reinit": "finish_previous",
        }
        if resume_id:
            # The caller's id is stable across redeliveries: continue that W&B run rather than fork it.
            kwargs.update(id=resume_id, resume="allow")
        # finish_previous ends any live run of this process; forget it so log_metrics stays local.
        self._runs.clear()
        try:
            return wandb.init(**kwargs)
        except Exception as err:
            raise RuntimeError(
                f"W&B could not start a run for experiment {experiment_id!r} in {self.mode} mode: {err}. "
                "Set wandb.mode to 'offline' (sync later) or 'disabled' in the config (or WANDB_MODE)."
            ) from err

    def _resolve_id(self, experiment_id: str | None) -> str:
        if experiment_id is None:
            if self._current is None:
                raise RuntimeError("no running experiment in this tracker: call start_experiment() or pass an id")
            return self._current
        if not self._record_path(experiment_id).is_file():
            raise KeyError(self._unknown_message(experiment_id))
        return experiment_id

    def _read_record(self, experiment_id: str, missing_ok: bool = False) -> dict[str, Any] | None:
        path = self._record_path(experiment_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                return None
            raise KeyError(self._unknown_message(experiment_id)) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"experiment record {str(path)!r} is not valid JSON ({err})") from err

    def _dir(self, experiment_id: str) -> Path:
        return self.experiments_dir / safe_name(experiment_id)

    def _record_path(self, experiment_id: str) -> Path:
        return self._dir(experiment_id) / "experiment.json"

    def _unknown_message(self, experiment_id: str) -> str:
        return f"no experiment {experiment_id!r} in {str(self.experiments_dir)!r}; ExperimentTracker.list() shows them"


def _effective_mode(configured: str, env_mode: str | None) -> str:
    """The configured W&B mode, lowered (never raised) by a ``WANDB_MODE`` environment variable."""
    if configured not in WANDB_MODES:
        raise ValueError(f"wandb.mode must be one of {WANDB_MODES}, got {configured!r}")
    if env_mode in WANDB_MODES and WANDB_MODES.index(env_mode) < WANDB_MODES.index(configured):
        return env_mode
    return configured


def _new_experiment_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{safe_name(name)}-{stamp}-{uuid.uuid4().hex[:6]}"


def _merge_tags(*groups: list[str] | None) -> list[str]:
    """Concatenate tag lists, dropping duplicates but keeping the first-seen order."""
    merged: dict[str, None] = {}
    for group in groups:
        for tag in group or []:
            merged[str(tag)] = None
    return list(merged)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _seconds_between(start_iso: str, end_iso: str) -> float:
    return round((datetime.fromisoformat(end_iso) - datetime.fromisoformat(start_iso)).total_seconds(), 3)
