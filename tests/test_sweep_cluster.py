"""Sweeps on the real cluster (redis-server, two `dialsum worker` processes) with the micro config."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.registry import ModelRegistry
from pipeline.sweep import SweepConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _base(cluster, root: Path, **training) -> dict:
    config = copy.deepcopy(cluster["config"])
    config["general"]["artifact_root"] = str(root)
    config["training"].update(training)
    # 8-step micro models write near-identical summaries, which the collapse check rightly flags; these tests are
    # about sweep mechanics (ranking, promotion, pruning), so every trial counts as healthy here.
    config["evaluation"].update(collapse_min_distinct=0.0, collapse_max_top_share=1.0)
    return config


def _run_dirs(handle) -> dict[str, Path]:
    from tasks.state import read_run

    return {trial["trial_id"]: Path(read_run(trial["run_id"])["run_dir"]) for trial in handle.trials()}


def test_grid_2x2_on_two_workers(cluster, tmp_path):
    root = tmp_path / "artifacts"
    sweep = {
        "method": "grid",
        # Validation loss: continuous, so no ties (8 micro steps leave ROUGE at the same few values).
        "metric": {"name": "eval/loss", "goal": "minimize"},
        "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}, "seed": {"values": [1, 2]}},
    }
    # No `parallel`: as many trials at once as workers consume the training queue (the cluster has two).
    handle = cluster["client"].submit_sweep(_base(cluster, root), sweep)
    started = handle.status()["trials"]
    assert sum(started.values()) == 2 and set(started) <= {"queued", "running"}, started
    rows = handle.wait(timeout=600, progress=False)

    assert handle.status()["status"] == "finished"
    assert [row["status"] for row in rows] == ["finished"] * 4, [trial.get("error") for trial in handle.trials()]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    metrics = [row["metric"] for row in rows]
    assert metrics == sorted(metrics) and len(set(metrics)) == 4
    points = {(row["training.learning_rate"], row["general.seed"]) for row in rows}
    assert points == {(1e-3, 1), (1e-3, 2), (3e-3, 1), (3e-3, 2)}
    assert {row["worker"].split("@")[0] for row in rows} == {"cpu0", "cpu1"}  # spread over both workers

    # The best trial's model is the registry's best, and it holds the production stage.
    run_dirs = _run_dirs(handle)
    best_model = str((run_dirs[rows[0]["trial_id"]] / "model").resolve())
    registry = ModelRegistry(root)
    assert registry.best("loss", goal="minimize")["model_path"] == best_model
    assert registry.get_stage("tiny", "production")["model_path"] == best_model

    # Only training parameters vary: the data was tokenized once, the other trials hit the cache.
    cache_hits = [
        json.loads((d / "manifest.json").read_text())["stages"]["prepare_data"]["cache_hit"] for d in run_dirs.values()
    ]
    assert sorted(cache_hits) == [False, True, True, True]
    assert len(list((root / "datasets").iterdir())) - len(list((root / "datasets").glob(".*"))) == 1

    # Each trial is an experiment grouped by the sweep, with its parameters in its config.
    records = [json.loads(p.read_text()) for p in (root / "experiments").glob("*/experiment.json")]
    assert {record["group"] for record in records} == {handle.id}
    assert all(record["config"]["sweep"]["params"]["training.learning_rate"] in (1e-3, 3e-3) for record in records)

    sweep_dir = root / "sweeps" / handle.id
    for name in ("leaderboard.csv", "leaderboard.json", "report.html", "sweep.json"):
        assert (sweep_dir / name).is_file(), name
    status = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "sweep-status", handle.id],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert all(row["trial_id"] in status.stdout for row in rows)
    out = tmp_path / "report.html"
    report = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "report", handle.id, "--out", str(out)],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    assert out.read_text().count("<svg") >= 3


def test_random_and_bayes_stop_at_run_cap(cluster, tmp_path):
    handles = []
    for method in ("random", "bayes"):
        sweep = {
            "method": method,
            "metric": {"name": "eval/rouge_combined_f1", "goal": "maximize"},
            "run_cap": 2,
            "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3}},
        }
        handles.append(cluster["client"].submit_sweep(_base(cluster, tmp_path / method), sweep, parallel=1))
    for handle in handles:
        rows = handle.wait(timeout=600, progress=False)
        assert len(rows) == 2 and {row["status"] for row in rows} == {"finished"}
        assert all(1e-4 <= row["training.learning_rate"] <= 3e-3 for row in rows)


def test_hyperband_stops_a_hopeless_trial_before_its_last_evaluation(cluster, tmp_path):
    sweep = {
        "method": "grid",
        "metric": {"name": "eval/loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
        "parameters": {"learning_rate": {"values": [1e-3, 0.0]}},  # learning rate 0 never improves
    }
    base = _base(cluster, tmp_path / "a", max_steps=16, eval_steps=2, save_steps=2)
    handle = cluster["client"].submit_sweep(base, sweep, parallel=1)
    handle.wait(timeout=600, progress=False)
    trials = {trial["params"]["training.learning_rate"]: trial for trial in handle.trials()}
    assert trials[1e-3]["status"] == "finished" and len(trials[1e-3]["curve"]) >= 8
    hopeless = trials[0.0]
    assert hopeless["status"] == "pruned", hopeless
    assert len(hopeless["curve"]) < 8  # stopped before its last evaluation (16 steps, one every 2)
    assert handle.best()["trial_id"] == trials[1e-3]["trial_id"]


def test_sweep_finishes_after_the_client_is_killed(cluster, tmp_path):
    config_path = tmp_path / "base.yaml"
    sweep_path = tmp_path / "sweep.yaml"
    from pipeline.config import ConfigManager

    ConfigManager().save_config(_base(cluster, tmp_path / "a"), config_path)
    sweep_path.write_text(
        "method: grid\nmetric: {name: eval/rouge_combined_f1, goal: maximize}\n"
        "parameters:\n  learning_rate: {values: [0.001, 0.002]}\n"
    )
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.cli",
            "sweep",
            "--config",
            str(config_path),
            "--sweep",
            str(sweep_path),
            "--wait",
        ],
        cwd=REPO,
        env=cluster["env"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sweep_id = None
    for line in client.stdout:
        if line.startswith("sweep sweep-"):
            sweep_id = line.split()[1]
            break
    client.send_signal(signal.SIGKILL)  # the client dies right after submitting
    client.wait(timeout=10)
    assert sweep_id is not None
    from tasks.client import PipelineClient

    rows = PipelineClient(cluster["redis"].url).get_sweep(sweep_id).wait(timeout=600, progress=False)
    assert [row["status"] for row in rows] == ["finished", "finished"]


def test_invalid_sweep_is_refused_and_nothing_is_enqueued(cluster, tmp_path):
    import redis

    connection = redis.Redis.from_url(cluster["redis"].url)
    before = set(connection.keys("dialsum:sweep:*"))
    sweep = {
        "method": "grid",
        "metric": {"name": "eval/loss"},
        "parameters": {"learning_rate": {"min": 1e-3, "max": 1e-4}},
    }
    with pytest.raises(SweepConfigError, match=r"parameters\.learning_rate"):
        cluster["client"].submit_sweep(_base(cluster, tmp_path / "a"), sweep, parallel=2)
    assert set(connection.keys("dialsum:sweep:*")) == before
    assert connection.llen("gpu") == 0 and connection.llen("cpu") == 0
