"""The four stages of a run as plain functions over a manifest.

prepare_data -> train -> evaluate -> generate_predictions.

``dialsum run`` calls them one after another in this process; the Celery tasks in ``tasks/``
call the very same functions on workers. Each stage takes the manifest (a small JSON dict: run
id, resolved config, paths, fingerprints, metrics, timings, worker names), reads only what it
names, writes only under the run directory, and returns it extended. Nothing but paths crosses
between stages, so a stage can run on another machine that mounts the same artifact root.
"""

from __future__ import annotations

import copy
import json
import platform
import socket
import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, run_dir, run_id_for

STAGES = ("prepare_data", "train", "evaluate", "generate_predictions")
MANIFEST_FILE = "manifest.json"
SAMPLE_PREDICTIONS = 5
"""Validation predictions the train stage keeps in the manifest, beside their references, for run summaries."""


def new_manifest(config: dict[str, Any], experiment_name: str | None = None) -> dict[str, Any]:
    """The manifest a run starts with: its id, run directory and resolved config.

    The run directory is fixed here (``general.output_dir`` or ``<root>/runs/<experiment>/<run_id>``)
    and written into the config, so that every stage, wherever it runs, writes to the same place.
    """
    config = absolute_paths(config)
    experiment = experiment_name or config["experiment"]["name"]
    run_id = run_id_for(config)
    directory = Path(config["general"]["output_dir"] or run_dir(config["general"]["artifact_root"], experiment, run_id))
    config["general"]["output_dir"] = str(directory)
    return {
        "run_id": run_id,
        "experiment": experiment,
        "run_dir": str(directory),
        "config": config,
        "status": "pending",
        "stages": {},
    }


# Config keys that name files or directories.
CONFIG_PATH_KEYS = (
    ("general", "artifact_root"),
    ("general", "output_dir"),
    ("data", "train_path"),
    ("data", "val_path"),
    ("data", "test_path"),
    ("inference", "output_path"),
)
MANIFEST_KEYS = {"run_id": str, "experiment": str, "run_dir": str, "config": dict, "stages": dict}
# Keys of stage records that name files; they must stay inside the artifact root.
_PATH_SUFFIXES = ("_dir", "_path", "_csv", "_jsonl")
# A manifest carries ids, paths, a config and metrics: a few KiB. Anything this large is not one.
MAX_MANIFEST_BYTES = 1 << 20


def validate_manifest(manifest: Any, stage: str, allowed_roots: list[str | Path] | None = None) -> dict[str, Any]:
    """Check a manifest received from the broker before any stage acts on it.

    A task message can come from anyone who reaches the broker, so nothing in it is trusted: the
    config is validated, the run id must be the one its config yields (a manifest cannot name
    someone else's run), the run directory must be the one the config fixes, the stage records must
    be objects of known stages whose file paths are strings inside the artifact root (the prepared
    data) or this run's own directory (model, metrics, predictions: not another run's), and, when
    the worker is configured with ``allowed_roots``, every path (artifact root, data files, a local
    model) must resolve (symlinks followed) inside one of them. A manifest over
    ``MAX_MANIFEST_BYTES`` of JSON is refused before any of this.

    Raises:
        ValueError: Naming every problem found (ConfigError for an invalid config).
    """
    from pipeline.config import ConfigManager

    if not isinstance(manifest, dict):
        raise ValueError(
            f"{stage}: the task argument must be a manifest (a JSON object), got {type(manifest).__name__}"
        )
    size = len(json.dumps(manifest, default=str))
    if size > MAX_MANIFEST_BYTES:
        raise ValueError(
            f"{stage}: refused manifest of {size:,} bytes, over the {MAX_MANIFEST_BYTES:,}-byte limit; a manifest "
            f"carries ids, paths and a config only: submit runs with PipelineClient.submit"
        )
    problems = [
        f"manifest.{key}: missing or not a {kind.__name__}"
        for key, kind in MANIFEST_KEYS.items()
        if not isinstance(manifest.get(key), kind)
    ]
    if problems:
        raise ValueError(f"{stage}: invalid manifest ({'; '.join(problems)}); submit runs with PipelineClient.submit")
    config = ConfigManager().validate(manifest["config"])
    expected_id = run_id_for(config)
    if manifest["run_id"] != expected_id:
        problems.append(f"manifest.run_id {manifest['run_id']!r} is not its config's run id {expected_id!r}")
    if manifest["run_dir"] != config["general"]["output_dir"]:
        problems.append(f"manifest.run_dir {manifest['run_dir']!r} is not config general.output_dir")
    problems.extend(_stage_record_problems(manifest["stages"], manifest["run_dir"], config))
    if allowed_roots:
        roots = [Path(r).resolve() for r in allowed_roots]
        for key, value in _config_paths(config):
            if not _inside(Path(value), roots):
                problems.append(
                    f"config {key}: {value!r} is outside this worker's allowed roots {[str(r) for r in roots]}"
                )
    if problems:
        raise ValueError(f"{stage}: refused manifest: " + "; ".join(problems))
    return manifest


def _stage_record_problems(stages: dict[str, Any], run_directory: str, config: dict[str, Any]) -> list[str]:
    """What is wrong with the stage records of a manifest: unknown stages, records that are not objects,
    file paths that are not strings, lie outside the artifact root, or lie in another run's directory."""
    problems = []
    root = Path(config["general"]["artifact_root"]).resolve()
    own = Path(run_directory).resolve()
    output = config["inference"]["output_path"]
    outputs = {output, str(Path(output).with_suffix(".jsonl"))} if output else set()
    for stage_name, record in stages.items():
        where = f"manifest.stages.{stage_name}"
        if stage_name not in STAGES:
            problems.append(f"{where}: unknown stage; the stages are {', '.join(STAGES)}")
        if not isinstance(record, dict):
            problems.append(f"{where}: expected the JSON object a stage records, got {type(record).__name__}")
            continue
        for key, value in record.items():
            if not key.endswith(_PATH_SUFFIXES):
                continue
            if not isinstance(value, str):
                problems.append(f"{where}.{key}: expected a path (a string), got {type(value).__name__}")
            elif stage_name != "prepare_data" and (_inside(Path(value), [own]) or value in outputs):
                continue  # this run's own model, checkpoints, metrics or predictions
            elif not _inside(Path(value), [root]):
                problems.append(f"{where}.{key}: {value!r} is outside the artifact root {root}")
            elif stage_name != "prepare_data":
                problems.append(
                    f"{where}.{key}: {value!r} is not in this run's directory {run_directory}; "
                    f"a manifest may only name its own run's files"
                )
    return problems


def _config_paths(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The file paths a config names, as (dotted key, path)."""
    paths = [
        (f"{section}.{key}", config[section][key]) for section, key in CONFIG_PATH_KEYS if config[section].get(key)
    ]
    checkpoint = config["model"]["checkpoint"]
    if checkpoint != "scratch" and (checkpoint.startswith((".", "/", "~")) or Path(checkpoint).exists()):
        paths.append(("model.checkpoint", checkpoint))
    return paths


def _inside(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` (relative, ``..`` and symlinks resolved) lies in one of ``roots``."""
    resolved = path.expanduser().resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


# Who runs stages in this process: the Celery node name and queue when a task set them.
_stage_context: dict[str, str | None] = {"worker": None, "queue": None}


def set_stage_context(worker: str | None = None, queue: str | None = None) -> None:
    """Record the Celery node name and queue for the manifests of stages run by this process."""
    _stage_context.update(worker=worker, queue=queue)


def absolute_paths(config: dict[str, Any], base_dir: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``config`` with relative file paths made absolute against ``base_dir`` (the CWD).

    A worker runs in its own directory, maybe on another node: only absolute paths (on a shared
    filesystem) mean the same file there as where the run was submitted.
    """
    config = copy.deepcopy(config)
    base = Path(base_dir or Path.cwd())
    for section, key in CONFIG_PATH_KEYS:
        value = config[section].get(key)
        if value and not Path(value).is_absolute():
            config[section][key] = str(base / value)
    checkpoint = config["model"]["checkpoint"]
    if checkpoint != "scratch" and (base / checkpoint).exists() and not Path(checkpoint).is_absolute():
        config["model"]["checkpoint"] = str(base / checkpoint)
    return config


def worker_name() -> str:
    """Who ran a stage: the Celery node name when a task set it, else ``local@<host>`` (in process)."""
    return _stage_context["worker"] or f"local@{socket.gethostname()}"


def _trainer_for(manifest: dict[str, Any], model_dir: str | None = None):
    """A trainer for the manifest's run; ``model_dir`` loads the trained model instead of the configured one."""
    from pipeline.trainer import DialogueSummarizationTrainer

    config = copy.deepcopy(manifest["config"])
    if model_dir is not None:
        config["model"]["checkpoint"] = model_dir
    return DialogueSummarizationTrainer(config, experiment_name=manifest["experiment"])


def _record(manifest: dict[str, Any], stage: str, started: float, **fields: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    seconds = time.perf_counter() - started
    manifest["stages"][stage] = {
        **fields,
        "seconds": round(seconds, 3),
        "worker": worker_name(),
        "queue": _stage_context["queue"],
        "host": platform.node(),
        "started_at": time.time() - seconds,
        "finished_at": time.time(),
    }
    manifest["status"] = "completed" if stage == STAGES[-1] else f"{stage}_done"
    write_manifest(manifest)
    return manifest


def write_manifest(manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into the run directory (atomically)."""
    return atomic_write_json(Path(manifest["run_dir"]) / MANIFEST_FILE, manifest)


def prepare_data_stage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Tokenize the splits into ``<root>/datasets/<fingerprint>`` (a cache hit when already there)."""
    started = time.perf_counter()
    trainer = _trainer_for(manifest)
    datasets = trainer.prepare_data()
    return _record(
        manifest,
        "prepare_data",
        started,
        dataset_dir=str(trainer.prepared_dataset_dir),
        fingerprint=trainer.dataset_fingerprint,
        cache_hit=trainer.dataset_cache_hit,
        stats=trainer.data_stats,
        splits={split: len(datasets[split]) for split in datasets},
    )


def _earlier_record(manifest: dict[str, Any], stage: str, earlier: str, *keys: str) -> dict[str, Any]:
    """The record ``earlier`` left in the manifest, with ``keys``; else a ValueError naming the missing field."""
    record = manifest["stages"].get(earlier)
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(
            f"{stage} of run {manifest['run_id']}: manifest.stages.{earlier}.{missing[0]} is missing: {earlier} has "
            f"not run; run the stages in order (PipelineClient.submit and dialsum run do)"
        )
    return record


def _load_prepared(manifest: dict[str, Any], stage: str):
    from datasets import load_from_disk

    return load_from_disk(_earlier_record(manifest, stage, "prepare_data", "dataset_dir")["dataset_dir"])


def train_stage(manifest: dict[str, Any], resume: str | None = "auto", callbacks: list | None = None) -> dict[str, Any]:
    """Train (resuming from this run's latest checkpoint by default) and save ``model/``."""
    started = time.perf_counter()
    datasets = _load_prepared(manifest, "train")  # before the trainer writes anything (the scratch tokenizer)
    trainer = _trainer_for(manifest)
    trainer.sweep_info = manifest.get("sweep")
    trainer.initialize_components()
    for callback in callbacks or []:
        trainer.trainer.add_callback(callback)
    result = trainer.train(datasets, resume_from_checkpoint=resume)
    samples = []
    if "validation" in datasets and trainer.last_eval_predictions:
        # The final evaluation scored the saved model on validation: its first predictions, beside their references.
        rows = datasets["validation"].select(range(min(SAMPLE_PREDICTIONS, len(trainer.last_eval_predictions))))
        samples = [
            {"fname": fname, "prediction": prediction, "references": list(references)}
            for fname, prediction, references in zip(
                rows["fname"], trainer.last_eval_predictions, rows["references"], strict=False
            )
        ]
    return _record(
        manifest,
        "train",
        started,
        model_dir=result.model_path,
        checkpoints_dir=str(trainer.checkpoints_dir),
        best_metrics=result.best_metrics,
        final_metrics=result.final_metrics,
        global_step=trainer.trainer.state.global_step,
        experiment_id=result.experiment_id,
        wandb_run_id=result.wandb_run_id,
        oom_backoffs=[event for event in result.training_history if event.get("event") == "oom_backoff"],
        resumed_from=next((e["checkpoint"] for e in result.training_history if e.get("event") == "resume"), None),
        validation_samples=samples,
    )


def evaluate_stage(manifest: dict[str, Any]) -> dict[str, Any]:
    """ROUGE per labeled split of the trained model, written to ``metrics.json``.

    Validation metrics are those ``train`` computed on the saved model with the same function, so
    they are taken from the manifest rather than generated a second time; other labeled splits
    (a test file with summaries) are evaluated here. Each split also gets ``collapsed`` (true or
    false) and ``collapse_reason`` (None when healthy), beside the numeric ``<prefix>_collapsed``.
    """
    from pipeline.metrics import collapse_reason

    started = time.perf_counter()
    train = _earlier_record(manifest, "evaluate", "train", "model_dir", "final_metrics")
    datasets = _load_prepared(manifest, "evaluate")
    metrics = {"validation": {f"eval_{key}": value for key, value in train["final_metrics"].items()}}
    labeled = [
        split
        for split in datasets
        if split not in ("train", "validation") and "references" in datasets[split].column_names
    ]
    if labeled:
        trainer = _trainer_for(manifest, model_dir=train["model_dir"])
        for split in labeled:
            metrics[split] = trainer.evaluate(datasets[split], metric_key_prefix=split)
    for split, values in metrics.items():
        # Rebuilt from the split's numbers, as the evaluation that flagged it worded it (HF metrics hold no text).
        reason = collapse_reason(values, manifest["config"]["evaluation"], prefix=f"{metric_prefix(split)}_")
        values.update(collapsed=reason is not None, collapse_reason=reason)
    metrics_path = atomic_write_json(Path(manifest["run_dir"]) / "metrics.json", metrics)
    return _record(manifest, "evaluate", started, metrics_path=str(metrics_path), metrics=metrics)


def metric_prefix(split: str) -> str:
    """The metric key prefix of a split in ``metrics.json``: ``eval`` for validation, else the split's name."""
    return "eval" if split == "validation" else split


def generate_predictions_stage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Summaries for the test split: ``predictions.csv`` (``fname,summary``) and ``predictions.jsonl``."""
    from pipeline.trainer import write_predictions

    started = time.perf_counter()
    train = _earlier_record(manifest, "generate_predictions", "train", "model_dir")
    datasets = _load_prepared(manifest, "generate_predictions")
    split = "test" if "test" in datasets else "validation"
    trainer = _trainer_for(manifest, model_dir=train["model_dir"])
    predictions = trainer.generate_predictions(datasets[split])
    output = manifest["config"]["inference"]["output_path"] or str(Path(manifest["run_dir"]) / "predictions.csv")
    csv_path = write_predictions(predictions, output)
    return _record(
        manifest,
        "generate_predictions",
        started,
        split=split,
        predictions_csv=str(csv_path),
        predictions_jsonl=str(csv_path.with_suffix(".jsonl")),
        rows=len(predictions),
    )


STAGE_FUNCTIONS = {
    "prepare_data": prepare_data_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "generate_predictions": generate_predictions_stage,
}
