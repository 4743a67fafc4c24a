"""A file-based model registry: trained models with their metrics, config and lineage.

The registry lives under ``<artifact root>/registry/`` (see :func:`pipeline.artifacts.registry_dir`)::

    registry/index.json   {"version": 1, "models": {<model id>: <entry>, ...}}
    registry/.lock        flock target that serializes writers

Several worker processes (on one machine or on a shared filesystem with working locks) may
register models at once: every read-modify-write of the index holds ``registry/.lock`` and the
index is replaced atomically, so a reader never sees a half-written file and no writer loses
another's entry. Readers do not take the lock for the same reason.

An entry is a plain dict::

    id          "model-<hash>", derived from (model_path, metrics, config)
    name        model family, by default ``config["experiment"]["name"]``
    model_path  absolute path of the saved model directory
    metrics     {name: number}
    config      the resolved config, secrets redacted
    lineage     whatever the caller passes: run_id, dataset fingerprint, parent checkpoint, sweep/trial id
    tags        list of strings
    created_at  ISO 8601 UTC
    stage       "none" on registration; "production", "staging", ... after :meth:`ModelRegistry.promote`
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, content_hash, file_lock, registry_dir
from pipeline.tracking import redact_secrets

INDEX_VERSION = 1
DEFAULT_NAME = "model"
# Stages that any number of models may hold at once; every other stage is held by one model per name.
NON_EXCLUSIVE_STAGES = frozenset({"none", "archived"})
_GOALS = ("maximize", "minimize")


class ModelRegistry:
    """Registry of trained models stored as one JSON index under ``registry_dir(root)``.

    Args:
        root: The artifact root (local path or a shared filesystem mounted on every node).

    Example:
        >>> registry = ModelRegistry("artifacts")
        >>> model_id = registry.register("artifacts/runs/exp/run-1/model", {"rouge_combined_f1": 0.41}, config)
        >>> registry.promote(registry.best()["id"])
        >>> registry.get_stage("exp")["model_path"]
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.directory = registry_dir(self.root)
        self.index_path = self.directory / "index.json"
        self.lock_path = self.directory / ".lock"

    def register(
        self,
        model_path: str | Path,
        metrics: dict[str, float],
        config: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
    ) -> str:
        """Add a saved model to the registry and return its id.

        The id is a hash of the model path, metrics and (redacted) config, so registering the same
        model again (a redelivered task) returns the existing id and leaves the existing entry,
        lineage and tags included, unchanged.

        Args:
            model_path: Directory the model was saved to (``save_pretrained``); must exist.
            metrics: Metric name -> number (int or float, finite).
            config: The resolved config the model was trained with; secrets are redacted before storing.
            lineage: Where the model came from (run_id, dataset fingerprint, parent checkpoint,
                sweep id, trial id, ...); stored as given, secrets redacted.
            name: Model family name; defaults to ``config["experiment"]["name"]``, else ``"model"``.
            tags: Free-form labels.

        Returns:
            The model id, ``"model-<16 hex digits>"``.

        Raises:
            FileNotFoundError: ``model_path`` is not an existing directory.
            ValueError: A metric value is not a finite number, or the index file is corrupted.
        """
        path = Path(model_path).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {str(path)!r} does not exist; save the model, then register it")
        clean_metrics = _validate_metrics(metrics)
        clean_config = redact_secrets(config or {})
        model_id = "model-" + content_hash({"model_path": str(path), "metrics": clean_metrics, "config": clean_config})
        entry = {
            "id": model_id,
            "name": name or _default_name(config),
            "model_path": str(path),
            "metrics": clean_metrics,
            "config": clean_config,
            "lineage": redact_secrets(dict(lineage or {})),
            "tags": list(tags or []),
            "created_at": _utc_now(),
            "stage": "none",
        }
        with file_lock(self.lock_path):
            index = self._read_index()
            if model_id not in index["models"]:
                index["models"][model_id] = entry
                self._write_index(index)
        return model_id

    def list(self, name: str | None = None) -> list[dict[str, Any]]:
        """All entries in registration order, optionally only those with the given ``name``."""
        entries = self._read_index()["models"].values()
        return [entry for entry in entries if name is None or entry["name"] == name]

    def get(self, model_id: str) -> dict[str, Any]:
        """The entry of ``model_id``.

        Raises:
            KeyError: No model has that id.
        """
        models = self._read_index()["models"]
        if model_id not in models:
            raise KeyError(_unknown_id_message(model_id, self.index_path))
        return models[model_id]

    def best(
        self, metric: str = "rouge_combined_f1", goal: str = "maximize", name: str | None = None
    ) -> dict[str, Any] | None:
        """The entry with the best value of ``metric``, or None when no entry has that metric.

        Entries without the metric are ignored; on a tie the earliest registered entry wins.

        Args:
            metric: Metric name as registered (e.g. ``"rouge_combined_f1"``, ``"eval_loss"``).
            goal: ``"maximize"`` or ``"minimize"``.
            name: Only consider entries of this model family.

        Raises:
            ValueError: ``goal`` is neither ``"maximize"`` nor ``"minimize"``.
        """
        if goal not in _GOALS:
            raise ValueError(f"goal must be one of {_GOALS}, got {goal!r}")
        candidates = [entry for entry in self.list(name) if metric in entry["metrics"]]
        if not candidates:
            return None
        pick = max if goal == "maximize" else min
        return pick(candidates, key=lambda entry: entry["metrics"][metric])

    def promote(self, model_id: str, stage: str = "production", force: bool = False) -> dict[str, Any]:
        """Move ``model_id`` to ``stage`` and return its updated entry.

        One model per name holds a given stage: the previous holder of ``stage`` among models with
        the same name is demoted to ``"archived"``. ``"none"`` and ``"archived"`` are not exclusive.

        A model whose metrics say its evaluation collapsed (``collapsed`` 1.0: one generic summary for
        many dialogues) is refused ``"production"`` unless ``force`` is True; other stages are allowed.

        Args:
            model_id: The model's id.
            stage: The stage to move it to.
            force: Promote to ``"production"`` even a collapsed model.

        Raises:
            KeyError: No model has that id.
            ValueError: ``stage`` is empty or not a string, or the model collapsed and ``force`` is False
                (the message names the model, the reason and ``force=True``).
        """
        if not isinstance(stage, str) or not stage.strip():
            raise ValueError(f"stage must be a non-empty string such as 'production', got {stage!r}")
        with file_lock(self.lock_path):
            index = self._read_index()
            models = index["models"]
            if model_id not in models:
                raise KeyError(_unknown_id_message(model_id, self.index_path))
            target = models[model_id]
            if stage == "production" and not force and target["metrics"].get("collapsed"):
                raise ValueError(
                    f"refusing to make model {model_id!r} ({target['name']}, {target['model_path']}) production: "
                    f"its evaluation collapsed ({_collapse_reason(target)}); pass force=True to promote it anyway"
                )
            now = _utc_now()
            if stage not in NON_EXCLUSIVE_STAGES:
                for entry in models.values():
                    if entry is not target and entry["name"] == target["name"] and entry["stage"] == stage:
                        _set_stage(entry, "archived", now)
            _set_stage(target, stage, now)
            self._write_index(index)
        return copy.deepcopy(target)

    def get_stage(self, name: str, stage: str = "production") -> dict[str, Any] | None:
        """The model named ``name`` that holds ``stage``, or None."""
        for entry in self.list(name):
            if entry["stage"] == stage:
                return entry
        return None

    def _read_index(self) -> dict[str, Any]:
        """Load the index; a missing file is an empty registry, a damaged one is an error."""
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "models": {}}
        try:
            index = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(_corrupt_message(self.index_path, f"not valid JSON ({err})")) from err
        if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
            raise ValueError(_corrupt_message(self.index_path, "missing the 'models' mapping"))
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        atomic_write_json(self.index_path, index)


def _validate_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """Check that every metric is a finite real number and convert numpy scalars to Python ones."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    clean: dict[str, float | int] = {}
    for key, value in metrics.items():
        # bool is an int subclass, but True as a metric is almost certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"metric {key!r} must be a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}; a model with a non-finite metric cannot be ranked")
        # numpy scalars are Real but json.dumps would store them as strings.
        clean[str(key)] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return clean


def _collapse_reason(entry: dict[str, Any]) -> str:
    """Why a registered model's evaluation collapsed, rebuilt from its stored metrics and config."""
    from pipeline.metrics import collapse_reason  # imported here: the registry is used where ROUGE never is

    evaluation = (entry.get("config") or {}).get("evaluation") or {}
    try:
        reason = collapse_reason(entry["metrics"], evaluation)
    except KeyError:  # a config from before the collapse thresholds existed
        reason = None
    return reason or "flagged collapsed when it was evaluated"


def _default_name(config: dict[str, Any] | None) -> str:
    experiment = (config or {}).get("experiment")
    if isinstance(experiment, dict) and experiment.get("name"):
        return str(experiment["name"])
    return DEFAULT_NAME


def _set_stage(entry: dict[str, Any], stage: str, when: str) -> None:
    entry["stage"] = stage
    entry["stage_updated_at"] = when


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unknown_id_message(model_id: str, index_path: Path) -> str:
    return f"no model {model_id!r} in the registry {str(index_path)!r}; ModelRegistry(root).list() shows the ids"


def _corrupt_message(index_path: Path, problem: str) -> str:
    # Never reset a damaged index: it is the only record of which model is in production.
    return (
        f"model registry index {str(index_path)!r} is corrupted: {problem}. "
        "Restore it from a backup or move it aside to start an empty registry."
    )
