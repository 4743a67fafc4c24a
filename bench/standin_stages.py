"""The real stage tasks with stand-in stage bodies: train sleeps a fixed time, the others only record themselves.

A worker started with ``-A standin_stages`` runs the real ``dialsum.*`` tasks (``tasks.stages.run_stage``: delivery
count, run records, progress, cancel checks, sweep trial events that enqueue ``dialsum.sweep_advance``) on the real
app, so a sweep goes through all of its machinery; only ``pipeline.lifecycle.STAGE_FUNCTIONS`` is replaced, in the
worker's process, by functions of known cost. Benchmark-only.

Environment: ``BENCH_TRAIN_SECONDS`` (default 1), the stand-in train stage's duration. Started as ``dialsum worker``
starts it, or as stock Celery prefork (``bench/worker_variants.py``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import worker_variants  # noqa: F401  (the stock-worker switch, after tasks.stages' handlers)

import tasks.stages  # noqa: F401  (the real stage tasks, and the worker's signal handlers)
from pipeline import lifecycle
from tasks.app import app  # noqa: F401  (``-A standin_stages`` finds the real app here)

TRAIN_SECONDS = float(os.environ.get("BENCH_TRAIN_SECONDS", "1"))


def prepare_data(manifest: dict) -> dict:
    return lifecycle._record(manifest, "prepare_data", time.perf_counter(), dataset_dir=manifest["run_dir"])


def train(manifest: dict, resume: str | None = "auto", callbacks: list | None = None) -> dict:
    started = time.perf_counter()
    time.sleep(TRAIN_SECONDS)
    return lifecycle._record(manifest, "train", started, model_dir=manifest["run_dir"], final_metrics={})


def evaluate(manifest: dict) -> dict:
    # A metric that differs per trial (its seed), so the sweep can rank its trials.
    metrics = {"validation": {"eval_loss": float(manifest["config"]["general"]["seed"])}}
    path = str(Path(manifest["run_dir"]) / "manifest.json")
    return lifecycle._record(manifest, "evaluate", time.perf_counter(), metrics_path=path, metrics=metrics)


def generate_predictions(manifest: dict) -> dict:
    path = str(Path(manifest["run_dir"]) / "manifest.json")
    return lifecycle._record(manifest, "generate_predictions", time.perf_counter(), predictions_csv=path, rows=0)


lifecycle.STAGE_FUNCTIONS.update(
    prepare_data=prepare_data, train=train, evaluate=evaluate, generate_predictions=generate_predictions
)
